"""Whole-table stages from keys (curate/stages/base.py: keys -> plan -> apply): for every
planned stage and configuration, `run_planned(stage, table, part_rows=k)` gives exactly
the kept table, the dropped table (reasons, details) and the stats of `process(table)`,
for parts of a few rows (duplicates and groups across part boundaries) and one part."""
from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest

from curate.contract.datasets import read_dataset
from curate.contract.schema import POLARS_SCHEMA, conversation_id
from curate.contract.typed_config import load_dataclass
from curate.stages.base import ROW_COL, StageContext, has_plan, run_planned
from curate.stages.consensus.stage import Config as ConsensusConfig, ConsensusStage
from curate.stages.dedup.stage import Config as DedupConfig, DedupStage
from curate.stages.mix import Config as MixConfig, MixStage
from curate.stages.select import Config as SelectConfig, SelectStage
from helpers import planned_on_copies

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "raw" / "qa_alpaca.jsonl"
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def _table(rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    """rows: (source, task, prompt, answer); a `heuristic` score from a seeded rng."""
    rng = random.Random(7)
    recs = []
    for i, (source, task, prompt, answer) in enumerate(rows):
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        recs.append({"id": conversation_id(msgs), "source": source, "task": task, "messages": msgs, "meta": "{}",
                     "origin": f"{source}:{i}", "heuristic": rng.choice([0.5, 0.7, 0.9, None])})
    return pl.DataFrame(recs, schema={**POLARS_SCHEMA, "heuristic": pl.Float64})


def handmade(n: int = 120, seed: int = 3) -> pl.DataFrame:
    """Exact copies, copies with other answers and near copies (one word changed), spread
    over the table so that clusters cross every part boundary."""
    rng = random.Random(seed)
    bases = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(n // 4)]
    rows = []
    for i in range(n):
        b = bases[rng.randrange(len(bases))]
        kind = rng.random()
        if kind < 0.3:
            words = b.split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            b = " ".join(words)
        answer = rng.choice(["yes", "no", "yes indeed", f"answer {i % 3}"])
        rows.append((rng.choice(["a", "b", "c"]), rng.choice(["qa", "math", "chat"]), b, answer))
    return _table(rows)


def voting(n: int = 240, seed: int = 5) -> pl.DataFrame:
    """Prompts asked many times with agreeing, near-equal and conflicting answers (and
    some empty prompts), in no order: consensus groups cross every part boundary."""
    rng = random.Random(seed)
    prompts = [f"what is {a} plus {b}" for a in range(5) for b in range(5)] + [""]
    answers = ["the answer is five", "the answer is five indeed", "six", "seven", "the answer is 5"]
    return _table([(rng.choice("ab"), rng.choice(["qa", "math"]), rng.choice(prompts),
                    rng.choice(answers + [f"x{i % 4}"])) for i in range(n)])


def sample() -> pl.DataFrame:
    recs = []
    for line in SAMPLE.read_bytes().splitlines()[:700]:  # the sample plants broken lines: skip them
        try:
            r = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(r, dict) and isinstance(r.get("instruction"), str):
            recs.append(r)
    return _table([("alpaca", ["qa", "convert", "math"][i % 3], f"{r['instruction']} {r.get('input', '')}".strip(),
                    str(r.get("output", ""))) for i, r in enumerate(recs)])


def _ctx(tmp_path: Path) -> StageContext:
    return StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=11, stage_dir=tmp_path / "st", log=lambda m: None)


def same(a, b) -> None:
    assert a.kept.columns == b.kept.columns and a.dropped.columns == b.dropped.columns
    assert a.kept.equals(b.kept), "kept rows differ"
    assert a.dropped.equals(b.dropped), "dropped rows differ"
    assert json.dumps(a.stats, sort_keys=True, default=str) == json.dumps(b.stats, sort_keys=True, default=str)


DEDUP = [
    {"method": "exact", "view": "conversation", "keep": "best", "score_column": "heuristic"},
    {"method": "exact", "view": "user", "keep": "first"},
    {"method": "exact", "view": "user", "keep": "source_priority", "sources": ["b", "a"]},
    {"method": "minhash", "view": "user", "threshold": 0.5, "verify_by": "estimate", "keep": "best"},
    {"method": "minhash", "view": "user", "threshold": 0.5, "verify": False, "keep": "first", "examples": 0},
    {"method": "minhash", "view": "conversation", "threshold": 0.5, "verify_by": "estimate", "num_perm": 64,
     "keep": "source_priority", "sources": ["c"]},
    # exact verification (the default): shingle sets fetched in passes over the parts
    {"method": "minhash", "view": "user", "threshold": 0.5, "keep": "best"},
    {"method": "minhash", "view": "conversation", "threshold": 0.5, "verify_shingles": 600, "keep": "first"},
    {"method": "minhash", "view": "user", "threshold": 0.6, "prefilter": False, "num_perm": 64,
     "keep": "source_priority", "sources": ["b"]},
]
SELECT = [
    {"column": "heuristic", "min": 0.6},
    {"column": "heuristic", "by": "task", "top_k": 7, "missing": "keep"},
    {"column": "heuristic", "by": "source", "top_fraction": 0.3, "keep": "lowest"},
]
MIX = [
    {},
    {"weights": {"qa": 2, "math": 1}, "val_fraction": 0.1},
    {"targets": {"qa": 30, "*": 10}, "max_repeat": 3, "val_fraction": 0.1},
    {"by": "source", "temperature": 2.0, "cap": 20, "max_repeat": 2.5},
]
CONSENSUS = [
    {},  # near-equal answers (word-set Jaccard 0.8) and examples: two passes over the parts
    {"ties": "drop", "prompt_view": "user"},
    {"answer_similarity": 1.0, "examples": 0},  # exact answers, no examples: decided from keys alone
    {"min_group": 2, "majority": 0.3, "answer_similarity": 0.5, "max_answers": 3, "examples": 3},
    {"drop": "none"},
]
CASES = ([(DedupStage, DedupConfig, "dedup", c) for c in DEDUP] + [(SelectStage, SelectConfig, "select", c) for c in SELECT]
         + [(MixStage, MixConfig, "mix", c) for c in MIX]
         + [(ConsensusStage, ConsensusConfig, "consensus", c) for c in CONSENSUS])


@pytest.mark.parametrize("stage_cls,config_cls,kind,cfg", CASES, ids=lambda x: json.dumps(x) if isinstance(x, dict) else None)
@pytest.mark.parametrize("data", ["handmade", "sample"])
def test_planned_equals_process(tmp_path, stage_cls, config_cls, kind, cfg, data):
    if data == "sample" and not SAMPLE.is_file():
        pytest.skip("sample data absent")
    table = handmade() if data == "handmade" else sample()
    if kind == "consensus" and data == "handmade":
        table = voting()
    stage = stage_cls(load_dataclass(config_cls, {"kind": kind, **cfg}, "stages[0]"), _ctx(tmp_path))
    assert has_plan(stage, refine=True)
    whole = stage.process(table)
    if kind == "dedup":
        assert whole.stats["duplicates"] > 0  # the case has something to decide
    if kind == "consensus":
        assert whole.stats["conflict_groups"] > 0
    for part_rows in (7, 64, table.height + 5):
        same(run_planned(stage, table, part_rows), whole)


def test_keys_carry_no_text(tmp_path):
    table = handmade()
    texts = {m["content"] for ms in table["messages"].to_list() for m in ms}
    for stage_cls, config_cls, kind, cfg in CASES:
        stage = stage_cls(load_dataclass(config_cls, {"kind": kind, **cfg}, "stages[0]"), _ctx(tmp_path))
        keys = stage.keys(table)
        assert keys.height == table.height
        for col in keys.columns:
            if keys.schema[col] == pl.String:
                assert not texts & set(keys[col].drop_nulls().to_list()), (kind, col)


def test_dedup_plan_decides_only_clustered_rows(tmp_path):
    table = handmade()
    stage = DedupStage(load_dataclass(DedupConfig, {"kind": "dedup", "method": "exact", "view": "user"}, "s"),
                       _ctx(tmp_path))
    keys = stage.keys(table).with_columns(pl.int_range(table.height, dtype=pl.UInt64).alias(ROW_COL))
    plan = stage.plan(keys)
    res = stage.process(table)
    assert plan.decisions.height == int((res.kept["dedup_cluster_size"] > 1).sum()) + res.dropped.height
    assert plan.decisions[ROW_COL].is_sorted()


def test_not_plannable_configurations(tmp_path):
    mk = lambda **c: DedupStage(load_dataclass(DedupConfig, {"kind": "dedup", **c}, "s"), _ctx(tmp_path))  # noqa: E731
    # exact verification fetches shingle sets in passes over the parts: only a runner that
    # completes such plans (base.complete_plan) plans it; for the others it stays whole
    assert not has_plan(mk(method="minhash")) and has_plan(mk(method="minhash"), refine=True)
    assert has_plan(mk(method="minhash", verify_by="estimate"))
    # semantic dedup: keys carry the embeddings (tests/test_semantic_planned.py)
    assert has_plan(mk(method="semantic", model="m")) and has_plan(mk(method="semantic", model="m"), refine=True)
    sel = SelectStage(load_dataclass(SelectConfig, {"kind": "select", "column": "heuristic", "top_k": 3,
                                                    "diversity": 0.1}, "s"), _ctx(tmp_path))
    assert not has_plan(sel)


def test_apply_on_copies_of_the_plan_equals_process(tmp_path):
    """A distributed executor applies parts on workers, each with its own copy of the
    plan: the report examples' texts come back through the parts' stats."""
    table = handmade()
    stage = DedupStage(load_dataclass(DedupConfig, {"kind": "dedup", "method": "exact", "view": "user"}, "s"),
                       _ctx(tmp_path))
    whole = stage.process(table)
    assert whole.stats["examples"] and all(m["text"] for e in whole.stats["examples"] for m in e["members"])
    same(planned_on_copies(stage, table, 25), whole)


@pytest.mark.parametrize("cfg", [c for c in DEDUP if c["method"] == "minhash" and c.get("verify", True)
                                 and c.get("verify_by", "exact") == "exact"], ids=json.dumps)
@pytest.mark.parametrize("data", ["handmade", "sample"])
def test_minhash_exact_from_keys_equals_whole_table(tmp_path, cfg, data):
    """MinHash with exact verification from keys (keys, then the candidate rows' shingle
    sets fetched in batched passes) decides, row for row and stat for stat, as the
    whole-table path (`_minhash_roots` over the table's text, then `from_clusters`),
    which the Ray executor's in-memory dedup runs."""
    if data == "sample" and not SAMPLE.is_file():
        pytest.skip("sample data absent")
    table = handmade() if data == "handmade" else sample()
    stage = DedupStage(load_dataclass(DedupConfig, {"kind": "dedup", **cfg}, "s"), _ctx(tmp_path))
    whole = stage.from_clusters(table, *stage._minhash_roots(table))
    assert whole.stats["verified_pairs"] > 0
    same(run_planned(stage, table, 64), whole)  # other part sizes: test_planned_equals_process


def test_minhash_exact_verification_passes_are_bounded(tmp_path):
    """Each pass fetches the shingles of at most `verify_shingles` (beyond its first block
    of pairs), asks only for rows in candidate pairs, and a small budget takes more passes
    to the same plan."""
    from curate.stages.base import Refine, complete_plan, part_bounds

    table = handmade()
    asked: dict[int, list] = {}
    decided: dict[int, pl.DataFrame] = {}
    for budget in (20_000_000, 40):
        stage = DedupStage(load_dataclass(DedupConfig, {"kind": "dedup", "method": "minhash", "view": "user",
                                                        "threshold": 0.5, "verify_shingles": budget}, "s"),
                           _ctx(tmp_path))
        bounds = part_bounds(table.height, 16)
        keys = pl.concat([stage.keys(table.slice(lo, hi - lo)).with_columns(
            pl.int_range(lo, hi, dtype=pl.UInt64).alias(ROW_COL)) for lo, hi in bounds])
        plan = stage.plan(keys)
        assert isinstance(plan, Refine)
        st = plan.state
        in_pairs = set(st["left"].tolist()) | set(st["right"].tolist())
        passes = []
        orig = stage.finish_plan

        def spy(refine, extra, orig=orig):
            passes.append(refine.rows.copy())
            return orig(refine, extra)

        stage.finish_plan = spy
        final = complete_plan(stage, plan, bounds, lambda i: table.slice(bounds[i][0], bounds[i][1] - bounds[i][0]))
        assert all(set(r.tolist()) <= in_pairs for r in passes)
        asked[budget] = passes
        decided[budget] = final.decisions
    assert len(asked[20_000_000]) == 1 and len(asked[40]) > 1
    assert decided[40].equals(decided[20_000_000])


def test_consensus_plans_from_keys_and_asks_only_for_contested_answers(tmp_path):
    """Consensus keys carry no text; exact answer comparison without examples is decided
    from keys alone (no pass: a runner without passes may plan it); otherwise the plan
    asks for one row per distinct answer of prompts with 2..max_answers answers, then for
    the examples' rows, and nothing else."""
    from curate.stages.base import Refine

    table = voting()
    mk = lambda **c: ConsensusStage(load_dataclass(ConsensusConfig, {"kind": "consensus", **c}, "s"), _ctx(tmp_path))  # noqa: E731
    keys = lambda st: st.keys(table).with_columns(pl.int_range(table.height, dtype=pl.UInt64).alias(ROW_COL))  # noqa: E731
    exact = mk(answer_similarity=1.0, examples=0)
    assert has_plan(exact) and not isinstance(exact.plan(keys(exact)), Refine)
    st = mk(examples=2)
    assert not has_plan(st) and has_plan(st, refine=True)
    first = st.plan(keys(st))
    assert isinstance(first, Refine) and first.ask == "answers"
    norm = st._normalized_texts(table).with_row_index("r")
    distinct = norm.filter(pl.col("__cons_prompt").str.len_chars() > 0).group_by("__cons_prompt", "__cons_answer").len()
    assert len(first.rows) == distinct.height  # one row per distinct answer (every prompt here is contested)
    extra = pl.concat([st.refine_keys(table, first.rows, 0, first.ask)]).with_columns(
        pl.Series(ROW_COL, first.rows, dtype=pl.UInt64))
    second = st.finish_plan(first, extra)
    # per example: its distinct answers that can be among the 6 shown (here at most 9) + its prompt row
    assert isinstance(second, Refine) and second.ask == "examples" and 0 < len(second.rows) <= 2 * (9 + 1)


def _executor_planned(tmp_path: Path, stage, table: pl.DataFrame, part_rows: int, tag: str):
    """The local executor's planned path (curate/pipeline/executor.py `_planned`: keys per
    part, spilled to disk by dedup, one plan, its passes, apply per part) over `table`
    written as parts of `part_rows` rows; returns (kept, dropped, stats, spill folder)."""
    from curate.contract.ledger import reject_frame
    from curate.pipeline import parts as P
    from curate.pipeline.executor import LocalExecutor
    from curate.pipeline.stage_steps import SPILL_DIR, StageJob

    in_dir, out_dir = tmp_path / f"in-{tag}", tmp_path / f"out-{tag}"
    in_dir.mkdir()
    out_dir.mkdir()
    entries = [P.write_part(in_dir, k, table.slice(lo, part_rows)) for k, lo in enumerate(range(0, table.height, part_rows))]
    job = StageJob(in_dir=in_dir, in_entries=entries, out_dir=out_dir, part_rows=part_rows,
                   progress=P.StageProgress(out_dir, "k"))
    out = LocalExecutor().run_stage(stage, job)
    assert out.memory == "keys"
    spill = job.progress.folder / SPILL_DIR
    kept = read_dataset(out_dir, out.entries)
    dropped = pl.concat([pl.read_parquet(p) for p in out.rejects], how="vertical_relaxed")
    stats = json.loads(json.dumps(out.stats, default=str))
    job.progress.clear()
    return kept, dropped, stats, spill, reject_frame


@pytest.mark.parametrize("cfg", [c for c in DEDUP], ids=json.dumps)
@pytest.mark.parametrize("data", ["handmade", "sample"])
def test_dedup_spilled_keys_equal_process(tmp_path, cfg, data):
    """Dedup through the local executor, its keys spilled to disk part by part
    (curate/stages/dedup/spill.py), removes the same rows, keeps the same representatives
    and gives the same columns and stats as `process` on the whole table, for parts of 7
    and 64 rows and one part; the spill lies under the stage folder and goes with it."""
    if data == "sample" and not SAMPLE.is_file():
        pytest.skip("sample data absent")
    table = handmade() if data == "handmade" else sample()
    mk = lambda: DedupStage(load_dataclass(DedupConfig, {"kind": "dedup", **cfg}, "s"), _ctx(tmp_path))  # noqa: E731
    whole = mk().process(table)
    want_dropped = None
    for part_rows in ((7, 64, table.height + 5) if data == "handmade" else (64, table.height + 5)):  # 7: handmade
        st = mk()
        kept, dropped, stats, spill, reject_frame = _executor_planned(tmp_path, st, table, part_rows, str(part_rows))
        want_dropped = reject_frame(st.name, whole.dropped) if want_dropped is None else want_dropped
        assert kept.equals(whole.kept), part_rows
        assert dropped.equals(want_dropped), part_rows
        assert stats == json.loads(json.dumps(whole.stats, default=str)), part_rows
        assert spill.is_relative_to(tmp_path) and not spill.exists()


def test_dedup_spill_holds_a_budget_of_band_entries(tmp_path, monkeypatch):
    """With a bucket budget of a few entries and windows of one part, the spilled plan
    reads band keys in many runs of slices and sketches two windows at a time, to the
    same decisions."""
    import curate.stages.dedup.stage as S
    from curate.stages.dedup.spill import KeySpill

    table = handmade()
    cfg = {"kind": "dedup", "method": "minhash", "view": "user", "threshold": 0.5}
    whole = DedupStage(load_dataclass(DedupConfig, cfg, "s"), _ctx(tmp_path)).process(table)
    runs, windows = [], []
    orig_slices, orig_values = KeySpill.band_slices, KeySpill.pair_values

    def slices(self, entries):
        for k, r in orig_slices(self, entries):
            runs.append(len(k))
            yield k, r

    def values(self, left, right, fn, window_bytes):
        windows.append(window_bytes)
        return orig_values(self, left, right, fn, window_bytes)

    monkeypatch.setattr(KeySpill, "band_slices", slices)
    monkeypatch.setattr(KeySpill, "pair_values", values)
    monkeypatch.setattr(S, "SPILL_BUCKET_ENTRIES", 40)
    monkeypatch.setattr(S, "SPILL_WINDOW_BYTES", 16 * 128)
    monkeypatch.setattr(S, "SPILL_PAIR_ROWS", 16)
    st = DedupStage(load_dataclass(DedupConfig, cfg, "s"), _ctx(tmp_path))
    kept, dropped, stats, _, _ = _executor_planned(tmp_path, st, table, 16, "budget")
    assert len(runs) > 10 and max(runs) <= 40 + max(runs[:1]) and windows
    assert kept.equals(whole.kept) and stats == json.loads(json.dumps(whole.stats, default=str))


def test_dedup_spill_after_a_killed_plan_is_replaced(tmp_path, monkeypatch):
    """A run killed while planning leaves its spilled keys in the stage folder (inside the
    run directory); the next run of the stage starts a fresh spill there and decides as
    `process`, and the spill goes when the stage is done."""
    from curate.pipeline import parts as P
    from curate.pipeline.executor import LocalExecutor
    from curate.pipeline.stage_steps import SPILL_DIR, StageJob

    table = handmade()
    cfg = {"kind": "dedup", "method": "minhash", "view": "user", "threshold": 0.5}
    whole = DedupStage(load_dataclass(DedupConfig, cfg, "s"), _ctx(tmp_path)).process(table)
    in_dir, out_dir = tmp_path / "in", tmp_path / "run" / "stages" / "01-dedup"
    in_dir.mkdir()
    out_dir.mkdir(parents=True)
    entries = [P.write_part(in_dir, k, table.slice(lo, 32)) for k, lo in enumerate(range(0, table.height, 32))]
    job = lambda: StageJob(in_dir=in_dir, in_entries=entries, out_dir=out_dir, part_rows=32,  # noqa: E731
                           progress=P.StageProgress(out_dir, "k"))
    spill = out_dir / P.PROGRESS_DIR / SPILL_DIR

    def killed(self):
        raise KeyboardInterrupt("killed while planning")

    monkeypatch.setattr(DedupStage, "_plan_spilled", killed)
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor().run_stage(DedupStage(load_dataclass(DedupConfig, cfg, "s"), _ctx(tmp_path)), job())
    left = sorted(p.name for p in spill.iterdir())
    assert "keys-00003.parquet" in left and "bands-00000.npy" in left
    (spill / "keys-00009.parquet").write_bytes(b"stale")  # an earlier, larger run's file
    monkeypatch.undo()
    j = job()
    out = LocalExecutor().run_stage(DedupStage(load_dataclass(DedupConfig, cfg, "s"), _ctx(tmp_path)), j)
    assert not (spill / "keys-00009.parquet").exists()
    assert read_dataset(out_dir, out.entries).equals(whole.kept)
    assert json.loads(json.dumps(out.stats, default=str)) == json.loads(json.dumps(whole.stats, default=str))
    j.progress.clear()
    assert not spill.exists()
