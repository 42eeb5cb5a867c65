"""`decontaminate`: drop (or flag) records whose prompt or answer shares word n-grams with
an eval set's items (default 13-grams over normalised words, the GPT-3 / Llama practice).

The eval sets become an index of n-gram keys -> eval item; the data's n-grams are a long
table joined against it, chunk by chunk, so cost is one hash join per chunk, never a Python
loop over (record, eval item) pairs. Per record the best-matching eval item is reported with
the number of its n-grams found and the fraction of its n-grams that is (overlap).

Choices (all configurable):
  * eval items shorter than `n` words but at least `min_words` long are indexed whole
    (a 9-word question cannot share a 13-gram with anything);
  * n-grams shared by more than `max_item_frequency` eval items are boilerplate of the
    benchmark ("from typing import List ...") and are not evidence of contamination;
  * a hit needs `min_matches` n-grams and `min_overlap` of the item: one 13-gram is the
    classic criterion and catches lightly edited copies, whose untouched stretches still
    hold whole 13-grams.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from curate.stages.decontaminate import ngrams
from curate.read.readers import RecordError, file_type, iter_items
from curate.stages.base import DETAIL, REASON, FilterStage, StageResult, same_value
from curate.contract.typed_config import ConfigError
from curate.contract.views import VIEWS, text_view


@dataclass
class EvalSet:
    path: str  # JSONL, JSON, CSV, Parquet, Arrow; optionally .gz / .zst
    fields: list[str]  # the fields whose text must not leak, e.g. ["question"]
    name: str | None = None  # defaults to the file name
    id_field: str | None = None  # an item id to report (default: "#<index>")
    file_type: str | None = None

    def validate(self) -> None:
        if not self.fields:
            raise ConfigError("fields", "name at least one field of the eval items")


@dataclass
class Config:
    kind: Literal["decontaminate"]
    evalsets: list[EvalSet]
    name: str | None = None
    action: Literal["drop", "flag"] = "drop"
    n: int = 13
    on: list[str] = field(default_factory=lambda: ["prompt", "response"])
    min_matches: int = 1
    min_overlap: float = 0.0
    min_words: int = 8
    max_item_frequency: int = 10
    chunk_rows: int = 20000

    def validate(self) -> None:
        if not self.evalsets:
            raise ConfigError("evalsets", "name at least one eval set")
        if not 3 <= self.n <= 64:
            raise ConfigError("n", f"must be in 3..64, got {self.n}")
        for v in self.on:
            if v not in VIEWS:
                raise ConfigError("on", f"unknown view {v!r} (known: {', '.join(VIEWS)})")
        if self.min_matches < 1:
            raise ConfigError("min_matches", "must be >= 1")
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ConfigError("min_overlap", f"must be in [0, 1], got {self.min_overlap}")
        if not 1 <= self.min_words <= self.n:
            raise ConfigError("min_words", f"must be in 1..n ({self.n})")
        if self.max_item_frequency < 1 or self.chunk_rows < 1:
            raise ConfigError("max_item_frequency", "max_item_frequency and chunk_rows must be >= 1")
        names = [e.name or Path(e.path).name for e in self.evalsets]
        if len(set(names)) != len(names):
            raise ConfigError("evalsets", "two eval sets have the same name; give one a `name`")

    def check_paths(self, base_dir) -> None:
        for i, ev in enumerate(self.evalsets):
            p = _resolve(Path(base_dir), ev.path)
            key = f"evalsets[{i}].path"
            if not p.is_file():
                raise ConfigError(key, f"no eval set file at {p}")
            try:
                ftype = file_type(p, ev.file_type)
            except RecordError as exc:
                raise ConfigError(key, str(exc))
            for _, item, error, _ in iter_items(p, ftype):  # the first record shows the fields
                if error is not None:
                    raise ConfigError(key, f"cannot read {p}: {error}")
                if not isinstance(item, dict):
                    raise ConfigError(key, f"{p}: records must be objects")
                missing = [f for f in ev.fields if f not in item]
                if missing:
                    raise ConfigError(f"evalsets[{i}].fields", f"{p} has no field(s) {missing} (it has {sorted(item)})")
                break


def _resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "\n".join(_as_text(v) for v in value)
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class EvalIndex:
    """n-gram key -> eval item, plus per-item labels and n-gram counts."""

    grams: pl.DataFrame  # key u64, n u16, item u32
    items: pl.DataFrame  # item u32, label str, preview str, grams u32
    short_sizes: list[int]
    n_items: int

    @classmethod
    def build(cls, cfg: Config, base_dir: Path) -> "EvalIndex":
        rows = {"item": [], "label": [], "text": []}
        item = 0
        for ev in cfg.evalsets:
            path = _resolve(base_dir, ev.path)
            set_name = ev.name or path.name
            for loc, rec, error, _ in iter_items(path, file_type(path, ev.file_type)):
                if error is not None or not isinstance(rec, dict):
                    continue  # an unreadable eval item cannot leak
                ident = rec.get(ev.id_field) if ev.id_field else None
                label = f"{set_name}:{ident}" if ident is not None else f"{set_name}{loc if loc.startswith('#') else ':' + loc}"
                for f in ev.fields:  # each field on its own: n-grams do not span fields
                    rows["item"].append(item)
                    rows["label"].append(label)
                    rows["text"].append(_as_text(rec.get(f)))
                item += 1
        texts = pl.DataFrame(rows, schema={"item": pl.UInt32, "label": pl.String, "text": pl.String})
        nw = ngrams.word_counts(texts["text"])
        texts = texts.with_columns(nw.alias("nw"))
        long_ = texts.filter(pl.col("nw") >= cfg.n)
        short = texts.filter((pl.col("nw") < cfg.n) & (pl.col("nw") >= cfg.min_words))
        short_sizes = sorted(set(short["nw"].to_list()))
        parts = []
        if long_.height:
            g = ngrams.ngram_keys(long_["text"], [cfg.n])
            parts.append(g.join(long_.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "item"), on="_row").drop("_row"))
        if short.height:
            g = ngrams.ngram_keys(short["text"], [], whole_text_sizes=short_sizes)
            parts.append(g.join(short.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "item"), on="_row").drop("_row"))
        grams = pl.concat(parts).unique(["key", "n", "item"]) if parts else pl.DataFrame(
            schema={"n": pl.UInt16, "key": pl.UInt64, "item": pl.UInt32})
        common = grams.group_by("key", "n").agg(pl.len().alias("_items")).filter(pl.col("_items") > cfg.max_item_frequency)
        grams = grams.join(common, on=["key", "n"], how="anti")
        per_item = grams.group_by("item").agg(pl.len().cast(pl.UInt32).alias("grams"))
        items = (
            texts.group_by("item", maintain_order=True)
            .agg(pl.col("label").first(), pl.col("text").str.join(" | ").str.replace_all(r"\s+", " ").str.slice(0, 80).alias("preview"))
            .join(per_item, on="item", how="left")
            .with_columns(pl.col("grams").fill_null(0))
        )
        return cls(grams=grams.select("key", "n", "item"), items=items, short_sizes=short_sizes, n_items=item)


class DecontaminateStage(FilterStage):
    kind = "decontaminate"
    Config = Config

    def shared_resource(self) -> EvalIndex:
        """The eval n-gram index, built once per stage object (eval sets do not change
        mid-run); an executor builds it on the driver and broadcasts it, since a remote
        worker may not even have the eval files."""
        index = getattr(self, "_index", None)
        if index is None:
            index = self._index = EvalIndex.build(self.config, self.context.config_dir)
        return index

    def use_shared_resource(self, resource: EvalIndex) -> None:
        self._index = resource

    def block_state(self) -> dict:
        return {"index_stats": dict(self._index_stats)}

    def merge_block_states(self, states: list[dict]) -> None:
        # the index is the same on every block: its size must agree
        self._index_stats = same_value([s["index_stats"] for s in states], "eval index sizes")

    def annotate(self, table: pl.DataFrame) -> pl.DataFrame:
        cfg = self.config
        index = self.shared_resource()
        self._index_stats = {"eval_items": index.n_items, "eval_ngrams": index.grams.height}
        best_parts = []
        for start in range(0, max(table.height, 1), cfg.chunk_rows):
            chunk = table.slice(start, cfg.chunk_rows)
            if chunk.height == 0:
                break
            grams = []
            for v in cfg.on:
                g = ngrams.ngram_keys(chunk.select(text_view(v).alias("t"))["t"], [cfg.n] + index.short_sizes)
                grams.append(g)
            data = pl.concat(grams).unique()
            hits = data.join(index.grams, on=["key", "n"], how="inner")
            per = hits.group_by("_row", "item").agg(pl.col("key").n_unique().cast(pl.UInt32).alias("matches"))
            best = (
                per.join(index.items.select("item", "grams"), on="item", how="left")
                .with_columns((pl.col("matches") / pl.col("grams").clip(lower_bound=1)).clip(upper_bound=1.0).alias("overlap"))
                .sort(["_row", "matches", "overlap", "item"], descending=[False, True, True, False])
                .group_by("_row", maintain_order=True).first()
                .with_columns((pl.col("_row").cast(pl.Int64) + start).alias("_row"))
            )
            best_parts.append(best)
        best = pl.concat(best_parts) if best_parts else pl.DataFrame(
            schema={"_row": pl.Int64, "item": pl.UInt32, "matches": pl.UInt32, "grams": pl.UInt32, "overlap": pl.Float64})
        best = best.join(index.items.select("item", "label", "preview"), on="item", how="left")
        frame = table.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__row")).join(
            best.rename({"_row": "__row"}), on="__row", how="left", maintain_order="left")
        m, ov = f"{self.name}_matches", f"{self.name}_overlap"
        frame = frame.with_columns(
            pl.col("matches").fill_null(0).cast(pl.Int64).alias(m),
            pl.col("overlap").fill_null(0.0).alias(ov),
            pl.col("label").alias(f"{self.name}_item"),
        )
        fail = (pl.col(m) >= cfg.min_matches) & (pl.col(ov) >= cfg.min_overlap)
        detail = pl.format("{} ({}/{} {}-grams): {}", pl.col("label"), pl.col(m), pl.col("grams"), pl.lit(cfg.n), pl.col("preview"))
        out = frame.with_columns(
            pl.when(fail).then(pl.lit("contaminated")).alias(REASON),
            pl.when(fail).then(detail).alias(DETAIL),
        )
        return out.drop(["__row", "item", "matches", "grams", "overlap", "label", "preview"])

    def process(self, table: pl.DataFrame) -> StageResult:
        result = super().process(table)
        result.stats.update(self._index_stats)
        col = f"{self.name}_item"
        both = pl.concat([result.kept.select(col), result.dropped.select(col)]) if col in result.kept.columns else None
        if both is not None:
            result.stats["matched_items"] = int(both[col].drop_nulls().n_unique())
        return result


STAGE = DecontaminateStage
