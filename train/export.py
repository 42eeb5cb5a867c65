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
import json
import importlib.metadata
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from curate.contract.atomic import fsync_dir, sha256_file, write_json
from train.data import DataError


def _builtin_template(name: str) -> str | None:
    """A built-in template's text by name: the installed `curate_templates` package, else
    the checkout's templates/ folder (read as data: train/ imports no curate.render)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    try:
        from importlib.resources import files

        f = files("curate_templates").joinpath("chat", f"{name}.jinja")
        if f.is_file():
            return f.read_text(encoding="utf-8")
    except (ModuleNotFoundError, ValueError, TypeError):
        pass
    f = Path(__file__).resolve().parents[1] / "templates" / "chat" / f"{name}.jinja"
    return f.read_text(encoding="utf-8") if f.is_file() else None


def chat_template(manifest: dict, tokenizer, run_dir: Path | None = None) -> str | None:
    """The template text the shards were rendered with, taken from the run, never from the
    working directory. In order: the manifest's own copy (`template_text`), the file it
    names (`template_path`, or `template` when that is a path) resolved against the run's
    `config_dir` (else the directory of its pipeline file), a built-in template of that name, the tokenizer's
    own (for `template = "tokenizer"`). When the manifest records `template_sha256` only a
    text with that hash is returned; if none has it, TemplateMismatch is raised before any
    training (shipping another template than the one trained on is the bug this prevents)."""
    render = manifest.get("render", {}) or {}
    want = render.get("template_sha256")
    if isinstance(manifest.get("config_dir"), str):
        config_dir = Path(manifest["config_dir"])
    elif isinstance(manifest.get("pipeline"), str):
        config_dir = Path(manifest["pipeline"]).parent
    else:
        config_dir = None
    candidates: list[tuple[str, str]] = []
    for key in ("template_text", "chat_template"):
        if isinstance(render.get(key), str):
            candidates.append((f"manifest render.{key}", render[key]))
    name = render.get("template")
    for key in ("template_path", "template"):
        spec = render.get(key)
        if not isinstance(spec, str) or not (spec.endswith(".jinja") or "/" in spec or "\\" in spec):
            continue
        p = Path(spec).expanduser()
        if not p.is_absolute():
            if config_dir is None:
                continue  # never re-resolved against the cwd
            p = config_dir / p
        if p.is_file():
            candidates.append((str(p), p.read_text(encoding="utf-8")))
    if isinstance(name, str):
        text = _builtin_template(name)
        if text is not None:
            candidates.append((f"built-in {name!r}", text))
    tok_text = getattr(tokenizer, "chat_template", None)
    if isinstance(tok_text, dict):
        tok_text = tok_text.get("default")
    if tok_text and (name == "tokenizer" or want is None):
        candidates.append(("the tokenizer's chat_template", tok_text))
    for _where, text in candidates:
        if want is None or hashlib.sha256(text.encode("utf-8")).hexdigest() == want:
            return text
    if want is not None:
        tried = ", ".join(w for w, _ in candidates) or "nothing"
        raise TemplateMismatch(f"the chat template the shards were rendered with ({name!r}, sha256 {want[:12]}) "
                               f"is not in the run (tried {tried}); the adapter would ship another template. "
                               f"Rerun `curate run` so the manifest records the template text")
    return None


class TemplateMismatch(DataError):
    """The template recorded in the manifest cannot be found with its recorded hash."""


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _staging(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


@dataclass
class ExportInfo:
    """What an exported folder carries besides weights and tokenizer: the end-of-turn the
    shards were rendered with (it becomes the EOS of generation), a portable base-model
    reference and the model card's provenance."""

    end_of_turn: str | None = None  # text, e.g. "<|im_end|>"
    end_of_turn_ids: list[int] = field(default_factory=list)
    base_ref: dict = field(default_factory=dict)  # {"name", "files": {file: sha256}}
    card: str = ""  # README.md text


def base_reference(base_model: str) -> dict:
    """A reference to the base model that is not a path of this machine: its folder name
    (or hub id) and the sha256 of its config and weight files, so whoever loads the adapter
    can check they hold the same base."""
    p = Path(base_model)
    if not p.is_dir():
        return {"name": base_model, "files": {}}
    files = {f.name: sha256_file(f) for f in sorted(p.iterdir())
             if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name == "config.json")}
    return {"name": p.name, "files": files}


def eos_ids(info: ExportInfo, tokenizer) -> list[int]:
    """`generation_config.eos_token_id`: the end-of-turn token first (the last id of a
    multi-token end-of-turn: generation stops on single ids), then the tokenizer's EOS."""
    out = [int(info.end_of_turn_ids[-1])] if info.end_of_turn_ids else []
    if tokenizer.eos_token_id is not None and int(tokenizer.eos_token_id) not in out:
        out.append(int(tokenizer.eos_token_id))
    return out


