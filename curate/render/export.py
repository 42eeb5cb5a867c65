"""`[export]`: the curated conversations out to any trainer, beside the token shards.

    write_export(table, cfg, run_dir, manifest, dropped) -> the manifest's "export" section

What is exported is what was rendered: the rows after the last stage (select/mix, upsampled
copies included, as in the shards), less the rows the renderer dropped (too long, template
errors), split into train/val exactly as the shards are (`renderer.assign_split`, same seed).
Without `[render]`, all rows, split by `render`'s default val_fraction rule (0.05). Columns:
`id`, `source`, `task`, `origin` (file:line provenance), `meta` (the record's other fields as
JSON), the score columns the stages added (quality, language, cluster ids: every flat column
that is not internal), then the conversation in one of three shapes:

- `messages` (TRL, OpenAI, Axolotl `chat_template`): `messages` list<struct<role, content>>;
  when any turn has them, typed `tool_calls` (list<struct<id, type, function<name,
  arguments>>>: `arguments` as a JSON string, as OpenAI writes it), `tool_call_id` and `name`
  fields, and `extra` (a JSON object of any other per-turn keys); a `tools` column (JSON
  string) when any conversation has tools. Trade-off: an Arrow struct has the same fields in
  every turn, so where tool fields exist they are null on the turns without them; a template
  that tests `is defined` rather than truthiness sees them (none of the built-ins does).
- `sharegpt` (LLaMA-Factory, Axolotl `sharegpt`): `conversations` list<struct<from, value>>
  with from = system | human | gpt | function_call | observation; an assistant turn's
  tool_calls become one `function_call` turn (value: the calls as JSON; text beside calls is
  kept in front of it as a `gpt` turn only when the turn has no calls); `tools` JSON string.
- `alpaca`: `instruction`, `input` (""), `output`, `system`, `history` ([[user, assistant],
  ...] of the earlier turns). Only conversations that are [system] (user, assistant)+ with
  no tool turns fit; the others are left out and counted (`not_alpaca` in the section).

Formats: `jsonl` (one file per split), `parquet` (one file per split) and `datasets` (a
`DatasetDict.save_to_disk` folder, typed features; `datasets.load_from_disk` opens it), all
under RUN/<dir>/ (never outside the run). A dataset card `README.md` records the ledger,
per-task and per-split counts, the config hash, the template and tokenizer, and the sources'
licences as declared (`[[sources]] license`); its YAML header lets `load_dataset(RUN/<dir>)`
find the Parquet splits. Same config and inputs: same bytes (datasets' fingerprint is set from
the data's sha256, not drawn at random).
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.contract.atomic import write_bytes, write_text
from curate.contract.schema import BASE_COLUMNS
from curate.contract.typed_config import ConfigError

FORMATS = ("jsonl", "parquet", "datasets")
SPLITS = ("train", "val")
KNOWN_EXTRA = ("tool_calls", "tool_call_id", "name")
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}

TOOL_CALL_TYPE = pa.struct([("id", pa.string()), ("type", pa.string()),
                            ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())]))])


@dataclass
class ExportConfig:
    shape: Literal["messages", "sharegpt", "alpaca"] = "messages"  # the conversation columns' layout
    formats: list[str] = field(default_factory=lambda: ["jsonl", "parquet", "datasets"])  # any of jsonl, parquet, datasets
    dir: str = "export"  # folder inside the run directory
    card: bool = True  # write a dataset card (README.md) beside the files

    def validate(self) -> None:
        if not self.formats:
            raise ConfigError("formats", f"name at least one of {', '.join(FORMATS)}")
        for f in self.formats:
            if f not in FORMATS:
                raise ConfigError("formats", f"unknown format {f!r} (known: {', '.join(FORMATS)})")
        p = Path(self.dir)
        if p.is_absolute() or ".." in p.parts or not self.dir.strip() or p == Path("."):
            raise ConfigError("dir", f"must be a folder name inside the run directory, got {self.dir!r}")
        if p.parts[0] in ("shards", "stages", "rejects", "train"):
            raise ConfigError("dir", f"{self.dir!r} is a folder the run itself writes; pick another name")


# --------------------------------------------------------------------------- shapes


def _tool_call(c) -> dict:
    """One tool call in the typed form; arguments as a JSON string (OpenAI's form)."""
    if not isinstance(c, dict):
        c = {"function": {"name": str(c)}}
    fn = c.get("function") if isinstance(c.get("function"), dict) else {"name": c.get("name"),
                                                                       "arguments": c.get("arguments")}
    args = fn.get("arguments")
    if args is not None and not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return {"id": c.get("id"), "type": c.get("type"), "function": {"name": fn.get("name"), "arguments": args}}


def _extras(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        e = m.get("extra")
        out.append(json.loads(e) if e else {})
    return out


def _messages_shape(convs: list[list[dict]]) -> tuple[pa.Array, dict]:
    """The `messages` column: plain list<struct<role, content>> when no turn has extras."""
    extras = [_extras(c) for c in convs]
    keys = {k for ex in extras for e in ex for k in e}
    if not keys:
        t = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        return pa.array([[{"role": m["role"], "content": m["content"]} for m in c] for c in convs], t), {}
    known = [k for k in KNOWN_EXTRA if k in keys]
    other = keys - set(KNOWN_EXTRA)
    fields = [("role", pa.string()), ("content", pa.string())]
    fields += [(k, pa.list_(TOOL_CALL_TYPE) if k == "tool_calls" else pa.string()) for k in known]
    if other:
        fields.append(("extra", pa.string()))
    rows = []
    for c, ex in zip(convs, extras):
        turns = []
        for m, e in zip(c, ex):
            d = {"role": m["role"], "content": m["content"]}
            for k in known:
                v = e.get(k)
                if k == "tool_calls":
                    d[k] = [_tool_call(x) for x in v] if isinstance(v, list) else None
                else:
                    d[k] = v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            if other:
                rest = {k: v for k, v in e.items() if k not in KNOWN_EXTRA}
                d["extra"] = json.dumps(rest, ensure_ascii=False) if rest else None
            turns.append(d)
        rows.append(turns)
    return pa.array(rows, pa.list_(pa.struct(fields))), {"tool_fields": known, "extra_keys": sorted(other)}


def _sharegpt_shape(convs: list[list[dict]]) -> tuple[pa.Array, dict]:
    rows, lossy = [], 0
    for c in convs:
        turns = []
        for m, e in zip(c, _extras(c)):
            calls = e.get("tool_calls") if m["role"] == "assistant" else None
            if calls:
                if m["content"]:
                    lossy += 1  # text beside tool calls: LLaMA-Factory's sharegpt has one value per turn
                typed = [_tool_call(x)["function"] for x in calls]
                value = [{"name": f["name"], "arguments": json.loads(f["arguments"]) if f["arguments"] else {}}
                         for f in typed]
                turns.append({"from": "function_call",
                              "value": json.dumps(value[0] if len(value) == 1 else value, ensure_ascii=False)})
            else:
                turns.append({"from": SHAREGPT_FROM.get(m["role"], m["role"]), "value": m["content"] or ""})
        rows.append(turns)
    t = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    return pa.array(rows, t), {"text_beside_tool_calls_dropped": lossy}


def _alpaca_row(c: list[dict]) -> dict | None:
    if any(m.get("extra") for m in c):
        return None
    system = c[0]["content"] if c and c[0]["role"] == "system" else None
    turns = c[1:] if system is not None else c
    if not turns or len(turns) % 2:
        return None
    pairs = []
    for q, a in zip(turns[::2], turns[1::2]):
        if q["role"] != "user" or a["role"] != "assistant":
            return None
        pairs.append([q["content"] or "", a["content"] or ""])
    return {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1], "system": system or "",
            "history": pairs[:-1]}


# --------------------------------------------------------------------------- the table


def _score_columns(df: pl.DataFrame) -> list[str]:
    flat = (pl.Boolean, pl.String, pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64,
            pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
    return [c for c in df.columns if c not in BASE_COLUMNS and c != "split" and not c.startswith("_")
            and df.schema[c] in flat]


def export_table(df: pl.DataFrame, shape: str) -> tuple[pa.Table, dict]:
    """One split's rows in the export's columns (see the module docstring)."""
    from curate.render.renderer import tools_column

    convs = df["messages"].to_list()
    tools = tools_column(df)
    info: dict = {}
    keep = None
    if shape == "alpaca":
        rows = [_alpaca_row(c) for c in convs]
        keep = pl.Series([r is not None for r in rows])
        info["not_alpaca"] = int((~keep).sum())
        rows = [r for r in rows if r is not None]
        df, tools = df.filter(keep), tools.filter(keep)
        conv_cols = {
            "instruction": pa.array([r["instruction"] for r in rows], pa.string()),
            "input": pa.array([r["input"] for r in rows], pa.string()),
            "output": pa.array([r["output"] for r in rows], pa.string()),
            "system": pa.array([r["system"] for r in rows], pa.string()),
            "history": pa.array([r["history"] for r in rows], pa.list_(pa.list_(pa.string()))),
        }
    elif shape == "sharegpt":
        arr, info = _sharegpt_shape(convs)
        conv_cols = {"conversations": arr}
    else:
        arr, info = _messages_shape(convs)
        conv_cols = {"messages": arr}
    cols: dict = {"id": df["id"].to_arrow(), "source": df["source"].to_arrow(), "task": df["task"].to_arrow()}
    cols.update(conv_cols)
    if shape != "alpaca" and tools.null_count() < tools.len():
        cols["tools"] = tools.to_arrow()
    cols["origin"] = df["origin"].to_arrow()
    if "meta" in df.columns:
        cols["meta"] = df["meta"].to_arrow()
    for c in _score_columns(df):
        cols[c] = df[c].to_arrow()
    table = pa.table({k: (v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v) for k, v in cols.items()})
    string_view = [i for i, f in enumerate(table.schema) if pa.types.is_string_view(f.type)]
    for i in string_view:  # polars hands out string_view; datasets and older readers want string
        table = table.set_column(i, table.schema.field(i).name, table.column(i).cast(pa.string()))
    return table, info


def _rows_to_export(table: pl.DataFrame, cfg, dropped: pl.DataFrame | None) -> pl.DataFrame:
    from curate.render.renderer import assign_split

    val_fraction = cfg.render.val_fraction if cfg.render is not None else 0.05
    split = assign_split(table, val_fraction, cfg.run.seed)
    df = table.with_columns(split.alias("split"))
    if dropped is not None and dropped.height:
        df = df.filter(~pl.col("id").is_in(dropped["id"].unique().implode()))
    return df


# --------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_jsonl(table: pa.Table, path: Path) -> None:
    buf = io.BytesIO()
    pl.from_arrow(table).write_ndjson(buf)
    write_bytes(path, buf.getvalue())


def _write_parquet(table: pa.Table, path: Path) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(path, buf.getvalue())


def _write_datasets(tables: dict[str, pa.Table], folder: Path) -> None:
    from datasets import Dataset, DatasetDict

    parts = {}
    for split, t in tables.items():
        fp = hashlib.sha256(_ipc(t)).hexdigest()[:16]
        parts[split] = Dataset(t, fingerprint=fp)
    from datasets.utils import logging as ds_logging

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    was_off = ds_logging.is_progress_bar_enabled() is False
    ds_logging.disable_progress_bar()
    try:
        DatasetDict(parts).save_to_disk(str(tmp))
    finally:
        if not was_off:
            ds_logging.enable_progress_bar()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def _ipc(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


def write_export(table: pl.DataFrame, cfg, run_dir: Path, manifest: dict, dropped: pl.DataFrame | None) -> dict:
    """Write `cfg.export` (a PipelineConfig's) under run_dir; returns the manifest section.
    `table`: the rows after the last stage; `dropped`: the renderer's dropped rows (or None)."""
    ecfg = cfg.export
    run_dir = Path(run_dir).resolve()
    out = (run_dir / ecfg.dir).resolve()
    if run_dir not in out.parents:
        raise ConfigError("export.dir", f"{ecfg.dir!r} resolves outside the run directory ({out})")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    df = _rows_to_export(table, cfg, dropped)
    tables, info = {}, {}
    for split in SPLITS:
        part = df.filter(pl.col("split") == split)
        if split == "val" and part.height == 0:
            continue
        tables[split], info[split] = export_table(part, ecfg.shape)
    files = []
    for split, t in tables.items():
        if "jsonl" in ecfg.formats:
            _write_jsonl(t, out / f"{split}.jsonl")
            files.append(f"{split}.jsonl")
        if "parquet" in ecfg.formats:
            _write_parquet(t, out / f"{split}.parquet")
            files.append(f"{split}.parquet")
    if "datasets" in ecfg.formats:
        _write_datasets(tables, out / "datasets")
    section = {
        "dir": ecfg.dir, "shape": ecfg.shape, "formats": list(ecfg.formats),
        "rows": {s: t.num_rows for s, t in tables.items()},
        "columns": tables["train"].column_names,
        "files": {f: _sha256(out / f) for f in files},
        "datasets": "datasets" if "datasets" in ecfg.formats else None,
        "notes": {s: {k: v for k, v in i.items() if v} for s, i in info.items() if any(i.values())},
    }
    if ecfg.card:
        write_text(out / "README.md", dataset_card(cfg, manifest, section, df))
    return section


def dataset_card(cfg, manifest: dict, section: dict, df: pl.DataFrame) -> str:
    """A Hugging Face dataset card: YAML header (licences, Parquet splits) and the facts."""
    licences = sorted({s.license for s in cfg.sources if getattr(s, "license", None)})
    yaml = ["---"]
    if len(licences) == 1:
        yaml.append(f"license: {licences[0]}")
    elif licences:
        yaml.append("license: other")
    if "parquet" in section["formats"]:
        yaml += ["configs:", "- config_name: default", "  data_files:"]
        for split in section["rows"]:
            yaml += [f"  - split: {split}", f"    path: {split}.parquet"]
    yaml.append("---")
    ledger = manifest.get("ledger", {})
    lines = ["", "# Curated instruction data", "",
             f"Made by `curate` {manifest.get('curate_version', '')} from `{Path(str(manifest.get('pipeline', ''))).name}`; "
             f"config hash `{manifest.get('config_hash', '')}`, seed {manifest.get('seed')}.", "",
             f"Shape: **{section['shape']}**; files: {', '.join(section['files']) or '-'}"
             + ("; a `datasets` folder (`datasets.load_from_disk`)" if section.get("datasets") else "") + ".", "",
             "## Sources", "", "| source | path | format | licence (as declared) |", "|---|---|---|---|"]
    for s in cfg.sources:
        lines.append(f"| {s.name} | `{s.path}` | {s.format} | {getattr(s, 'license', None) or 'not declared'} |")
    lines += ["", "## Rows per task", "", "| task | train | val |", "|---|---|---|"]
    counts = df.group_by("task", "split").len().sort("task")
    by = {(r["task"], r["split"]): r["len"] for r in counts.iter_rows(named=True)}
    for task in sorted({t for t, _ in by}):
        lines.append(f"| {task} | {by.get((task, 'train'), 0)} | {by.get((task, 'val'), 0)} |")
    lines += ["", "## Ledger", "", "Rows read = kept + dropped + quarantined.", "",
              f"- read: {ledger.get('read')}", f"- kept: {ledger.get('kept')}",
              f"- quarantined: {ledger.get('quarantined')}"]
    for stage, reasons in (ledger.get("dropped") or {}).items():
        if isinstance(reasons, dict):
            lines.append(f"- dropped by {stage}: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
        else:
            lines.append(f"- dropped by {stage}: {reasons}")
    if ledger.get("upsampled"):
        lines.append(f"- upsampled copies added: {ledger['upsampled']}")
    render = manifest.get("render")
    if render:
        tok = render.get("tokenizer") or {}
        lines += ["", "## Rendering", "",
                  f"Rendered with template `{render.get('template')}` (sha256 `{render.get('template_sha256')}`) and "
                  f"tokenizer `{tok.get('path')}`; max_length {render.get('max_length')}, train_on "
                  f"`{render.get('train_on')}`. The export holds the rows the shards hold, with the same train/val "
                  "split; rows the renderer dropped are not in it."]
    for split, notes in (section.get("notes") or {}).items():
        lines.append(f"\nNotes ({split}): " + ", ".join(f"{k}: {v}" for k, v in notes.items()))
    return "\n".join(yaml + lines) + "\n"
