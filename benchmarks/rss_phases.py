"""RSS per sub-step of a run, for profiling where memory goes (issue #19).

`install()` wraps the functions named in PHASES (the streaming runner's planned path and
dedup's plan steps) so that each call pushes its name on a stack while it runs; a thread
samples this process's resident set (/proc/self/statm) every `period` seconds and files
each sample under the current stack ("near_dedup > plan > pair_runs > bucket_codes"). `report()`
gives, per stack, the calls, the seconds, the RSS when it was first entered and the
highest RSS sampled while it ran. Used by `scale_bench.py --profile` (one child process);
not imported by curate itself.

Trade-off: a sampler, not an allocator trace (memray would see every allocation but
slows numpy-heavy code several-fold): a peak shorter than the period can be missed, and
a sample taken while the GIL is held by a long pure-Python stretch comes late.
"""
from __future__ import annotations

import functools
import importlib
import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE")
_stack: list[str] = []
_stats: dict[str, dict] = {}
_lock = threading.Lock()

# (module, attribute path, label); generator functions are wrapped item by item
PHASES = [
    ("curate.pipeline.executor", "LocalExecutor.run_stage", lambda a: f"stage {a[1].name}"),
    ("curate.pipeline.stage_steps", "part_keys", "keys"),
    ("curate.stages.dedup.stage", "DedupStage.spill_keys", "spill"),
    ("curate.stages.dedup.stage", "DedupStage.plan", "plan"),
    ("curate.stages.dedup.spill", "KeySpill.column", "column"),
    ("curate.stages.dedup.spill", "KeySpill.band_slices", "band_slices"),
    ("curate.stages.dedup.stage", "_bucket_codes", "bucket_codes"),
    ("curate.stages.dedup.spill", "KeySpill.pair_runs", "pair_runs"),
    ("curate.stages.dedup.spill", "KeySpill.pair_values", "prefilter"),
    ("curate.stages.dedup.stage", "DedupStage._verify_batch", "verify_batch"),
    ("curate.stages.base", "complete_plan", "refine"),
    ("curate.stages.dedup.stage", "DedupStage.refine_keys", "refine_keys"),
    ("curate.pipeline.parts", "read_part", "read_part"),
    ("curate.stages.dedup.stage", "DedupStage.finish_plan", "finish_plan"),
    ("curate.stages.dedup.stage", "_pair_jaccard", "pair_jaccard"),
    ("curate.stages.dedup.spill", "write_shingles", "write_shingles"),
    ("curate.stages.dedup.stage", "DedupStage._verify_stored", "verify_stored"),
    ("curate.stages.dedup.spill", "ShingleStore.take", "store_take"),
    ("curate.stages.dedup.stage", "DedupStage._plan_pairs", "plan_pairs"),
    ("curate.stages.dedup.spill", "KeySpill.rows_of", "rows_of"),
    ("curate.stages.dedup.stage", "DedupStage._plan_from_roots", "plan_from_roots"),
    ("curate.stages.dedup.stage", "DedupStage._plan_stats", "plan_stats"),
    ("curate.pipeline.stage_steps", "hold_keys", "hold_keys"),
    ("curate.stages.select", "SelectStage.plan", "plan"),
    ("curate.stages.select", "SelectStage._verdicts", "verdicts"),
    ("curate.stages.select", "SelectStage._over_quota", "over_quota"),
    ("curate.stages.select", "SelectStage._plan_stats", "select_stats"),
    ("curate.stages.mix", "MixStage.plan", "plan"),
    ("curate.stages.mix", "MixStage._copies", "copies"),
    ("curate.stages.mix", "MixStage._val_rows", "val_rows"),
    ("curate.stages.mix", "MixStage._stats", "mix_stats"),
    ("curate.pipeline.stage_steps", "apply_part", "apply"),
    ("curate.pipeline.stage_steps", "planned_output", "planned_output"),
    ("curate.pipeline.parts", "merge_rejects", "merge_rejects"),
]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _key() -> str:
    return " > ".join(_stack) if _stack else "(outside)"


def _file(rss: int) -> None:
    k = _key()
    s = _stats.get(k)
    if s is None:
        s = _stats[k] = {"calls": 0, "seconds": 0.0, "rss_in": rss, "peak": rss}
    if rss > s["peak"]:
        s["peak"] = rss


def _enter(label: str) -> float:
    rss = _rss()
    with _lock:
        _file(rss)  # the caller's stack sees the RSS at the call
        _stack.append(label)
        k = _key()
        s = _stats.setdefault(k, {"calls": 0, "seconds": 0.0, "rss_in": rss, "peak": rss})
        s["calls"] += 1
        s["peak"] = max(s["peak"], rss)
    return time.perf_counter()


def _leave(label: str, t0: float) -> None:
    rss = _rss()
    with _lock:
        _file(rss)
        _stats[_key()]["seconds"] += time.perf_counter() - t0
        _stack.pop()


def _wrap(fn, label: str):
    import inspect

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*a, **k):
            it = fn(*a, **k)
            while True:
                t0 = _enter(label if isinstance(label, str) else label(a))
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    _leave(label, t0)
                yield item
        return gen

    @functools.wraps(fn)
    def call(*a, **k):
        name = label if isinstance(label, str) else label(a)
        t0 = _enter(name)
        try:
            return fn(*a, **k)
        finally:
            _leave(name, t0)
    return call


def install(period: float = 0.002) -> None:
    """Wrap PHASES (in every module that imported them by name) and start the sampler."""
    for mod, path, label in PHASES:
        m = importlib.import_module(mod)
        owner, name = m, path
        if "." in path:
            cls, name = path.split(".")
            owner = getattr(m, cls, None)
            if owner is None:  # a tree without this class (a base arm of an earlier commit)
                continue
        orig = getattr(owner, name, None)
        if orig is None:  # a tree without this step (a base arm of an earlier commit)
            continue
        wrapped = _wrap(orig, label)
        setattr(owner, name, wrapped)
        if owner is m:  # modules that did `from mod import name`
            for other in ("curate.pipeline.executor", "curate.pipeline.stage_steps", "curate.stages.dedup.stage",
                          "curate.pipeline.runner"):
                try:
                    o = importlib.import_module(other)
                except ImportError:
                    continue
                if getattr(o, name, None) is orig:
                    setattr(o, name, wrapped)

    def sample():
        while True:
            rss = _rss()
            with _lock:
                _file(rss)
            time.sleep(period)

    threading.Thread(target=sample, daemon=True).start()


def report() -> list[dict]:
    with _lock:
        return [{"phase": k, **v, "rss_in": v["rss_in"] / 2**20, "peak": v["peak"] / 2**20}
                for k, v in _stats.items()]
