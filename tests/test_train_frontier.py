"""benchmarks/train_frontier.py: the Pareto set on hand-made points, the scatter chart, and
the --quick mode end to end on stories260K (skipped when ../shared/data is absent)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from helpers import load_script

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO.parent / "shared" / "data" / "models" / "stories260K"


def _bench():
    return load_script(REPO / "benchmarks" / "train_frontier.py", "train_frontier")


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


def test_arm_tables_follow_the_defaults_and_the_epoch_budget(tmp_path):
    from train.config import TrainConfig

    tf = _bench()
    lr = TrainConfig(base_model="x").learning_rate
    m = tmp_path  # a model directory (parse_train_config checks that it exists)
    assert "epochs" not in tf.arm_train_table("default", m) and "learning_rate" not in tf.arm_train_table("default", m)
    # the default arm is the product's default; the old default and the other arms the adapter alone
    assert "lr" not in tf.arm_train_table("default", m) and "modules_to_save" not in tf.arm_train_table("default", m)
    old = tf.arm_train_table("default_old", m)
    assert old["lr"] == pytest.approx(lr) == pytest.approx(2e-4) and old["modules_to_save"] == []
    assert tf.arm_train_table("lr_5x", m)["modules_to_save"] == [] and tf.arm_train_table("embed_5x", m)["modules_to_save"] == ["embed_tokens"]
    assert tf.arm_train_table("default", m, epochs=2)["epochs"] == 2
    assert tf.arm_train_table("epochs_3", m)["epochs"] == 3
    assert tf.arm_train_table("epochs_3", m, epochs=2)["epochs"] == 6
    assert tf.arm_train_table("lr_50x", m)["lr"] == pytest.approx(50 * lr)
    full = tf.arm_train_table("full_5x", m, epochs=3)
    assert full["method"] == "full" and full["lr"] == pytest.approx(5 * lr) and full["epochs"] == 3
    for arm in tf.ARMS:  # every arm's table is one the trainer accepts
        from train import parse_train_config

        parse_train_config({**tf.arm_train_table(arm, m, epochs=2), "seed": 0}, REPO)


def test_report_shows_a_frontier_file(tmp_path):
    """A frontier results file in the run (or passed) gives the report a section with the
    scatter, one table row per arm with per-task exact match, and a partial grid's warning."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_report import build_run, summary

    from curate.look.report import write_report

    run = build_run(tmp_path / "data")
    arms = [{"arm": "default", "label": "default [train]", "seeds": 3, "exact_match": 0.0, "exact_match_std": 0.0,
             "exact_match_by_task": {"capital": 0.0, "shift": 0.0}, "kl_to_base": 0.37, "kl_to_base_std": 0.01,
             "ref_loss": 1.66, "tokens": 101436, "wall_s": 200.0, "pareto": True},
            {"arm": "full_5x", "label": "full FT <lr 5x>", "seeds": 2, "exact_match": 0.61, "exact_match_std": 0.05,
             "exact_match_by_task": {"capital": 0.28, "shift": 1.0}, "kl_to_base": 2.45, "kl_to_base_std": 0.1,
             "ref_loss": 3.71, "tokens": 101436, "wall_s": 150.0, "pareto": True}]
    doc = {"meta": {"model": "m", "seeds": 3, "command": "python benchmarks/train_frontier.py",
                    "partial": "5 of 6 (arm, seed) runs finished"}, "arms": arms}
    (run / "frontier.json").write_text(json.dumps(doc), encoding="utf-8")
    html = write_report(run).read_text(encoding="utf-8")
    sec = summary(html)["sections"]["frontier"]
    assert sec["status"] == "ok" and sec["charts"] == 1 and sec["data"] == {"arms": 2, "pareto": ["default", "full_5x"]}
    import re

    body = re.search(r'<section id="frontier".*?</section>', html, re.S).group(0)
    assert "EM capital" in body and "EM shift" in body and "0.280" in body and "full FT &lt;lr 5x&gt;" in body
    assert "partial grid: 5 of 6 (arm, seed) runs finished" in body
    assert body.count("<circle") == 2
    (run / "frontier.json").write_text("{not json", encoding="utf-8")  # a broken file: said, not a crash
    html = write_report(run).read_text(encoding="utf-8")
    assert summary(html)["sections"]["frontier"]["status"] != "ok"


def test_scatter_log_x_spans_decades():
    """KL to base across mitigations spans decades (0.02 to 2.5 in the grid): a log x axis
    with one tick per decade; a point at x <= 0 cannot be placed and is left out."""
    import re

    from curate.look.charts import scatter

    svg = scatter([{"label": "lr 0.1x", "x": 0.017, "y": 0.0, "dx": 0.05},
                   {"label": "full", "x": 2.4, "y": 0.6, "frontier": True},
                   {"label": "l2", "x": 0.24, "y": 0.06, "frontier": True},
                   {"label": "zero", "x": 0.0, "y": 0.0}],
                  title="t", x_label="KL", y_label="EM", frontier="upper-left", log_x=True)
    assert svg.count("<circle") == 3 and "zero" not in svg
    assert re.findall(r'text-anchor="middle">([^<]*)<', svg)[:4] == ["0.01", "0.1", "1", "10"]
    xs = {t: float(x) for x, t in re.findall(r'<circle cx="([\d.]+)"[^>]*><title>([^:]*):', svg)}
    # equal ratios, equal distances: 0.24 -> 2.4 is one decade, as 0.017 -> 0.17 would be
    assert xs["lr 0.1x"] < xs["l2"] < xs["full"]
    decade = xs["full"] - xs["l2"]
    assert decade > 0 and (xs["l2"] - xs["lr 0.1x"]) == pytest.approx(decade * math.log10(0.24 / 0.017), rel=1e-3)


def test_scatter_labels_stay_inside_when_many_points_share_the_bottom():
    """Most LoRA arms score exact match 0: their labels stack below the lowest point and
    must be pushed up, not drawn past the chart's bottom edge."""
    import re

    from curate.look.charts import scatter

    pts = [{"label": f"arm {i}", "x": 0.01 * (i + 1), "y": 0.0} for i in range(10)] + [{"label": "top", "x": 2.0, "y": 0.6}]
    svg = scatter(pts, title="t", x_label="KL", y_label="EM", log_x=True, height=340)
    ys = [float(y) for y, t in re.findall(r'<text x="[\d.]+" y="([\d.]+)" fill="[^"]+">(arm \d+|top)</text>', svg)]
    assert len(ys) == 11 and max(ys) <= 340 and min(ys) >= 0
    assert all(b - a >= 11 - 1e-6 for a, b in zip(sorted(ys), sorted(ys)[1:]))
