"""curate/contract/datasets.py: the one eager reader of a stage's partitioned output."""
from __future__ import annotations

import polars as pl
import pytest

from curate.contract.datasets import read_dataset
from curate.pipeline import parts as P


def test_read_dataset_unifies_parts_and_follows_entries(tmp_path):
    a = pl.DataFrame({"x": [1, 2], "note": [None, None]})  # `note` is Null-typed here
    b = pl.DataFrame({"x": [3], "note": ["n"]})
    entries = [P.write_part(tmp_path, 0, a), P.write_part(tmp_path, 1, b)]
    whole = read_dataset(tmp_path, entries)
    assert whole.schema == {"x": pl.Int64, "note": pl.String}
    assert whole.to_dict(as_series=False) == {"x": [1, 2, 3], "note": [None, None, "n"]}
    assert whole.n_chunks() == 1
    assert read_dataset(tmp_path).equals(whole)  # the part files found: the same table
    # the listed parts only; columns in the order asked
    assert read_dataset(tmp_path, entries[1:], columns=["note", "x"]).to_dict(as_series=False) == {
        "note": ["n"], "x": [3]}
    with pytest.raises(FileNotFoundError, match="no stage output"):
        read_dataset(tmp_path / "nothing")
