"""#19 rendering streamed (curate/render/stream.py): part by part, the same shard bytes,
render stats, token counts and render rejects as the whole-table path (render_examples +
write_shards), packed and unpacked, for both splits, with upsampled copies, dropped rows
and several shards per split; and a run cut into many parts writes the same shards and
manifest as a one-part run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from curate.contract.ledger import reject_frame
from curate.render.config import RenderConfig
from curate.render.renderer import render_examples
from curate.render.shards import counts_by_group, token_counts, write_shards
from curate.render.stream import render_parts, token_facts, write_shards_streamed
from helpers import pair, records
from test_render_tokenizers import get_tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("bpe")


def _table(with_split: bool) -> pl.DataFrame:
    convs = [pair(f"Question {i}: " + "why " * (i % 9), f"Answer {i}: " + "because " * (1 + (i * 7) % 40))
             for i in range(50)]
    convs[5] = [{"role": "user", "content": "no answer here"}]  # no_supervised_tokens
    t = records(convs, source=lambda i: f"s{i % 2}", task=lambda i: f"t{i % 3}", origin="f")
    # upsampled copies (same id, later rows, across parts), one of them of a dropped row
    copies = t[[3, 5, 17, 3, 40]].with_columns(pl.lit(1, pl.Int32).alias("repeat"))
    t = pl.concat([t.with_columns(pl.lit(0, pl.Int32).alias("repeat")), copies])
    if with_split:
        t = t.with_columns(pl.Series("split", ["val" if i % 5 == 0 else "train" for i in range(t.height)]))
    return t


def _cuts(t: pl.DataFrame, size: int):
    return [t.slice(s, size) for s in range(0, t.height, size)] or [t.head(0)]


def _files(run: Path) -> dict:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.glob("shards/*/*"))}


def _rejects(items) -> pl.DataFrame:
    frames = [pl.read_parquet(x) if isinstance(x, Path) else x for x in items]
    return pl.concat(frames, how="vertical_relaxed")


@pytest.mark.parametrize("pack,with_split,overflow,part_size", [
    (True, False, "drop", 7), (False, False, "drop", 11), (True, True, "truncate", 1), (False, True, "drop", 60)])
def test_streamed_render_equals_the_whole_table_path(tok, tmp_path, pack, with_split, overflow, part_size):
    t = _table(with_split)
    cfg = RenderConfig(tokenizer="x", max_length=256, pack=pack, val_fraction=0.2, shard_rows=3, overflow=overflow)
    ref = render_examples(t, cfg, Path("."), 0, tokenizer=tok)
    assert ref.dropped.height and ref.stats["splits"]["val"] > 0  # the case has drops and a val split
    ref_shards = write_shards(ref.examples, tmp_path / "ref" / "shards", cfg)

    pieces = _cuts(t, part_size)

    def parts(columns):
        for p in pieces:
            yield p if columns is None else p.select(columns)

    got = render_parts(parts, t.columns, cfg, Path("."), 0, tmp_path / "work" / "tokens", tmp_path / "work" / "rej",
                       tokenizer=tok)
    shards = write_shards_streamed(got, tmp_path / "new" / "shards", cfg)
    # the workers' path (the Ray executor's render_parts, here in process: a part's render
    # and rejects tasks are tests/test_ray_executor.py's): one ShardPart task per shard,
    # from the keys and plan files, the same files and entries
    seen = []
    got.map_parts = lambda ps, fn, args: seen.append(type(fn).__name__) or [fn(k, ps.read(k), a) for k, a in args]
    assert write_shards_streamed(got, tmp_path / "w2" / "shards", cfg) == json.loads(
        json.dumps(shards).replace("new/", "w2/"))
    assert _files(tmp_path / "w2") == _files(tmp_path / "ref") and seen == ["ShardPart"]
    got.map_parts = None
    assert len(shards["train"]) > 1 and shards["val"]  # several shards in train, and a val split
    assert shards == json.loads(json.dumps(ref_shards).replace("ref", "new")) or shards == ref_shards
    assert _files(tmp_path / "new") == _files(tmp_path / "ref")
    assert got.stats == ref.stats
    assert got.fingerprints == ref.fingerprints
    assert counts_by_group(token_facts(got)) == token_counts(ref.examples)
    assert got.rows_in == t.height == got.examples.height + sum(got.dropped.values())
    want = reject_frame("render", ref.dropped)
    assert _rejects(got.rejects).equals(want)
    assert sorted(got.dropped_ids.to_list()) == sorted(ref.dropped["id"].unique().to_list())


def _pipeline(tmp_path: Path, pack: bool, mix: bool) -> Path:
    data = ROOT / "sample_data"
    mix_stage = '[[stages]]\nkind = "mix"\nby = "task"\ntemperature = 2.0\nval_fraction = 0.1\n' if mix else ""
    p = tmp_path / f"pipeline-{pack}-{mix}.toml"
    p.write_text(f"""
[run]
seed = 3

[[sources]]
name = "qa"
path = "{data / 'raw' / 'qa_alpaca.jsonl'}"
format = "alpaca"
task = "qa"

[[sources]]
name = "code"
path = "{data / 'raw' / 'code_prompt_completion.csv'}"
format = "auto"
task = "code"

[[stages]]
kind = "normalize"

