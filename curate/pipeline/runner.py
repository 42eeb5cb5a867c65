"""The pipeline runner: read -> [[stages]] -> render -> shards -> manifest.

The runner, not the stages, owns the bookkeeping:
  - the ledger (read = kept + quarantined + dropped, checked stage by stage),
  - rejects (`RUN/rejects/NN-name.parquet`) and quarantine (`RUN/quarantine.jsonl`),
  - resume: each finished stage leaves `RUN/stages/NN-name/{data.parquet,done.json}`; the
    `done.json` holds a fingerprint chained from the inputs' bytes and every config up to
    that stage, so a rerun reuses exactly the stages whose inputs and config are unchanged,
  - atomic writes, so a run killed anywhere resumes to the same bytes.
Timings go to `RUN/timings.json`, not the manifest, so the manifest is as deterministic as
the shards are.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate import __version__
from curate.contract.atomic import sha256_file, write_json, write_parquet, write_text
from curate.pipeline.config import PipelineConfig
from curate.read.sources import source_files
from curate.pipeline.executor import Executor, make_executor
from curate.contract.ledger import Ledger, reason_counts, write_rejects
from curate.contract.progress import Progress
from curate.read.readers import read_source
from curate.contract.schema import empty_records
from curate.stages import stage_class
from curate.stages.base import StageContext

READ_DIR = "00-read"


class LedgerError(RuntimeError):
    """A stage lost or invented rows: an internal bug, never a data problem."""


def _plain(obj: Any) -> Any:
    return asdict(obj) if is_dataclass(obj) else obj


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def input_fingerprint(cfg: PipelineConfig) -> str:
    """Hash of every input file's bytes plus the source configs and seed."""
    files = []
    for s in cfg.sources:
        for f in source_files(s, cfg.base_dir):
            files.append([s.name, f.name, f.stat().st_size, sha256_file(f)])
    return _hash("curate", __version__, [_plain(s) for s in cfg.sources], cfg.run.seed, files)


def _done(stage_dir: Path, fingerprint: str) -> dict | None:
    done = stage_dir / "done.json"
    if not (done.is_file() and (stage_dir / "data.parquet").is_file()):
        return None
    info = json.loads(done.read_text())
    return info if info.get("fingerprint") == fingerprint else None


