"""Cases for tests/test_memory_plans.py: mix and select on generated tables with many
groups, null tasks, a val split, up- and downsampling, unit = tokens, canonical and other
ids; each case's output reduced to a sha256 of its kept and dropped rows' key columns
(CSV bytes). The recorded digests in the test are these cases run on main before issue
#19's plan changes (commit ecdd529; the consensus cases on e0aa5d6, before its plan on
integer keys): `PYTHONPATH=<tree> python tests/plan_cases.py`."""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from curate.contract.schema import POLARS_SCHEMA
from curate.contract.typed_config import load_dataclass
from curate.stages.base import StageContext


def table(n: int = 3000, groups: int = 37, canonical_ids: bool = True, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.zipf(1.6, n) % groups  # skewed group sizes
    tasks = [None if i % 53 == 0 else f"t{x:02d}" for i, x in enumerate(g.tolist())]
    words = rng.integers(1, 40, n).tolist()
    ids = ([hashlib.sha1(str(i).encode()).hexdigest()[:20] for i in range(n)] if canonical_ids
           else [f"r{i % (n // 3)}-{i}" for i in range(n)])
    if canonical_ids:  # a few repeated ids (ties broken by position)
        ids = [ids[i - 1] if i % 97 == 0 else x for i, x in enumerate(ids)]
    score = np.round(rng.random(n), 2)  # many ties in the score
    return pl.DataFrame({
        "id": ids, "source": [f"s{x % 5}" for x in g.tolist()], "task": tasks,
        "messages": [[{"role": "user", "content": "q " * w}, {"role": "assistant", "content": "a " * (1 + w % 7)}]
                     for w in words],
        "meta": ["{}"] * n, "origin": [f"f:{i}" for i in range(n)],
        "heuristic": pl.Series(score).scatter(list(range(0, n, 41)), None),
    }, schema_overrides={**POLARS_SCHEMA})


MIX = {
    "temperature": {"kind": "mix", "temperature": 2.0},
    "upsample": {"kind": "mix", "temperature": 3.0, "balance": "upsample", "max_repeat": 3.0, "val_fraction": 0.1},
    "weights_source": {"kind": "mix", "by": "source", "weights": {"s0": 1, "s1": 2, "s2": 0.5, "s3": 1}, "total": 1500},
    "targets_tokens": {"kind": "mix", "unit": "tokens", "targets": {"t00": 4000, "t01": 9000, "t05": 300},
                       "max_repeat": 2.5, "val_fraction": 0.2, "val_max": 7, "strict": False},
    "tokens_temperature": {"kind": "mix", "unit": "tokens", "temperature": 1.5, "cap": 2000},
    "no_val": {"kind": "mix", "val_fraction": 0.0, "temperature": 1.0, "cap": 40},
}
SELECT = {
    "top_fraction": {"kind": "select", "column": "heuristic", "top_fraction": 0.5},
    "top_k_keep": {"kind": "select", "column": "heuristic", "top_k": 20, "missing": "keep", "keep": "lowest"},
    "quotas_global": {"kind": "select", "column": "heuristic", "by": "source", "quotas": {"s0": 3, "s1": 0},
                      "top_k": 50, "min": 0.1},
}


CONSENSUS = {
    "default": {"kind": "consensus"},
    "exact_ties_drop": {"kind": "consensus", "answer_similarity": 1.0, "ties": "drop", "examples": 3},
    "plurality": {"kind": "consensus", "majority": 0.0, "min_group": 2, "max_answers": 3, "examples": 20},
    "none": {"kind": "consensus", "drop": "none", "answer_similarity": 0.5, "examples": 0, "name": "cons"},
}


def consensus_table(n: int = 3000, canonical_ids: bool = True, seed: int = 2) -> pl.DataFrame:
    """Prompts from a skewed pool (many repeated, some empty), answers from 5 per prompt
    (two of them near-equal, one rare), null tasks, repeated ids: majorities, minorities,
    near-equal variants, ties."""
    rng = np.random.default_rng(seed)
    p = np.where(rng.random(n) < 0.6, rng.zipf(1.4, n) % (n // 3), rng.integers(0, n // 2, n))
    a = np.minimum(rng.geometric(0.5, n) - 1, 4)
    words = {0: "{p} is the number seven", 1: "{p} is the number eight", 2: "{p} is nine or so",
             3: "{p} is the number seven indeed", 4: "{p} x"}
    prompts = ["" if x % 211 == 0 else ("Q %d?" if x % 2 else "q %d") % x for x in p.tolist()]
    answers = [words[y].format(p=x) for x, y in zip(p.tolist(), a.tolist())]
    ids = ([hashlib.sha1(str(i).encode()).hexdigest()[:20] for i in range(n)] if canonical_ids
           else [f"c{i % (n // 2)}-{i % 7}" for i in range(n)])
    ids = [ids[i - 1] if i % 89 == 0 else x for i, x in enumerate(ids)]
    return pl.DataFrame({
        "id": ids, "source": "s", "task": [None if i % 31 == 0 else f"t{x % 6}" for i, x in enumerate(p.tolist())],
        "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": r}]
                     for q, r in zip(prompts, answers)],
        "meta": ["{}"] * n, "origin": [f"f:{i}" for i in range(n)],
    }, schema_overrides={**POLARS_SCHEMA})


