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
the data's sha256, not drawn at random), for any part size.

Streamed (`write_export_parts`, what the runner calls): the rows come part by part; three
passes (keys for the split; the facts that fix a split's columns: extra keys, tools; the
files). Trade-off: Parquet row groups and the `datasets` source's record batches are
BATCH_ROWS rows each (before streaming, one of the whole split), so a split larger than
that is other bytes than before; memory is one part plus BATCH_ROWS rows per split.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.contract.atomic import atomic_path, sha256_file, write_text
from curate.contract.schema import BASE_COLUMNS
from curate.contract.typed_config import ConfigError

FORMATS = ("jsonl", "parquet", "datasets")
BATCH_ROWS = 65536  # rows per Parquet row group and per datasets record batch of a streamed export
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


def extra_keys(convs: list[list[dict]]) -> set[str]:
    """The per-turn keys (in `extra`) of any turn of `convs`: they decide the struct fields."""
    return {k for c in convs for e in _extras(c) for k in e}


def _messages_shape(convs: list[list[dict]], keys: set[str] | None = None) -> tuple[pa.Array, dict]:
    """The `messages` column: plain list<struct<role, content>> when no turn has extras.
    `keys`: the extra keys of the whole split (streamed: every part gets the same fields)."""
    extras = [_extras(c) for c in convs]
    if keys is None:
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


def export_table(df: pl.DataFrame, shape: str, keys: set[str] | None = None,
                 with_tools: bool | None = None) -> tuple[pa.Table, dict]:
    """One split's rows in the export's columns (see the module docstring). Streamed, a
    part of a split: `keys` (its split's extra keys) and `with_tools` (whether any of its
    split's conversations has tools) make every part's columns the same."""
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
        arr, info = _messages_shape(convs, keys)
        conv_cols = {"messages": arr}
    cols: dict = {"id": df["id"].to_arrow(), "source": df["source"].to_arrow(), "task": df["task"].to_arrow()}
    cols.update(conv_cols)
    if shape != "alpaca" and (tools.null_count() < tools.len() if with_tools is None else with_tools):
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


# --------------------------------------------------------------------------- writing


class _SplitWriter:
    """One split's files, written as its rows come, part by part: `jsonl` appended per
    part (a line per row: the same bytes however the rows were cut), `parquet` and the
    `datasets` source (an Arrow IPC stream, memory-mapped by datasets) in units of exactly
    BATCH_ROWS rows (one row group / record batch each, the last one shorter), so their
    bytes do not depend on the part size either. A split of at most BATCH_ROWS rows is
    written as one table, as before streaming."""

    def __init__(self, out: Path, split: str, formats: list[str], stage_dir: Path):
        self.out, self.split, self.formats = out, split, formats
        self.rows = 0
        self.schema: pa.Schema | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._ctx: list = []
        self._jsonl = self._parquet = self._ipc = None
        self.ipc_path = stage_dir / f"{split}.arrow"
        self._ipc_sha = hashlib.sha256()

    def _open(self, schema: pa.Schema) -> None:
        self.schema = schema
        if "jsonl" in self.formats:
            ctx = atomic_path(self.out / f"{self.split}.jsonl")
            self._jsonl = open(ctx.__enter__(), "wb")
            self._ctx.append(ctx)
        if "parquet" in self.formats:
            ctx = atomic_path(self.out / f"{self.split}.parquet")
            self._parquet = pq.ParquetWriter(str(ctx.__enter__()), schema, compression="zstd")
            self._ctx.append(ctx)
        if "datasets" in self.formats:
            self.ipc_path.parent.mkdir(parents=True, exist_ok=True)
            self._ipc_file = pa.OSFile(str(self.ipc_path), "wb")
            self._ipc = pa.ipc.new_stream(self._ipc_file, schema)

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self._open(table.schema)
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        self.rows += table.num_rows
        if self._jsonl is not None and table.num_rows:
            pl.from_arrow(table).write_ndjson(self._jsonl)
        if self._parquet is not None or self._ipc is not None:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            while self._pending_rows >= BATCH_ROWS:
                self._flush(BATCH_ROWS)

    def _flush(self, n: int) -> None:
        t = pa.concat_tables(self._pending).combine_chunks() if len(self._pending) > 1 else \
            self._pending[0].combine_chunks()
        unit, rest = t.slice(0, n), t.slice(n)
        if n < t.num_rows:  # a slice carries its neighbours' bytes into some writers' buffers
            unit = unit.take(pa.array(range(n))).combine_chunks()
        if self._parquet is not None:
            self._parquet.write_table(unit)
        if self._ipc is not None:
            self._ipc.write_table(unit)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self._pending_rows or (self.rows == 0 and (self._parquet is not None or self._ipc is not None)):
            if not self._pending:
                self._pending = [self.schema.empty_table()]
            self._flush(self._pending_rows)
        if self._jsonl is not None:
            self._jsonl.close()
        if self._parquet is not None:
            self._parquet.close()
        if self._ipc is not None:
            self._ipc.close()
            self._ipc_file.close()
        for ctx in self._ctx:
            ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Close what is open and remove the temporary files (the export failed)."""
        for f in (self._jsonl, self._parquet, self._ipc):
            try:
                if f is not None:
                    f.close()
            except Exception:  # noqa: BLE001 - already failing: the first error is the one to show
                pass
        for ctx in self._ctx:
            ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
        self._ctx = []

    def dataset(self):
        """The split as a `datasets.Dataset` over its memory-mapped IPC stream; its
        fingerprint is the stream's sha256 (never drawn at random)."""
        from datasets import Dataset
        from datasets.table import MemoryMappedTable

        return Dataset(MemoryMappedTable.from_file(str(self.ipc_path)), fingerprint=sha256_file(self.ipc_path)[:16])


