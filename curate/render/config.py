"""`[render]`: how curated conversations become token shards (template, tokenizer, length,
packing, val split). Checked against the template and tokenizer by `renderer.check_config`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.contract.typed_config import ConfigError


@dataclass
class RenderConfig:
    template: str = "chatml"  # built-in name, path to a .jinja file, or "tokenizer"
    tokenizer: str | None = None  # local tokenizer or model directory (or hub id)
    max_length: int = 2048
    pack: bool = True
    val_fraction: float = 0.05
    train_on: Literal["assistant", "last_assistant", "all"] = "assistant"
    overflow: Literal["drop", "truncate"] = "drop"
    shard_rows: int = 10000  # rows per shard file, bounding shard size
    trust_remote_code: bool = False
    batch_size: int = 1000
    # seconds one conversation's render may take before it is dropped as template_error
    # (a real template needs well under a millisecond; 0 turns the limit off)
    template_time_limit: float = 10.0
    template_max_chars: int = 32_000_000  # characters one render may output or build in one value
    # the date strftime_now() returns (YYYY-MM-DD[THH:MM:SS]); unset: today (UTC), recorded in the manifest
    date: str | None = None

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        if self.max_length < 8:
            raise ConfigError("max_length", f"must be at least 8, got {self.max_length}")
        if self.shard_rows < 1:
            raise ConfigError("shard_rows", "must be positive")
        if self.template_time_limit < 0:
            raise ConfigError("template_time_limit", f"must be >= 0 (0: no limit), got {self.template_time_limit}")
        if self.template_max_chars < 1000:
            raise ConfigError("template_max_chars", f"must be at least 1000, got {self.template_max_chars}")
        if self.date is not None:
            from curate.render.templates import parse_date

            try:
                parse_date(self.date)
            except ValueError as exc:
                raise ConfigError("date", str(exc)) from None
