"""benchmarks/train_frontier.py: the Pareto set on hand-made points, the scatter chart, and
the --quick mode end to end on stories260K (skipped when ../shared/data is absent)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO.parent / "shared" / "data" / "models" / "stories260K"


def _bench():
    spec = importlib.util.spec_from_file_location("train_frontier", REPO / "benchmarks" / "train_frontier.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_frontier"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_pareto_on_hand_made_points():
    tf = _bench()
    # (exact match, KL): higher EM and lower KL are better
    pts = [(0.5, 1.0),   # frontier
           (0.4, 2.0),   # dominated by (0.5, 1.0)
           (0.0, 0.1),   # frontier: lowest KL
           (0.8, 3.0),   # frontier: best EM
           (0.5, 1.0),   # an exact tie with the first: both kept
           (0.0, 0.5)]   # dominated by (0.0, 0.1)
    assert tf.pareto(pts) == [True, False, True, True, True, False]
    assert tf.pareto([]) == []


def test_scatter_draws_points_and_frontier():
    from curate.look.charts import scatter

    svg = scatter([{"label": "a <b>", "x": 0.1, "y": 0.2, "dx": 0.05, "dy": 0.1, "frontier": True},
                   {"label": "c", "x": 0.3, "y": 0.6, "frontier": True},
                   {"label": "d", "x": 0.5, "y": 0.1, "frontier": False}],
                  title="t", x_label="KL", y_label="EM", frontier="upper-left")
    assert svg.count("<circle") == 3 and 'class="frontier"' in svg
    assert "a &lt;b&gt;" in svg and "<b>" not in svg
    assert scatter([], title="t", x_label="x", y_label="y").startswith("<svg")


@pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="../shared/data/models/stories260K not present")
def test_quick_mode_end_to_end(tmp_path):
    tf = _bench()
    arms = ["default", "full_lora_lr", "kl_0.1", "replay_10"]
    out = tmp_path / "fr"
    doc = tf.main(["--quick", "--out", str(out), "--arms", ",".join(arms), "--train-examples", "120"])
    got = json.loads((out / "frontier.json").read_text())
    assert [a["arm"] for a in got["arms"]] == arms == [a["arm"] for a in doc["arms"]]
    for a in got["arms"]:
        for k in ("exact_match", "kl_to_base", "ref_loss", "tokens", "wall_s"):
            assert math.isfinite(a[k]), (a["arm"], k)
        assert a["tokens"] > 0 and a["kl_to_base"] >= 0
    assert [a["pareto"] for a in got["arms"]] == tf.pareto([(a["exact_match"], a["kl_to_base"]) for a in got["arms"]])
    svg = (out / "frontier.svg").read_text()
    assert svg.count("<circle") == len(arms)
    md = (out / "frontier.md").read_text()
    assert all(tf.ARMS[a][0] in md for a in arms)
    # the curated run's report shows the frontier
    from curate.look.report import write_report

    html = write_report(out / "runs" / "tasks").read_text()
    assert '<section id="frontier" data-status="ok" data-charts="1">' in html
