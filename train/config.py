"""`[train]` of pipeline.toml as a typed config. Checked at config-load time, before any
curation work, so a typo in `lr` never costs a whole curation run.

Defaults follow what fine-tuning practice has converged on: LoRA on every linear
projection, lr 2e-4 (LoRA) or 1e-5 (full), one epoch (more than three usually overfits
small curated sets, so it warns), warmup then cosine decay, early stopping on val loss.
On a model under SMALL_MODEL_PARAMS, LoRA/DoRA's unset lr is 1e-3 and its input embeddings
train beside the adapter (`TrainConfig.resolved`, applied once the model is loaded): measured
on stories260K, where the adapter alone learned no exact answer at any lr or rank
(benchmarks/train_frontier.md, issue 17)."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from curate.contract.typed_config import ConfigError, load_dataclass

ADAPTER_METHODS = ("lora", "dora", "ia3", "loha", "lokr")
# Below this many parameters a LoRA/DoRA run's unset defaults differ (TrainConfig.resolved): lr
# SMALL_MODEL_ADAPTER_LR and the input embeddings trained. Measured at 260k parameters
# (stories260K, benchmarks/train_frontier.md); the bound is where a full embedding copy with Adam
# state stops being cheap (GPT-2 small, 124M: 38M embedding parameters), not a measured crossover.
SMALL_MODEL_PARAMS = 50_000_000
SMALL_MODEL_ADAPTER_LR = 1e-3


@dataclass
class EarlyStopping:
    patience: int = 3  # evaluations without improvement before stopping; 0 = off
    min_delta: float = 0.0  # an improvement must lower val loss by more than this
    # per_task: an evaluation where any task's own val loss improved (by min_delta) does not
    # count against patience, so a minority task still learning is not cut off by the
    # majority's plateau; the exported weights are still those of the best overall val loss
    per_task: bool = False

    def validate(self) -> None:
        if self.patience < 0:
            raise ConfigError("patience", "must be >= 0 (0 turns early stopping off)")
        if self.min_delta < 0:
            raise ConfigError("min_delta", "must be >= 0")


@dataclass
class Forgetting:
    """The forgetting monitor: KL(base || adapted) and reference loss on a fixed text set.

    `reference = "self_samples"` (the default) is general text the base model itself
    writes: `samples` continuations from BOS at `temperature`, seeded, generated once and
    cached in RUN/train/reference/ - what the base knew, not the task's own text (val
    prompts are in-domain, so their loss falls as training goes on and under-reports
    drift). `"val_prompts"` uses the prompt tokens of the val split; a path names a UTF-8
    text file of general text, one document per blank-line-separated block."""

    reference: str = "self_samples"  # "self_samples" | "val_prompts" | path to a UTF-8 text file
    max_tokens: int = 4096  # reference tokens evaluated (bounds the monitor's cost)
    seq_len: int = 256  # reference text is cut into windows of this many tokens
    samples: int = 16  # self_samples: number of base-model samples drawn from BOS
    temperature: float = 1.0  # self_samples: sampling temperature
    seed: int = 1234  # self_samples: sampling seed (same seed, same reference)

    def validate(self) -> None:
        if self.max_tokens < 1 or self.seq_len < 2:
            raise ConfigError("max_tokens", "max_tokens must be >= 1 and seq_len >= 2")
        if self.samples < 1:
            raise ConfigError("samples", "must be >= 1")
        if not self.temperature > 0:
            raise ConfigError("temperature", "must be > 0")


@dataclass
class TrainConfig:
    base_model: str = ""  # local model directory (or hub id already in the local cache)
    method: Literal["lora", "dora", "ia3", "loha", "lokr", "full"] = "lora"
    adapters: Literal["single", "per_task"] = "single"
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    use_rslora: bool = False
    # modules trained in full beside the adapter (peft's modules_to_save; lora/dora only), e.g.
    # ["embed_tokens"]; a tied lm_head follows its embedding. Costs a full copy + Adam state per module.
    # "auto": the input embeddings on a small model (< SMALL_MODEL_PARAMS), none otherwise
    modules_to_save: list[str] | str = "auto"
    # LoRA+: lr of every lora_B = this x lr (lora_A and the rest keep lr); 1 = plain LoRA (lora/dora only)
    lora_plus_ratio: float = 1.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float | None = None  # default: adapters 2e-4 (1e-3 on a model < SMALL_MODEL_PARAMS), full 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    epochs: int = 1
    max_steps: int | None = None
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = 0.03  # < 1: fraction of total steps; >= 1: a number of steps
    batch_tokens: int = 16384  # tokens per optimiser step (accumulation is derived)
    micro_batch_tokens: int = 4096  # tokens per forward pass (bounds activation memory)
    grad_clip: float | None = 1.0
    eval_every: int = 50  # steps; also when the forgetting monitor runs
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    forgetting: Forgetting = field(default_factory=Forgetting)
    kl_to_base: float = 0.0  # weight of KL(adapted || base) on training tokens
    l2_to_base: float = 0.0  # weight of ||theta - theta_base||^2 (full fine-tuning)
    save_every: int = 100  # steps between resumable checkpoints; 0 = only at the end
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    gradient_checkpointing: bool = False
    merge: bool = False  # also write the adapter merged into the base model
    output_dir: str = "train"  # relative to the run directory
    trust_remote_code: bool = False
    # "segments": SDPA run per packed example, causal, no dense mask (train/attention.py; same
    # result as "sdpa", faster on packed rows); or any transformers name: "sdpa", "eager", ...
    attn_implementation: str = "segments"
    # CPU threads for torch (training, eval, chat); unset or 0 = torch's default (all cores). On a busy
    # machine 1 thread can beat 2: measure (docs/training-performance.md)
    threads: int | None = None

    def validate(self) -> None:
        if not self.base_model:
            raise ConfigError("base_model", "required: a local model directory or hub id")
        if self.method in ADAPTER_METHODS and self.r < 1:
            raise ConfigError("r", f"must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if isinstance(self.modules_to_save, str) and self.modules_to_save != "auto":
            raise ConfigError("modules_to_save", f"must be \"auto\" or a list of module names, got {self.modules_to_save!r}")
        if isinstance(self.modules_to_save, list) and self.modules_to_save and self.method not in ("lora", "dora"):
            raise ConfigError("modules_to_save", f"applies to method = \"lora\" or \"dora\", not {self.method!r}")
        if not self.lora_plus_ratio > 0:
            raise ConfigError("lora_plus_ratio", f"must be > 0, got {self.lora_plus_ratio}")
        if self.lora_plus_ratio != 1.0 and self.method not in ("lora", "dora"):
            raise ConfigError("lora_plus_ratio", f"applies to method = \"lora\" or \"dora\", not {self.method!r}")
        if self.lr is not None and not 0.0 < self.lr < 1.0:
            raise ConfigError("lr", f"must be in (0, 1), got {self.lr}")
        if self.epochs < 1:
            raise ConfigError("epochs", f"must be >= 1, got {self.epochs}")
        if self.epochs > 3:
            warnings.warn(f"[train] epochs = {self.epochs}: more than 3 epochs on a curated set usually overfits", stacklevel=2)
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("max_steps", "must be >= 1")
        if self.warmup < 0:
            raise ConfigError("warmup", "must be >= 0")
        if self.batch_tokens < 1 or self.micro_batch_tokens < 1:
            raise ConfigError("batch_tokens", "batch_tokens and micro_batch_tokens must be positive")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError("grad_clip", "must be > 0 (omit it to turn clipping off)")
        if self.eval_every < 1:
            raise ConfigError("eval_every", "must be >= 1")
        if self.save_every < 0:
            raise ConfigError("save_every", "must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("betas", f"must be two numbers in [0, 1), got {self.betas}")
        if self.kl_to_base < 0 or self.l2_to_base < 0:
            raise ConfigError("kl_to_base", "regulariser weights must be >= 0")
        if self.method == "full" and self.kl_to_base > 0:
            # The base distribution would need a second full copy of the model in memory.
            raise ConfigError("kl_to_base", "needs an adapter method (the base is the model with its adapter off); use l2_to_base with method = \"full\"")
        if self.method != "full" and self.l2_to_base > 0:
            raise ConfigError("l2_to_base", "applies to method = \"full\" only (an adapter's distance to base is its own weight norm: use weight_decay)")
        if self.method == "full" and self.adapters == "per_task":
            raise ConfigError("adapters", "per_task needs an adapter method, not \"full\"")
        if self.method == "full" and self.merge:
            raise ConfigError("merge", "method = \"full\" already writes a full model")
        if self.dtype == "float16":
            raise ConfigError("dtype", "float16 training needs loss scaling, which the trainer does not do (gradients "
                                       "underflow silently); use \"bfloat16\" on a GPU or \"float32\"")
        if self.threads is not None and self.threads < 0:
            raise ConfigError("threads", f"must be >= 0 (0 or unset: torch's default), got {self.threads}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise ConfigError("device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")

    @property
    def learning_rate(self) -> float:
        """The lr as set, or the default for a model of SMALL_MODEL_PARAMS or more (what
        `resolved` keeps for such a model)."""
        if self.lr is not None:
            return self.lr
        return 1e-5 if self.method == "full" else 2e-4

    def resolved(self, n_params: int, embed_name: str | None) -> "TrainConfig":
        """A copy with the model-dependent defaults filled in: `lr` (when unset) and
        `modules_to_save` (when "auto"). For LoRA/DoRA on a model under SMALL_MODEL_PARAMS
        parameters: lr SMALL_MODEL_ADAPTER_LR and the input embeddings (`embed_name`, with a
        tied output head) trained beside the adapter; otherwise lr 2e-4 and the adapter alone.
        Why (docs/training.md, Mitigations): on stories260K the default LoRA learned no exact
        answer (EM 0 at any lr tried, any rank) until its embeddings trained too, at lr 1e-3
        (EM 0.5, near the full-FT frontier); on a model that small the embeddings cost next to
        nothing, on a billion-parameter one a full copy plus Adam state, and LoRA's usual
        2e-4 is the lr practice has settled on there."""
        import copy

        c = copy.deepcopy(self)
        small = n_params < SMALL_MODEL_PARAMS and self.method in ("lora", "dora")
        if c.lr is None:
            c.lr = SMALL_MODEL_ADAPTER_LR if small else self.learning_rate
        if c.modules_to_save == "auto":
            c.modules_to_save = [embed_name] if small and embed_name else []
        return c

    def to_dict(self) -> dict:
        return asdict(self)


def parse_train_config(data: dict, base_dir: Path) -> TrainConfig:
    """`[train]` table -> TrainConfig. A relative local `base_model` (and reference file)
    is resolved against the pipeline file's directory; a hub id is left as written."""
    cfg = load_dataclass(TrainConfig, dict(data), "train")
    base_dir = Path(base_dir)
    p = Path(cfg.base_model).expanduser()
    cand = p if p.is_absolute() else base_dir / p
    if cand.exists():
        cfg.base_model = str(cand.resolve())
    elif p.is_absolute() or cfg.base_model.startswith((".", "~")) or cfg.base_model.count("/") != 1:
        raise ConfigError("train.base_model", f"no model directory at {cand}")
    if cfg.forgetting.reference not in ("val_prompts", "self_samples"):
        ref = Path(cfg.forgetting.reference).expanduser()
        ref = ref if ref.is_absolute() else base_dir / ref
        if not ref.is_file():
            raise ConfigError("train.forgetting.reference", f"no reference text file at {ref} (or use \"self_samples\" or \"val_prompts\")")
        cfg.forgetting.reference = str(ref.resolve())
    return cfg
