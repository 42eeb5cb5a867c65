"""A local TWO-NODE Ray cluster (`ray start --head` + `ray start --address`, 1 CPU each)
runs a multi-part pipeline (normalize, filter, exact dedup) through
`curate run --executor ray --address HOST:PORT`, with the local executor's output, byte
for byte; the second node's workers did part of the work (their logs are in its temp
dir). The cluster's processes are found by their temp dir (unique to this test) and
stopped by pid in the finalizer: `ray stop` would stop every Ray on the machine. Its temp
dir is a short one under /tmp (Unix socket paths), removed after. Marked slow.

The driver is a subprocess (the command a user runs), not this pytest process: a local
`ray.init()` (the session's `ray_local` fixture) turns on Ray's token authentication for
its own cluster by setting RAY_AUTH_MODE=token in the process environment, which stays
after `ray.shutdown()`. A driver in this process joining the test's cluster (started
without a token) would then serve its objects only to callers with a token; the
cluster's workers have none, so every task that fetches an object the driver owns fails
with OwnerDiedError ("the object's owner has exited"). That was why this test failed
in the suite and passed alone.
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
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")
psutil = pytest.importorskip("psutil")

from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.executor import LocalExecutor  # noqa: E402
from curate.pipeline.runner import run_pipeline  # noqa: E402
from helpers import exact_dedup_pipeline, run_digests  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
pytestmark = [
    pytest.mark.slow,
    # Passes in the suite too (after other modules' in-process Ray), but costs 30-50 s on
    # the 2-core development box under load (two `ray start` 10-15 s, the local run and the
    # Ray run 15-20 s, stopping the nodes ~5 s), past the suite's budget for one test: opt
    # in with CURATE_RAY_TWO_NODE=1.
    pytest.mark.skipif(os.environ.get("CURATE_RAY_TWO_NODE") != "1",
                       reason="two-node Ray test (30-50 s): set CURATE_RAY_TWO_NODE=1"),
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
def two_nodes():
    """(address, temp dir, the environment for processes that talk to the cluster)."""
    cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if cli is None:
        pytest.skip("the ray command line is not installed")
    # Ray's sockets live under its temp dir and a Unix socket path has at most 107 bytes:
    # pytest's tmp is too deep, so the cluster gets a short dir of its own, removed after
    base = Path(tempfile.mkdtemp(prefix="curate-ray2-", dir="/tmp" if os.path.isdir("/tmp") else None))
    for sub in ("head", "node2", "home", "tmp"):
        (base / sub).mkdir(parents=True)
    # no RAY_* from this process (RAY_ADDRESS would point `ray start` elsewhere, RAY_AUTH_MODE
    # from an in-process ray.init would ask for a token: see the module doc)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": str(base / "home"),
           "TMPDIR": str(base / "tmp"), "RAY_TMPDIR": str(base / "tmp"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([cli, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                        "--temp-dir", str(base / "head"), *common], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([cli, "start", "--address", f"127.0.0.1:{port}", "--temp-dir", str(base / "node2"), *common],
                       env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", base, env
    finally:
        procs = _ours(base)
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(base, ignore_errors=True)


def test_two_node_cluster_identical_to_local(two_nodes, tmp_path):
    address, base, env = two_nodes
    toml = tmp_path / "p.toml"
    toml.write_text(exact_dedup_pipeline(SAMPLE / "raw", part_rows=250))
    run_pipeline(load_config(toml), tmp_path / "local", executor=LocalExecutor())
    # wait for both nodes, then the run: the driver joins the cluster as a user's would
    wait = ("import ray, time\nray.init(address=%r, logging_level='warning')\n"
            "for _ in range(60):\n    if sum(n['Alive'] for n in ray.nodes()) >= 2: break\n    time.sleep(1)\n"
            "print(sum(n['Alive'] for n in ray.nodes()), int(ray.cluster_resources().get('CPU', 0)))\n") % address
    got = subprocess.run([sys.executable, "-c", wait], env=env, capture_output=True, text=True, timeout=120)
    assert got.stdout.split() == ["2", "2"], got.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "curate", "run", str(toml), "--no-train", "--quiet", "--executor", "ray",
                          "--address", address, "--out", str(tmp_path / "ray")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    local, ray_run = tmp_path / "local", tmp_path / "ray"
    # every stage's parts and done.json, rejects, quarantine
    assert run_digests(local, shards=False) == run_digests(ray_run, shards=False)
    ml, mr = (json.loads((d / "manifest.json").read_text()) for d in (local, ray_run))
    assert ml["ledger"] == mr["ledger"] and ml["ledger"]["reconciles"] and ml["stages"] == mr["stages"]
    assert len(json.loads((ray_run / "stages/00-read/done.json").read_text())["parts"]) > 1
    # the second node ran tasks: its session has worker logs
    assert list((base / "node2").glob("session_*/logs/worker-*")), "no worker ran on the second node"
