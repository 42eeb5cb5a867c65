"""The run directory as a guarded place: what a run may write, and what it may delete.

A run directory is either new/empty, or a curate run: it holds the marker file
`RUN/.curate-run.json` = {"project": "curate", "run_id", "created", "writes": [...]},
where `writes` lists (relative to RUN) every file or folder a run created there. Anything
else refuses to be used, so pointing `--out` at a directory with other files in it never
deletes or overwrites them. `--fresh` and the clean-up of a stage no longer in the
pipeline remove only entries listed in `writes`; a user's own file dropped into RUN stays.

Every path handed out by `RunDir.path(rel)` is checked after resolving symlinks: a
`RUN/shards` that is a symlink to somewhere else is refused, not written through.

A run directory made before the marker existed (it has `stages/00-read/done.json`) is
adopted: its standard entries (stages/, rejects/, shards/, quarantine.jsonl,
manifest.json, report.html, timings.json) become its `writes`.

`check_output_dir` is the validate-time rule: never `/`, the home directory, an input's
directory, any folder holding an input (anything the pipeline reads: sources, eval sets,
models), nor a folder inside a directory or glob source (the next run would read its own
outputs).
"""
from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from pathlib import Path

from curate.contract.atomic import remove_temp_files, write_json
from curate.contract.paths import resolved_inside

MARKER = ".curate-run.json"
MARKER_TMP = re.compile(r"^\.\.curate-run\.json\.tmp\d+$")  # a run killed while writing its first marker
PROJECT = "curate"
LEGACY_ENTRIES = ("stages", "rejects", "shards", "quarantine.jsonl", "manifest.json", "report.html", "timings.json")


class RunDirError(RuntimeError):
    """The output directory cannot be used (one line, names the path)."""


def _is_within(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def check_output_dir(out: str | Path, inputs: list[Path], source_roots: list[Path]) -> Path:
    """Refuse a dangerous output directory; returns it resolved. `inputs`: every file the
    pipeline reads; `source_roots`: the folders of directory and glob sources."""
    o = Path(out).expanduser().resolve()
    if o.parent == o:
        raise RunDirError(f"output directory {o} is the file system root")
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home directory known
        home = None
    if o == home:
        raise RunDirError(f"output directory {o} is the home directory")
    for f in inputs:
        fr = Path(f).resolve()
        if fr == o or o in fr.parents:
            raise RunDirError(f"output directory {o} holds an input ({fr}): a run must not write among its inputs")
    for r in source_roots:
        rr = Path(r).resolve()
        if _is_within(o, rr):
            raise RunDirError(f"output directory {o} is inside the input directory {rr}: "
                              "the next run would read its own outputs")
    return o


class RunDir:
    """An opened run directory (see the module doc). `log` receives one line per clean-up."""

    def __init__(self, root: Path, marker: dict):
        self.root = root
        self.marker = marker

    # ---- opening
    @classmethod
    def open(cls, root: str | Path, fresh: bool = False, log=lambda s: None) -> "RunDir":
        root = Path(root).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise RunDirError(f"output directory {root} exists and is not a directory")
        marker_path = root / MARKER
        marker = None
        if root.is_dir() and any(not MARKER_TMP.match(c.name) for c in root.iterdir()):
            if marker_path.is_file():
                try:
                    marker = json.loads(marker_path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise RunDirError(f"{marker_path}: unreadable run marker ({exc}); "
                                      "not touching this directory") from None
                if not isinstance(marker, dict) or marker.get("project") != PROJECT \
                        or not isinstance(marker.get("writes"), list):
                    raise RunDirError(f"{marker_path} is not a curate run marker; not touching this directory")
            elif (root / "stages" / "00-read" / "done.json").is_file():
                marker = cls._new_marker([e for e in LEGACY_ENTRIES if (root / e).exists()])
                log(f"[run] {root}: a run directory from before run markers; adopting it")
            else:
                raise RunDirError(f"output directory {root} is not empty and is not a curate run "
                                  f"(no {MARKER}): choose a new or empty directory")
        else:
            marker = cls._new_marker([])
        rd = cls(root, marker)
        root.mkdir(parents=True, exist_ok=True)
        for p in remove_temp_files(root):
            log(f"[run] removed a temporary file left by a killed run: {p.relative_to(root)}")
        if fresh:
            for rel in list(rd.marker["writes"]):
                rd.remove(rel)
        rd._save()
        return rd

    @staticmethod
    def _new_marker(writes: list[str]) -> dict:
        return {"project": PROJECT, "run_id": uuid.uuid4().hex,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "writes": sorted(writes)}

    def _save(self) -> None:
        self.marker["writes"] = sorted(set(self.marker["writes"]))
        write_json(self.root / MARKER, self.marker)

    # ---- paths
    def path(self, rel: str) -> Path:
        """RUN/rel, refused unless it stays inside RUN once symlinks are resolved."""
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise RunDirError(f"refusing to write {rel!r}: not a path inside the run directory")
        p = self.root / rel
        if resolved_inside(self.root, p) is None:
            raise RunDirError(f"refusing to write {p}: it resolves to {p.resolve()}, outside the run directory")
        return p

    def owns(self, rel: str) -> bool:
        parts = Path(rel).parts
        return any(Path(w).parts == parts[:len(Path(w).parts)] for w in self.marker["writes"])

    def own(self, rel: str) -> Path:
        """Register `rel` (a file or folder) as written by this run; returns RUN/rel."""
        p = self.path(rel)
        if not self.owns(rel):
            self.marker["writes"].append(str(Path(rel)))
            self._save()
        return p

    def remove(self, rel: str) -> None:
        """Delete an entry this run wrote (a symlink is unlinked, never followed)."""
        if not self.owns(rel):
            raise RunDirError(f"refusing to delete {self.root / rel}: not written by a curate run")
        p = self.root / rel
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            if not _is_within(p.resolve(), self.root):
                raise RunDirError(f"refusing to delete {p}: it resolves outside the run directory")
            shutil.rmtree(p)
        if str(Path(rel)) in self.marker["writes"]:
            self.marker["writes"].remove(str(Path(rel)))
            self._save()

    def owned_children(self, folder: str) -> list[str]:
        """The entries directly under RUN/folder that this run wrote (relative paths)."""
        d = self.root / folder
        if not d.is_dir() or d.is_symlink():
            return []
        return sorted(f"{folder}/{c.name}" for c in d.iterdir() if self.owns(f"{folder}/{c.name}"))

