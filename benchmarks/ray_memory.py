"""Driver memory under Ray (issue #19): the same generated records (benchmarks/scale_bench.py's
generator and stages) through `run_pipeline(cfg, executor=RayExecutor(...))` - what
`curate run --executor ray` runs - from two checkouts: the baseline (`--baseline`, a
checkout before a change) and this tree. One process per arm and size, arms interleaved
when repeated.

    python benchmarks/ray_memory.py --records 250000,1000000,2000000 --ray-cpus 2 --render --arms tree
    python benchmarks/ray_memory.py --records 250000,1000000 --render --baseline /tmp/base
    python benchmarks/ray_memory.py --records 250000,1000000,2000000 --render --arms local,tree,baseline \
        --local-records 250000,1000000 --baseline /tmp/base

The `local` arm runs this tree's local executor on the same records: the reference. Each
arm's `files` digest is the sha256 of its shard files and rejects (bytes, by path), and
per size the Ray arms' digests are checked against the local one ("identical"/"DIFFER").

Printed per size and arm: pipeline wall s; the driver's peak RSS (its own VmHWM, exact;
earlier rounds printed ru_maxrss, which Linux carries over from the spawning parent) and the peak summed RSS of its process tree (driver + raylet + GCS + object store +
workers, sampled every 0.2 s: a private local Ray instance is the driver's child); the
driver's CPU seconds; a digest of the ledger and every stage's row counts (the same
records kept by both arms); then the driver's peak RSS per phase (sampled every 0.1 s,
keyed by the runner's progress label: read, each stage, render, shards; "other" is between
them, e.g. the report). Then one Markdown table of every run (the driver's peak in all and
per phase, against the arm's smallest size, and whether its shards + rejects digest equals
the local arm's at that size); last, per arm, the driver peak at each size against the
smallest size: flat in the input means that ratio stays near 1. The tree peak includes
the workers that now hold what the driver held (a planned stage's plan task, the render
actor). `--render` adds scale_bench.py's
[render] section (chatml, the sample tokenizer, 512 tokens, packed shards). `--part-rows`
is set on both arms (the default part sizing differs between checkouts). Per-phase RSS
is the process's resident memory at the time, so a phase's number can include memory an
earlier phase freed but the allocator kept.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def _status(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in bytes (VmRSS, RssAnon, VmHWM, ...)."""
    got = dict.fromkeys(keys, 0)
    with open("/proc/self/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in got:
                got[k] = int(v.split()[0]) * 1024
    return got


class PhaseRSS:
    """The driver's own RSS, sampled every 0.1 s, peak per phase: a phase is the runner's
    progress label (read, each stage, render, shards); "other" is between them. Both the
    whole RSS and its anonymous part (RssAnon: heap, not file pages mapped in, such as
    memory-mapped token files being read), and the phase in which the exact peak
    (VmHWM) last rose: a spike between two samples is attributed to its phase."""

    def __init__(self):
        self.phase, self.peaks, self.anon = "start", {}, {}
        # where the exact peak (VmHWM) rose: a spike shorter than the 0.1 s samples shows here
        self.maxrss, self._max = {}, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def _rss() -> tuple[int, int, int]:
        got = _status("VmRSS", "RssAnon", "VmHWM")
        return got["VmRSS"], got["RssAnon"], got["VmHWM"]

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.1)

    def sample(self):
        r, a, m = self._rss()
        if m > self._max:
            self._max = self.maxrss[self.phase] = m
        self.peaks[self.phase] = max(r, self.peaks.get(self.phase, 0))
        self.anon[self.phase] = max(a, self.anon.get(self.phase, 0))

    def set(self, phase: str):
        self.sample()
        self.phase = phase

    def close(self) -> dict:
        self._stop.set()
        self._t.join()
        self.sample()
        return {k: [round(v / 2**30, 2), round(self.anon[k] / 2**30, 2), round(self.maxrss.get(k, 0) / 2**30, 2)]
                for k, v in self.peaks.items()}


def output_digest(run: Path) -> str:
    """sha256 over the run's shard files and rejects, by path (bytes, not rows): what must be
    the same whichever executor wrote them (tests/helpers.py `run_digests` checks more)."""
    h = hashlib.sha256()
    for pat in ("shards/**/*.arrow", "rejects/*.parquet"):
        for p in sorted(run.glob(pat)):
            h.update(str(p.relative_to(run)).encode())
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