def consensus_digests() -> dict[str, str]:
    from curate.stages.consensus.stage import Config as ConsConfig, ConsensusStage

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for ids in (True, False):
            t = consensus_table(canonical_ids=ids)
            for name, cfg in CONSENSUS.items():
                st = ConsensusStage(load_dataclass(ConsConfig, cfg), StageContext(tmp, tmp, 7, tmp / "c", log=lambda m: None))
                r = st.process(t)
                cols = st.config.output_columns()
                k = r.kept.select("id", "task", *cols).write_csv().encode()
                d = r.dropped.select("id", *cols, "_reason", "_detail").write_csv().encode()
                out[f"consensus/{name}/{ids}"] = (hashlib.sha256(k + b"\n--\n" + d).hexdigest()[:16]
                                                  + hashlib.sha256(json.dumps(r.stats, default=str).encode()).hexdigest()[:8])
    return out


def digest(kept: pl.DataFrame, dropped: pl.DataFrame, cols: list[str]) -> str:
    k = kept.select([c for c in ["id", "task", *cols] if c in kept.columns])
    d = dropped.select("id", "_reason", "_detail")
    return hashlib.sha256(k.write_csv().encode() + b"\n--\n" + d.write_csv().encode()).hexdigest()[:16]


def run_all() -> dict[str, str]:
    from curate.stages.mix import Config as MixConfig, MixStage
    from curate.stages.select import Config as SelConfig, SelectStage

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for ids in (True, False):
            t = table(canonical_ids=ids)
            for name, cfg in MIX.items():
                st = MixStage(load_dataclass(MixConfig, cfg), StageContext(tmp, tmp, 7, tmp / "mix", log=lambda m: None))
                r = st.process(t)
                out[f"mix/{name}/{ids}"] = digest(r.kept, r.dropped, ["repeat", "split", "mix_tokens"]) + \
                    hashlib.sha256(json.dumps(r.stats, default=str).encode()).hexdigest()[:8]
            for name, cfg in SELECT.items():
                st = SelectStage(load_dataclass(SelConfig, cfg), StageContext(tmp, tmp, 7, tmp / "select", log=lambda m: None))
                r = st.process(t)
                out[f"select/{name}/{ids}"] = digest(r.kept, r.dropped, []) + \
                    hashlib.sha256(json.dumps(r.stats, default=str).encode()).hexdigest()[:8]
    return out


if __name__ == "__main__":
    json.dump({**run_all(), **consensus_digests()}, sys.stdout, indent=1, sort_keys=True)
    print()
