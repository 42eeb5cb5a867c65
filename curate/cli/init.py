"""`curate init [--format F] FILE`: a commented pipeline.toml for the user's data file.

The format is detected with the readers' own auto-detection (the same majority vote over the
first records that `format = "auto"` uses), the task from the file (Dolly's `category`, else
the file name or `--task`), and the file is written only after it parses as a pipeline (so
`init` never hands out a config that `curate validate` refuses). Stages and keys come with a
line each saying what they do and when to change them; the [render] table is live when a
`--tokenizer` directory is given, else commented out (curation and the [export] run without it).
"""
from __future__ import annotations

import os
from pathlib import Path

import click

FORMATS = ("auto", "alpaca", "sharegpt", "messages", "dolly", "prompt_completion")
SAMPLE_RECORDS = 200


def detect(path: Path) -> tuple[str, int, list[str]]:
    """(format, records looked at, categories seen): the readers' detection on the first records."""
    from curate.read.readers import detect_format, file_type, iter_items

    items = []
    for _, item, error, _ in iter_items(path, file_type(path)):
        if error is None and isinstance(item, dict):
            items.append(item)
        if len(items) >= SAMPLE_RECORDS:
            break
    fmt = detect_format(items)
    cats = sorted({str(i["category"]) for i in items if i.get("category") not in (None, "")})
    return fmt, len(items), cats


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pipeline_text(data: Path, toml_path: Path, fmt: str, task: str | None, categories: list[str],
                  tokenizer: str | None, template: str, seen: int) -> str:
    here = toml_path.resolve().parent
    rel = os.path.relpath(data.resolve(), here) if data.resolve().is_relative_to(here) else str(data.resolve())
    me = toml_path.name
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in data.name.split(".")[0]) or "data"
    if task:
        task_line = f"task = {_q(task)}                # the task label of every record (mix balances tasks)"
    elif fmt == "dolly":
        task_line = ('task_field = "category"    # each record\'s task from its Dolly `category`'
                     + (f" (seen: {', '.join(categories[:8])})" if categories else ""))
    else:
        task_line = f"task = {_q(name)}                # the task label of every record (mix balances tasks)"
    lines = [
        f"# A pipeline for {data.name}, written by `curate init` ({fmt} format, detected on the first {seen} records).",
        f"# Try it on a sample first:   curate run {me} --limit 200",
        f"# Then the whole file:        curate run {me}",
        f"# Paths are relative to this file. `curate validate {me}` checks it without running.",
        "",
        "[run]",
        f"output_dir = {_q('runs/' + name)}   # the run directory: stages, rejects, shards, manifest, report",
        "seed = 0                  # every sample, split and tie-break follows it: same seed, same bytes",
        "",
        "[[sources]]",
        f"name = {_q(name)}",
        f"path = {_q(rel)}          # a file, a folder or a glob",
        f"format = {_q(fmt)}           # alpaca | sharegpt | messages | dolly | prompt_completion | auto",
        task_line,
        '# license = "cc-by-sa-3.0"  # declare the data\'s licence: it goes into the export\'s dataset card',
        "",
        "# ---- cleaning: each stage drops rows with a reason, kept in rejects/<stage>.parquet",
        "",
        "[[stages]]",
        'kind = "normalize"          # Unicode NFC, whitespace, stray markup; ids recomputed on the clean text',
        "",
        "[[stages]]",
        'kind = "filter"             # empty, too long, repetitive, refusal and boilerplate answers',
        'on = "assistant"            # judge the answers (user | assistant | all | conversation ...)',
        "max_chars = 100000          # longest kept text; raise for long-document data",
        "",
        "# [[stages]]",
        '# kind = "language"         # keep only these languages (fastText lid.176, bundled)',
        '# keep = ["en"]',
        "",
        "[[stages]]",
        'kind = "quality"            # a score per conversation, column "heuristic" (0..1): no model needed',
        'scorer = "heuristic"',
        "",
        "[[stages]]",
        'kind = "dedup"',
        'name = "exact_dedup"',
        'method = "exact"            # identical conversations after normalisation',
        'view = "conversation"',
        'keep = "best"               # of each group, keep the copy with the best score_column',
        'score_column = "heuristic"',
        "",
        "[[stages]]",
        'kind = "dedup"',
        'name = "near_dedup"',
        'method = "minhash"          # near-duplicates: MinHash LSH over word shingles',
        'view = "conversation"',
        "threshold = 0.7             # Jaccard similarity above which two conversations are one",
        'keep = "best"',
        'score_column = "heuristic"',
        "",
        "# [[stages]]",
        '# kind = "select"           # keep rows by a score: look at the report\'s histogram before setting `min`',
        '# column = "heuristic"',
        "# min = 0.9",
        "",
        "# [[stages]]",
        '# kind = "mix"              # balance tasks (weights or targets; temperature flattens the mix)',
        '# by = "task"',
        "# temperature = 2.0",
        "",
        "# ---- out: the curated conversations for any trainer (TRL, Axolotl, LLaMA-Factory)",
        "",
        "[export]",
        'shape = "messages"          # messages | sharegpt | alpaca',
        'formats = ["jsonl", "parquet", "datasets"]',
        "",
        "# ---- rendering through a chat template into token shards (for `curate train`)",
        "",
    ]
    render = [
        "[render]",
        f"template = {_q(template)}          # a built-in (`curate templates list`), a .jinja file, or \"tokenizer\"",
        f"tokenizer = {_q(tokenizer or 'path/to/tokenizer')}   # a local tokenizer or model folder (never downloaded)",
        "max_length = 2048           # longer conversations are dropped (overflow = \"truncate\" cuts at a turn)",
        "pack = true                 # several examples per row, never attending to each other",
        "val_fraction = 0.05         # held out per task, by a seeded hash of the id",
    ]
    if tokenizer:
        lines += render
    else:
        lines += ["# Give a tokenizer (curate init --tokenizer DIR) or fill these in to write shards:"]
        lines += ["# " + r for r in render]
    return "\n".join(lines) + "\n"