def child(pipeline: Path, out: Path, ray_cpus: int, part_rows: int, executor: str = "ray") -> None:
    from contextlib import contextmanager

    from curate.contract.progress import Progress
    from curate.pipeline.config import load_config
    from curate.pipeline.ray_executor import RayExecutor
    from curate.pipeline.runner import run_pipeline

    phases = PhaseRSS()

    class Phased(Progress):
        @contextmanager
        def stage(self, label, total):
            phases.set(label.split(" ", 1)[-1])
            with super().stage(label, total) as done:
                yield done
            phases.set("other")

    cfg = load_config(pipeline)
    cfg.run.part_rows = part_rows
    if executor == "local":
        from curate.pipeline.executor import LocalExecutor

        ex = LocalExecutor()
    else:
        ex = RayExecutor(num_cpus=ray_cpus)
    t0 = time.perf_counter()
    m = run_pipeline(cfg, out, fresh=True, executor=ex, progress=Phased(enabled=False))
    wall = time.perf_counter() - t0
    ex.close()
    by_phase = phases.close()
    digest = hashlib.sha256(json.dumps([m["ledger"], [(s["name"], s["rows_in"], s["rows_out"]) for s in m["stages"]]],
                                       sort_keys=True).encode()).hexdigest()[:12]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    # the driver's peak: VmHWM, the kernel's high-water mark of this program's RSS (exact,
    # not sampled). Not ru_maxrss: Linux carries that over from before exec, where the
    # spawned child was still the parent (sized by whatever the parent held).
    hwm = _status("VmHWM")["VmHWM"]
    print(json.dumps({"wall": wall, "digest": digest, "files": output_digest(out), "kept": m["ledger"]["kept"],
                      "driver_maxrss_gib": hwm / 2**30, "ru_maxrss_gib": ru.ru_maxrss * 1024 / 2**30,
                      "driver_cpu_s": ru.ru_utime + ru.ru_stime,
                      "memory": {s["name"]: s.get("memory") for s in m["stages"]}, "phases": by_phase}))


def _rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(pythonpath: str, pipeline: Path, out: Path, ray_cpus: int, part_rows: int, base: Path,
            executor: str = "ray") -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "PYTHONPATH": pythonpath,
           "HOME": str(base), "TMPDIR": str(base), "RAY_TMPDIR": str(base)}
    proc = subprocess.Popen([sys.executable, __file__, "--child", "--pipeline", str(pipeline), "--out", str(out),
                             "--ray-cpus", str(ray_cpus), "--part-rows", str(part_rows), "--executor", executor],
                            stdout=subprocess.PIPE, stderr=open(str(out) + ".stderr", "w"), env=env, text=True)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    stdout, _ = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode:
        raise SystemExit(f"run failed (rc {proc.returncode}); see {out}.stderr")
    res = json.loads(stdout.strip().splitlines()[-1])
    return {**res, "total_gib": peak[0] / 2**30}


PHASES = ("read", "normalize", "pii", "filter", "language", "quality", "exact_dedup", "near_dedup", "select", "mix",
          "render", "shards", "other")


