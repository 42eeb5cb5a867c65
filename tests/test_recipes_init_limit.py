"""An easy start (#16): every recipe in recipes/ runs on a small fixture of its data shape;
`curate init` writes a commented pipeline that validates and runs; `curate run --limit N`
samples N records per source (seeded) into its own run directory."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.pipeline.config import load_config, parse_config
from curate.pipeline.runner import limited_output_dir, run_pipeline
from curate.contract.datasets import read_dataset

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
SAMPLE_TOKENIZER = ROOT / "sample_data" / "tokenizer"
pytestmark = pytest.mark.skipif(not SAMPLE_TOKENIZER.is_dir(), reason="sample tokenizer missing")

CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Prague", "Warsaw", "Dublin", "Oslo",
          "Athens", "Budapest", "Helsinki", "Stockholm", "Brussels", "Amsterdam", "Copenhagen", "Bern"]
TOPICS = ["rivers", "museums", "bridges", "markets", "parks", "churches", "festivals", "libraries"]


SENTENCES = [
    "Start near the old market square, where the oldest buildings stand close together.",
    "A tram pass for the day costs little and saves a lot of walking.",
    "Locals recommend going early, before the tour groups arrive around noon.",
    "Most entrances are free on the first Sunday of the month.",
    "Bring a light jacket, because the wind from the water turns cold by evening.",
    "The side streets hide small cafes that serve the best pastries in town.",
    "Guided walks leave every hour from the tourist office next to the station.",
    "Photography is allowed almost everywhere, but flash is often forbidden indoors.",
    "If it rains, the covered galleries along the main avenue are a good plan.",
    "Evening concerts are common in summer and tickets sell out quickly.",
    "Street signs are bilingual, so finding your way is easy even without a map.",
    "Finish with a view from the hill on the east side as the sun goes down.",
]


def question(i: int) -> tuple[str, str]:
    import itertools

    c, t = CITIES[i % len(CITIES)], TOPICS[(i // len(CITIES)) % len(TOPICS)]
    picks = list(itertools.combinations(range(len(SENTENCES)), 3))[(i * 37) % 220]
    body = " ".join(SENTENCES[k] for k in picks)
    return (f"Describe the {t} of {c} for a visitor who has one afternoon.", f"In {c}, the {t} reward a short visit. {body}")


def fixture(shape: str, folder: Path, n: int = 36) -> Path:
    rows = []
    for i in range(n):
        q, a = question(i)
        if shape == "alpaca":
            rows.append({"instruction": q, "input": "", "output": a})
        elif shape == "sharegpt":
            rows.append({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a},
                                           {"from": "human", "value": "And in the evening?"},
                                           {"from": "gpt", "value": f"In the evening, {a[0].lower()}{a[1:]}"}]})
        elif shape == "messages":
            city = CITIES[i % len(CITIES)]
            rows.append({"messages": [
                {"role": "user", "content": f"What is the weather like in {city} today, and should I take a coat?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": f"call_{i}", "type": "function", "function": {
                    "name": "get_weather", "arguments": json.dumps({"city": city})}}]},
                {"role": "tool", "tool_call_id": f"call_{i}", "name": "get_weather",
                 "content": json.dumps({"temp_c": 5 + i % 20, "rain": i % 3 == 0})},
                {"role": "assistant", "content": f"It is {5 + i % 20} degrees in {city}"
                 + (" with rain, so take a coat and an umbrella." if i % 3 == 0 else "; a light coat is enough today.")}],
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                                            "parameters": {"type": "object"}}}]})
        elif shape == "dolly":
            rows.append({"instruction": q, "context": "", "response": a,
                         "category": ["open_qa", "brainstorming", "summarization"][i % 3]})
    path = folder / f"{shape}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RECIPE_SHAPES = {"alpaca.toml": "alpaca", "sharegpt-chat.toml": "sharegpt", "openai-tools.toml": "messages",
                 "dolly-categories.toml": "dolly"}


def test_every_recipe_is_covered():
    names = {p.name for p in RECIPES.glob("*.toml")} - {"noisy-multitask.toml", "noisy-multitask-consensus.toml"}  # tests/test_recipes.py
    assert names == set(RECIPE_SHAPES)


@pytest.mark.parametrize("recipe", sorted(RECIPE_SHAPES))
def test_recipe_runs_on_a_fixture(tmp_path, recipe):
    data = tomllib.loads((RECIPES / recipe).read_text())
    data["sources"][0]["path"] = str(fixture(RECIPE_SHAPES[recipe], tmp_path))
    data["render"]["tokenizer"] = str(SAMPLE_TOKENIZER)
    data["render"]["max_length"] = 512
    cfg = parse_config(data, tmp_path / recipe)
    m = run_pipeline(cfg, out_dir=tmp_path / "run")
    led = m["ledger"]
    assert led["reconciles"] and led["read"] == 36 and led["kept"] > 0
    assert m["shards"]["train"] and m["export"]["rows"]["train"] > 0
    ex = tmp_path / "run" / m["export"]["dir"]
    first = json.loads((ex / "train.jsonl").read_text().splitlines()[0])
    if recipe == "dolly-categories.toml":
        assert {"instruction", "input", "output"} <= set(first)
        tasks = {json.loads(line)["task"] for line in (ex / "train.jsonl").read_text().splitlines()}
        assert tasks == {"open_qa", "brainstorming", "summarization"}  # Dolly's category is the task
    elif recipe == "sharegpt-chat.toml":
        assert [t["from"] for t in first["conversations"]] == ["human", "gpt", "human", "gpt"]
    else:
        assert first["messages"][0]["role"] in ("user", "system")


def test_init_writes_a_pipeline_that_validates_and_runs(tmp_path):
    runner = CliRunner()
    for shape, fmt in [("alpaca", "alpaca"), ("sharegpt", "sharegpt"), ("dolly", "dolly"), ("messages", "messages")]:
        data = fixture(shape, tmp_path)
        out = tmp_path / f"{shape}.toml"
        res = runner.invoke(main, ["init", str(data), "-o", str(out), "--tokenizer", str(SAMPLE_TOKENIZER)])
        assert res.exit_code == 0, res.output
        text = out.read_text()
        assert f'format = "{fmt}"' in text and "# " in text and "[render]" in text
        if shape == "dolly":
            assert 'task_field = "category"' in text and "seen: brainstorming, open_qa, summarization" in text
        cfg = load_config(out)
        assert cfg.sources[0].format == fmt and cfg.export is not None
    # runs end to end
    m = run_pipeline(load_config(tmp_path / "alpaca.toml"))
    assert m["ledger"]["reconciles"] and m["export"]["rows"]["train"] > 0
    # without a tokenizer: [render] commented out, still a valid pipeline
    res = runner.invoke(main, ["init", str(tmp_path / "alpaca.jsonl"), "-o", str(tmp_path / "bare.toml")])
    assert res.exit_code == 0 and load_config(tmp_path / "bare.toml").render is None
    # never overwrites, and a format it cannot detect is a one-line error
    res = runner.invoke(main, ["init", str(tmp_path / "alpaca.jsonl"), "-o", str(tmp_path / "bare.toml")])
    assert res.exit_code != 0 and "exists" in res.output
    (tmp_path / "odd.jsonl").write_text(json.dumps({"a": 1}) + "\n")
    res = runner.invoke(main, ["init", str(tmp_path / "odd.jsonl"), "-o", str(tmp_path / "odd.toml")])
    assert res.exit_code != 0 and "give --format" in res.output and "Traceback" not in res.output


def test_limit_samples_per_source_into_its_own_run(tmp_path):
    fixture("alpaca", tmp_path, n=36)
    with open(tmp_path / "alpaca.jsonl", "a") as fh:
        fh.write("{broken\n")
    fixture("sharegpt", tmp_path, n=20)
    (tmp_path / "p.toml").write_text(
        '[run]\noutput_dir = "runs/x"\nseed = 5\n'
        '[[sources]]\nname = "a"\npath = "alpaca.jsonl"\nformat = "alpaca"\ntask = "qa"\n'
        '[[sources]]\nname = "c"\npath = "sharegpt.jsonl"\nformat = "sharegpt"\ntask = "chat"\n'
        '[[stages]]\nkind = "normalize"\n')
    cfg = load_config(tmp_path / "p.toml")
    assert limited_output_dir(cfg, 7) == tmp_path / "runs" / "x-limit-7"
    res = CliRunner().invoke(main, ["run", str(tmp_path / "p.toml"), "--limit", "7", "--quiet"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "x-limit-7"
    m = json.loads((run / "manifest.json").read_text())
    assert not (tmp_path / "runs" / "x").exists()  # the full run's directory is untouched
    assert m["limit"] == {"per_source": 7, "records_before": {"a": 36, "c": 20}}
    assert [s["records"] for s in m["sources"]] == [7, 7]
    assert m["ledger"]["read"] == 7 + 7 + 1 and m["ledger"]["reconciles"]  # the broken line stays quarantined
    # seeded: the same sample again, another with another seed, spread over the file
    def sample(d: Path) -> list[str]:
        return read_dataset(d / "stages" / "00-read")["origin"].to_list()

    first = sample(run)
    m2 = run_pipeline(cfg, out_dir=tmp_path / "again", limit=7)
    assert m2["ledger"] == m["ledger"] and sample(tmp_path / "again") == first
    cfg.run.seed = 6
    run_pipeline(cfg, out_dir=tmp_path / "other", limit=7)
    assert sample(tmp_path / "other") != first
    lines = sorted(int(o.rsplit(":", 1)[1]) for o in first if "alpaca" in o)
    assert len(lines) == 7 and lines[-1] > 7  # not simply the first lines
