"""What a training run leaves behind, in RUN/train/:

  adapter/            the PEFT adapter (PeftModel.from_pretrained) + the tokenizer, with the
                      chat template the shards were rendered with written into it
  adapters/<task>/    per-task adapters, side by side (adapters = "per_task")
  model/              full fine-tuning: the whole model + tokenizer
  merged/             on request: the adapter merged into the base weights
  provenance.json     manifest hash, shard hashes, config, library versions

Directories are written under a temporary name and renamed into place."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
from pathlib import Path

from curate.contract.atomic import fsync_dir, sha256_file, write_json


def chat_template(manifest: dict, tokenizer) -> str | None:
    """The template text the shards were rendered with: the manifest's own copy when it
    has one, else the file it names, else a built-in template, else the tokenizer's.
    Checked against `template_sha256` when the manifest records it."""
    render = manifest.get("render", {}) or {}
    want = render.get("template_sha256")
    candidates = []
    for key in ("template_text", "chat_template"):
        if isinstance(render.get(key), str):
            candidates.append(render[key])
    name = render.get("template")
    if isinstance(name, str):
        p = Path(name)
        if p.suffix == ".jinja" and p.is_file():
            candidates.append(p.read_text(encoding="utf-8"))
        try:
            from importlib.resources import files

            builtin = files("curate_templates").joinpath("chat", f"{name}.jinja")
            if builtin.is_file():
                candidates.append(builtin.read_text(encoding="utf-8"))
        except (ModuleNotFoundError, ValueError):
            pass
    if getattr(tokenizer, "chat_template", None):
        candidates.append(tokenizer.chat_template)
    for text in candidates:
        if want is None or hashlib.sha256(text.encode("utf-8")).hexdigest() == want:
            return text
    return candidates[0] if candidates else None


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _staging(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def save_adapter(model, tokenizer, template: str | None, final: Path, adapter_name: str | None = None) -> Path:
    """Save a peft adapter (or a full model) plus tokenizer, atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging(final)
    if adapter_name is None:
        model.save_pretrained(tmp)
    else:
        # peft writes a non-default adapter into a sub-folder named after it
        model.save_pretrained(tmp, selected_adapters=[adapter_name])
        sub = tmp / adapter_name
        if sub.is_dir():
            for f in sub.iterdir():
                os.replace(f, tmp / f.name)
            sub.rmdir()
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(tmp)
    _publish(tmp, final)
    return final


def save_merged(model, tokenizer, template: str | None, final: Path) -> Path:
    """Merge the adapter into the base weights (in place: call last) and save."""
    merged = model.merge_and_unload()
    return save_adapter(merged, tokenizer, template, final)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("curate", "torch", "transformers", "peft", "accelerate", "tokenizers", "pyarrow", "numpy", "safetensors"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def write_provenance(out_dir: Path, run_dir: Path, shard_hashes: dict, cfg: dict, extra: dict) -> Path:
    path = out_dir / "provenance.json"
    write_json(path, {
        "manifest_sha256": sha256_file(Path(run_dir) / "manifest.json"),
        "shards": shard_hashes,
        "config": cfg,
        "versions": versions(),
        **extra,
    })
    return path
