"""`curate eval RUN [--test FILE]`: per task, exact match and answer loss of the base model,
the base model prompted few-shot, and the tuned model (train/eval.py has the measures).

A test file (any format the readers know) is read with the project's readers and rendered
with the run's own [render] config (template, tokenizer, max_length), so its prompts are
exactly what training saw; without one, the run's val split is used. The table is printed,
written to the manifest under `eval` and shown in the report."""
from __future__ import annotations

import json
from pathlib import Path

import click


def _test_items(run_dir: Path, manifest: dict, test: str, fmt: str, limit: int | None, log, task: str | None = None,
                task_field: str | None = None):
    """Read and render a test file the way the run rendered its data."""
    from curate.contract.typed_config import ConfigError, load_dataclass
    from curate.read.readers import read_source
    from curate.read.sources import SourceConfig
    from curate.render.config import RenderConfig
    from curate.render.renderer import render_examples
    from train.eval import items_from_arrays

    table = (manifest.get("config") or {}).get("render")
    if not table:
        raise click.ClickException(f"the manifest of {run_dir} records no [render] config to render {test} with")
    base_dir = Path(manifest.get("config_dir") or (Path(manifest["pipeline"]).parent if manifest.get("pipeline") else run_dir))
    try:
        rcfg = load_dataclass(RenderConfig, dict(table), "render")
        src = SourceConfig(name="test", path=str(Path(test).resolve()), format=fmt, task=task, task_field=task_field)
        src.validate()
    except ConfigError as exc:
        raise click.ClickException(exc.message()) from None
    read = read_source(src, Path.cwd(), log)
    for q in read.quarantine[:5]:
        log(f"eval: skipped {q['file']}:{q['line']}: {q['error']}")
    if read.quarantine:
        log(f"eval: {len(read.quarantine)} malformed test record(s) skipped")
    if not read.table.height:
        raise click.ClickException(f"no usable records in {test}")
    rendered = render_examples(read.table, rcfg, base_dir, 0)
    if rendered.dropped.height:
        log(f"eval: {rendered.dropped.height} test record(s) not rendered (too long, no answer, ...)")
    ex = rendered.examples
    return items_from_arrays(ex["input_ids"].to_list(), ex["labels"].to_list(), ex["task"].to_list(), ex["id"].to_list(),
                             limit)


@click.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--test", "test", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Held-out prompts with reference answers (any supported format); default: the run's val split.")
@click.option("--format", "fmt", default="auto", show_default=True, help="Record format of --test.")
@click.option("--task", default=None, help="Task name of every --test record (as a source's `task`).")
@click.option("--task-field", default=None, help="Field of a --test record that holds its task (as a source's `task_field`).")
@click.option("-k", "--shots", "k", default=3, show_default=True, help="Curated train examples before the prompt (few_shot arm).")
@click.option("--arms", default="base,few_shot,tuned", show_default=True, help="Which of base, few_shot, tuned to run.")
@click.option("--limit", type=int, default=None, help="At most this many items per task.")
@click.option("--max-new-tokens", default=64, show_default=True, help="Longest generated answer.")
@click.option("--batch-size", default=16, show_default=True, help="Prompts per generate call.")
@click.option("--base-model", default=None, help="Base model directory (when the run's own is not on this machine).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--no-write", is_flag=True, help="Print only; leave the manifest and report as they are.")
def eval_cmd(run_dir, test, fmt, task, task_field, k, arms, limit, max_new_tokens, batch_size, base_model, device, threads, no_write):
    """Exact match and answer loss per task: base vs few-shot base vs tuned model of RUN_DIR."""
    from curate.contract.atomic import write_json
    from train.data import DataError, load_split, read_manifest
    from train.eval import ARMS, evaluate, format_table, items_from_split, shots_from_split
    from train.load import load_trained

    run = Path(run_dir)
    chosen = tuple(a.strip() for a in arms.split(",") if a.strip())
    bad = [a for a in chosen if a not in ARMS]
    if bad or not chosen:
        raise click.ClickException(f"--arms: unknown arm(s) {bad} (choose from {', '.join(ARMS)})")
    try:
        manifest = read_manifest(run)
        trained = load_trained(run, base_model, device=device, threads=threads,
                               with_base=any(a != "tuned" for a in chosen))
        vocab = trained.model.get_input_embeddings().num_embeddings
        train = load_split(run, "train", manifest, vocab)
        if test:
            items = _test_items(run, manifest, test, fmt, limit, click.echo, task, task_field)
            source = str(Path(test).resolve())
        else:
            if not (manifest.get("shards") or {}).get("val"):
                raise DataError("the run has no val split: pass --test FILE")
            items = items_from_split(load_split(run, "val", manifest, vocab), limit)
            source = "val"
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    if not items:
        raise click.ClickException("nothing to evaluate: no item has both a prompt and a supervised answer")
    shots = shots_from_split(train, k, exclude={it.id for it in items})
    per_task = (lambda t: trained.adapter_names[t]) if trained.kind == "per_task" else None
    if per_task is not None:
        missing = sorted({it.task for it in items} - set(trained.adapter_names))
        if missing:
            raise click.ClickException(f"no adapter for task(s) {missing} (per-task adapters: {sorted(trained.adapter_names)})")
    click.echo(f"eval: {len(items)} item(s) from {source}, arms {', '.join(chosen)}, k = {k}", err=True)
    result = evaluate(trained.model, items, trained.tokenizer, trained.stop_ids, shots, base=trained.base, arms=chosen,
                      max_new_tokens=max_new_tokens, batch_size=batch_size, adapter_for_task=per_task)
    result.update(source=source, model=str(trained.folder), max_new_tokens=max_new_tokens)
    click.echo(format_table(result))
    if no_write:
        return
    path = run / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    m["eval"] = json.loads(json.dumps(result, default=str))
    write_json(path, m)
    from curate.look.report import write_report

    click.echo(f"eval written to {path} and {write_report(run)}")
