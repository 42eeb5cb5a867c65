"""Resumable checkpoints: trainable weights (safetensors), optimiser and scheduler state,
RNG states and the data position, written atomically.

Layout under RUN/train/checkpoints/<adapter>/:
  step-000040/   weights.safetensors, optim.pt, state.json
  latest.json    {"step": 40, "dir": "step-000040"}   (written last: the commit point)
  best.safetensors   trainable weights at the best val loss so far

A checkpoint directory is written under a temporary name and renamed into place, and
`latest.json` is replaced atomically after it, so a run killed at any moment resumes from
the last complete checkpoint. `optim.pt` holds only tensors and plain containers and is
read back with `torch.load(weights_only=True)`: no pickle of arbitrary objects."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from curate.contract.atomic import fsync_dir, atomic_path, write_json


def save_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_root: Path, step: int, weights: dict[str, torch.Tensor], optimizer, scheduler, state: dict,
         keep: int = 2) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = ckpt_root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    final = ckpt_root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(ckpt_root)
    write_json(ckpt_root / "latest.json", {"step": step, "dir": name})
    olds = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and p.name != name)
    for old in olds[: max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(ckpt_root: Path) -> Path | None:
    pointer = ckpt_root / "latest.json"
    if not pointer.is_file():
        return None
    d = ckpt_root / json.loads(pointer.read_text())["dir"]
    return d if d.is_dir() else None


def load(ckpt_dir: Path, model_params: dict[str, torch.nn.Parameter], optimizer, scheduler) -> dict:
    """Restore weights, optimiser, scheduler and RNG; return the saved trainer state."""
    weights = load_file(str(ckpt_dir / "weights.safetensors"))
    missing = set(model_params) - set(weights)
    if missing:
        raise ValueError(f"checkpoint {ckpt_dir} lacks weights for {sorted(missing)[:3]}... (another config?)")
    with torch.no_grad():
        for name, p in model_params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    blob = torch.load(ckpt_dir / "optim.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((ckpt_dir / "state.json").read_text(encoding="utf-8"))
