"""The `decontaminate` stage: eval sets in every file type, verbatim and lightly edited
leaks found and attributed to their eval item, clean data left alone, and the GSM8K test
set planted into a real instruction set (recall >= 0.95, false positives <= 1%)."""
from __future__ import annotations

import csv
import gzip
import json
import random
import re
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from curate.stages.base import StageContext
from curate.stages.decontaminate.stage import STAGE, Config
from curate.contract.typed_config import ConfigError, load_dataclass
from helpers import pair, records

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

Q1 = ("A bakery sells muffins for three dollars each and cookies for two dollars each. On Monday it sold forty "
      "muffins and sixty cookies. How much money did the bakery make on Monday?")
Q2 = ("Tom has twelve marbles. He gives a third of them to his sister and then buys five more at the store. "
      "How many marbles does Tom have now?")
SHORT = "What is the capital city of the country Australia?"  # 9 words: indexed whole


def table(pairs) -> pl.DataFrame:
    return records([pair(u, a) for u, a in pairs])


def write_jsonl(path: Path, items, gz=False):
    data = "".join(json.dumps(it) + "\n" for it in items).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def run(pairs, base: Path, **cfg):
    config = load_dataclass(Config, {"kind": "decontaminate", **cfg})
    config.check_paths(base)
    ctx = StageContext(run_dir=base, config_dir=base, seed=0, stage_dir=base)
    return STAGE(config, ctx).process(table(pairs))


@pytest.fixture
def evalset(tmp_path):
    write_jsonl(tmp_path / "eval.jsonl", [{"q": Q1, "a": "220"}, {"q": Q2, "a": "13"}, {"q": SHORT, "a": "Canberra"}])
    return tmp_path


def test_verbatim_edited_short_and_clean(evalset):
    edited = Q2.replace("twelve", "fifteen").replace("store", "shop").upper()  # casing ignored
    pairs = [
        ("Solve: " + Q1, "The bakery made 240 dollars."),  # verbatim in the prompt
        ("Answer this.", "Sure. " + edited),  # edited copy in the answer
        ("Quiz: what is the capital city of the country Australia? Be brief.", "Canberra"),
        ("Tom went to the store to buy marbles for his sister.", "He bought twelve marbles."),  # shares words, no 13-gram
    ]
    res = run(pairs, evalset, evalsets=[{"path": "eval.jsonl", "fields": ["q"]}])
    assert res.dropped["_reason"].to_list() == ["contaminated"] * 3
    assert res.dropped["decontaminate_item"].to_list() == ["eval.jsonl:1", "eval.jsonl:2", "eval.jsonl:3"]
    assert res.dropped["_detail"][0].startswith("eval.jsonl:1 (")
    assert "A bakery sells muffins" in res.dropped["_detail"][0]
    assert res.dropped["decontaminate_overlap"][0] == pytest.approx(1.0)
    assert 0 < res.dropped["decontaminate_overlap"][1] < 1.0
    assert res.kept.height == 1 and res.kept["decontaminate_matches"].to_list() == [0]
    assert res.stats["eval_items"] == 3 and res.stats["hits"] == {"contaminated": 3}


def test_min_overlap_and_on(evalset):
    pairs = [("Q: " + Q1, "ok")]
    assert run(pairs, evalset, evalsets=[{"path": "eval.jsonl", "fields": ["q"]}], on=["response"]).dropped.height == 0
    half = " ".join(Q1.split()[:20])
    res = run([(half, "ok")], evalset, evalsets=[{"path": "eval.jsonl", "fields": ["q"]}], min_overlap=0.5)
    assert res.dropped.height == 0 and res.kept["decontaminate_matches"][0] > 0


@pytest.mark.parametrize("kind", ["jsonl.gz", "json", "csv", "parquet"])
def test_evalset_file_types(tmp_path, kind):
    items = [{"id": "x1", "question": Q1}, {"id": "x2", "question": Q2}]
    path = tmp_path / f"ev.{kind}"
    if kind == "jsonl.gz":
        write_jsonl(path, items, gz=True)
    elif kind == "json":
        path.write_text(json.dumps(items))
    elif kind == "csv":
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["id", "question"])
            w.writeheader()
            w.writerows(items)
    else:
        pl.DataFrame(items).write_parquet(path)
    res = run([(Q2, "13")], tmp_path, evalsets=[{"path": path.name, "fields": ["question"], "id_field": "id"}])
    assert res.dropped["decontaminate_item"].to_list() == [f"{path.name}:x2"]


