#!/usr/bin/env bash
# A two-node Ray cluster on this one machine (a head and a worker node, each with its own
# temp dir), the sample pipeline run on it with `--executor ray --address`, and the result
# compared with the local executor's: same ledger, stages and shard sha256.
#
#   scripts/ray_two_node.sh            (uses ./.venv or $VENV, default /work/venv)
#
# On real machines the same two commands are run on different hosts:
#   head:    ray start --head --port 6379
#   others:  ray start --address HEAD_IP:6379
#   driver:  curate run pipeline.toml --executor ray --address HEAD_IP:6379
# Every node needs curate installed and the pipeline's model/eval files at the same paths.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/work/venv}
RAY="$VENV/bin/ray"
CURATE="$VENV/bin/curate"
PY="$VENV/bin/python"

BASE=$(mktemp -d /tmp/curate_ray2.XXXXXX)
export HOME="$BASE/home" TMPDIR="$BASE/tmp" RAY_TMPDIR="$BASE/tmp"
mkdir -p "$HOME" "$TMPDIR" "$BASE/head" "$BASE/node2"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cleanup() {
  # Stop only the processes of this cluster (their command lines name this run's dirs),
  # by pid: `ray stop` would stop every Ray on the machine.
  pids=$(pgrep -f -- "$BASE/" || true)
  if [ -n "$pids" ]; then kill $pids 2>/dev/null || true; sleep 2; kill -9 $pids 2>/dev/null || true; fi
  echo "cluster stopped; files in $BASE"
}
trap cleanup EXIT

echo "== head node (port $PORT, temp dir $BASE/head)"
"$RAY" start --head --node-ip-address 127.0.0.1 --port "$PORT" --num-cpus 1 --include-dashboard false \
  --temp-dir "$BASE/head" --disable-usage-stats
echo "== second node (temp dir $BASE/node2)"
"$RAY" start --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 --num-cpus 1 \
  --temp-dir "$BASE/node2" --disable-usage-stats
"$PY" - "$PORT" <<'EOF'
import sys, time, ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", logging_level="warning")
for _ in range(60):
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2:
        break
    time.sleep(1)
print(f"cluster: {len(alive)} nodes, {ray.cluster_resources().get('CPU')} CPUs")
assert len(alive) == 2, "the second node did not join"
EOF

echo "== sample pipeline, local executor"
"$CURATE" run sample_data/pipeline.toml --out "$BASE/run_local" --no-train --quiet --executor local
echo "== sample pipeline, ray executor on the two-node cluster"
"$CURATE" run sample_data/pipeline.toml --out "$BASE/run_ray" --no-train --quiet --executor ray --address "127.0.0.1:$PORT"

"$PY" - "$BASE/run_local" "$BASE/run_ray" <<'EOF'
import json, sys
a, b = (json.load(open(f"{d}/manifest.json")) for d in sys.argv[1:3])
same = {k: a[k] == b[k] for k in ("ledger", "stages", "shards")}
print("identical:", same)
print("shards:", [(s["file"], s["sha256"][:12]) for split in ("train", "val") for s in b["shards"].get(split, [])])
sys.exit(0 if all(same.values()) else 1)
EOF
