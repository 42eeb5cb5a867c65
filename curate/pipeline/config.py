"""`pipeline.toml` parsed into typed config. Everything is checked before any work starts:
unknown keys, wrong types, unknown stage kinds, missing input files; each error names
the key and, where it can, the line.

    [run]        output_dir, seed, executor
    [[sources]]  name, path, format, task | task_field, ...
    [[stages]]   kind = "...", plus that kind's own keys (see curate/stages/)
    [render]     template, tokenizer, max_length, pack, val_fraction, ...
    [export]     shape, formats, dir: the curated conversations as JSONL/Parquet/datasets
    [train]      validated by the trainer (train/config.py), kept here as a table
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Literal

from curate.read.sources import SourceConfig, source_files
from curate.render.config import RenderConfig
from curate.render.export import ExportConfig
from curate.stages import STAGE_MODULES, stage_class
from curate.contract.typed_config import ConfigError, load_dataclass, locate_line

@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    # rows per part of every stage's output (RUN/stages/NN-name/part-*.parquet): row-local
    # stages run part by part, each finished part kept for resume inside the stage; unset:
    # derived from memory_budget; the shards, rejects and ledger do not depend on it
    part_rows: int | None = None
    # memory the parts are sized to: bytes or a size like "4GiB"; unset: half this machine's RAM
    memory_budget: int | str | None = None

    def validate(self) -> None:
        if self.part_rows is not None and self.part_rows < 1:
            raise ConfigError("part_rows", f"must be >= 1, got {self.part_rows}")
        if self.memory_budget is not None:
            from curate.pipeline.memory import parse_size

            try:
                parse_size(self.memory_budget)
            except ValueError as exc:
                raise ConfigError("memory_budget", str(exc)) from None


@dataclass
class PipelineConfig:
    path: Path  # the toml file
    run: RunConfig
    sources: list[SourceConfig]
    stages: list[Any]  # each a stage module's Config dataclass
    render: RenderConfig | None
    train: dict | None
    raw: dict  # the parsed toml, as written
    export: ExportConfig | None = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def output_dir(self, override: str | Path | None = None) -> Path:
        return Path(override) if override else self.resolve(self.run.output_dir)

    def resolved(self) -> dict:
        """The resolved config as plain data (defaults filled in), for the manifest."""
        def plain(x):
            return asdict(x) if is_dataclass(x) else x

        out = {
            "run": plain(self.run),
            "sources": [plain(s) for s in self.sources],
            "stages": [plain(s) for s in self.stages],
            "render": plain(self.render) if self.render else None,
            "train": self.train,
        }
        if self.export is not None:  # only when present, so configs without it keep their hash
            out["export"] = plain(self.export)
        return out

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True, default=str).encode()).hexdigest()


TOP_LEVEL = {"run", "sources", "stages", "render", "export", "train"}


def parse_config(data: dict, path: Path, text: str = "", check_files: bool = True) -> PipelineConfig:
    def fail(exc: ConfigError):
        exc.file = str(path)
        if exc.line is None and text:
            exc.line = locate_line(text, exc.key)
        exc.args = (exc.message(),)
        raise exc

    try:
        for k in data:
            if k not in TOP_LEVEL:
                raise ConfigError(k, f"unknown top-level key (known: {', '.join(sorted(TOP_LEVEL))})")
        run = load_dataclass(RunConfig, data.get("run", {}), "run")
        raw_sources = data.get("sources", [])
        if not isinstance(raw_sources, list) or not raw_sources:
            raise ConfigError("sources", "at least one [[sources]] table is required")
        sources = [load_dataclass(SourceConfig, s, f"sources[{i}]") for i, s in enumerate(raw_sources)]
        names = [s.name for s in sources]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise ConfigError(f"sources[{i}].name", f"duplicate source name {n!r}")
        stages = []
        for i, s in enumerate(data.get("stages", [])):
            key = f"stages[{i}]"
            if not isinstance(s, dict) or "kind" not in s:
                raise ConfigError(f"{key}.kind", "every [[stages]] table needs a `kind`")
            kind = s["kind"]
            if kind not in STAGE_MODULES:
                raise ConfigError(f"{key}.kind", f"unknown stage kind {kind!r} (known: {', '.join(STAGE_MODULES)})")
            try:
                cls = stage_class(kind)
            except ImportError as exc:
                raise ConfigError(f"{key}.kind", f"stage kind {kind!r} is not available in this build: {exc}")
            stages.append(load_dataclass(cls.Config, s, key))
        stage_names = [getattr(s, "name", None) or s.kind for s in stages]
        for i, n in enumerate(stage_names):
            if stage_names.index(n) != i:
                raise ConfigError(f"stages[{i}].name", f"two stages are both named {n!r}: give one a `name`")
        from curate.pipeline.checks import check_columns

        check_columns(stages)
        render = load_dataclass(RenderConfig, data["render"], "render") if "render" in data else None
        export = load_dataclass(ExportConfig, data["export"], "export") if "export" in data else None
        train = data.get("train")
        if train is not None and not isinstance(train, dict):
            raise ConfigError("train", "must be a table")
        cfg = PipelineConfig(path=path, run=run, sources=sources, stages=stages, render=render, train=train, raw=data,
                             export=export)
        if check_files:
            for i, s in enumerate(sources):
                try:
                    found = source_files(s, cfg.base_dir)
                except ConfigError as exc:  # a hub dataset not cached, a split missing or ambiguous
                    raise ConfigError(f"sources[{i}].{exc.key}", exc.reason)
                if not found:
                    where = s.path if s.path.startswith("hf://") else cfg.resolve(s.path)
                    raise ConfigError(f"sources[{i}].path", f"no input file at {where}")
            from curate.pipeline.rundir import RunDirError, check_output_dir

            try:
                check_output_dir(cfg.output_dir(), pipeline_inputs(cfg), source_roots(cfg))
            except RunDirError as exc:
                raise ConfigError("run.output_dir", str(exc))
            for i, st in enumerate(stages):
                check = getattr(st, "check_paths", None)
                if check is not None:
                    try:
                        check(cfg.base_dir)
                    except ConfigError as exc:
                        if not exc.key.startswith("stages["):
                            exc.key = f"stages[{i}].{exc.key}"
                        raise
            if render is not None:
                from curate.render.renderer import check_config

                check_config(render, cfg.base_dir)
        return cfg
    except ConfigError as exc:
        fail(exc)


def source_roots(cfg: PipelineConfig) -> list[Path]:
    """The folders that directory and glob sources list files from (the part of a glob
    before its first wildcard)."""
    roots = []
    for s in cfg.sources:
        if any(ch in s.path for ch in "*?["):
            parts = []
            for part in Path(s.path).parts:
                if any(ch in part for ch in "*?["):
                    break
                parts.append(part)
            roots.append(cfg.resolve(Path(*parts)) if parts else cfg.base_dir)
        elif cfg.resolve(s.path).is_dir():
            roots.append(cfg.resolve(s.path))
    return roots


def pipeline_inputs(cfg: PipelineConfig) -> list[Path]:
    """Every file the pipeline reads: source files and the files stage and render configs
    name (eval sets, models, tokenizers, templates, ...)."""
    from curate.pipeline.fingerprint import config_files

    files = [f for s in cfg.sources for f in source_files(s, cfg.base_dir)]
    for st in [*cfg.stages, cfg.render]:
        files.extend(config_files(st, cfg.base_dir))
    return files


def load_config(path: str | Path, check_files: bool = True) -> PipelineConfig:
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError("<file>", f"no config file at {path}", file=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<toml>", f"not valid TOML: {exc}", file=str(path))
    return parse_config(data, path, text, check_files=check_files)
