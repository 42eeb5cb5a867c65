"""The HTML report against real runs built here with the real runner: sections present,
figures drawn, and the numbers agree with the manifest and the files on disk.

`build_run` (also used by test_inspect.py and test_report_browser.py) writes a small
multi-task raw set with planted defects (quarantined lines, empty answers, foreign
languages, exact and near duplicates, a hostile `<script>` record) and runs
normalize -> language -> dedup -> quality -> select -> mix -> render on it."""
from __future__ import annotations

import json
import re
from html import escape
import textwrap
from pathlib import Path

import polars as pl
import pytest

from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.contract.datasets import read_dataset

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "sample_data" / "tokenizer"

TOPICS = ["the river", "a small garden", "the old library", "our school bus", "the mountain trail", "a busy market",
          "the city museum", "a quiet beach", "the winter festival", "the science fair", "a local bakery",
          "the football match", "an early train", "the town council", "a summer storm", "the village well"]
VERBS = ["describe", "explain the history of", "write two sentences about", "give three facts about"]
FRENCH = ["Pouvez-vous décrire la rivière qui traverse notre village au printemps, s'il vous plaît ?",
          "Expliquez pourquoi la bibliothèque municipale ferme plus tôt pendant les vacances d'été."]
GERMAN = ["Beschreiben Sie bitte den kleinen Garten hinter dem alten Haus am Rande der Stadt."]
LEAKED = ["A train leaves the station at nine in the morning and travels sixty miles each hour; how far has it gone by noon?",
          "Maria buys four boxes of pencils with twelve pencils in each box and gives away nine; how many pencils remain?"]
HOSTILE = "<script>alert('x')</script> & <b>bold</b> what is this tag doing here?"


def _answer(topic: str, i: int, words: int) -> str:
    base = (f"{topic.capitalize()} is a place many people in town know well. It changes with the seasons, and "
            f"visitors often talk about it with friends. ")
    extra = " ".join(f"Detail number {k} about {topic} is worth a short note here." for k in range(words))
    return base + extra


