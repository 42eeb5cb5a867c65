"""`[[sources]]`: where raw data comes from and in which format. The readers
(curate/read/readers.py) turn a source into canonical records.

A source `path` is one of:
  a file                 read whatever its name (`file_type` or its extension says how)
  a directory            its data files, recursively, sorted (the rule below)
  a glob                 `raw/*.jsonl`, `data/**/*.parquet`; `**` never follows a symlink
                         loop (a directory already visited, by device and inode, is skipped)
  hf://datasets/ORG/NAME[/CONFIG][@REVISION]
                         a dataset in the local Hugging Face hub cache, resolved offline:
                         `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub,
                         laid out as huggingface_hub lays it (`datasets--ORG--NAME/refs/<rev>`
                         holds the commit, `snapshots/<commit>/...` the files)

The directory rule: a file is data when its extension names a file type (.jsonl .ndjson
.json .parquet .pq .csv .arrow .feather .ipc, optionally .gz/.zst); hidden files, the
metadata files `datasets` and the hub write (dataset_info.json, state.json,
dataset_dict.json, README.md, .gitattributes) and files of unknown type (README.md,
LICENSE, *.txt) are skipped, each with a log line, never read as records. With `file_type`
set, every file but hidden and metadata ones is read as that type.

Splits: a `datasets.DatasetDict.save_to_disk` folder (dataset_dict.json) is read at its
`split` sub-folder; a folder of split-named files as the hub stores them
(`data/train-00000-of-00002.parquet`, `test.jsonl`, `train/0000.parquet`) is narrowed to
the files of `split`. With files of several splits and no `split`, the config is refused
(reading test data into a training set is never a safe default).
"""
from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from curate.contract.typed_config import ConfigError

FORMATS = ("auto", "alpaca", "sharegpt", "messages", "dolly", "prompt_completion", "task")
FILE_TYPE_NAMES = ("jsonl", "json", "parquet", "csv", "arrow")
COMPRESSIONS = (".gz", ".zst", ".zstd")
FILE_TYPES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
}
# Files `datasets.save_to_disk`, the hub and git put beside the data: never records.
METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json", "readme.md", ".gitattributes",
                  "dataset_infos.json"}
KNOWN_SPLITS = ("train", "validation", "valid", "dev", "test", "eval")
HF_PREFIX = "hf://"
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024


@dataclass
class SourceConfig:
    name: str
    path: str  # a file, a directory, a glob, or hf://datasets/ORG/NAME[/CONFIG][@REVISION]
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
    # which split of a DatasetDict folder, a hub dataset or a folder of split-named files (e.g. "train")
    split: str | None = None
    # longest record (a JSONL/CSV line, a JSON item) in bytes; longer ones are quarantined unparsed
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    # records you trust, used to measure every scorer's AUC (a `trusted` column); held out of the shards
    trusted: bool = False
    # trusted = true: the record field holding its label (true/false or 1/0); unset = every record is good
    trusted_label: str | None = None
    trusted_train: bool = False  # trusted = true: also train on these records (default: validation only)

    def validate(self) -> None:
        if (self.trusted_label is not None or self.trusted_train) and not self.trusted:
            raise ConfigError("trusted_label" if self.trusted_label is not None else "trusted_train",
                              "only meaningful with trusted = true")
        if self.trusted_label is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.trusted_label):
            raise ConfigError("trusted_label", f"not a plain field name: {self.trusted_label!r}")
        if self.task and self.task_field:
            raise ConfigError("task_field", "give either `task` or `task_field`, not both")
        if self.file_type is not None and self.file_type not in FILE_TYPE_NAMES:
            raise ConfigError("file_type", f"must be one of jsonl, json, parquet, csv, arrow; got {self.file_type!r}")
        if self.format == "task" and not self.task_template:
            raise ConfigError("task_template", "required when format = \"task\"")
        if not isinstance(self.max_record_bytes, int) or self.max_record_bytes < 1024:
            raise ConfigError("max_record_bytes", f"must be an integer >= 1024, got {self.max_record_bytes!r}")
        if self.split is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.split):
            raise ConfigError("split", f"not a split name: {self.split!r}")


