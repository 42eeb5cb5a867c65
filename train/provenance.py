"""What a set of checkpoints was made from, so `--resume` never continues (or returns as
done) a training that was started with another config or on other shards.

RUN/train/checkpoints/fingerprint.json records {fingerprint, config, shards} when a
training starts from step 0; every checkpoint and `done.json` is stamped with the
fingerprint. Resuming compares the current (config, shard hashes) with the record and
names the keys that changed.

The fingerprint covers every [train] key that changes the weights or the recorded
metrics; it leaves out keys that only say where or how often to write (`merge`,
`save_every`, `output_dir`) or how fast to run (`threads`), so raising `save_every` or
asking for `--merge` on a resume is allowed."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from curate.contract.atomic import write_json

NOT_FINGERPRINTED = ("merge", "save_every", "output_dir", "threads")


def _config(cfg) -> dict:
    return {k: v for k, v in sorted(cfg.to_dict().items()) if k not in NOT_FINGERPRINTED}


def run_fingerprint(cfg, shard_hashes: dict) -> str:
    payload = json.dumps({"config": _config(cfg), "shards": dict(sorted(shard_hashes.items()))}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _record_path(out: Path) -> Path:
    return Path(out) / "checkpoints" / "fingerprint.json"


def check_resume(out: Path, fingerprint: str, cfg=None, shard_hashes: dict | None = None) -> str | None:
    """None when the checkpoints under `out` (if any) were made with this fingerprint;
    otherwise why they cannot be resumed (which config keys or shards changed)."""
    ckpts = Path(out) / "checkpoints"
    if not ckpts.is_dir() or not any(ckpts.iterdir()):
        return None
    rec_path = _record_path(out)
    if not rec_path.is_file():
        return f"the checkpoints in {ckpts} record no config or shard hashes (made by an older trainer)"
    rec = json.loads(rec_path.read_text(encoding="utf-8"))
    if rec.get("fingerprint") == fingerprint:
        return None
    if cfg is None:
        return f"the checkpoints in {ckpts} were made with another config or other shards"
    now = _config(cfg)
    old = rec.get("config") or {}
    keys = sorted(k for k in set(now) | set(old) if json.dumps(now.get(k), sort_keys=True, default=str) != json.dumps(old.get(k), sort_keys=True, default=str))
    parts = []
    if keys:
        parts.append("config changed: " + ", ".join(f"{k} {old.get(k)!r} -> {now.get(k)!r}" for k in keys[:6]))
    if shard_hashes is not None and dict(rec.get("shards") or {}) != dict(shard_hashes):
        parts.append("the shards changed (re-rendered since)")
    return f"the checkpoints in {ckpts} were made differently ({'; '.join(parts) or 'fingerprint differs'})"


def start_fresh(out: Path, fingerprint: str, cfg, shard_hashes: dict, clear: bool) -> None:
    """Record what this training is made from; with `clear`, first remove the old
    checkpoints (only RUN/train/checkpoints, which the trainer itself wrote)."""
    ckpts = Path(out) / "checkpoints"
    if clear and ckpts.is_dir():
        shutil.rmtree(ckpts)
    if clear or not _record_path(out).is_file():
        write_json(_record_path(out), {"fingerprint": fingerprint, "config": _config(cfg),
                                       "shards": dict(sorted(shard_hashes.items()))})
