"""Looking at data: what is in a raw data file, a run directory or a shard folder.

`profile_*` functions compute plain, JSON-able summaries column-wise with polars (counts
by source and task, length and token percentiles per role, language mix, score
distributions, the ledger funnel, decoded samples with the supervised part marked);
`curate inspect` prints them (rich on a terminal, plain text in a pipe, `--json` for
machines) and `curate.look.report` draws them. Reading is bounded where it must touch rows
one by one (tokenizing, decoding samples): a deterministic strided sample, said so in
the output.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.contract.datasets import has_dataset, read_dataset, scan_dataset
from curate.contract.views import text_view

IGNORE = -100
TOKEN_SAMPLE = 2000  # rows tokenized per table for token-length statistics (enough for a histogram)
PCTS = (0.05, 0.25, 0.5, 0.75, 0.95)
LANG_NAMES = ("lang", "language")


# ------------------------------------------------------------------ what a path is
def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "manifest.json").is_file() or (path / "stages" / "00-read").is_dir())


def shard_files(path: Path) -> dict[str, list[Path]]:
    """Arrow shard files under `path` by split (`train`, `val`, or `all` when flat)."""
    out: dict[str, list[Path]] = {}
    for split in ("train", "val"):
        files = sorted((path / split).glob("*.arrow")) if (path / split).is_dir() else []
        if files:
            out[split] = files
    if not out:
        files = sorted(path.glob("*.arrow"))
        if files:
            out["all"] = files
    return out


def load_manifest(run_dir: Path) -> dict | None:
    p = run_dir / "manifest.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def stage_list(run_dir: Path, manifest: dict | None) -> list[dict]:
    """The run's stages as the manifest records them; from each `done.json` when the
    manifest is missing (a run that stopped early)."""
    if manifest and manifest.get("stages") is not None:
        return list(manifest["stages"])
    out = []
    sdir = run_dir / "stages"
    for d in sorted(sdir.iterdir()) if sdir.is_dir() else []:
        if d.name == "00-read" or not (d / "done.json").is_file():
            continue
        info = json.loads((d / "done.json").read_text())
        index = int(d.name.split("-", 1)[0]) if d.name[:2].isdigit() else len(out) + 1
        out.append({"index": index, "name": info.get("name", d.name[3:]), "kind": info.get("kind", "?"),
                    "rows_in": info.get("rows_in"), "rows_out": info.get("rows_out"),
                    "dropped": info.get("dropped", {}), "upsampled": info.get("upsampled", 0),
                    "stats": info.get("stats", {}), "output": f"stages/{d.name}",
                    "rejects": f"rejects/{d.name}.parquet"})
    return out


def stage_data(run_dir: Path, manifest: dict | None) -> list[tuple[str, Path]]:
    """(step name, its output folder: a dataset for curate.contract.datasets) in pipeline
    order, `read` first; only those on disk."""
    out = []
    read = run_dir / "stages" / "00-read"
    if has_dataset(read):
        out.append(("read", read))
    for s in stage_list(run_dir, manifest):
        p = run_dir / s.get("output", "")
        if s.get("output") and has_dataset(p):
            out.append((s["name"], p))
    return out


# ------------------------------------------------------------------ columns
def lang_column(schema: dict) -> str | None:
    """A language-ID column: `lang`/`language`, or `<stage>_lang`/`<stage>_language`."""
    names = [c for c, t in schema.items() if t == pl.String]
    for c in names:
        if c in LANG_NAMES:
            return c
    for c in names:
        if c.endswith(("_lang", "_language")):
            return c
    return None


def score_columns(schema: dict, extra: tuple[str, ...] = ()) -> list[str]:
    """Numeric `quality_*` columns, plus any named in `extra` (e.g. a select stage's column)."""
    out = []
    for c, t in schema.items():
        if t.is_numeric() and (c.startswith("quality_") or c in extra) and c not in out:
            out.append(c)
    return out


def run_score_columns(stages: list[dict]) -> tuple[str, ...]:
    """Score columns a run's quality and select stages name (a quality stage's column
    is named after its scorer, e.g. `heuristic`, `perplexity`)."""
    out: list[str] = []
    for s in stages:
        col = (s.get("stats") or {}).get("column")
        if s.get("kind") in ("quality", "select") and isinstance(col, str) and col not in out:
            out.append(col)
    return tuple(out)


def run_lang_columns(stages: list[dict], schema: dict) -> list[str]:
    """Language columns of a run's language stages (`<stage>_<role>`), present in
    `schema`; else a generic `lang`-like column."""
    out = []
    for s in stages:
        if s.get("kind") != "language":
            continue
        roles = list(((s.get("stats") or {}).get("languages") or {}).keys()) or ["user", "assistant"]
        out += [f"{s['name']}_{r}" for r in roles if schema.get(f"{s['name']}_{r}") == pl.String]
    if not out:
        generic = lang_column(schema)
        out = [generic] if generic else []
    return out


def percentiles(s: pl.Series) -> dict:
    s = s.drop_nulls()
    if s.dtype.is_float():
        s = s.drop_nans()
    if len(s) == 0:
        return {"n": 0}
    out: dict[str, Any] = {"n": len(s), "mean": _num(s.mean())}
    for q in PCTS:
        out[f"p{int(q * 100)}"] = _num(s.quantile(q, interpolation="nearest"))
    out["min"], out["max"] = _num(s.min()), _num(s.max())
    return out


def _num(x):
    if x is None:
        return None
    x = float(x)
    return int(x) if x.is_integer() else round(x, 4)


def counts(df: pl.DataFrame, col: str, top: int | None = None) -> dict[str, int]:
    if col not in df.columns:
        return {}
    c = df.group_by(col).len().sort(["len", col], descending=[True, False], nulls_last=True)
    if top is not None:
        c = c.head(top)
    return {str(k): int(n) for k, n in c.iter_rows()}


# ------------------------------------------------------------------ tokenizer
def load_tokenizer(path: str | Path | None, roots: tuple[Path, ...] = (), vocab_size: int | None = None,
                   scan: tuple[Path, ...] = ()):
    """A `tokenizers.Tokenizer` from a directory holding tokenizer.json (or the file
    itself); None when not found. Only the Rust tokenizer: no Python code from the
    directory is ever run (no trust_remote_code question arises). A relative path is
    tried against the working directory, each of `roots`, and the subdirectories of
    `scan` (the manifest keeps paths as written, relative to the pipeline file, whose
    location it may not record); with `vocab_size`, a candidate of another size is skipped."""
    if not path:
        return None
    from tokenizers import Tokenizer

    p = Path(path).expanduser()
    if p.is_absolute():
        cands = [p]
    else:
        cands = [Path.cwd() / p]
        cands += [r / p for r in roots]
        for r in scan:
            if r.is_dir():
                cands += [d / p for d in sorted(r.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    for c in cands:
        f = c / "tokenizer.json" if c.is_dir() else c
        if not (f.is_file() and f.suffix == ".json"):
            continue
        try:
            tok = Tokenizer.from_file(str(f))
        except Exception:  # noqa: BLE001 - an unreadable tokenizer just means no token stats
            continue
        if vocab_size is None or tok.get_vocab_size(with_added_tokens=True) == vocab_size:
            return tok
    return None


def run_tokenizer(run_dir: Path, manifest: dict | None):
    """The tokenizer of a run's [render] section, looked up beside the run if relative
    and checked against the vocabulary size the manifest records."""
    if not manifest:
        return None
    tok = (manifest.get("render") or {}).get("tokenizer") or {}
    path = tok.get("path") if isinstance(tok, dict) else tok
    if not path:
        path = ((manifest.get("config") or {}).get("render") or {}).get("tokenizer")
    size = tok.get("vocab_size") if isinstance(tok, dict) else None
    up = list(run_dir.resolve().parents)[:2]  # runs/NAME beside the pipeline's folder is the usual layout
    config_dir = manifest.get("config_dir") or (Path(manifest["config_path"]).parent if manifest.get("config_path") else None)
    roots = tuple(Path(x) for x in (config_dir,) if x) + (run_dir, *up)
    return load_tokenizer(path, roots, size, scan=tuple(up))


def strided(df: pl.DataFrame, n: int) -> pl.DataFrame:
    """A deterministic, evenly spread sample of at most n rows."""
    if df.height <= n:
        return df
    return df.gather_every(-(-df.height // n))


def token_counts(texts: list[str], tokenizer) -> np.ndarray:
    """Tokens per text, batched through the Rust tokenizer (one call for the batch)."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    encode = getattr(tokenizer, "encode_batch_fast", None) or tokenizer.encode_batch  # no offsets needed
    enc = encode(texts, add_special_tokens=False)
    return np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))


# ------------------------------------------------------------------ tables
def role_lengths(df: pl.DataFrame, tokenizer=None) -> dict:
    """Characters (all rows) and tokens (a strided sample) per message role."""
    if df.height == 0 or "messages" not in df.columns:
        return {}
    msgs = df.select(pl.col("messages")).explode("messages").drop_nulls().unnest("messages")
    msgs = msgs.with_columns(pl.col("content").fill_null("").str.len_chars().alias("chars"))
    out: dict[str, dict] = {}
    for role in sorted(msgs["role"].unique().drop_nulls().to_list()):
        out[role] = {"chars": percentiles(msgs.filter(pl.col("role") == role)["chars"])}
    if tokenizer is not None:
        sample = strided(df, TOKEN_SAMPLE).select(pl.col("messages")).explode("messages").drop_nulls().unnest("messages")
        toks = token_counts(sample["content"].fill_null("").to_list(), tokenizer)
        t = sample.select("role").with_columns(pl.Series("tokens", toks))
        for role in out:
            out[role]["tokens"] = percentiles(t.filter(pl.col("role") == role)["tokens"])
    return out


def conversation_lengths(data: pl.DataFrame | str | Path, tokenizer=None, sample: int = TOKEN_SAMPLE,
                         step: int | None = None) -> pl.DataFrame:
    """Per conversation: task, chars (all rows) and, with a tokenizer, tokens (null
    outside a strided sample: every `step`th row, by default enough for `sample` rows).
    Given a parquet path, it is scanned lazily: only the lengths are materialised, never
    the whole `messages` column."""
    lf = scan_dataset(data) if isinstance(data, (str, Path)) else data.lazy()
    out = lf.select(pl.col("task").cast(pl.String), text_view("conversation").str.len_chars().alias("chars")).collect()
    if tokenizer is not None and out.height:
        step = step or max(1, -(-out.height // sample))
        texts = lf.gather_every(step).select(text_view("conversation")).collect().to_series().fill_null("").to_list()
        toks = token_counts(texts, tokenizer)
        col = np.full(out.height, -1, dtype=np.int64)
        col[::step] = toks
        out = out.with_columns(pl.Series("tokens", col).replace(-1, None))
    return out


def detect_languages(df: pl.DataFrame, n: int = TOKEN_SAMPLE, min_letters: int = 20) -> dict:
    """Language mix per role when no stage has labelled it: the bundled fastText model
    (curate.stages.language.langid) on an evenly spread sample; texts with too few letters to judge are
    left out, as the language stage does."""
    from curate.stages.language import langid

    sample = strided(df, n)
    out = {}
    for role in ("user", "assistant"):
        texts = sample.select(text_view(role).alias("t")).filter(pl.col("t").str.count_matches(r"\p{L}") >= min_letters)["t"]
        if len(texts) == 0:
            continue
        langs, _ = langid.predict(texts.str.slice(0, 2000).to_list())
        label = f"{role} (fastText lid.176" + (f", sample of {sample.height:,} rows)" if sample.height < df.height else ")")
        out[label] = counts(pl.DataFrame({"lang": langs}), "lang", top=30)
    return out


def profile_table(df: pl.DataFrame, tokenizer=None, score_extra: tuple[str, ...] = (),
                  stages: list[dict] | None = None) -> dict:
    """Counts, per-role lengths, language mix and score distributions of a record table."""
    schema = dict(df.schema)
    out: dict[str, Any] = {"rows": df.height, "by_source": counts(df, "source"), "by_task": counts(df, "task"),
                           "lengths": role_lengths(df, tokenizer),
                           "tokens_sampled": tokenizer is not None and df.height > TOKEN_SAMPLE}
    langs = run_lang_columns(stages or [], schema)
    if langs:
        out["languages"] = {c: counts(df, c, top=30) for c in langs}
    elif df.height and "messages" in df.columns:
        out["languages"] = detect_languages(df)
    out["scores"] = {c: percentiles(df[c].cast(pl.Float64)) for c in score_columns(schema, score_extra)}
    return out


# ------------------------------------------------------------------ shards
def read_shard_table(files: list[Path]) -> pl.DataFrame:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    tables = []
    for f in files:
        with pa.memory_map(str(f), "r") as src:
            try:
                tables.append(ipc.open_file(src).read_all())
            except pa.ArrowInvalid:
                src.seek(0)
                tables.append(ipc.open_stream(src).read_all())
    if not tables:
        return pl.DataFrame()
    return pl.from_arrow(pa.concat_tables(tables, promote_options="default"))


def shard_examples(shards: dict[str, list[Path]]) -> pl.DataFrame:
    """One row per example (packed rows unpacked by `seq_lens`): split, id, task,
    source, tokens, supervised. Column-wise: per-example supervised counts are a numpy
    reduceat over the flattened label mask."""
    frames = []
    for split, files in shards.items():
        t = read_shard_table(files)
        if t.height == 0:
            continue
        sup_row = t["labels"].list.eval(pl.element() != IGNORE)
        if "seq_lens" in t.columns:
            lens = t["seq_lens"].explode().drop_nulls().to_numpy().astype(np.int64)
            mask = sup_row.explode().drop_nulls().to_numpy().astype(np.int64)
            starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else np.zeros(0, np.int64)
            sup = np.add.reduceat(mask, starts) if len(lens) and len(mask) else np.zeros(len(lens), np.int64)
            sup[lens == 0] = 0

            def listcol(name, single):
                if name in t.columns:
                    return t[name].explode().cast(pl.String)
                if single in t.columns:
                    return t[single].cast(pl.String).gather(np.repeat(np.arange(t.height), t["seq_lens"].list.len().to_numpy()))
                return pl.Series([None] * len(lens), dtype=pl.String)

            frames.append(pl.DataFrame({"split": [split] * len(lens), "id": listcol("ids", "id"),
                                        "task": listcol("tasks", "task"), "source": listcol("sources", "source"),
                                        "tokens": lens, "supervised": sup}))
        else:
            n = t.height

            def col(name):
                return t[name].cast(pl.String) if name in t.columns else pl.Series([None] * n, dtype=pl.String)

            frames.append(pl.DataFrame({"split": [split] * n, "id": col("id"), "task": col("task"),
                                        "source": col("source"),
                                        "tokens": t["input_ids"].list.len().cast(pl.Int64),
                                        "supervised": sup_row.list.sum().cast(pl.Int64)}))
    return pl.concat(frames) if frames else pl.DataFrame(
        schema={"split": pl.String, "id": pl.String, "task": pl.String, "source": pl.String,
                "tokens": pl.Int64, "supervised": pl.Int64})


def profile_shards(shards: dict[str, list[Path]]) -> dict:
    ex = shard_examples(shards)
    out: dict[str, Any] = {"files": {k: len(v) for k, v in shards.items()}, "examples": ex.height,
                           "tokens": int(ex["tokens"].sum()), "supervised_tokens": int(ex["supervised"].sum())}
    out["by_split"] = counts(ex, "split")
    out["by_task"] = {}
    for task, n, tok, sup in ex.group_by("task").agg(pl.len(), pl.col("tokens").sum(), pl.col("supervised").sum()) \
            .sort("task", nulls_last=True).iter_rows():
        out["by_task"][str(task)] = {"examples": int(n), "tokens": int(tok), "supervised_tokens": int(sup)}
    out["by_source"] = counts(ex, "source")
    out["tokens_per_example"] = percentiles(ex["tokens"])
    out["supervised_per_example"] = percentiles(ex["supervised"])
    return out


def shard_samples(shards: dict[str, list[Path]], tokenizer, n: int) -> list[dict]:
    """Decode the first n examples of the first split, cut into supervised and
    unsupervised segments by the label mask."""
    if tokenizer is None or n <= 0 or not shards:
        return []
    split = "train" if "train" in shards else next(iter(shards))
    t = read_shard_table(shards[split][:1]).head(n)
    out = []
    for row in t.iter_rows(named=True):
        ids, labels = np.asarray(row["input_ids"]), np.asarray(row["labels"])
        lens = row.get("seq_lens") or [len(ids)]
        ex_ids = row.get("ids") or [row.get("id")] * len(lens)
        tasks = row.get("tasks") or [row.get("task")] * len(lens)
        start = 0
        for k, ln in enumerate(lens):
            seg_ids, seg_sup = ids[start:start + ln], labels[start:start + ln] != IGNORE
            start += ln
            out.append({"id": ex_ids[k], "task": tasks[k], "tokens": int(ln), "supervised_tokens": int(seg_sup.sum()),
                        "segments": mask_segments(seg_ids, seg_sup, tokenizer)})
            if len(out) >= n:
                return out
    return out


def mask_segments(ids: np.ndarray, sup: np.ndarray, tokenizer) -> list[dict]:
    cuts = np.flatnonzero(np.diff(sup.astype(np.int8))) + 1
    segs = []
    for part, s in zip(np.split(ids, cuts), np.split(sup, cuts)):
        if len(part):
            segs.append({"text": tokenizer.decode(part.tolist(), skip_special_tokens=False), "supervised": bool(s[0])})
    return segs


def record_samples(df: pl.DataFrame, n: int) -> list[dict]:
    """Conversations as segments, assistant turns marked as what training would
    supervise by default (`train_on = "assistant"`)."""
    out = []
    for row in strided(df, n).head(n).select("id", "source", "task", "messages").iter_rows(named=True):
        segs = []
        for m in row["messages"] or []:
            segs.append({"text": f"<{m['role']}> ", "supervised": False})
            segs.append({"text": (m["content"] or "") + "\n", "supervised": m["role"] == "assistant"})
        out.append({"id": row["id"], "source": row["source"], "task": row["task"], "segments": segs})
    return out


# ------------------------------------------------------------------ runs
def funnel_steps(manifest: dict | None, stages: list[dict]) -> list[dict]:
    """The ledger as steps: read -> parsed -> each stage -> rendered."""
    if not manifest:
        return [{"name": s["name"], "rows": s.get("rows_out") or 0, "dropped": s.get("dropped") or {}} for s in stages]
    led = manifest.get("ledger", {})
    q = int(led.get("quarantined", 0))
    steps = [{"name": "read", "rows": int(led.get("read", 0))},
             {"name": "parsed", "rows": int(led.get("read", 0)) - q, "dropped": {"quarantined": q} if q else {}}]
    for s in stages:
        step = {"name": s["name"], "kind": s.get("kind"), "rows": int(s.get("rows_out") or 0),
                "dropped": dict(s.get("dropped") or {})}
        st = s.get("stats") or {}
        if s.get("upsampled"):
            step["note"] = f"+{s['upsampled']:,} upsampled copies"
        elif st.get("rows_redacted"):
            found = ", ".join(f"{k} {v:,}" for k, v in sorted((st.get("found") or {}).items(), key=lambda kv: -kv[1]) if v)
            step["note"] = f"redacted {st['rows_redacted']:,} rows" + (f" ({found})" if found else "")
        elif not step["dropped"] and st.get("hits"):  # action = "flag": kept, but marked
            step["note"] = "flagged: " + ", ".join(f"{k} {v:,}" for k, v in sorted(st["hits"].items(), key=lambda kv: -kv[1]))
        steps.append(step)
    render = manifest.get("render")
    if render is not None:
        n = (render.get("stats") or {}).get("examples")
        if n is None:
            n = sum(v.get("examples", 0) for v in (manifest.get("tokens") or {}).get("by_task", {}).values())
        steps.append({"name": "rendered", "kind": "render", "rows": int(n), "dropped": dict(render.get("dropped") or {})})
    return steps


def profile_run(run_dir: Path, samples: int = 0, tokenizer=None, stage: str | None = None) -> dict:
    manifest = load_manifest(run_dir)
    stages = stage_list(run_dir, manifest)
    tokenizer = tokenizer or run_tokenizer(run_dir, manifest)
    out: dict[str, Any] = {"kind": "run", "path": str(run_dir), "ledger": (manifest or {}).get("ledger"),
                           "funnel": funnel_steps(manifest, stages)}
    tables = stage_data(run_dir, manifest)
    if stage is not None:
        tables = [t for t in tables if t[0] == stage]
        if not tables:
            raise ValueError(f"no stage output named {stage!r} in {run_dir}")
    if tables:
        name, path = tables[-1]
        df = read_dataset(path)
        out["table"] = {"stage": name, "path": str(path.relative_to(run_dir)),
                        **profile_table(df, tokenizer, run_score_columns(stages), stages)}
    shards = shard_files(run_dir / "shards")
    if shards:
        out["shards"] = profile_shards(shards)
    if samples:
        rendered = (((manifest or {}).get("render") or {}).get("stats") or {}).get("samples") or []
        if rendered and stage is None:
            out["samples"] = rendered[:samples]
        elif shards and tokenizer is not None and stage is None:
            out["samples"] = shard_samples(shards, tokenizer, samples)
        elif tables:
            out["samples"] = record_samples(read_dataset(tables[-1][1]), samples)
    return out


def profile_path(path: str | Path, samples: int = 0, tokenizer_path: str | None = None, fmt: str = "auto",
                 stage: str | None = None) -> dict:
    """Profile whatever `path` is: a run directory, a shard folder or a data file."""
    path = Path(path)
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else None
    if tokenizer_path and tokenizer is None:
        raise ValueError(f"no tokenizer.json at {tokenizer_path}")
    if is_run_dir(path):
        return profile_run(path, samples, tokenizer, stage)
    if path.is_dir() and shard_files(path):
        shards = shard_files(path)
        if tokenizer is None:  # RUN/shards: the run's tokenizer
            for parent in (path.parent, path.parent.parent):
                if is_run_dir(parent):
                    tokenizer = run_tokenizer(parent, load_manifest(parent))
                    break
        out = {"kind": "shards", "path": str(path), "shards": profile_shards(shards)}
        if samples:
            out["samples"] = shard_samples(shards, tokenizer, samples)
            if tokenizer is None:
                out["note"] = "no tokenizer found: pass --tokenizer to decode samples"
        return out
    if path.is_file() or path.is_dir():
        from curate.read.sources import SourceConfig
        from curate.read.readers import read_source

        src = SourceConfig(name=path.stem.split(".")[0] or "data", path=str(path.resolve()), format=fmt)
        read = read_source(src, path.resolve().parent)
        out = {"kind": "data", "path": str(path), "format": read.format, "read": read.read,
               "quarantined": len(read.quarantine), "quarantine_sample": read.quarantine[:5],
               "table": profile_table(read.table, tokenizer)}
        if samples:
            out["samples"] = record_samples(read.table, samples)
        return out
    raise FileNotFoundError(f"nothing at {path}")


# ------------------------------------------------------------------ printing
def _pct_line(p: dict, unit: str = "") -> str:
    if not p or not p.get("n"):
        return "-"
    return (f"p5 {p['p5']}  p50 {p['p50']}  p95 {p['p95']}  max {p['max']}  mean {p['mean']}" + (f" {unit}" if unit else ""))


def format_text(prof: dict) -> list[tuple[str, str]]:
    """The profile as (style, line) pairs; style names a rich style or "" (plain)."""
    L: list[tuple[str, str]] = []
    add = L.append
    add(("bold", f"{prof['kind']}: {prof['path']}"))
    if prof.get("kind") == "data":
        add(("", f"format {prof['format']}; read {prof['read']:,}; quarantined {prof['quarantined']:,}"))
        for q in prof.get("quarantine_sample", []):
            add(("red", f"  quarantined {q.get('file')}:{q.get('line')} {q.get('field') or ''}: {q.get('error')}"))
    if prof.get("ledger"):
        led = prof["ledger"]
        add(("", f"ledger: read {led['read']:,} = kept {led['kept']:,} + quarantined {led['quarantined']:,} + "
                 f"dropped {sum(sum(r.values()) for r in led['dropped'].values()):,}"
                 + ("" if led.get("reconciles", True) else "  (DOES NOT RECONCILE)")))
    if prof.get("funnel"):
        add(("bold", "funnel"))
        for s in prof["funnel"]:
            drops = ", ".join(f"{r} {n:,}" for r, n in sorted(s.get("dropped", {}).items(), key=lambda kv: -kv[1]))
            add(("", f"  {s['name']:<22} {s['rows']:>10,}" + (f"   -{sum(s['dropped'].values()):,} ({drops})" if drops else "")
                 + (f"   {s['note']}" if s.get("note") else "")))
    t = prof.get("table")
    if t:
        add(("bold", f"records{' after ' + t['stage'] if t.get('stage') else ''}: {t['rows']:,}"))
        for key in ("by_source", "by_task"):
            if t.get(key):
                add(("", f"  {key[3:]}: " + ", ".join(f"{k} {v:,}" for k, v in t[key].items())))
        for role, d in t.get("lengths", {}).items():
            add(("", f"  {role:<10} chars  {_pct_line(d['chars'])}"))
            if "tokens" in d:
                add(("", f"  {'':<10} tokens {_pct_line(d['tokens'])}" + ("  (sampled)" if t.get("tokens_sampled") else "")))
        for col, cnt in (t.get("languages") or {}).items():
            add(("", f"  language ({col}): " + ", ".join(f"{k} {v:,}" for k, v in cnt.items())))
        for col, p in t.get("scores", {}).items():
            add(("", f"  score {col}: {_pct_line(p)}"))
    sh = prof.get("shards")
    if sh:
        add(("bold", f"shards: {sh['examples']:,} examples, {sh['tokens']:,} tokens, "
                     f"{sh['supervised_tokens']:,} supervised ({', '.join(f'{k} {v:,}' for k, v in sh['by_split'].items())})"))
        for task, d in sh["by_task"].items():
            add(("", f"  {task:<20} {d['examples']:>8,} examples {d['tokens']:>10,} tokens {d['supervised_tokens']:>10,} supervised"))
        add(("", f"  tokens/example     {_pct_line(sh['tokens_per_example'])}"))
        add(("", f"  supervised/example {_pct_line(sh['supervised_per_example'])}"))
    if prof.get("note"):
        add(("yellow", prof["note"]))
    return L


def print_profile(prof: dict, console=None, plain: bool | None = None) -> None:
    """Print to a terminal with rich (supervised text highlighted), else plain text
    with supervised spans in [[double brackets]]."""
    import sys

    if plain is None:
        plain = not sys.stdout.isatty()
    if plain:
        for _, line in format_text(prof):
            print(line)
        for i, s in enumerate(prof.get("samples") or []):
            print(f"--- sample {i + 1}: {s.get('task')} {s.get('id')}  ([[...]] = supervised)")
            print("".join(f"[[{g['text']}]]" if g["supervised"] else g["text"] for g in s.get("segments", [])))
        return
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    for style, line in format_text(prof):
        console.print(Text(line, style=style or ""))
    for i, s in enumerate(prof.get("samples") or []):
        console.rule(Text(f"sample {i + 1}: {s.get('task')} {s.get('id')}  (green = supervised)"))
        text = Text()
        for g in s.get("segments", []):
            text.append(g["text"], style="bold green on grey11" if g["supervised"] else "dim")
        console.print(text)
