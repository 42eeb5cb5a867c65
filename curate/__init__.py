"""curate: turn raw, noisy, multi-task instruction data into a small, clean, balanced
training set (Arrow shards with a manifest), and hand it to a LoRA trainer."""

from curate.pipeline.allocator import configure_polars_allocator

configure_polars_allocator()  # before anything imports polars: see curate/pipeline/allocator.py

__version__ = "0.1.0"
