"""The dedup stage: measured against brute-force Jaccard, keep rules, ledger, determinism,
config refusal."""
from __future__ import annotations

import itertools
import json
import random
import string
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.contract.schema import POLARS_SCHEMA, conversation_id
from curate.stages.base import DETAIL, REASON, StageContext
from curate.stages.dedup.stage import Config, DedupStage
from curate.contract.typed_config import ConfigError, load_dataclass
from curate.contract.datasets import read_dataset
from helpers import planned_on_copies


def record(prompt: str, answer: str, source: str = "s", **extra) -> dict:
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"id": conversation_id(msgs), "source": source, "task": "t", "messages": msgs, "meta": "{}",
            "origin": f"{source}:1", **extra}


def table(rows: list[dict]) -> pl.DataFrame:
    extra = {k: None for r in rows for k in r if k not in POLARS_SCHEMA}
    schema = dict(POLARS_SCHEMA)
    for k in extra:
        schema[k] = pl.Float64
    return pl.DataFrame(rows, schema=schema)


def run(df: pl.DataFrame, tmp_path: Path, run_seed: int = 0, **cfg):
    config = load_dataclass(Config, {"kind": "dedup", **cfg}, "stages[0]")
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=run_seed, stage_dir=tmp_path / "stage", log=lambda m: None)
    return DedupStage(config, ctx).process(df)


def clusters_of(res) -> dict[str, str]:
    """id -> kept id, from kept rows' cluster column and dropped rows' detail."""
    out = dict(zip(res.kept["id"].to_list(), res.kept["dedup_cluster"].to_list()))
    out.update(zip(res.dropped["id"].to_list(), res.dropped[DETAIL].to_list()))
    return out


# ---- ground truth ------------------------------------------------------------------------

