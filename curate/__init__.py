"""curate: turn raw, noisy, multi-task instruction data into a small, clean, balanced
training set (Arrow shards with a manifest), and hand it to a LoRA trainer."""

__version__ = "0.1.0"