def _finish(tmp: Path, tokenizer, template: str | None, info: ExportInfo | None) -> None:
    """Tokenizer (EOS = the end-of-turn when it is one token), generation_config with the
    end-of-turn id(s), model card, portable base_model_name_or_path."""
    old_eos, old_template = tokenizer.eos_token, getattr(tokenizer, "chat_template", None)
    try:
        if template:
            tokenizer.chat_template = template
        if info is not None and info.end_of_turn and len(info.end_of_turn_ids) == 1:
            tokenizer.eos_token = info.end_of_turn
        tokenizer.save_pretrained(tmp)
    finally:
        tokenizer.eos_token = old_eos
        tokenizer.chat_template = old_template
    if info is None:
        return
    gen_path = tmp / "generation_config.json"
    gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
    ids = eos_ids(info, tokenizer)
    if ids:
        gen["eos_token_id"] = ids if len(ids) > 1 else ids[0]
    if tokenizer.pad_token_id is not None:
        gen.setdefault("pad_token_id", int(tokenizer.pad_token_id))
    if tokenizer.bos_token_id is not None:
        gen.setdefault("bos_token_id", int(tokenizer.bos_token_id))
    gen_path.write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    cfg_path = tmp / "adapter_config.json"
    if cfg_path.is_file() and info.base_ref:
        acfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        acfg["base_model_name_or_path"] = info.base_ref.get("name")
        cfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in ("config.json",):  # a merged / full model: no machine path in its config either
        f = tmp / name
        if f.is_file() and info.base_ref:
            c = json.loads(f.read_text(encoding="utf-8"))
            if isinstance(c.get("_name_or_path"), str) and os.path.isabs(c["_name_or_path"]):
                c["_name_or_path"] = info.base_ref.get("name")
                f.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if info.card:
        (tmp / "README.md").write_text(info.card, encoding="utf-8")


def save_adapter(model, tokenizer, template: str | None, final: Path, adapter_name: str | None = None,
                 info: ExportInfo | None = None) -> Path:
    """Save a peft adapter (or a full model) plus tokenizer, generation config and model
    card, atomically (written under a temporary name, then renamed into place)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging(final)
    if adapter_name is None:
        model.save_pretrained(tmp)
    else:
        # peft writes a non-default adapter into a sub-folder named after it (a safe name:
        # train/paths.py), never a path taken from data
        model.save_pretrained(tmp, selected_adapters=[adapter_name])
        sub = tmp / adapter_name
        if sub.is_dir() and sub.parent == tmp:
            for f in sub.iterdir():
                os.replace(f, tmp / f.name)
            sub.rmdir()
    _finish(tmp, tokenizer, template, info)
    _publish(tmp, final)
    return final


def save_merged(model, tokenizer, template: str | None, final: Path, info: ExportInfo | None = None) -> Path:
    """Merge the adapter into the base weights (in place: call last) and save."""
    merged = model.merge_and_unload()
    return save_adapter(merged, tokenizer, template, final, info=info)


def model_card(manifest: dict, shard_hashes: dict, cfg: dict, base_ref: dict, summary: dict, task: str | None = None) -> str:
    """README.md of an exported folder: what it was trained on and how, from the run."""
    render = manifest.get("render") or {}
    led = manifest.get("ledger") or {}
    dropped = sum(sum(v.values()) if isinstance(v, dict) else int(v) for v in (led.get("dropped") or {}).values())
    eot = (render.get("end_of_turn") or {}).get("text")
    lines = ["---", "library_name: peft" if cfg.get("method") != "full" else "library_name: transformers",
             f"base_model: {json.dumps(base_ref.get('name', ''))}", "tags: [curate]", "---", "",
             f"# {'Adapter' if cfg.get('method') != 'full' else 'Model'} trained by curate"
             + (f" (task {task!r})" if task else ""), "",
             f"Base model: `{base_ref.get('name', '')}`, {cfg.get('method')} (r {cfg.get('r')}, alpha {cfg.get('alpha')}), "
             f"lr {cfg.get('lr') or ('1e-05' if cfg.get('method') == 'full' else '0.0002')}, {cfg.get('epochs')} epoch(s), "
             f"seed {cfg.get('seed')}.", "",
             f"Chat template: `{render.get('template')}` (sha256 `{str(render.get('template_sha256'))[:16]}`), shipped in "
             f"the tokenizer; turns end with `{eot}`, which `generation_config.eos_token_id` lists.", "",
             "## Data", "",
             f"Records read {led.get('read', '?')}, kept {led.get('kept', '?')}, dropped {dropped}, "
             f"quarantined {led.get('quarantined', '?')}.", "", "| shard | sha256 |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(shard_hashes.items())]
    if base_ref.get("files"):
        lines += ["", "## Base model files", "", "| file | sha256 |", "|---|---|"]
        lines += [f"| {k} | `{v}` |" for k, v in base_ref["files"].items()]
    res = {k: summary.get(k) for k in ("steps", "best_step", "first_val_loss", "best_val_loss", "kl_to_base",
                                       "ref_loss_before", "ref_loss_after") if summary.get(k) is not None}
    if res:
        lines += ["", "## Training", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in res.items()]
    conf = {k: v for k, v in cfg.items() if k != "base_model"}
    lines += ["", "## Config", "", "```json", json.dumps(conf, indent=1, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


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
