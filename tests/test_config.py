import subprocess
import sys
import textwrap

import pytest

from curate.pipeline.config import load_config
from curate.contract.typed_config import ConfigError

GOOD = """
[run]
output_dir = "out"
seed = 3

[[sources]]
name = "a"
path = "data.jsonl"
task = "qa"

[[stages]]
kind = "normalize"
"""


def write(tmp_path, text, data=True):
    if data:
        (tmp_path / "data.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    p = tmp_path / "pipeline.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_config_loads(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.run.seed == 3 and cfg.sources[0].task == "qa"
    assert cfg.output_dir() == tmp_path / "out"
    assert cfg.stages[0].kind == "normalize"
    assert len(cfg.hash()) == 64


@pytest.mark.parametrize("text, key, line", [
    (GOOD.replace("seed = 3", "seed = 3\nsede = 4"), "run.sede", 5),
    (GOOD.replace("seed = 3", 'seed = "three"'), "run.seed", 4),
    (GOOD.replace('task = "qa"', 'task = "qa"\nformat = "csvx"'), "sources[0].format", 10),
    (GOOD.replace('kind = "normalize"', 'kind = "normalise"'), "stages[0].kind", 12),
    (GOOD.replace('kind = "normalize"', 'kind = "normalize"\nunicode_form = 3'), "stages[0].unicode_form", 13),
    (GOOD + '\n[render]\nval_fraction = 2.0\ntokenizer = "x"\n', "render.val_fraction", 15),
    (GOOD + "\n[extra]\n", "extra", None),
])
def test_bad_config_names_key_and_line(tmp_path, text, key, line):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.key == key
    assert key in str(err.value)
    if line is not None:
        assert err.value.line == line, str(err.value)


def test_missing_input_file_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD, data=False))
    assert err.value.key == "sources[0].path" and "data.jsonl" in str(err.value)


def test_cli_refuses_bad_config_before_writing_anything(tmp_path):
    p = write(tmp_path, GOOD.replace("seed = 3", "seed = 3\nbogus = 1"))
    proc = subprocess.run([sys.executable, "-m", "curate", "run", str(p)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "run.bogus" in proc.stderr and "unknown key" in proc.stderr
    assert not (tmp_path / "out").exists()