def print_table(rows: list[tuple[int, str, dict]]) -> None:
    """One Markdown table of every run: the driver's peak RSS (GiB) in all and per phase,
    the peak against the same arm's smallest size, and whether the shards + rejects digest
    equals the local arm's at that size ("-" where no local arm ran at that size)."""
    local = {n: r["files"] for n, label, r in rows if label.startswith("local")}
    first: dict[str, float] = {}
    print("\n| records | arm | driver peak GiB | x smallest | " + " | ".join(PHASES) + " | files | = local |")
    print("|---|---|---|---|" + "---|" * len(PHASES) + "---|---|")
    for n, label, r in rows:
        peak = r["driver_maxrss_gib"]
        x = peak / first.setdefault(label, peak)
        same = "-" if n not in local or label.startswith("local") else ("yes" if r["files"] == local[n] else "DIFFER")
        cells = [f"{r['phases'][k][0]:.2f}" if k in r["phases"] else "" for k in PHASES]
        print(f"| {n:,} | {label} | {peak:.2f} | {x:.2f} | " + " | ".join(cells) + f" | {r['files']} | {same} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", default="100000")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--part-rows", type=int, default=50_000)
    ap.add_argument("--baseline", default="/work/main", help="checkout whose runner + Ray executor is the baseline")
    ap.add_argument("--near-verify", choices=["exact", "estimate"], default=None,
                    help="near_dedup's verify_by (default: the stage's default, exact)")
    ap.add_argument("--render", action="store_true", help="add scale_bench.py's [render] section (packed shards)")
    ap.add_argument("--arms", default="baseline,tree",
                    help="of baseline (Ray, --baseline's checkout), tree (Ray, this tree), local (this tree's local "
                         "executor: the reference the Ray arms' output digests must equal)")
    ap.add_argument("--local-records", default=None,
                    help="sizes at which the local arm runs (default: every size)")
    ap.add_argument("--executor", default="ray", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--pipeline", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.child:
        child(a.pipeline, a.out, a.ray_cpus, a.part_rows, a.executor)
        return
    from scale_bench import RENDER, STAGES

    stages = STAGES + (RENDER if a.render else "")
    if a.near_verify:
        stages = stages.replace('threshold = 0.7\n', f'threshold = 0.7\nverify_by = "{a.near_verify}"\n', 1)
    work = Path(tempfile.mkdtemp(prefix="ray_memory_"))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; part_rows {a.part_rows:,}; "
          f"ray cpus {a.ray_cpus}; near_dedup verify_by {a.near_verify or 'exact (default)'}")
    print("records  arm                 wall_s  driver_peak_GiB  tree_peak_GiB  driver_cpu_s  kept     digest"
          "        files")
    known = {"baseline": ("baseline", a.baseline, "ray"), "tree": ("this tree", str(ROOT), "ray"),
             "local": ("local (this tree)", str(ROOT), "local")}
    arms = [known[x] for x in a.arms.split(",")]
    local_sizes = None if a.local_records is None else {int(x) for x in a.local_records.split(",") if x}
    summary: dict[str, list[tuple[int, float, float]]] = {}
    table: list[tuple[int, str, dict]] = []  # every run, for the closing table
    for n in [int(x) for x in a.records.split(",")]:
        data = work / f"in-{n}.jsonl"
        # in a process of its own, so that this one (whose RSS a spawned child starts from,
        # see child()) never holds the generated records
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from pathlib import Path; "
                f"from scale_bench import generate; generate(Path({str(data)!r}), {n})")
        subprocess.run([sys.executable, "-c", code], check=True)
        pipe = work / f"p-{n}.toml"
        pipe.write_text(f'[run]\nseed = 0\n[[sources]]\nname = "gen"\npath = "{data}"\nformat = "alpaca"\n'
                        f'task = "qa"\n{stages}')
        ratio, files = {}, {}
        here = [x for x in arms if x[2] != "local" or local_sizes is None or n in local_sizes]
        for rep in range(a.repeat):
            for label, path, executor in (here if rep % 2 == 0 else here[::-1]):
                run = work / f"run-{n}-{label.replace(' ', '_').replace('(', '').replace(')', '')}"
                r = measure(path, pipe, run, a.ray_cpus, a.part_rows, work, executor)
                if executor == "ray":
                    ratio.setdefault(label, []).append(r["driver_maxrss_gib"])
                files.setdefault(label, set()).add(r["files"])
                summary.setdefault(label, []).append((n, r["driver_maxrss_gib"], r["wall"]))
                table.append((n, label, r))
                print(f"{n:>7}  {label:<18} {r['wall']:7.1f}  {r['driver_maxrss_gib']:15.2f}  {r['total_gib']:13.2f}  "
                      f"{r['driver_cpu_s']:12.1f}  {r['kept']:>7}  {r['digest']}  {r['files']}", flush=True)
                print("         driver peak GiB by phase (RSS/anonymous[/VmHWM reached in it]): "
                      + ", ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}" + (f"/{v[2]:.2f}" if len(v) > 2 and v[2] else "")
                                  for k, v in r["phases"].items()), flush=True)
        if len(ratio) == 2:
            (la, va), (lb, vb) = ratio.items()
            print(f"{n:>7}  driver peak {lb} / {la}: {min(vb) / min(va):.2f}", flush=True)
        if "local (this tree)" in files:
            ref = files["local (this tree)"]
            for label, got in files.items():
                if label != "local (this tree)":
                    print(f"{n:>7}  shards + rejects {label} vs local: {'identical' if got == ref else 'DIFFER'}",
                          flush=True)
        for f in work.glob(f"run-{n}-*"):
            if f.is_dir():
                import shutil

                shutil.rmtree(f, ignore_errors=True)
        data.unlink()
    print_table(table)
    # how the driver's peak grows with the input: flat means the ratio stays near 1
    print("\narm                 records  driver_peak_GiB  x_smallest  wall_s")
    for label, rows in summary.items():
        p0 = min(p for n, p, _ in rows if n == rows[0][0])
        for n, peak, wall in rows:
            print(f"{label:<18} {n:>8}  {peak:15.2f}  {peak / p0:10.2f}  {wall:6.1f}")


if __name__ == "__main__":
    main()