{mix_stage}
[render]
template = "chatml"
tokenizer = "{data / 'tokenizer'}"
max_length = 256
pack = {str(pack).lower()}
shard_rows = 40
val_fraction = 0.1
""")
    return p


@pytest.mark.parametrize("pack,mix", [(True, True), (False, False)])
def test_a_run_in_many_parts_writes_the_shards_of_a_one_part_run(tmp_path, pack, mix):
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline

    if not (ROOT / "sample_data" / "tokenizer").is_dir():
        pytest.skip("sample_data/tokenizer is absent")
    runs = {}
    for part_rows in (64, 1_000_000):
        cfg = load_config(_pipeline(tmp_path, pack, mix))
        cfg.run.part_rows = part_rows
        out = tmp_path / f"run-{part_rows}"
        runs[part_rows] = (run_pipeline(cfg, out_dir=out), out)
    (small, small_dir), (big, big_dir) = runs[64], runs[1_000_000]
    read = json.loads((small_dir / "stages" / "00-read" / "done.json").read_text())
    assert len(read["parts"]) > 5
    assert _files(small_dir) == _files(big_dir) and len(_files(small_dir)) > 2
    assert small["shards"]["val"] and small["render"]["stats"]["splits"]["val"] > 0
    strip = lambda m: {k: v for k, v in m.items() if k not in ("config", "config_hash", "pipeline")}  # noqa: E731
    assert strip(small) == strip(big)
    assert small["ledger"]["reconciles"]
    assert not (small_dir / "render-work").exists()  # the token files are removed once the shards are written
    r1, r2 = (pl.read_parquet(d / "rejects" / "render.parquet") for d in (small_dir, big_dir))
    assert r1.equals(r2)


def test_wide_rows_get_proportionally_smaller_parts(tmp_path):
    """#19 item 2: the default part size follows the measured Arrow bytes per record: a
    source of rows ten times wider gets about a tenth of the rows per part under the same
    budget, and with both sources the widest decides."""
    from curate.pipeline.config import load_config
    from curate.pipeline.memory import MIN_PART_ROWS, ROW_COPIES, choose_part_rows, parse_size

    def source(name: str, words: int) -> str:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"instruction": f"q{i} " + "word " * words, "output": f"a{i} " + "word " * words})
                                + "\n" for i in range(300)))
        return f'[[sources]]\nname = "{name}"\npath = "{path}"\nformat = "alpaca"\ntask = "qa"\n'

    def part_rows(*srcs: str) -> tuple[int, list[str]]:
        p = tmp_path / "p.toml"
        p.write_text('[run]\nmemory_budget = "64MiB"\n' + "".join(srcs) + '[[stages]]\nkind = "normalize"\n')
        log: list[str] = []
        return choose_part_rows(load_config(p), log.append), log

    narrow, wide = source("narrow", 20), source("wide", 200)
    n_narrow, log = part_rows(narrow)
    n_wide, _ = part_rows(wide)
    assert "Arrow bytes per record" in log[0]
    assert MIN_PART_ROWS < n_wide < n_narrow
    assert n_narrow / n_wide > 5  # ten times the text; ids, origins and offsets do not grow with it
    bpr_narrow, bpr_wide = (parse_size("64MiB") / (ROW_COPIES * n) for n in (n_narrow, n_wide))
    assert bpr_wide > 200 * 5 * 2  # the measured bytes cover the text: 2 x 200 words of 5 bytes
    assert bpr_narrow < 20 * 5 * 2 + 400  # ... and no more than the text plus a row's fixed fields
    assert part_rows(narrow, wide)[0] == part_rows(wide, narrow)[0] == n_wide


def test_export_streamed_gives_the_same_files_for_any_part_size(tmp_path, monkeypatch):
    """[export] part by part: jsonl, parquet and the datasets folder are the same bytes for
    parts of 5 rows and for one part, also when a split spans several row groups / record
    batches (BATCH_ROWS made small); the loaded rows equal the jsonl's."""
    import datasets

    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run_pipeline
    from curate.render import export as E
    from test_export import make_run, needs_tokenizer  # noqa: F401

    if not (ROOT / "sample_data" / "tokenizer").is_dir():
        pytest.skip("sample_data/tokenizer is absent")
    monkeypatch.setattr(E, "BATCH_ROWS", 7)
    got = {}
    for part_rows in (5, 1_000_000):
        d = tmp_path / str(part_rows)
        d.mkdir()
        cfg = load_config(make_run(d))
        cfg.run.part_rows = part_rows
        m = run_pipeline(cfg, out_dir=d / "run")
        ex = d / "run" / "export"
        got[part_rows] = {str(p.relative_to(ex)): hashlib.sha256(p.read_bytes()).hexdigest()
                          for p in sorted(ex.rglob("*")) if p.is_file() and p.name != "README.md"}
        assert m["export"]["rows"]["train"] > 7  # several batches in train
    assert got[5] == got[1_000_000] and "datasets/train/state.json" in got[5]
    ex = tmp_path / "5" / "run" / "export"
    ds = datasets.load_from_disk(str(ex / "datasets"))
    rows = [json.loads(x) for x in (ex / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in ds["train"]] == [r["id"] for r in rows]
    assert pl.read_parquet(ex / "train.parquet")["id"].to_list() == [r["id"] for r in rows]
    assert not (ex / ".stream").exists()
