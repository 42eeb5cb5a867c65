"""Config checks that know the pipeline and the data: columns no earlier stage makes are
refused at validate time; mix / select group names the data lacks after reading."""
import json
import subprocess
import sys
import textwrap

import pytest

from curate.contract.typed_config import ConfigError
from curate.pipeline.config import load_config

HEAD = """
[run]
output_dir = "out"

[[sources]]
name = "a"
path = "a.jsonl"
format = "alpaca"
task = "dialogue"

[[sources]]
name = "b"
path = "b.jsonl"
format = "alpaca"
task = "qa"

[[stages]]
kind = "quality"
scorer = "heuristic"
"""


def write(tmp_path, tail):
    for name in ("a", "b"):
        rows = [{"instruction": f"Question {name} {i} about things?", "input": "", "output": f"Answer {i} is fine."}
                for i in range(4)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = tmp_path / "pipeline.toml"
    p.write_text(textwrap.dedent(HEAD + tail))
    return p


def cli(*args):
    return subprocess.run([sys.executable, "-m", "curate", *args], capture_output=True, text=True)


def test_select_on_a_column_no_stage_makes_is_refused_at_validate(tmp_path):
    p = write(tmp_path, '[[stages]]\nkind = "select"\ncolumn = "heuristc"\nmin = 0.5\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "stages[1].column" in msg and "'heuristc'" in msg and "did you mean 'heuristic'" in msg
    assert "quality (quality): heuristic" in msg
    r = cli("validate", str(p))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "heuristc" in r.stderr


def test_dedup_score_column_and_later_stage_columns(tmp_path):
    # a column made by a LATER stage is refused too: order matters
    p = write(tmp_path, '[[stages]]\nkind = "dedup"\nscore_column = "consensus"\n\n'
                        '[[stages]]\nkind = "consensus"\n')
    with pytest.raises(ConfigError, match=r"stages\[1\].score_column.*'consensus'"):
        load_config(p)
    ok = write(tmp_path, '[[stages]]\nkind = "consensus"\n\n[[stages]]\nkind = "dedup"\nscore_column = "consensus"\n\n'
                         '[[stages]]\nkind = "select"\ncolumn = "dedup_cluster_agreement"\nmin = 0.5\n')
    assert load_config(ok).stages[3].column == "dedup_cluster_agreement"


def test_mix_weight_typo_is_an_error_after_reading(tmp_path):
    p = write(tmp_path, '[[stages]]\nkind = "mix"\nweights = { dialog = 1, qa = 1 }\n')
    load_config(p)  # group names are only known once the data is read
    r = cli("run", str(p), "--quiet")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "weights" in r.stderr and "'dialog' (did you mean 'dialogue'?)" in r.stderr and "dialogue, qa" in r.stderr
    assert not (tmp_path / "out" / "stages" / "01-quality").exists()  # refused before any stage ran


def test_mix_not_strict_warns_and_runs(tmp_path):
    p = write(tmp_path, '[[stages]]\nkind = "mix"\nstrict = false\nweights = { dialog = 1, qa = 1 }\n')
    r = cli("run", str(p))
    assert r.returncode == 0, r.stderr
    assert "warning: stages[1] (mix)" in r.stdout + r.stderr


def test_select_quota_name_checked(tmp_path):
    p = write(tmp_path, '[[stages]]\nkind = "select"\ncolumn = "heuristic"\nquotas = { qq = 2 }\n')
    r = cli("run", str(p), "--quiet")
    assert r.returncode != 0 and "quotas" in r.stderr and "'qq'" in r.stderr