def write_inputs(tmp: Path) -> None:
    qa = []
    for i in range(40):
        topic = TOPICS[i % len(TOPICS)]
        verb = VERBS[(i // len(TOPICS)) % len(VERBS)]
        qa.append({"instruction": f"Please {verb} {topic} in plain English for a young reader.", "input": "",
                   "output": _answer(topic, i, i % 7)})
    qa += [dict(qa[0]), dict(qa[1]), dict(qa[2])]  # exact duplicates
    qa.append({**qa[3], "instruction": qa[3]["instruction"].replace("Please", "please") + " "})  # near duplicate
    qa += [{"instruction": t, "input": "", "output": "C'est une très bonne question, et voici une réponse complète en français."}
           for t in FRENCH]
    qa += [{"instruction": t, "input": "", "output": "Der Garten ist klein, aber sehr schön und voller bunter Blumen im Sommer."}
           for t in GERMAN]
    qa += [{"instruction": "Describe the village square at noon for a travel guide.", "input": "", "output": ""}]
    qa += [{"instruction": HOSTILE, "input": "", "output": "  "}]  # dropped (empty answer): shown in rejects
    qa += [{"instruction": q, "input": "", "output": "Let us work it out step by step: the answer follows from the numbers given."}
           for q in LEAKED]  # copies of eval items: decontamination must catch them
    lines = [json.dumps(r, ensure_ascii=False) for r in qa] + ["{broken json", json.dumps({"instruction": "no output"})]
    (tmp / "qa.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    chats = []
    for i in range(14):
        topic = TOPICS[(i * 3) % len(TOPICS)]
        chats.append({"conversations": [
            {"from": "human", "value": f"Hello! Can you tell me something interesting about {topic} today?"},
            {"from": "gpt", "value": _answer(topic, i, 1 + i % 3)},
            {"from": "human", "value": "Thank you, and what should a first visitor keep in mind when going there?"},
            {"from": "gpt", "value": "Bring water, arrive early, and ask the people who live nearby for their advice."}]})
    chats.append({"conversations": [{"from": "alien", "value": "?"}]})
    (tmp / "chat.json").write_text(json.dumps(chats), encoding="utf-8")
    evals = [{"question": q, "answer": "42"} for q in LEAKED + ["How many legs do three spiders and two ants have together?"]]
    (tmp / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals), encoding="utf-8")


PIPELINE = """
[run]
output_dir = "run"
seed = 7

[[sources]]
name = "qa"
path = "qa.jsonl"
task = "qa"

[[sources]]
name = "chat"
path = "chat.json"
format = "sharegpt"
task = "dialogue"

[[stages]]
kind = "normalize"

[[stages]]
kind = "language"
keep = ["en"]

[[stages]]
kind = "decontaminate"
evalsets = [{{ path = "eval.jsonl", fields = ["question"] }}]
n = 8

[[stages]]
kind = "dedup"
method = "minhash"
threshold = 0.7

[[stages]]
kind = "quality"
scorer = "heuristic"

[[stages]]
kind = "select"
column = "heuristic"
top_fraction = 0.8

[[stages]]
kind = "mix"
weights = {{ qa = 2, dialogue = 1 }}
val_fraction = 0.2
"""

RENDER = f"""
[render]
template = "chatml"
tokenizer = "{TOKENIZER}"
max_length = 512
pack = true
"""


def build_run(tmp: Path, render: bool = True, extra: str = "") -> Path:
    """Write the inputs and run the pipeline; returns the run directory."""
    tmp.mkdir(parents=True, exist_ok=True)
    write_inputs(tmp)
    (tmp / "pipeline.toml").write_text(PIPELINE.format() + (RENDER if render else "") + textwrap.dedent(extra))
    run_pipeline(load_config(tmp / "pipeline.toml"))
    return tmp / "run"


def stage(manifest: dict, name: str) -> dict:
    return next(s for s in manifest["stages"] if s["name"] == name)


def summary(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-summary">(.*?)</script>', html, re.S)
    assert m, "report has no machine-readable summary"
    return json.loads(m.group(1))


_SHARED: dict[str, Path] = {}


def shared_run(tmp_path_factory) -> Path:
    """One rendered run per test session, shared by the report, inspect and browser
    tests (read-only for them), so the suite builds it once."""
    if "run" not in _SHARED:
        _SHARED["run"] = build_run(tmp_path_factory.mktemp("report_run"))
    return _SHARED["run"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def report(run_dir):
    from curate.look.report import write_report

    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


def test_sections_present_and_skipped_with_a_note(report):
    s = summary(report)["sections"]
    for sec in ("overview", "funnel", "rejects", "lengths", "rendered", "scores", "languages", "duplicates", "mix",
                "samples", "stats", "decontamination"):
        assert s[sec]["status"] == "ok", (sec, s[sec]["note"])
    for sec in ("training",):
        assert s[sec]["status"] == "skipped" and s[sec]["note"]
        assert f'<section id="{sec}" data-status="skipped"' in report
    # every section that says it drew charts has that many SVGs inside it
    for sec, info in s.items():
        body = re.search(rf'<section id="{sec}".*?</section>', report, re.S).group(0)
        assert body.count('<svg class="chart"') == info["charts"], sec
    assert sum(i["charts"] for i in s.values()) >= 10


def test_funnel_and_rejects_agree_with_manifest(report, run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    s = summary(report)["sections"]
    steps = {st["name"]: st for st in s["funnel"]["data"]["steps"]}
    led = m["ledger"]
    assert steps["read"]["rows"] == led["read"]
    assert steps["parsed"]["rows"] == led["read"] - led["quarantined"]
    assert steps["parsed"]["dropped"] == {"quarantined": led["quarantined"]}
    for st in m["stages"]:
        assert steps[st["name"]]["rows"] == st["rows_out"]
        assert steps[st["name"]]["dropped"] == st["dropped"]
        # the SVG funnel carries the same numbers
        assert f'data-step="{st["name"]}" data-rows="{st["rows_out"]}"' in report
    assert steps["rendered"]["rows"] == sum(v["examples"] for v in m["tokens"]["by_task"].values())
    # planted defects were caught, and each reason is browsable with its true count
    assert led["quarantined"] == 3
    assert stage(m, "language")["dropped"].get("wrong_language", 0) >= 2
    assert stage(m, "dedup")["dropped"]["duplicate_of"] >= 3
    rej = s["rejects"]["data"]
    for st in m["stages"]:
        if st["dropped"]:
            assert rej[st["name"]] == st["dropped"]
            on_disk = pl.read_parquet(run_dir / st["rejects"]).group_by("reason").len()
            assert dict(on_disk.iter_rows()) == st["dropped"]
            for reason, n in st["dropped"].items():
                assert f'data-stage="{st["name"]}" data-reason="{reason}" data-count="{n}"' in report
            assert st["rejects"] in report
    assert rej["quarantine"] == 3


def test_histograms_scores_languages_mix(report, run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    s = summary(report)["sections"]
    read = read_dataset(run_dir / "stages" / "00-read")
    last = read_dataset(run_dir / m["stages"][-1]["output"])
    assert s["lengths"]["data"]["before"] == read.height and s["lengths"]["data"]["after"] == last.height
    assert set(s["lengths"]["data"]["tasks"]) == {"qa", "dialogue"}
    # chars and tokens per task: 2 tasks x 2 measures
    assert s["lengths"]["charts"] == 4
    # score histogram: all scored rows vs kept, with the select cut-off marked
    sc = s["scores"]["data"]["heuristic"]
    sel = stage(m, "select")
    assert sc["scored"] == stage(m, "quality")["rows_out"]
    assert sc["kept"] == last.height
    assert sc["thresholds"] and sc["thresholds"][0] == pytest.approx(sel["stats"]["kept_score"]["min"])
    assert 'class="marker"' in re.search(r'<section id="scores".*?</section>', report, re.S).group(0)
    # per task (select ranks by task): the lowest score the select kept in that task
    sel_out = read_dataset(run_dir / sel["output"])
    assert sc["task_thresholds"] == {t: pytest.approx(v) for t, v in sel_out.group_by("task").agg(pl.col("heuristic").min()).iter_rows()}
    assert s["scores"]["charts"] == 1 + 2  # all tasks + one per task
    # languages: judged counts come from the language stage's own stats
    lang = s["languages"]["data"]
    assert lang["language_user"]["before"] == stage(m, "language")["stats"]["languages"]["user"]
    assert set(lang["language_user"]["after"]) == {"en"}
    # mix: requested and achieved shares straight from the mix stats
    mix = s["mix"]["data"]["mix"]
    st = stage(m, "mix")["stats"]
    assert mix["requested"] == {g: v["share"] for g, v in st["requested"].items()}
    assert mix["achieved"] == {g: v["share"] for g, v in st["achieved"].items()}
    assert s["mix"]["data"]["shards"] == m["tokens"]["by_task"]
    # rendered lengths: the shards' examples and tokens as the manifest counts them
    r = s["rendered"]["data"]
    assert r["examples"] == sum(v["examples"] for v in m["tokens"]["by_task"].values())
    assert r["tokens"] == sum(v["tokens"] for v in m["tokens"]["by_task"].values())
    assert r["supervised_tokens"] == sum(v["supervised_tokens"] for v in m["tokens"]["by_task"].values())


def test_duplicates_and_samples(report, run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    s = summary(report)["sections"]
    dd = stage(m, "dedup")["stats"]
    assert s["duplicates"]["data"]["dedup"]["clusters"] == dd["clusters"]["count"]
    sec = re.search(r'<section id="duplicates".*?</section>', report, re.S).group(0)
    assert sec.count('class="cluster"') == len(dd["examples"]) > 0
    assert 'class="member kept"' in sec and 'class="member"' in sec
    smp = re.search(r'<section id="samples".*?</section>', report, re.S).group(0)
    assert smp.count('class="sample"') == s["samples"]["data"]["samples"] > 0
    assert '<mark class="sup">' in smp and "&lt;|im_start|&gt;assistant" in smp


def test_decontamination_hits_with_eval_item(report, run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    dc = stage(m, "decontaminate")
    assert dc["dropped"] == {"contaminated": 2}
    s = summary(report)["sections"]["decontamination"]
    assert s["status"] == "ok" and s["data"]["decontaminate"]["hits"] == 2
    sec = re.search(r'<section id="decontamination".*?</section>', report, re.S).group(0)
    assert "matching eval item" in sec and sec.count("<tr>") == 1 + 2
    rej = pl.read_parquet(run_dir / dc["rejects"])
    for detail in rej["detail"]:
        assert escape(detail[:120]) in sec  # the eval item beside the training row
    for q in LEAKED:
        assert escape(q) in sec


def test_untrusted_text_is_escaped_and_nothing_is_fetched(report):
    assert "<script>alert" not in report
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in report  # the hostile record, shown as text
    assert len(re.findall(r"<script", report)) == 1  # only the inert JSON summary
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', report)
    assert "@import" not in report and "url(" not in report
    assert "default-src 'none'" in report  # and the browser is told to fetch nothing


def test_report_is_deterministic(run_dir, report, tmp_path):
    from curate.look.report import write_report

    again = write_report(run_dir, tmp_path / "again.html").read_text(encoding="utf-8")
    assert again == report


def test_partial_runs_render_with_notes(tmp_path):
    """No render, then no manifest at all (a run that stopped): still a report."""
    from curate.look.report import build_report

    run = build_run(tmp_path, render=False)
    s = summary(build_report(run))["sections"]
    for sec in ("rendered", "samples", "training"):
        assert s[sec]["status"] == "skipped" and s[sec]["note"]
    assert s["lengths"]["status"] == "ok" and s["lengths"]["charts"] == 2  # chars only: no tokenizer
    assert s["mix"]["status"] == "ok"
    (run / "manifest.json").unlink()
    s = summary(build_report(run))["sections"]
    assert s["overview"]["status"] == "skipped"
    assert s["funnel"]["status"] == "ok" and s["duplicates"]["status"] == "ok"
    assert [st["name"] for st in s["funnel"]["data"]["steps"]] == ["normalize", "language", "decontaminate", "dedup",
                                                                 "quality", "select", "mix"]


def test_cli_run_writes_report_and_report_command(tmp_path):
    from click.testing import CliRunner

    from curate.cli import main

    write_inputs(tmp_path)
    (tmp_path / "pipeline.toml").write_text(textwrap.dedent("""
        [run]
        output_dir = "run"
        [[sources]]
        name = "qa"
        path = "qa.jsonl"
        task = "qa"
        [[stages]]
        kind = "normalize"
        """))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "pipeline.toml"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "report.html").is_file()
    out = tmp_path / "elsewhere" / "r.html"
    res = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text() == (tmp_path / "run" / "report.html").read_text()


SAMPLE_PIPELINE = ROOT / "sample_data" / "pipeline.toml"


@pytest.mark.slow
@pytest.mark.skipif(not SAMPLE_PIPELINE.is_file(), reason="sample_data/pipeline.toml not in this checkout")
def test_sample_run_report(tmp_path):
    """The bundled sample pipeline (every stage kind) end to end: every section but
    training is drawn, and the figures agree with its manifest."""
    from curate.look.report import write_report

    m = run_pipeline(load_config(SAMPLE_PIPELINE), out_dir=tmp_path / "sample")
    # the manifest keeps the tokenizer path as written (relative to sample_data/), and this
    # run lives elsewhere: name it
    html = write_report(tmp_path / "sample", tokenizer=TOKENIZER).read_text(encoding="utf-8")
    s = summary(html)["sections"]
    assert {k for k, v in s.items() if v["status"] != "ok"} == {"training"}
    steps = {st["name"]: st for st in s["funnel"]["data"]["steps"]}
    for st in m["stages"]:
        assert steps[st["name"]]["rows"] == st["rows_out"] and steps[st["name"]]["dropped"] == st["dropped"]
    for st in m["stages"]:
        if st["kind"] == "decontaminate":
            assert s["decontamination"]["data"][st["name"]]["hits"] == sum(st["dropped"].values()) > 0
        if st["kind"] == "dedup":
            assert s["duplicates"]["data"][st["name"]]["clusters"] == st["stats"]["clusters"]["count"]
    assert s["rendered"]["data"]["examples"] == sum(v["examples"] for v in m["tokens"]["by_task"].values())
    assert s["lengths"]["charts"] == 2 * len(s["lengths"]["data"]["tasks"])  # chars and tokens: tokenizer found
    assert sum(v["charts"] for v in s.values()) == html.count('<svg class="chart"')
