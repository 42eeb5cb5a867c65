"""Base model, tokenizer and the adapter around them (peft), on the chosen device and dtype."""
from __future__ import annotations

import torch

from train.config import TrainConfig


def pick_device(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def pick_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """bf16 on a GPU that has it, fp32 elsewhere: CPU bf16 matmuls are slow on most
    x86 parts and fp32 keeps CPU runs exactly reproducible."""
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_base(cfg: TrainConfig, device: torch.device, dtype: torch.dtype):
    """The base model and its tokenizer, offline-capable (a local directory needs no hub)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.base_model, trust_remote_code=cfg.trust_remote_code)
    attn = cfg.attn_implementation
    if attn == "segments":
        from train.attention import register

        attn = register()
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                                 attn_implementation=attn)
    model.config.use_cache = False
    return model.to(device), tok


def adapter_config(cfg: TrainConfig):
    """peft config for `method`. "all-linear" targets every linear projection but the
    output head (peft's shorthand); IA3 given "all-linear" uses peft's per-architecture
    defaults (keys, values and the MLP down projection), as IA3 is defined on those."""
    import peft

    targets = cfg.target_modules
    if cfg.method in ("lora", "dora"):
        return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                               use_rslora=cfg.use_rslora, use_dora=cfg.method == "dora", bias="none",
                               task_type="CAUSAL_LM")
    if cfg.method == "ia3":
        if targets == "all-linear":
            return peft.IA3Config(task_type="CAUSAL_LM")
        ff = [t for t in targets if "down" in t or "fc2" in t or "mlp" in t]
        return peft.IA3Config(target_modules=targets, feedforward_modules=ff, task_type="CAUSAL_LM")
    if cfg.method == "loha":
        return peft.LoHaConfig(r=cfg.r, alpha=cfg.alpha, module_dropout=cfg.dropout, target_modules=targets,
                               task_type="CAUSAL_LM")
    if cfg.method == "lokr":
        return peft.LoKrConfig(r=cfg.r, alpha=cfg.alpha, module_dropout=cfg.dropout, target_modules=targets,
                               task_type="CAUSAL_LM")
    raise ValueError(cfg.method)


def wrap(model, cfg: TrainConfig, adapter_name: str = "default"):
    """Add the adapter (or, for full fine-tuning, leave every weight trainable)."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    import peft

    if isinstance(model, peft.PeftModel):
        model.add_adapter(adapter_name, adapter_config(cfg))
        model.set_adapter(adapter_name)
        # only the new adapter trains; the ones trained before it stay as they are
        for name, p in model.named_parameters():
            if p.requires_grad and f".{adapter_name}." not in name:
                p.requires_grad_(False)
        return model
    return peft.get_peft_model(model, adapter_config(cfg), adapter_name=adapter_name)


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def is_adapter(model) -> bool:
    import peft

    return isinstance(model, peft.PeftModel)