def file_type_of(path: Path) -> str | None:
    """The file type an extension names (compression suffixes ignored), or None."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return FILE_TYPES.get(suffixes[-1]) if suffixes else None


# ---------------------------------------------------------------- walking


def walk_files(root: Path) -> list[Path]:
    """Every file under `root`, recursively, sorted; symlinked directories are followed
    once: a directory already visited (same device and inode) is not entered again, so a
    symlink loop ends instead of recursing forever."""
    seen: set[tuple[int, int]] = set()
    out: list[Path] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            p = Path(e.path)
            try:
                if e.is_dir():
                    stack.append(p)
                elif e.is_file():
                    out.append(p)
            except OSError:
                continue
    return sorted(out)


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob (with `**` for any depth) as a regex over '/'-separated relative paths."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append(r"(?:[^/]*/)*")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(r".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^/]*")
        elif c == "?":
            out.append(r"[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def glob_files(pattern: Path) -> list[Path]:
    """Files matching a glob. Without `**`, the standard glob (it cannot recurse); with it,
    `walk_files` from the longest wildcard-free prefix, so symlink loops end."""
    text = str(pattern)
    if "**" not in text:
        return sorted(Path(x) for x in glob.glob(text) if Path(x).is_file())
    parts = pattern.parts
    cut = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    root = Path(*parts[:cut]) if cut else Path(".")
    rx = _glob_regex("/".join(parts[cut:]))
    return [f for f in walk_files(root) if rx.match(f.relative_to(root).as_posix())]


# ---------------------------------------------------------------- splits and the hub


def _split_of(rel: Path) -> str | None:
    """The split a file belongs to by its name as the hub lays files out, or None:
    `train-00000-of-00002.parquet`, `train.jsonl`, `train_0.jsonl`, `train/0000.parquet`."""
    for part in rel.parts[:-1]:
        if part.lower() in KNOWN_SPLITS:
            return part.lower()
    stem = rel.name.split(".")[0].lower()
    m = re.match(r"([a-z]+)(?:[-_].*)?$", stem)
    return m.group(1) if m and m.group(1) in KNOWN_SPLITS else None


def _in_split(rel: Path, split: str) -> bool:
    s = split.lower()
    if any(part.lower() == s for part in rel.parts[:-1]):
        return True
    stem = rel.name.split(".")[0].lower()
    return stem == s or stem.startswith((s + "-", s + "_"))


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def resolve_hf(path: str) -> Path:
    """`hf://datasets/ORG/NAME[/CONFIG][@REVISION]` -> the folder of its files in the local
    hub cache (a snapshot, or its CONFIG sub-folder). Offline only: nothing is downloaded;
    what is missing is named in the error."""
    rest = path[len(HF_PREFIX):]
    m = re.fullmatch(r"datasets/([^/@]+)/([^/@]+)(?:/([^@]+?))?/?(?:@(.+))?", rest)
    if not m:
        raise ConfigError("path", f"{path!r}: expected hf://datasets/ORG/NAME[/CONFIG][@REVISION]")
    org, name, config, revision = m.groups()
    revision = revision or "main"
    cache = hf_cache_dir()
    repo = cache / f"datasets--{org}--{name}"
    if not repo.is_dir():
        raise ConfigError("path", f"{path}: dataset {org}/{name} is not in the local hub cache ({repo} missing); "
                                  f"download it first (e.g. `huggingface-cli download --repo-type dataset {org}/{name}`) "
                                  f"or set HF_HUB_CACHE / HF_HOME")
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    else:
        ref = repo / "refs" / revision
        if not ref.is_file():
            raise ConfigError("path", f"{path}: revision {revision!r} is not in the cache ({ref} missing)")
        commit = ref.read_text().strip()
    snap = repo / "snapshots" / commit
    if not snap.is_dir():
        raise ConfigError("path", f"{path}: snapshot {commit} is not in the cache ({snap} missing)")
    if config:
        sub = snap / config
        if not sub.is_dir():
            have = sorted(p.name for p in snap.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise ConfigError("path", f"{path}: config {config!r} not in snapshot {commit[:12]} "
                                      f"(folders there: {', '.join(have) or 'none'})")
        return sub
    return snap


def local_path(cfg: SourceConfig, base: Path) -> Path:
    if cfg.path.startswith(HF_PREFIX):
        return resolve_hf(cfg.path)
    p = Path(cfg.path).expanduser()
    return p if p.is_absolute() else base / p


# ---------------------------------------------------------------- the files of a source


def is_metadata(path: Path) -> bool:
    return path.name.lower() in METADATA_FILES


def source_files(cfg: SourceConfig, base: Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """The data files of a source (the module docstring's rules), sorted. Raises
    ConfigError for a hub path that is not cached or an ambiguous/missing split."""
    p = local_path(cfg, base)
    split_done = False
    is_glob = not cfg.path.startswith(HF_PREFIX) and any(ch in cfg.path for ch in "*?[")
    if not is_glob and p.is_file():
        return [p]
    if is_glob:
        found, root = glob_files(p), None
    elif p.is_dir():
        if (p / "dataset_dict.json").is_file():
            splits = _dataset_dict_splits(p)
            if cfg.split is None:
                raise ConfigError("split", f"{p} is a DatasetDict with splits {', '.join(splits)}: set `split`")
            if cfg.split not in splits:
                raise ConfigError("split", f"{p} has no split {cfg.split!r} (splits: {', '.join(splits)})")
            p = p / cfg.split
            split_done = True
        found, root = walk_files(p), p
    else:
        return []
    files = []
    for f in found:
        rel = f.relative_to(root) if root is not None else Path(f.name)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if is_metadata(f):
            if log:
                log(f"source {cfg.name!r}: skipped {f.name} (dataset metadata, not records)")
            continue
        if cfg.file_type is None and file_type_of(f) is None:
            if log:
                log(f"source {cfg.name!r}: skipped {f} (not a data file type; set `file_type` to read it)")
            continue
        files.append(f)
    if root is not None and (p / "state.json").is_file():
        files = _state_order(p, files)
    if root is not None and not split_done:
        files = _pick_split(cfg, p, files)
    return files


def _dataset_dict_splits(p: Path) -> list[str]:
    try:
        splits = json.loads((p / "dataset_dict.json").read_text()).get("splits")
    except (OSError, ValueError, AttributeError):
        splits = None
    if not isinstance(splits, list):
        splits = sorted(d.name for d in p.iterdir() if d.is_dir())
    return [str(s) for s in splits]


def _state_order(p: Path, files: list[Path]) -> list[Path]:
    """A save_to_disk folder lists its Arrow files in state.json; keep that order."""
    try:
        listed = [p / d["filename"] for d in json.loads((p / "state.json").read_text()).get("_data_files", [])]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return files
    rest = [f for f in files if f not in listed]
    return [f for f in listed if f in files] + rest


def _pick_split(cfg: SourceConfig, p: Path, files: list[Path]) -> list[Path]:
    if cfg.split is not None:
        picked = [f for f in files if _in_split(f.relative_to(p), cfg.split)]
        if not picked and files:
            have = sorted({s for f in files if (s := _split_of(f.relative_to(p)))})
            raise ConfigError("split", f"no files of split {cfg.split!r} under {p} "
                                       f"(splits found: {', '.join(have) or 'none'})")
        return picked
    splits = {_split_of(f.relative_to(p)) for f in files}
    named = sorted(s for s in splits if s)
    if len(named) > 1:
        raise ConfigError("split", f"{p} holds files of splits {', '.join(named)}: set `split` (e.g. \"train\")")
    return files