def test_boilerplate_shared_by_many_items_is_ignored(tmp_path):
    boiler = "Read the following passage carefully and answer the question that follows it below."
    items = [{"q": f"{boiler} Passage number {i} talks about topic {i}."} for i in range(20)]
    write_jsonl(tmp_path / "ev.jsonl", items)
    res = run([(boiler, "ok")], tmp_path, evalsets=[{"path": "ev.jsonl", "fields": ["q"]}])
    assert res.dropped.height == 0
    res = run([(boiler, "ok")], tmp_path, evalsets=[{"path": "ev.jsonl", "fields": ["q"]}], max_item_frequency=50)
    assert res.dropped.height == 1


def test_missing_files_and_fields_are_refused(evalset):
    with pytest.raises(ConfigError, match=r"evalsets\[0\].path"):
        load_dataclass(Config, {"kind": "decontaminate", "evalsets": [{"path": "nope.jsonl", "fields": ["q"]}]}).check_paths(evalset)
    with pytest.raises(ConfigError, match=r"evalsets\[0\].fields"):
        load_dataclass(Config, {"kind": "decontaminate", "evalsets": [{"path": "eval.jsonl", "fields": ["question"]}]}).check_paths(evalset)
    with pytest.raises(ConfigError, match="config key `n`"):
        load_dataclass(Config, {"kind": "decontaminate", "n": 1, "evalsets": [{"path": "eval.jsonl", "fields": ["q"]}]})
    with pytest.raises(ConfigError, match="evalsets"):
        load_dataclass(Config, {"kind": "decontaminate", "evalsets": []})


def test_config_loader_refuses_missing_evalset(tmp_path):
    from curate.pipeline.config import load_config

    (tmp_path / "data.jsonl").write_text(json.dumps({"instruction": "a", "input": "", "output": "b"}) + "\n")
    (tmp_path / "pipeline.toml").write_text(
        '[[sources]]\nname = "s"\npath = "data.jsonl"\n\n[[stages]]\nkind = "decontaminate"\n'
        'evalsets = [{ path = "missing.jsonl", fields = ["question"] }]\n'
    )
    with pytest.raises(ConfigError, match=r"stages\[0\]\.evalsets\[0\]\.path"):
        load_config(tmp_path / "pipeline.toml")


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([Q1, Q2, "hello there", SHORT + " ok"]), st.sampled_from(["ok", Q2])), min_size=1, max_size=8))
def test_flag_and_drop_agree(tmp_path_factory, pairs):
    base = tmp_path_factory.mktemp("ev")
    write_jsonl(base / "eval.jsonl", [{"q": Q1}, {"q": Q2}, {"q": SHORT}])
    cfg = {"evalsets": [{"path": "eval.jsonl", "fields": ["q"]}]}
    flagged = run(pairs, base, action="flag", **cfg)
    dropped = run(pairs, base, **cfg)
    flags = flagged.kept["decontaminate_flag"]
    assert sorted(dropped.dropped["origin"].to_list()) == sorted(flagged.kept.filter(flags.is_not_null())["origin"].to_list())


# ------------------------------------------------------------------ GSM8K planted in real data

GSM8K = SHARED / "evalsets" / "gsm8k_test.jsonl"
ALPACA = SHARED / "formats" / "alpaca_llamafactory_demo.json"
NAMES = ["Alice", "Bob", "Carlos", "Dana", "Emeka", "Fatima", "Goran", "Hana"]


