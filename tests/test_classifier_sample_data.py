"""The fastText classifier on sample_data: a clean seed set (records with no planted
defect) against the records with planted quality defects (refusals, placeholders,
truncation, repetition, wrong language, merged instructions). Prints the held-out
metrics; skipped when sample_data is absent or not generated yet."""
import json
from pathlib import Path

import polars as pl
import pytest

from curate.stages.quality.classifier import TrainOptions, train_classifier
from curate.read.sources import SourceConfig
from curate.read.readers import read_source

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
QUALITY_DEFECTS = {"empty_answer", "merged_instructions", "placeholder_answer", "refusal", "repeated_text",
                   "truncated", "wrong_language", "wrong_target_language"}


def seed_split(out: Path) -> tuple[Path, Path, int, int]:
    """Write clean.jsonl / noisy.jsonl (OpenAI messages format) from sample_data's ground truth."""
    defects = json.loads((SAMPLE / "defects.json").read_text())
    flagged, noisy_origins = set(), set()
    for kind, d in defects["defects"].items():
        for item in d["items"]:
            origin = item.get("origin")
            if origin is None:
                pytest.skip("defects.json has no reader origins")
            flagged.add(origin)
            if kind in QUALITY_DEFECTS:
                noisy_origins.add(origin)
    tables = [read_source(SourceConfig(name=f.stem, path=str(f)), SAMPLE, display_root=SAMPLE).table
              for f in sorted((SAMPLE / "raw").iterdir()) if f.is_file()]
    t = pl.concat(tables)
    clean = t.filter(~pl.col("origin").is_in(list(flagged)))
    noisy = t.filter(pl.col("origin").is_in(list(noisy_origins)))
    paths = []
    for name, part in (("clean", clean), ("noisy", noisy)):
        p = out / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"messages": m}) + "\n" for m in part["messages"].to_list()))
        paths.append(p)
    return paths[0], paths[1], len(clean), len(noisy)


@pytest.mark.skipif(not (SAMPLE / "defects.json").is_file() or not (SAMPLE / "raw").is_dir(),
                    reason="sample_data not generated")
def test_classifier_on_sample_data(tmp_path, capsys):
    pos, neg, n_pos, n_neg = seed_split(tmp_path)
    assert n_pos > 1000 and n_neg > 100
    rep = train_classifier([pos], [neg], tmp_path / "quality.bin",
                           TrainOptions(epoch=25, holdout=0.2, bucket=50_000, word_ngrams=2))
    h = rep["holdout"]
    with capsys.disabled():
        print(f"\nsample_data classifier: {n_pos} clean vs {n_neg} noisy; held-out n={h['n']} "
              f"precision={h['precision']} recall={h['recall']} F1={h['f1']} AUC={h['auc']}")
    assert h["auc"] > 0.75