def versions() -> dict:
    out = {"python": platform.python_version(), "curate": __version__}
    for mod in ("polars", "pyarrow", "numpy", "datasketch", "tokenizers", "transformers", "jinja2", "torch"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:  # noqa: BLE001 - a missing optional module is just not listed
                continue
        out[mod] = getattr(m, "__version__", "?")
    return out


def _clean_stale(out: Path, keep_stage_dirs: set[str]) -> None:
    """Remove stage outputs and rejects from an earlier, different pipeline."""
    stages = out / "stages"
    if stages.is_dir():
        for d in stages.iterdir():
            if d.is_dir() and d.name not in keep_stage_dirs:
                shutil.rmtree(d)
    rejects = out / "rejects"
    if rejects.is_dir():
        for f in rejects.iterdir():
            if f.suffix == ".parquet" and f.stem not in keep_stage_dirs and f.stem != "render":
                f.unlink()


def limited_output_dir(cfg: PipelineConfig, limit: int) -> Path:
    """Where `--limit N` runs go: beside the full run, never into it."""
    base = cfg.output_dir()
    return base.with_name(f"{base.name}-limit-{limit}")


def run_pipeline(cfg: PipelineConfig, out_dir: str | Path | None = None, fresh: bool = False,
                 progress: Progress | None = None, executor: Executor | None = None,
                 limit: int | None = None) -> dict:
    """Run the curation pipeline of `cfg`; returns the manifest (also written to disk).
    `limit`: a seeded sample of that many records per source (curate.read.limit), run into
    `limited_output_dir` unless out_dir is given."""
    progress = progress or Progress(enabled=False)
    if limit is not None and out_dir is None:
        out_dir = limited_output_dir(cfg, limit)
    own_executor = executor is None
    executor = executor or make_executor(cfg.run)
    try:
        return _run(cfg, out_dir, fresh, progress, executor, limit)
    finally:
        if own_executor:
            executor.close()


def _run(cfg: PipelineConfig, out_dir, fresh: bool, progress: Progress, executor: Executor,
         limit: int | None = None) -> dict:
    out = cfg.output_dir(out_dir).resolve()
    if fresh and out.exists():
        for sub in ("stages", "rejects", "shards", "quarantine.jsonl", "manifest.json", "report.html", "timings.json"):
            p = out / sub
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    stage_names = [getattr(s, "name", None) or s.kind for s in cfg.stages]
    stage_dirs = [f"{i:02d}-{n}" for i, n in enumerate(stage_names, start=1)]
    _clean_stale(out, {READ_DIR, *stage_dirs})
    timings: dict[str, float] = {}
    ledger = Ledger()

    # ---- read
    fingerprint = input_fingerprint(cfg)
    if limit is not None:
        fingerprint = _hash(fingerprint, "limit", limit)
    read_dir = out / "stages" / READ_DIR
    info = _done(read_dir, fingerprint)
    t0 = time.perf_counter()
    if info is not None:
        table = pl.read_parquet(read_dir / "data.parquet")
        progress.log(f"[read] resumed: {table.height:,} records from {read_dir}")
    else:
        with progress.stage("read", total=len(cfg.sources)) as done:
            reads = [read_source(s, cfg.base_dir, progress.log) for s in cfg.sources]
            totals = [r.table.height for r in reads]
            if limit is not None:  # --limit: a seeded sample per source (curate.read.limit)
                from curate.read.limit import sample_records

                for r in reads:
                    r.table = sample_records(r.table, limit, cfg.run.seed)
            tables = [r.table for r in reads if r.table.height]
            table = pl.concat(tables, how="vertical") if tables else empty_records()
            quarantine = [q for r in reads for q in r.quarantine]
            write_text(out / "quarantine.jsonl",
                       "".join(json.dumps(q, ensure_ascii=False, sort_keys=True) + "\n" for q in quarantine))
            write_parquet(read_dir / "data.parquet", table)
            info = {
                "fingerprint": fingerprint,
                "rows_out": table.height,
                "quarantined": len(quarantine),
                "sources": [{"name": r.name, "format": r.format, "files": r.files, "read": r.read,
                             "records": r.table.height, "quarantined": len(r.quarantine)} for r in reads],
            }
            if limit is not None:
                info["limit"] = {"per_source": limit, "records_before": dict(zip([r.name for r in reads], totals))}
            write_json(read_dir / "done.json", info)
            done(table.height, 0, f"{len(quarantine):,} quarantined")
    timings["read"] = time.perf_counter() - t0
    ledger.read = info["rows_out"] + info["quarantined"]
    ledger.quarantined = info["quarantined"]
    source_info = info["sources"]
    info_limit = info.get("limit")
    _check_names(cfg, table, progress.log)

    # ---- stages
    stage_reports = []
    for index, (stage_cfg, name, dirname) in enumerate(zip(cfg.stages, stage_names, stage_dirs), start=1):
        fingerprint = _hash(fingerprint, stage_cfg.kind, _plain(stage_cfg), _plain(cfg.render) if _needs_render(stage_cfg) else None)
        sdir = out / "stages" / dirname
        rejects_path = out / "rejects" / f"{dirname}.parquet"
        info = _done(sdir, fingerprint)
        t0 = time.perf_counter()
        rows_in = table.height
        if info is not None and rejects_path.is_file():
            table = pl.read_parquet(sdir / "data.parquet")
            progress.log(f"[{name}] resumed: {table.height:,} rows from {sdir}")
        else:
            context = StageContext(run_dir=out, config_dir=cfg.base_dir, seed=cfg.run.seed, stage_dir=sdir,
                                   log=progress.log, render=cfg.render)
            stage = stage_class(stage_cfg.kind)(stage_cfg, context)
            with progress.stage(f"{index}/{len(cfg.stages)} {name}", total=rows_in) as done:
                result = executor.process(stage, table)
                dropped = reason_counts(result.dropped)
                upsampled = int(result.stats.get("upsampled", 0) or 0)
                if rows_in + upsampled != result.kept.height + result.dropped.height:
                    raise LedgerError(f"stage {name!r}: {rows_in} rows in, {upsampled} added by upsampling, but "
                                      f"{result.kept.height} kept + {result.dropped.height} dropped")
                write_rejects(rejects_path, name, result.dropped)
                write_parquet(sdir / "data.parquet", result.kept)
                info = {"fingerprint": fingerprint, "name": name, "kind": stage_cfg.kind, "rows_in": rows_in,
                        "rows_out": result.kept.height, "dropped": dropped, "upsampled": upsampled,
                        "stats": result.stats}
                write_json(sdir / "done.json", info)
                table = result.kept
                done(table.height, sum(dropped.values()), f"{upsampled:,} upsampled" if upsampled else "")
        timings[name] = time.perf_counter() - t0
        ledger.drop(name, info["dropped"])
        if info.get("upsampled"):
            ledger.upsampled[name] = info["upsampled"]
        stage_reports.append({
            "index": index, "name": name, "kind": stage_cfg.kind, "rows_in": info["rows_in"],
            "rows_out": info["rows_out"], "dropped": info["dropped"], "upsampled": info.get("upsampled", 0),
            "stats": info["stats"], "output": f"stages/{dirname}", "rejects": f"rejects/{dirname}.parquet",
        })

    manifest: dict[str, Any] = {
        "curate_version": __version__,
        "pipeline": str(cfg.path),  # relative paths in `config` are relative to its folder
        "config_dir": str(cfg.base_dir),
        "config": cfg.resolved(),
        "config_hash": cfg.hash(),
        "seed": cfg.run.seed,
        "versions": versions(),
        "sources": source_info,
        "stages": stage_reports,
        "quarantine": {"file": "quarantine.jsonl", "rows": ledger.quarantined},
    }
    if info_limit is not None:
        manifest["limit"] = info_limit

    # ---- render and shards
    upsampled_total = sum(ledger.upsampled.values())
    if cfg.render is not None:
        t0 = time.perf_counter()
        from curate.render.renderer import render_examples
        from curate.render.shards import token_counts, write_shards

        with progress.stage("render", total=table.height) as done:
            rendered = render_examples(table, cfg.render, cfg.base_dir, cfg.run.seed,
                                       map_blocks=getattr(executor, "render_blocks", None))
            dropped = reason_counts(rendered.dropped)
            if table.height != rendered.examples.height + rendered.dropped.height:
                raise LedgerError(f"render: {table.height} rows in, {rendered.examples.height} rendered + "
                                  f"{rendered.dropped.height} dropped")
            write_rejects(out / "rejects" / "render.parquet", "render", rendered.dropped)
            ledger.drop("render", dropped)
            done(rendered.examples.height, sum(dropped.values()))
        with progress.stage("shards", total=rendered.examples.height) as done:
            shards_dir = out / "shards"
            if shards_dir.exists():
                shutil.rmtree(shards_dir)
            shards = write_shards(rendered.examples, shards_dir, cfg.render)
            done(rendered.examples.height, 0, f"{sum(len(v) for k, v in shards.items() if k in ('train', 'val'))} files")
        manifest["render"] = {
            "template": rendered.fingerprints.get("template"),
            "template_sha256": rendered.fingerprints.get("template_sha256"),
            # the exact template (file relative to config_dir, text, date) for exporters
            "template_path": (rendered.fingerprints.get("template_source") or {}).get("path"),
            "template_text": (rendered.fingerprints.get("template_source") or {}).get("text"),
            "date": rendered.fingerprints.get("date"),
            "tokenizer": rendered.fingerprints.get("tokenizer"),
            "end_of_turn": rendered.fingerprints.get("end_of_turn"),
            "train_on": cfg.render.train_on, "max_length": cfg.render.max_length, "pack": cfg.render.pack,
            "dropped": dropped, "stats": rendered.stats,
        }
        manifest["shards"] = {k: v for k, v in shards.items() if k in ("train", "val")}
        manifest["tokens"] = token_counts(rendered.examples)
        ledger.kept = rendered.examples.height - upsampled_total
        timings["render"] = time.perf_counter() - t0
    else:
        ledger.kept = table.height - upsampled_total
    manifest["ledger"] = ledger.as_dict()
    if not ledger.reconciles():
        raise LedgerError(f"ledger does not reconcile: {manifest['ledger']}")
    if cfg.export is not None:  # the curated conversations as JSONL / Parquet / datasets (curate.render.export)
        from curate.render.export import write_export

        manifest["export"] = write_export(table, cfg, out, manifest, rendered.dropped if cfg.render else None)
    write_json(out / "manifest.json", manifest)
    write_json(out / "timings.json", {k: round(v, 3) for k, v in timings.items()})
    return manifest


def _check_names(cfg: PipelineConfig, table: pl.DataFrame, log) -> None:
    """Group names in stage configs (mix weights, select quotas) against the tasks and
    sources read, before any stage runs; a refusal names the config file."""
    from curate.contract.typed_config import ConfigError
    from curate.pipeline.checks import check_names

    names = {c: sorted(table[c].drop_nulls().unique().to_list()) for c in ("task", "source")}
    try:
        check_names(cfg.stages, names, log)
    except ConfigError as exc:
        exc.file = str(cfg.path)
        exc.args = (exc.message(),)
        raise


def _needs_render(stage_cfg: Any) -> bool:
    """Stages that count tokens depend on the render config (tokenizer) too."""
    return stage_cfg.kind in ("mix", "filter", "select")