def light_edit(q: str, rng: random.Random) -> str:
    """One or two small, realistic edits: a number changed, a name swapped, a word dropped
    or added, plus casing/punctuation noise and a framing prefix."""
    words = q.split()
    for _ in range(rng.randint(1, 2)):
        op = rng.choice(["number", "name", "drop", "insert"])
        nums = [i for i, w in enumerate(words) if re.fullmatch(r"\$?\d+[.,]?", w)]
        caps = [i for i, w in enumerate(words) if i > 0 and w[:1].isupper() and w.isalpha()]
        if op == "number" and nums:
            i = rng.choice(nums)
            words[i] = re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), words[i])
        elif op == "name" and caps:
            i = rng.choice(caps)
            words[i] = rng.choice(NAMES)
        elif op == "drop" and len(words) > 10:
            del words[rng.randrange(len(words))]
        else:
            words.insert(rng.randrange(len(words)), rng.choice(["really", "exactly", "then", "also"]))
    text = " ".join(words)
    text = rng.choice([text, text.lower(), text.replace(",", ""), text.rstrip("?") + " ?"])
    return rng.choice(["", "Solve the following problem. ", "Question: ", "Math word problem:\n"]) + text


@pytest.mark.skipif(not (GSM8K.is_file() and ALPACA.is_file()), reason="../shared/data is absent")
def test_gsm8k_planted_recall_and_false_positives():
    rng = random.Random(0)
    gsm = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines() if line.strip()]
    clean = [(it["instruction"] + ("\n\n" + it["input"] if it["input"] else ""), it["output"])
             for it in json.loads(ALPACA.read_text(encoding="utf-8"))]
    picked = rng.sample(range(len(gsm)), 300)
    planted = []
    for j, i in enumerate(picked):
        q = gsm[i]["question"] if j % 2 == 0 else light_edit(gsm[i]["question"], rng)
        answer = gsm[i]["answer"].split("####")[-1].strip()
        planted.append((q, "The answer is " + answer + "."))
    pairs = clean + planted
    res = run(pairs, GSM8K.parent, evalsets=[{"path": GSM8K.name, "fields": ["question"]}], action="flag")
    flags = res.kept["decontaminate_flag"].to_list()
    n_clean = len(clean)
    fp = sum(f is not None for f in flags[:n_clean]) / n_clean
    verbatim = [flags[n_clean + j] is not None for j in range(0, len(planted), 2)]
    edited = [flags[n_clean + j] is not None for j in range(1, len(planted), 2)]
    recall = sum(f is not None for f in flags[n_clean:]) / len(planted)
    items = res.kept["decontaminate_item"].to_list()[n_clean:]
    right_item = sum(item == f"{GSM8K.name}:{i + 1}" for item, i in zip(items, picked)) / len(planted)
    print(f"gsm8k planted: recall={recall:.3f} (verbatim {sum(verbatim)}/{len(verbatim)}, edited {sum(edited)}/{len(edited)}), "
          f"item attribution={right_item:.3f}, false positives={fp:.4f} on {n_clean} clean alpaca records")
    assert recall >= 0.95 and all(verbatim)
    assert right_item >= 0.95
    assert fp <= 0.01


@pytest.mark.skipif(not (SHARED / "formats").is_dir() or not GSM8K.is_file(), reason="../shared/data is absent")
def test_real_instruction_files_are_clean_against_gsm8k_and_humaneval():
    from curate.read.sources import SourceConfig
    from curate.read.readers import read_source

    evalsets = [{"path": "gsm8k_test.jsonl", "fields": ["question"]},
                {"path": "HumanEval.jsonl.gz", "fields": ["prompt", "canonical_solution"], "id_field": "task_id"}]
    config = load_dataclass(Config, {"kind": "decontaminate", "evalsets": evalsets, "action": "flag"})
    config.check_paths(GSM8K.parent)
    ctx = StageContext(run_dir=GSM8K.parent, config_dir=GSM8K.parent, seed=0, stage_dir=GSM8K.parent)
    total = hits = 0
    stage = STAGE(config, ctx)
    for f in sorted((SHARED / "formats").glob("*.json")):
        t = read_source(SourceConfig(name=f.stem, path=str(f)), f.parent).table
        res = stage.process(t)
        total += t.height
        hits += res.stats["hits"].get("contaminated", 0)
    print(f"contaminated on the five real files: {hits}/{total}")
    assert hits <= 0.01 * total