def _planted_set(seed: int = 1234, bases: int = 160):
    """Base documents of 30-60 random words plus planted variants: exact copies (with case
    and punctuation changes), and edits (substitutions, deletions, insertions) whose
    Jaccard with their base spans 0.4..1.0. Unrelated bases share no 3-grams in practice."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(4000)]
    docs: list[str] = []
    for _ in range(bases):
        base = rng.choices(vocab, k=rng.randint(30, 60))
        docs.append(" ".join(base))
        kind = rng.random()
        if kind < 0.15:  # an exact copy, differently written
            docs.append(" ".join(w.upper() if rng.random() < 0.3 else w for w in base) + "!")
        elif kind < 0.85:  # one edited copy, 1..8 edits
            words = list(base)
            for _ in range(rng.randint(1, 8)):
                op, pos = rng.random(), rng.randrange(len(words))
                if op < 0.6:
                    words[pos] = rng.choice(vocab)
                elif op < 0.8 and len(words) > 5:
                    del words[pos]
                else:
                    words.insert(pos, rng.choice(vocab))
            docs.append(" ".join(words))
    return docs


def _shingles(text: str, n: int = 3) -> set:
    toks = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()
    return {tuple(toks[i:i + n]) for i in range(max(len(toks) - n + 1, 1))}


def test_ground_truth_precision_recall(tmp_path):
    docs = _planted_set(bases=450)
    rows = [record(d, f"answer {i}") for i, d in enumerate(docs)]
    df = table(rows)
    # brute force: exact Jaccard of every pair's word 3-gram sets
    sh = [_shingles(d) for d in docs]
    truth = set()
    sims = []
    for i, j in itertools.combinations(range(len(docs)), 2):
        inter = len(sh[i] & sh[j])
        if inter:
            jac = inter / len(sh[i] | sh[j])
            sims.append(jac)
            if jac >= 0.8:
                truth.add((i, j))
    # the planted similarities really span the threshold
    assert sum(0.5 <= s < 0.8 for s in sims) >= 20 and sum(0.8 <= s < 1.0 for s in sims) >= 20
    res = run(df, tmp_path, threshold=0.8, ngram=3)
    assert res.kept.height + res.dropped.height == df.height
    cluster = clusters_of(res)
    index = {r["id"]: i for i, r in enumerate(rows)}
    members: dict[str, list[int]] = {}
    for rid, kept in cluster.items():
        members.setdefault(kept, []).append(index[rid])
    found = {tuple(sorted(p)) for m in members.values() for p in itertools.combinations(m, 2)}
    tp = len(found & truth)
    precision = tp / len(found)
    recall = tp / len(truth)
    near = sum(1 for i, j in truth if len(sh[i] & sh[j]) / len(sh[i] | sh[j]) < 0.9)
    print(f"\nplanted ground truth: {len(docs)} docs, {len(truth)} true pairs at J>=0.8 ({near} in [0.8, 0.9)), "
          f"{len(found)} found; "
          f"precision {precision:.3f}, recall {recall:.3f}")
    assert precision >= 0.98, (precision, recall)
    assert recall >= 0.95, (precision, recall)
    assert res.stats["clusters"]["count"] == len(members) - sum(len(m) == 1 for m in members.values())


def test_deterministic_and_chunk_independent(tmp_path):
    docs = _planted_set(7)[:120]
    df = table([record(d, f"a{i}") for i, d in enumerate(docs)])
    a = run(df, tmp_path, run_seed=3)
    b = run(df, tmp_path, run_seed=3)
    c = run(df, tmp_path, run_seed=3, chunk_size=7)
    d = run(df, tmp_path, run_seed=3, verify_by="estimate")
    assert a.kept.equals(b.kept) and a.dropped.equals(b.dropped) and a.stats == b.stats
    assert a.kept.equals(c.kept) and a.dropped.equals(c.dropped)
    assert a.kept.write_ipc(None).getvalue() == b.kept.write_ipc(None).getvalue()
    assert a.dropped.height > 0
    assert abs(d.dropped.height - a.dropped.height) <= 3
    assert a.stats["seed"] == 3 and run(df, tmp_path, run_seed=3, seed=11).stats["seed"] == 11


# ---- keep rules --------------------------------------------------------------------------

PROMPT = "Explain what a hash table is, in two sentences."


def test_keep_best_uses_quality_column(tmp_path):
    rows = [record(PROMPT, "short", quality_fasttext=0.2),
            record(PROMPT.lower(), "a much much longer answer", quality_fasttext=0.9),
            record(PROMPT + "!!", "the longest answer of them all by far", quality_fasttext=None),
            record("Unrelated prompt about rivers and lakes today", "x", quality_fasttext=0.1)]
    res = run(table(rows), tmp_path, method="exact")
    assert res.stats["score_column"] == "quality_fasttext"
    assert res.kept["id"].to_list() == [rows[1]["id"], rows[3]["id"]]
    assert set(res.dropped[DETAIL].to_list()) == {rows[1]["id"]}
    assert set(res.dropped[REASON].to_list()) == {"duplicate_of"}
    # an explicit score column wins over the default
    rows2 = [dict(r, quality_heuristic=float(i)) for i, r in enumerate(rows)]
    res2 = run(table(rows2), tmp_path, method="exact", score_column="quality_heuristic")
    assert rows[2]["id"] in res2.kept["id"].to_list()


def test_keep_best_without_score_prefers_shorter_normalised_text_then_id(tmp_path):
    # the same question (user view) asked three times: equal text, so the smallest id wins,
    # and the agreement column says the three answers disagree
    rows = [record(PROMPT, "short"), record(PROMPT, "the longest answer here"), record(PROMPT, "medium one")]
    res = run(table(rows), tmp_path, method="exact")
    assert res.stats["score_column"] is None
    assert res.kept["id"].to_list() == [min(r["id"] for r in rows)]
    assert res.kept["dedup_cluster_agreement"].to_list() == pytest.approx([1 / 3])
    # a padded near-copy loses to the clean one (issue 16: ties used to go to the longest)
    clean = "How do I make an omelette with three eggs and some cheese at home"
    padded = [record(clean, "Whisk the eggs."), record("just " + clean + " ok thanks", "Whisk the eggs.")]
    for method in ("minhash", "exact"):
        kw = {"threshold": 0.5} if method == "minhash" else {"normalize": ["case"]}
        res = run(table(padded), tmp_path, method=method, view="conversation", **kw)
        if method == "minhash":
            assert res.kept["id"].to_list() == [padded[0]["id"]]
            assert res.kept["dedup_cluster_agreement"].to_list() == [1.0]
    # the score comes first: the padded copy wins when it scores higher
    scored = [dict(padded[0], quality_heuristic=0.1), dict(padded[1], quality_heuristic=0.9)]
    res = run(table(scored), tmp_path, method="minhash", view="conversation", threshold=0.5)
    assert res.kept["id"].to_list() == [padded[1]["id"]]


def test_cluster_agreement_exact_and_minhash_agree(tmp_path):
    rows = [record(PROMPT, "yes")] * 3 + [record(PROMPT, "no")] + [record("other question entirely here", "x")]
    rows = [dict(r, origin=f"s:{i}") for i, r in enumerate(rows)]
    for method in ("exact", "minhash"):
        res = run(table(rows), tmp_path, method=method, view="user")
        k = res.kept.sort("dedup_cluster_size")
        assert k["dedup_cluster_size"].to_list() == [1, 4]
        kept_yes = k["messages"][1][1]["content"] == "yes"
        assert k["dedup_cluster_agreement"].to_list() == pytest.approx([1.0, 0.75 if kept_yes else 0.25]), method
        assert res.stats["clusters"]["kept_minority_answer"] == (0 if kept_yes else 1)


def test_keep_first(tmp_path):
    rows = [record(PROMPT, "short"), record(PROMPT, "the longest answer here")]
    res = run(table(rows), tmp_path, method="exact", keep="first")
    assert res.kept["id"].to_list() == [rows[0]["id"]]


def test_keep_source_priority_cross_source(tmp_path):
    long_prompt = "Write a short poem about the sea at night with stars and a lighthouse far away"
    rows = [record(long_prompt, "a very long answer from the web scrape, longer than the others", "web"),
            record(long_prompt + " please", "ok", "curated"),
            record(long_prompt, "another long-ish answer, from a forum", "forum"),
            record("Something else entirely about cooking rice and beans at home", "rice", "web")]
    res = run(table(rows), tmp_path, keep="source_priority", sources=["curated", "forum"], threshold=0.7)
    kept = res.kept["id"].to_list()
    assert rows[1]["id"] in kept and rows[0]["id"] not in kept and rows[2]["id"] not in kept
    assert res.dropped[DETAIL].to_list() == [rows[1]["id"]] * 2
    # unknown sources rank after listed ones; among equals the best-answer rule decides
    res = run(table(rows), tmp_path, keep="source_priority", sources=["forum"], threshold=0.7)
    assert rows[2]["id"] in res.kept["id"].to_list()


# ---- the ledger and columns ---------------------------------------------------------------

def test_ledger_reconciles_and_columns(tmp_path):
    docs = _planted_set(99)[:80]
    df = table([record(d, f"a{i}", source=f"src{i % 3}") for i, d in enumerate(docs)])
    res = run(df, tmp_path, name="dedup")
    assert res.kept.height + res.dropped.height == df.height
    assert sorted(res.kept["id"].to_list() + res.dropped["id"].to_list()) == sorted(df["id"].to_list())
    assert res.stats["duplicates"] == res.dropped.height > 0
    assert set(res.dropped[DETAIL].to_list()) <= set(res.kept["id"].to_list())
    assert res.dropped[REASON].null_count() == 0
    for col in df.columns:
        assert res.kept.schema[col] == df.schema[col]
    # a kept row's cluster is itself; sizes add up
    assert (res.kept["dedup_cluster"] == res.kept["id"]).all()
    assert int(res.kept["dedup_cluster_size"].sum()) == df.height
    cl = res.stats["clusters"]
    assert sum(int(k) * v for k, v in cl["size_histogram"].items()) - cl["count"] == res.dropped.height
    assert res.stats["dropped_exact"] + res.stats["dropped_near"] == res.dropped.height
    ex = res.stats["examples"]
    assert 0 < len(ex) <= 5 and all(any(m["kept"] for m in e["members"]) for e in ex)
    json.dumps(res.stats)  # manifest-ready


def test_exact_normalisation_and_views(tmp_path):
    rows = [record("Hello,   World!", "one"), record("ｈｅｌｌｏ world", "two"), record("hello world?", "three"),
            record("hello there world", "one")]
    res = run(table(rows), tmp_path, method="exact")
    assert res.kept.height == 2 and res.stats["dropped_exact"] == 2
    res = run(table(rows), tmp_path, method="exact", normalize=[])
    assert res.kept.height == 4
    res = run(table(rows), tmp_path, method="exact", view="response")
    assert res.kept.height == 3


def test_minhash_edge_cases(tmp_path):
    rows = [record("", "a"), record("", "b"), record("x", "c"), record("x", "d"),
            record("今天 天气 很好", "e")]
    res = run(table(rows), tmp_path)
    # empty views are never near-duplicates of each other; identical one-word prompts are
    assert res.kept.height == 4 and res.stats["empty_texts"] == 2
    zh = [record("请把这句话翻译成英文，谢谢你的帮助", "a"), record("请把这句话翻译成英文，谢谢您的帮助", "b"),
          record("今天的天气怎么样？我们去公园散步吧", "c")]
    res = run(table(zh), tmp_path, ngram_unit="char", ngram=2, threshold=0.6)
    assert res.kept.height == 2
    empty = run(table([]), tmp_path)
    assert empty.kept.height == 0 and empty.dropped.height == 0


def test_real_alpaca_planted_copies(tmp_path, shared_data):
    path = shared_data("formats", "alpaca_llamafactory_demo.json")
    data = json.loads(path.read_text(encoding="utf-8"))[:300]
    rows = [record(d["instruction"] + ("\n" + d["input"] if d["input"] else ""), d["output"], "alpaca") for d in data]
    rng = random.Random(0)
    planted, original = [], {}
    for r in rng.sample(rows, 40):
        words = r["messages"][0]["content"].split()
        if len(words) >= 12:  # a word appended to a 12+ word prompt: 3-gram Jaccard >= 10/11
            copy = record(" ".join(words).upper() + " please", r["messages"][1]["content"] + " (copy)", "copy")
            planted.append(copy)
            original[copy["id"]] = r["id"]
    df = table(rows + planted)
    res = run(df, tmp_path, threshold=0.8, keep="source_priority", sources=["alpaca"])
    got = dict(zip(res.dropped["id"].to_list(), res.dropped[DETAIL].to_list()))
    assert len(planted) > 5
    for cid, oid in original.items():  # every copy is dropped for the trusted original
        assert cid in got and clusters_of(res)[oid] == got[cid]
    assert "copy" not in res.kept["source"].to_list()
    assert res.kept.height + res.dropped.height == df.height


# ---- config ------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,key", [
    ({"threshold": 1.5}, "threshold"),
    ({"bands": 4}, "rows"),
    ({"bands": 20, "rows": 10}, "bands"),
    ({"keep": "source_priority"}, "sources"),
    ({"sources": ["a"]}, "sources"),
    ({"normalize": ["case", "stemming"]}, "normalize"),
    ({"method": "semantic"}, "model"),
    ({"ngram": 0}, "ngram"),
    ({"method": "fuzzy"}, "method"),
    ({"thresold": 0.8}, "thresold"),
    ({"num_perm": "128"}, "num_perm"),
])
def test_bad_config_refused_with_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        load_dataclass(Config, {"kind": "dedup", **cfg}, "stages[1]")
    assert err.value.key == f"stages[1].{key}"


def test_semantic_refuses_missing_model_dir(tmp_path):
    cfg = load_dataclass(Config, {"kind": "dedup", "method": "semantic", "model": "nope/model"})
    with pytest.raises(ConfigError) as err:
        cfg.check_paths(tmp_path)
    assert err.value.key == "model"


# ---- semantic (optional: needs transformers and a local model) ----------------------------

@pytest.mark.slow  # loading transformers dominates; the dedup work itself is milliseconds
def test_semantic_with_local_model(tmp_path, shared_data):
    """stories260K (a real pretrained Llama) as the embedding model: exact copies embed
    identically and are clustered; at a cosine threshold of 1 - 1e-6 nothing else is."""
    pytest.importorskip("transformers")
    pytest.importorskip("curate.stages.common.lm")
    model = shared_data("models", "stories260K")
    rows = [record("Once upon a time there was a little cat.", "a"),
            record("Once upon a time there was a little cat.", "a longer answer"),
            record("The boy ran to the park to play with his red ball.", "b"),
            record("Lily liked to bake cakes with her mother on Sundays.", "c")]
    res = run(table(rows), tmp_path, method="semantic", model=str(model), cosine_threshold=1 - 1e-6)
    # equal user text: the keep rule's last tie-break, the smaller id, picks the kept copy
    assert res.kept.height == 3 and res.dropped[DETAIL].to_list() == [min(rows[0]["id"], rows[1]["id"])]
    assert res.stats["similar_pairs"] == 1


# ---- through the real runner -------------------------------------------------------------

def test_pipeline_run_ledger_and_rejects(tmp_path):
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    base = ["Summarise the plot of the novel in three short sentences for a child",
            "Translate the following sentence into French and explain the grammar",
            "List five ways to reduce energy use at home during the winter months"]
    trusted = [{"instruction": p, "input": "", "output": f"trusted answer {i}"} for i, p in enumerate(base)]
    scraped = [{"instruction": p.upper() + " please", "input": "", "output": f"a much longer scraped answer {i} " * 3}
               for i, p in enumerate(base)]
    scraped.append({"instruction": "Something unrelated about volcanoes", "input": "", "output": "lava"})
    (tmp_path / "trusted.jsonl").write_text("\n".join(json.dumps(r) for r in trusted) + "\n")
    (tmp_path / "scraped.jsonl").write_text("\n".join(json.dumps(r) for r in scraped) + "\n")
    (tmp_path / "pipeline.toml").write_text(
        '[run]\noutput_dir = "run"\nseed = 1\n\n'
        '[[sources]]\nname = "scraped"\npath = "scraped.jsonl"\ntask = "qa"\n\n'
        '[[sources]]\nname = "trusted"\npath = "trusted.jsonl"\ntask = "qa"\n\n'
        '[[stages]]\nkind = "dedup"\nkeep = "source_priority"\nsources = ["trusted"]\n'
    )
    manifest = run_pipeline(load_config(tmp_path / "pipeline.toml"))
    ledger = manifest["ledger"]
    assert ledger["read"] == 7 and ledger["kept"] == 4
    assert ledger["dropped"] == {"dedup": {"duplicate_of": 3}}
    stage = manifest["stages"][0]
    assert stage["stats"]["clusters"]["count"] == 3 and stage["stats"]["dropped_near"] == 3
    rejects = pl.read_parquet(tmp_path / "run" / stage["rejects"])
    assert set(rejects["source"].to_list()) == {"scraped"}
    kept = read_dataset(tmp_path / "run" / stage["output"])
    assert set(rejects.columns) & {"detail", "_detail"}
    detail = rejects["detail" if "detail" in rejects.columns else "_detail"].to_list()
    assert set(detail) <= set(kept["id"].to_list())


def test_shared_system_prompt_does_not_make_duplicates(tmp_path):
    system = ("You are a helpful, careful and honest assistant. Answer the user's question clearly and "
              "concisely, show your reasoning when it helps, and say so when you do not know.")
    qs = ["What is the boiling point of water at sea level?", "Who wrote the novel Pride and Prejudice?",
          "How many legs does a spider have?"]
    rows = []
    for i, q in enumerate(qs):
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": q},
                {"role": "assistant", "content": f"answer {i}"}]
        rows.append({"id": conversation_id(msgs), "source": "s", "task": "t", "messages": msgs, "meta": "{}",
                     "origin": "s:1"})
    assert run(table(rows), tmp_path).kept.height == 3  # default view: the user turns
    assert run(table(rows), tmp_path, view="prompt", threshold=0.6).kept.height == 1  # why it is not the default


@pytest.mark.parametrize("kw", [
    {"keep": "best", "view": "user"}, {"keep": "first", "view": "conversation"},
    {"keep": "source_priority", "sources": ["b", "a"], "view": "response"},
])
def test_exact_blockwise_plan_equals_process(tmp_path, kw):
    """Exact dedup as a distributed executor runs it: hashes and keep keys per block, the
    keep rule on the concatenated keys, a join per block: process()'s output exactly,
    with duplicates spread over blocks and a user column named like a keep key."""
    rng = np.random.default_rng(3)
    rows = [record(f"question {int(rng.integers(0, 40))}", "answer " * int(rng.integers(1, 4)), "ab"[i % 2])
            for i in range(150)]
    for i, r in enumerate(rows):
        r["id"] = f"r{i:03d}"  # distinct ids for copies: the tie-break, and the cluster's name
    df = table(rows).with_columns(pl.lit(0.5).alias("score"), pl.int_range(pl.len()).mod(5).cast(pl.Float64).alias("heuristic"))
    stage = DedupStage(Config(kind="dedup", method="exact", **kw),
                       StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path))
    ref = stage.process(df)
    assert ref.dropped.height > 20
    for size in (17, 64):
        got = planned_on_copies(stage, df, size)
        assert got.kept.equals(ref.kept) and got.dropped.equals(ref.dropped) and got.stats == ref.stats


def test_jaccard_bound_never_rejects_a_true_pair(tmp_path):
    """The 256-bucket upper bound in `_exact_jaccard(..., threshold)` is >= the exact
    Jaccard of every pair, so the pairs it lets through are all pairs that verify."""
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(300)]
    base = [rng.choices(vocab, k=rng.randint(5, 80)) for _ in range(60)]
    docs = []
    for b in base:  # each base with variants sharing 30-100% of its words
        docs.append(b)
        for _ in range(3):
            keep = rng.randint(len(b) * 3 // 10, len(b))
            docs.append(b[:keep] + rng.choices(vocab, k=len(b) - keep))
    df = table([record(" ".join(d), "a") for d in docs])
    config = load_dataclass(Config, {"kind": "dedup", "ngram": 2}, "stages[0]")
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path, log=lambda m: None)
    stage = DedupStage(config, ctx)
    left, right = np.array([(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs))]).T
    exact = stage._exact_jaccard(df, left, right)
    for t in (0.3, 0.5, 0.8):
        bounded = stage._exact_jaccard(df, left, right, threshold=t)
        assert np.all(bounded >= exact - 1e-12)  # an upper bound everywhere
        np.testing.assert_array_equal(bounded >= t, exact >= t)  # the same verdicts
        ok = bounded >= t
        np.testing.assert_allclose(bounded[ok], exact[ok])  # exact where it matters


def test_default_normalisation_keeps_punctuation_for_minhash(tmp_path):
    """Issue #20: punctuation-to-spaces merges texts that differ only in operators and
    decimal points; MinHash's default keeps punctuation (exact dedup still folds it)."""
    math = ["Compute 12+7*3 and then 4-2/8 for the quiz, please show every step of it.",
            "Compute 12*7+3 and then 4/2-8 for the quiz, please show every step of it.",
            "Compute 1.27 3 and then 4.28 for the quiz, please show every step of it."]
    df = table([record(t, "a") for t in math])
    res = run(df, tmp_path, threshold=0.7, ngram=3)
    assert res.dropped.height == 0 and res.stats["normalize"] == ["unicode", "case", "whitespace"]
    old = run(df, tmp_path, threshold=0.7, ngram=3, normalize=["unicode", "case", "punctuation", "whitespace"])
    assert old.dropped.height == 1  # the first two both read "compute 12 7 3 and then 4 2 8 ..."
    copies = table([record("Hello, world! How are you?", "a"), record("hello world how are you", "a")])
    assert run(copies, tmp_path, method="exact").dropped.height == 1  # exact: punctuation-only copies