@click.command("init")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="The records' format; auto: detected as the readers detect it.")
@click.option("--task", default=None, help="Task label for every record (default: Dolly's category, else the file name).")
@click.option("--tokenizer", default=None, type=click.Path(exists=True, file_okay=False),
              help="A local tokenizer/model folder: makes [render] live.")
@click.option("--template", default="chatml", show_default=True, help="Chat template for [render].")
@click.option("-o", "--out", "out", default="pipeline.toml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the pipeline.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init_cmd(data, fmt, task, tokenizer, template, out, force):
    """Write a commented pipeline.toml for DATA (format detected, stages and keys explained)."""
    from curate.contract.typed_config import ConfigError
    from curate.pipeline.config import load_config
    from curate.read.readers import RecordError

    data_p, out_p = Path(data), Path(out)
    if out_p.exists() and not force:
        raise click.ClickException(f"{out_p} exists; pass --force to overwrite it")
    seen, cats = 0, []
    try:
        detected, seen, cats = detect(data_p)
    except RecordError as exc:
        if fmt == "auto":
            raise click.ClickException(f"{data_p}: {exc}; give --format") from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{data_p}: cannot read: {exc}") from None
    if fmt == "auto":
        fmt = detected
    here = out_p.resolve().parent
    tok = None
    if tokenizer:
        t = Path(tokenizer).resolve()
        tok = os.path.relpath(t, here) if t.is_relative_to(here) else str(t)
    text = pipeline_text(data_p, out_p, fmt, task, cats, tok, template, seen)
    tmp = out_p.with_name(f".{out_p.name}.init-tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_config(tmp)  # never write a config that does not parse
    except ConfigError as exc:
        tmp.unlink()
        raise click.ClickException(f"internal error: the generated pipeline does not parse: {exc.message()}") from None
    tmp.replace(out_p)
    click.echo(f"wrote {out_p} ({fmt}; {seen} records looked at). Next: curate run {out_p} --limit 200")
