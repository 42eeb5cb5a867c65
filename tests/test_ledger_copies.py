"""#15 the ledger counts upsampled copies apart and exactly: a record dropped at render
with its copies counts once in `dropped`, its copies under `copies_dropped`."""
import json
import textwrap
from pathlib import Path

import polars as pl
import pytest

from curate.contract.ledger import drop_counts
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline

TOKENIZER = Path(__file__).resolve().parent.parent / "sample_data" / "tokenizer"


@pytest.mark.skipif(not TOKENIZER.is_dir(), reason="sample tokenizer missing")
def test_render_drop_of_an_upsampled_record_counts_one_record(tmp_path):
    rows = [{"instruction": "Tell me a story about a long road.", "response": "word " * 400, "category": "long"}]
    rows += [{"instruction": f"Short question {i}?", "response": f"Short answer {i}.", "category": "short"}
             for i in range(3)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pipeline.toml").write_text(textwrap.dedent(f"""
        [run]
        output_dir = "run"
        [[sources]]
        name = "d"
        path = "d.jsonl"
        format = "dolly"
        task_field = "category"
        [[stages]]
        kind = "mix"
        targets = {{ long = 3, short = 3 }}
        max_repeat = 3
        val_fraction = 0.0
        [render]
        tokenizer = "{TOKENIZER}"
        max_length = 64
        pack = false
        val_fraction = 0.0
        """))
    m = run_pipeline(load_config(tmp_path / "pipeline.toml"))
    led = m["ledger"]
    assert led["upsampled"] == {"mix": 2}
    assert led["dropped"] == {"render": {"too_long": 1}}
    assert led["copies_dropped"] == {"render": 2}
    assert led["read"] == 4 and led["kept"] == 3 and led["reconciles"]
    # rows in the output = kept + upsampled - copies dropped
    assert sum(s["rows"] for split in m["shards"].values() for s in split) == 3
    # rejects still hold every dropped row, copies marked by `repeat`
    rej = pl.read_parquet(tmp_path / "run" / "rejects" / "render.parquet")
    assert rej.height == 3 and sorted(rej["repeat"].to_list()) == [0, 1, 2]


def test_drop_counts_splits_records_from_copies():
    df = pl.DataFrame({"_reason": ["a", "a", "b", "a"], "repeat": [0, 1, None, 2]})
    assert drop_counts(df) == ({"a": 1, "b": 1}, 2)
    assert drop_counts(df.drop("repeat")) == ({"a": 3, "b": 1}, 0)
    assert drop_counts(df.clear()) == ({}, 0)
