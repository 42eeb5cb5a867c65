"""Best-fit-decreasing packing: a valid bin packing, best fit chosen, deterministic; and a
packed row gives a Llama model the same per-example logits and loss as each example alone."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.render.packing import best_fit_decreasing, pack_examples
from curate.contract.shards import position_ids


@settings(max_examples=60, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 64), min_size=0, max_size=80), capacity=st.integers(64, 200))
def test_bfd_is_a_valid_packing(lengths, capacity):
    bins = best_fit_decreasing(lengths, capacity)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(load <= capacity for load in loads)
    # never more rows than needed by a factor the greedy bound allows (BFD <= 11/9 OPT + 1)
    lower = -(-sum(lengths) // capacity)
    assert len(bins) <= 11 * lower / 9 + 1
    # no two rows could have been merged
    if len(loads) > 1:
        s = sorted(loads)
        assert s[0] + s[1] > capacity
    assert bins == best_fit_decreasing(lengths, capacity)  # deterministic


def test_bfd_picks_the_tightest_row():
    # 6 and 5 open two rows (free 2 and 3); 3 goes where it fits tightest (free 3), 2 to free 2
    assert best_fit_decreasing([5, 3, 4, 2, 6, 1], 8) == [[4, 3], [0, 1], [2, 5]]
    with pytest.raises(ValueError):
        best_fit_decreasing([9], 8)


def test_pack_examples_columns():
    df = pl.DataFrame({"id": ["a", "b", "c"], "task": ["t", "t", "u"], "source": ["s", "s", "r"],
                       "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "labels": [[-100, 2, 3], [-100, 5], [-100, 7, 8, 9]]},
                      schema_overrides={"input_ids": pl.List(pl.Int32), "labels": pl.List(pl.Int32)})
    rows = pack_examples(df, 7)
    assert rows.columns == ["input_ids", "labels", "seq_lens", "ids", "tasks", "sources"]
    assert rows.to_dicts()[0] == {"input_ids": [6, 7, 8, 9, 1, 2, 3], "labels": [-100, 7, 8, 9, -100, 2, 3],
                                  "seq_lens": [4, 3], "ids": ["c", "a"], "tasks": ["u", "t"], "sources": ["r", "s"]}
    assert rows.to_dicts()[1]["ids"] == ["b"]


def test_position_ids():
    assert position_ids([3, 2, 1]).tolist() == [0, 1, 2, 0, 1, 0]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_row_equals_examples_run_alone(attn):
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config._attn_implementation = attn
    model = LlamaForCausalLM(config).eval()
    rng = np.random.default_rng(0)
    lens = [7, 12, 5]
    ids = [rng.integers(3, 96, n) for n in lens]
    labels = [np.where(rng.random(n) < 0.6, x, -100) for n, x in zip(lens, ids)]
    for lab in labels:
        lab[0] = -100
    packed_ids = torch.tensor(np.concatenate(ids))[None]
    packed_labels = torch.tensor(np.concatenate(labels))[None]
    pos = torch.tensor(position_ids(lens))[None]
    with torch.no_grad():
        packed = model(input_ids=packed_ids, position_ids=pos, use_cache=False).logits[0]
        total_loss = model(input_ids=packed_ids, position_ids=pos, labels=packed_labels, use_cache=False).loss
        start, losses, counts = 0, [], []
        for x, lab in zip(ids, labels):
            alone = model(input_ids=torch.tensor(x)[None], use_cache=False).logits[0]
            assert torch.allclose(packed[start:start + len(x)], alone, atol=1e-5), attn
            out = model(input_ids=torch.tensor(x)[None], labels=torch.tensor(lab)[None], use_cache=False)
            losses.append(out.loss.item())
            counts.append(int((lab[1:] != -100).sum()))
            start += len(x)
    # the packed loss is the token-weighted mean of the per-example losses: no example's first
    # label is predicted from its neighbour (labels[0] is always -100)
    expected = sum(l * c for l, c in zip(losses, counts)) / sum(counts)
    assert abs(total_loss.item() - expected) < 1e-5