def _write_datasets(parts: dict, folder: Path) -> None:
    from datasets import DatasetDict
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


def write_export(table: pl.DataFrame, cfg, run_dir: Path, manifest: dict, dropped: pl.DataFrame | None) -> dict:
    """Write `cfg.export` from one table (the rows after the last stage); `dropped`: the
    renderer's dropped rows (or a frame of their ids, or None). See write_export_parts."""
    return write_export_parts(lambda columns: iter([table if columns is None else table.select(columns)]),
                              table.columns, cfg, run_dir, manifest, None if dropped is None else dropped["id"])


def write_export_parts(parts, columns: list[str], cfg, run_dir: Path, manifest: dict,
                       dropped_ids: pl.Series | None) -> dict:
    """Write `cfg.export` (a PipelineConfig's) under run_dir; returns the manifest section.
    `parts(columns)` yields the rows after the last stage part by part (trusted hold-out
    applied; the same rows at every call), `columns` their names; `dropped_ids`: the ids
    the renderer dropped (or None). Three passes: the keys (the split, as the shards'),
    the facts that fix each split's columns (extra keys, tools), then the files, one part
    at a time (memory: one part, its export columns, BATCH_ROWS rows of buffer per split)."""
    from curate.render.renderer import assign_split, tools_column

    ecfg = cfg.export
    run_dir = Path(run_dir).resolve()
    out = (run_dir / ecfg.dir).resolve()
    if run_dir not in out.parents:
        raise ConfigError("export.dir", f"{ecfg.dir!r} resolves outside the run directory ({out})")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    val_fraction = cfg.render.val_fraction if cfg.render is not None else 0.05
    gone = dropped_ids.unique().implode() if dropped_ids is not None and dropped_ids.len() else None

    key_cols = ["id", "task"] + (["split"] if "split" in columns else [])
    keys = [p for p in parts(key_cols)]
    sizes = [p.height for p in keys]
    keys = pl.concat(keys, how="vertical_relaxed", rechunk=True)
    split = assign_split(keys, val_fraction, cfg.run.seed).to_numpy()
    keep = ~keys["id"].is_in(gone).to_numpy() if gone is not None else np.ones(keys.height, dtype=bool)
    del keys

    def frames(cols):
        off = 0
        for k, p in enumerate(parts(cols)):
            n = p.height
            if n != sizes[k]:
                raise RuntimeError(f"export: part {k} gave {n} rows, {sizes[k]} before")
            df = p.with_columns(pl.Series("split", split[off: off + n], dtype=pl.String))
            yield df.filter(pl.Series(keep[off: off + n]))
            off += n

    facts = {sp: {"keys": set(), "tools": False, "rows": 0} for sp in SPLITS}
    fact_cols = ["messages"] + (["meta"] if "meta" in columns else [])
    for df in frames(fact_cols):
        for sp in SPLITS:
            part = df.filter(pl.col("split") == sp)
            if not part.height:
                continue
            f = facts[sp]
            f["rows"] += part.height
            if ecfg.shape == "messages":
                f["keys"] |= extra_keys(part["messages"].to_list())
            if ecfg.shape != "alpaca" and not f["tools"]:
                t = tools_column(part)
                f["tools"] = t.null_count() < t.len()
    splits = [sp for sp in SPLITS if sp == "train" or facts[sp]["rows"]]
    stage = out / ".stream"
    writers = {sp: _SplitWriter(out, sp, list(ecfg.formats), stage) for sp in splits}
    info: dict = {sp: {} for sp in splits}
    counts = []
    try:
        for df in frames(None):
            counts.append(df.select("task", "split"))
            for sp in splits:
                part = df.filter(pl.col("split") == sp)
                if not part.height:
                    continue
                t, i = export_table(part, ecfg.shape, facts[sp]["keys"], facts[sp]["tools"])
                writers[sp].write(t)
                for k, v in i.items():
                    info[sp][k] = (info[sp].get(k, 0) + v) if isinstance(v, int) else v
            del df
        for sp in splits:
            if writers[sp].rows == 0:  # an empty train split: its columns from an empty frame
                empty = next(iter(parts(None))).head(0)
                t, i = export_table(empty, ecfg.shape, facts[sp]["keys"], facts[sp]["tools"])
                writers[sp].write(t)
                info[sp] = {k: v for k, v in i.items()}
            writers[sp].close()
        files = [f"{sp}.{fmt}" for sp in splits for fmt in ("jsonl", "parquet") if fmt in ecfg.formats]
        if "datasets" in ecfg.formats:
            _write_datasets({sp: writers[sp].dataset() for sp in splits}, out / "datasets")
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    section = {
        "dir": ecfg.dir, "shape": ecfg.shape, "formats": list(ecfg.formats),
        "rows": {sp: writers[sp].rows for sp in splits},
        "columns": writers["train"].schema.names,
        "files": {f: sha256_file(out / f) for f in files},
        "datasets": "datasets" if "datasets" in ecfg.formats else None,
        "notes": {sp: {k: v for k, v in i.items() if v} for sp, i in info.items() if any(i.values())},
    }
    if ecfg.card:
        df = pl.concat(counts, how="vertical_relaxed") if counts else pl.DataFrame(
            schema={"task": pl.String, "split": pl.String})
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
