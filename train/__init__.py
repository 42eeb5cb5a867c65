"""The trainer: curated shards -> a LoRA (or other peft) adapter, with early stopping and a
forgetting monitor. Meets curation only through the shard contract (manifest + Arrow shards).

    from train import parse_train_config, run_training

Imports are lazy so that parsing `[train]` at config-load time does not pull in torch."""
from __future__ import annotations

__all__ = ["parse_train_config", "run_training", "TrainConfig"]


def __getattr__(name: str):
    if name in ("parse_train_config", "TrainConfig"):
        from train import config

        return getattr(config, name)
    if name == "run_training":
        from train.loop import run_training

        return run_training
    raise AttributeError(name)
