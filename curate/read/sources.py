"""`[[sources]]`: where raw data comes from (a file, a directory or a glob) and in which
format. The readers (curate/read/readers.py) turn a source into canonical records."""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from curate.contract.typed_config import ConfigError

FORMATS = ("auto", "alpaca", "sharegpt", "messages", "dolly", "prompt_completion", "task")



@dataclass
class SourceConfig:
    name: str
    path: str
    format: Literal["auto", "alpaca", "sharegpt", "messages", "dolly", "prompt_completion", "task"] = "auto"
    task: str | None = None
    task_field: str | None = None
    # file type override (else from the extension): jsonl | json | parquet | csv | arrow
    file_type: str | None = None
    # format = "task": raw task data rendered through templates/tasks/<task_template>
    task_template: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    system: str | None = None  # a system prompt to prepend to every record of this source
    license: str | None = None  # the data's licence as you declare it (e.g. "cc-by-sa-3.0"), for the export's dataset card

    def validate(self) -> None:
        if self.task and self.task_field:
            raise ConfigError("task_field", "give either `task` or `task_field`, not both")
        if self.file_type is not None and self.file_type not in ("jsonl", "json", "parquet", "csv", "arrow"):
            raise ConfigError("file_type", f"must be one of jsonl, json, parquet, csv, arrow; got {self.file_type!r}")
        if self.format == "task" and not self.task_template:
            raise ConfigError("task_template", "required when format = \"task\"")



def source_files(cfg: SourceConfig, base: Path) -> list[Path]:
    """A source path is a file, a directory (its files, sorted) or a glob."""
    p = Path(cfg.path).expanduser()
    p = p if p.is_absolute() else base / p
    if any(ch in cfg.path for ch in "*?["):
        files = sorted(Path(x) for x in glob.glob(str(p), recursive=True) if Path(x).is_file())
    elif p.is_dir():
        files = sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith("."))
    elif p.is_file():
        files = [p]
    else:
        files = []
    return files
