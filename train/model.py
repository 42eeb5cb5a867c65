"""Base model, tokenizer and the adapter around them (peft), on the chosen device and dtype."""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

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
        mts = cfg.modules_to_save if isinstance(cfg.modules_to_save, list) else []  # "auto" unresolved: none
        extra = {"modules_to_save": list(mts), "ensure_weight_tying": True} if mts else {}
        return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                               use_rslora=cfg.use_rslora, use_dora=cfg.method == "dora", bias="none",
                               task_type="CAUSAL_LM", **extra)
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
    else:
        model = peft.get_peft_model(model, adapter_config(cfg), adapter_name=adapter_name)
    if cfg.method == "lora":
        fold_small_lora(model)
    return model


# A LoRA linear layer whose base weight has at most this many elements computes
# x (W + s B A)^T: one matmul over the tokens instead of three plus a scale and an add (peft's
# x W^T + s (x A^T) B^T). Same maths, rounded differently (~1e-7 relative). The price grows with
# the layer: W + s B A is a fresh weight-sized tensor kept for the backward, and the backward
# forms a weight-sized gradient (tokens x d_in x d_out multiply-adds, where peft's costs tokens x
# r x (d_in + d_out)). Measured (r 8, fp32, one thread, CPU ms per training step, folded / peft):
# stories260K (64 wide) 0.85 at 512-token and 0.87 at 4096-token micro-batches; a random Llama
# 128 wide 0.94, 256 wide 1.00 (there only its 256 x 256 projections fold). So the bound is the
# break-even width; wider layers keep peft's form.
FOLD_MAX_WEIGHT = 65536
# fp32/fp64 only: in bf16/fp16 W + s B A would round away the part of a small update below W's
# precision (peft's form adds the update in output space instead)
_FOLD_DTYPES = (torch.float32, torch.float64)


def _folded_forward(self, x, *args, **kwargs):
    """peft's LoRA Linear forward, with the low-rank update folded into the weight when only
    one plain LoRA adapter is active (no dropout, no DoRA, no mixed batch, not merged) and the
    weights are fp32/fp64; peft's own forward otherwise."""
    if not args and not kwargs and not self.disable_adapters and not self.merged and len(self.active_adapters) == 1:
        a = self.active_adapters[0]
        base = self.base_layer
        if a in self.lora_A and a not in self.lora_variant and isinstance(self.lora_dropout[a], torch.nn.Identity):
            wa, wb = self.lora_A[a].weight, self.lora_B[a].weight
            if x.dtype == base.weight.dtype == wa.dtype == wb.dtype and x.dtype in _FOLD_DTYPES:
                return F.linear(x, torch.addmm(base.weight, wb, wa, alpha=self.scaling[a]), base.bias)
    return type(self).forward(self, x, *args, **kwargs)


def fold_small_lora(model) -> int:
    """Give every small LoRA Linear (base weight <= FOLD_MAX_WEIGHT elements) the folded
    forward (`_folded_forward`); idempotent. Parameters, saving, merging and export are
    peft's as before: only how the forward is computed changes. Returns the number of layers."""
    from peft.tuners.lora import layer as lora_layer

    n = 0
    for m in model.modules():
        if type(m) is lora_layer.Linear and isinstance(m.base_layer, torch.nn.Linear) \
                and m.base_layer.weight.numel() <= FOLD_MAX_WEIGHT:
            m.forward = types.MethodType(_folded_forward, m)
            n += 1
    return n


def size_of(model) -> tuple[int, str | None]:
    """(parameters, the input embedding's module name) of a base model, for
    TrainConfig.resolved."""
    emb = model.get_input_embeddings()
    name = next((n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is emb), None)
    return sum(p.numel() for p in model.parameters()), name


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def is_adapter(model) -> bool:
    import peft

    return isinstance(model, peft.PeftModel)
