"""Load what a training run exported, for `curate eval` and `curate chat`.

The run says where everything is: RUN/<output_dir>/provenance.json names the base model
(the path it was trained from on this machine) and the exported folder; the folder holds
the tokenizer with the chat template the shards were rendered with and a
generation_config whose `eos_token_id` lists the end-of-turn id. A run copied to another
machine needs `base_model` passed explicitly (the exported adapter_config carries only the
base's folder name and hashes, not a path of the machine that trained it)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from train.data import DataError


@dataclass
class Trained:
    model: object  # peft model (adapter) or a plain causal LM (full / merged)
    tokenizer: object
    stop_ids: list[int]
    kind: str  # "adapter" | "per_task" | "full" | "merged"
    folder: Path
    base_model: str
    config: dict
    adapter_names: dict[str, str] = field(default_factory=dict)  # task -> adapter name (per_task)
    base: object | None = None  # full / merged: the base model, loaded on request


def provenance(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    man = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")) if (run_dir / "manifest.json").is_file() else {}
    cand = [Path(man["train"]["provenance"])] if isinstance((man.get("train") or {}).get("provenance"), str) else []
    cand += sorted(run_dir.glob("*/provenance.json"))
    for p in cand:
        p = p if p.is_absolute() else run_dir / p
        if p.is_file():
            return json.loads(p.read_text(encoding="utf-8")) | {"_dir": str(p.parent)}
    raise DataError(f"no trained model in {run_dir} (no provenance.json): run `curate run` with a [train] table, "
                    f"or `curate train` first")


def stop_ids_of(folder: Path, tokenizer) -> list[int]:
    gen = Path(folder) / "generation_config.json"
    ids = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id") if gen.is_file() else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return [int(i) for i in ids]


def load_trained(run_dir: Path, base_model: str | None = None, merged: bool = False, device: str = "auto",
                 threads: int | None = None, with_base: bool = False) -> Trained:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the console is for the table / the reply
    if threads:
        torch.set_num_threads(threads)
    prov = provenance(run_dir)
    cfg = prov.get("config") or {}
    summary = prov.get("summary") or {}
    out = Path(prov["_dir"])
    base = base_model or cfg.get("base_model")
    if not base or (base.startswith("/") and not Path(base).is_dir()):
        raise DataError(f"base model {base!r} of this run is not on this machine: pass --base-model DIR")
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    trust = bool(cfg.get("trust_remote_code", False))
    names: dict[str, str] = dict(summary.get("adapter_names") or {})
    if merged:
        folder, kind = out / "merged", "merged"
    elif cfg.get("method") == "full":
        folder, kind = out / "model", "full"
    elif cfg.get("adapters") == "per_task":
        folder, kind = out / "adapters", "per_task"
    else:
        folder, kind = out / "adapter", "adapter"
    if not folder.is_dir():
        raise DataError(f"no exported {kind} model at {folder}" + (" (train with --merge)" if merged else ""))
    tok_dir = folder / next(iter(names.values())) if kind == "per_task" else folder
    tok = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust)
    if kind in ("full", "merged"):
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust).to(dev).eval()
        base_m = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=trust).to(dev).eval() if with_base else None
    else:
        import peft

        base_m = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=trust).to(dev)
        if kind == "adapter":
            model = peft.PeftModel.from_pretrained(base_m, str(folder)).eval()
        else:
            first = True
            for _task, name in sorted(names.items()):
                if first:
                    model = peft.PeftModel.from_pretrained(base_m, str(folder / name), adapter_name=name)
                    first = False
                else:
                    model.load_adapter(str(folder / name), adapter_name=name)
            model.eval()
        base_m = None
    return Trained(model, tok, stop_ids_of(tok_dir, tok), kind, folder, base, cfg, names, base_m)
