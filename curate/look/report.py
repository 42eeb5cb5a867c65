"""`RUN/report.html`: one self-contained page showing what the run did to the data.

Sections (each drawn from whatever the run directory holds; a section whose data is
absent is listed with a short note instead): the ledger funnel with counts per reason,
length and token histograms per task before (stages/00-read) and after (the last stage)
plus rendered lengths from the shards, score histograms with the selection threshold, the
language mix, requested vs achieved mix, duplicate clusters side by side, decontamination
hits with their eval item, rendered samples with the loss mask, training curves, the
mitigation frontier (only when RUN/frontier.json, or a path given, exists: what
benchmarks/train_frontier.py writes), rejected rows per stage and reason (a sample, the count and the rejects file), and every stage's
raw stats.

Self-contained on purpose: inline CSS and inline SVG (curate.look.charts), no script, no font,
no image fetched, so it opens offline and from a mail attachment. Every data string is
escaped (records are untrusted input). No timestamps: the same run directory gives the
same bytes, except training timings (tokens/s) that come from the run itself. Reading is
bounded: samples and rejects read a few rows (polars scans with `head`), token counts use
a strided sample (curate.look.inspect.TOKEN_SAMPLE rows per table).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.look import charts
from curate.look import inspect as insp
from curate.contract.atomic import write_text
from curate.contract.datasets import dataset_schema, has_dataset, read_dataset, scan_dataset
from curate.contract.views import text_view

MAX_TASKS = 12  # per-task small multiples; more tasks are listed in the table only
REJECT_SAMPLE = 5
SAMPLES = 6
BINS = 24
EXCERPT = 300


def write_report(run_dir: Path, out: Path | None = None, tokenizer: str | Path | None = None,
                 frontier: str | Path | None = None) -> Path:
    """Build the report of `run_dir` and write it (default RUN/report.html) atomically.
    `tokenizer`: a tokenizer.json (or its directory) for token counts, when the run's own
    cannot be found from the manifest. `frontier`: a frontier results JSON to show
    (default: RUN/frontier.json when there is one)."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    write_text(out, build_report(run_dir, tokenizer, frontier))
    return out


@dataclass
class Section:
    id: str
    title: str
    body: str | None = None  # None: skipped, `note` says why
    note: str = ""
    charts: int = 0
    data: dict = field(default_factory=dict)  # numbers the section shows, for machines (tests)


class RunData:
    """Lazy, cached access to a run directory's pieces."""

    def __init__(self, run_dir: Path, tokenizer: str | Path | None = None, frontier: str | Path | None = None):
        self.dir = run_dir
        self._tok_path = tokenizer
        self.frontier_path = Path(frontier) if frontier is not None else run_dir / "frontier.json"
        self.manifest = insp.load_manifest(run_dir) or {}
        self.stages = insp.stage_list(run_dir, self.manifest or None)
        self.tables = insp.stage_data(run_dir, self.manifest or None)  # [(name, path)]
        self._tok = False
        self._schemas: dict[Path, dict] = {}

    @property
    def tokenizer(self):
        if self._tok is False:
            self._tok = (insp.load_tokenizer(self._tok_path) if self._tok_path
                         else insp.run_tokenizer(self.dir, self.manifest or None))
        return self._tok

    def schema(self, path: Path) -> dict:
        if path not in self._schemas:
            self._schemas[path] = dataset_schema(path)
        return self._schemas[path]

    def stage_config(self, stage: dict) -> dict:
        cfgs = (self.manifest.get("config") or {}).get("stages") or []
        i = int(stage.get("index", 0)) - 1
        return cfgs[i] if 0 <= i < len(cfgs) and cfgs[i].get("kind") == stage.get("kind") else {}


# ------------------------------------------------------------------ html helpers
def _e(x: Any) -> str:
    return escape("" if x is None else str(x))


def _excerpt(text: str | None, n: int = EXCERPT) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1] + "…"


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """Rows of already-escaped cells (strings) or numbers."""
    def cell(v):
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            return f'<td class="num">{charts.fmt_num(float(v)) if isinstance(v, float) else f"{int(v):,}"}</td>'
        return f"<td>{v}</td>"

    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _grid(items: list[str]) -> str:
    return '<div class="grid">' + "".join(f'<div class="cell">{x}</div>' for x in items) + "</div>"


def _hist_edges(values: list[np.ndarray], bins: int = BINS, lo: float | None = None,
                hi_q: float = 0.99) -> tuple[np.ndarray, bool]:
    """Shared bin edges for several samples; the top 1% go to an overflow bin so one
    giant record does not squash every other bar."""
    allv = np.concatenate([v for v in values if len(v)]) if any(len(v) for v in values) else np.zeros(1)
    lo = float(np.min(allv)) if lo is None else lo
    vmax = float(np.max(allv))
    hi = float(np.quantile(allv, hi_q, method="nearest")) if len(allv) > 50 else vmax
    hi = max(hi, lo + 1e-9)
    if allv.dtype.kind in "iu" or np.all(np.mod(allv, 1) == 0):
        step = max(1.0, np.ceil((hi - lo) / bins))
        hi = lo + step * bins
    edges = np.linspace(lo, hi, bins + 1)
    return edges, vmax > hi


def _hist_counts(v: np.ndarray, edges: np.ndarray) -> list[int]:
    if not len(v):
        return [0] * (len(edges) - 1)
    return np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)[0].astype(int).tolist()


def _segments_html(segments: list[dict]) -> str:
    return "".join(f'<mark class="sup">{_e(s.get("text"))}</mark>' if s.get("supervised") else _e(s.get("text"))
                   for s in segments)


# ------------------------------------------------------------------ sections
def section_overview(run: RunData) -> Section:
    m = run.manifest
    if not m:
        return Section("overview", "Run", None, "no manifest.json: the run did not finish; showing stage outputs only")
    led = m.get("ledger") or {}
    dropped = sum(sum(r.values()) for r in (led.get("dropped") or {}).values())
    cards = [("read", led.get("read", 0)), ("kept", led.get("kept", 0)), ("quarantined", led.get("quarantined", 0)),
             ("dropped", dropped)]
    ups = sum((led.get("upsampled") or {}).values())
    if ups:
        cards.append(("upsampled copies", ups))
    html = '<div class="cards">' + "".join(
        f'<div class="card" data-key="{_e(k)}"><div class="big">{int(v):,}</div><div>{_e(k)}</div></div>' for k, v in cards) + "</div>"
    ok = led.get("reconciles")
    html += (f'<p class="{"ok" if ok else "bad"}">ledger: read {led.get("read", 0):,} = kept {led.get("kept", 0):,} + '
             f'quarantined {led.get("quarantined", 0):,} + dropped {dropped:,} — '
             f'{"reconciles" if ok else "DOES NOT RECONCILE"}</p>')
    srcs = m.get("sources") or []
    if srcs:
        html += _table(["source", "format", "files", "read", "records", "quarantined"],
                       [[_e(s.get("name")), _e(s.get("format")), _e(", ".join(s.get("files") or [])),
                         int(s.get("read", 0)), int(s.get("records", 0)), int(s.get("quarantined", 0))] for s in srcs])
    render = m.get("render") or {}
    meta = [("curate", m.get("curate_version")), ("config hash", (m.get("config_hash") or "")[:16]), ("seed", m.get("seed"))]
    if render:
        tok = render.get("tokenizer") or {}
        meta += [("template", render.get("template")), ("tokenizer", tok.get("path") if isinstance(tok, dict) else tok),
                 ("max_length", render.get("max_length")), ("train_on", render.get("train_on")), ("pack", render.get("pack"))]
    html += '<p class="meta">' + " · ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in meta if v is not None) + "</p>"
    return Section("overview", "Run", html, data={"ledger": led})


def section_funnel(run: RunData) -> Section:
    steps = insp.funnel_steps(run.manifest or None, run.stages)
    if not steps:
        return Section("funnel", "Stage funnel", None, "no stages recorded")
    colors = {"read": charts.GREY, "parsed": charts.SKY, "rendered": charts.GREEN}
    for s in steps:
        s["color"] = colors.get(s["name"] if s.get("kind") != "render" else "rendered", charts.BLUE)
    svg = charts.funnel(steps)
    rows = []
    for s in run.stages:
        reasons = "<br>".join(f"{_e(r)}: {n:,}" for r, n in sorted((s.get("dropped") or {}).items(), key=lambda kv: (-kv[1], kv[0])))
        rows.append([_e(s.get("index")), _e(s["name"]), _e(s.get("kind")), int(s.get("rows_in") or 0),
                     int(s.get("rows_out") or 0), int(sum((s.get("dropped") or {}).values())), reasons or "—",
                     f'<code>{_e(s.get("rejects"))}</code>'])
    render = run.manifest.get("render")
    if render:
        d = render.get("dropped") or {}
        rows.append(["", "render", "render", "", steps[-1]["rows"], sum(d.values()),
                     "<br>".join(f"{_e(r)}: {n:,}" for r, n in sorted(d.items())) or "—", "<code>rejects/render.parquet</code>"])
    table = _table(["#", "stage", "kind", "in", "out", "dropped", "by reason", "rejects"], rows, "funnel")
    return Section("funnel", "Stage funnel", svg + table, charts=1,
                   data={"steps": [{k: s[k] for k in ("name", "rows", "dropped") if k in s} for s in steps]})


def _reject_files(run: RunData) -> list[tuple[str, Path]]:
    out = [(s["name"], run.dir / s["rejects"]) for s in run.stages if s.get("rejects")]
    out.append(("render", run.dir / "rejects" / "render.parquet"))
    return [(n, p) for n, p in out if p.is_file()]


def section_rejects(run: RunData) -> Section:
    files = _reject_files(run)
    parts, data = [], {}
    for name, path in files:
        scan = pl.scan_parquet(path)
        by = scan.group_by("reason").len().sort(["len", "reason"], descending=[True, False]).collect()
        if by.height == 0:
            continue
        rel = path.relative_to(run.dir)
        data[name] = {str(r): int(n) for r, n in by.iter_rows()}
        parts.append(f'<h3>{_e(name)} <span class="dim">— {int(by["len"].sum()):,} rows in <code>{_e(rel)}</code></span></h3>')
        cols = set(scan.collect_schema().names())
        for reason, n in by.iter_rows():
            sel = [pl.col(c) for c in ("id", "source", "task", "detail") if c in cols]
            if "messages" in cols:
                sel += [text_view("prompt").alias("prompt"), text_view("response").alias("response")]
            rows = scan.filter(pl.col("reason") == reason).head(REJECT_SAMPLE).select(sel).collect()
            trs = []
            for r in rows.iter_rows(named=True):
                trs.append([f'<code>{_e(r.get("id"))}</code>', _e(r.get("source")), _e(r.get("task")),
                            f'<div class="txt">{_e(_excerpt(r.get("prompt")))}</div>',
                            f'<div class="txt">{_e(_excerpt(r.get("response")))}</div>',
                            f'<div class="txt">{_e(_excerpt(r.get("detail")))}</div>'])
            parts.append(f'<details class="reason" data-stage="{_e(name)}" data-reason="{_e(reason)}" data-count="{n}">'
                         f'<summary><b>{_e(reason)}</b> — {n:,} rows (showing {rows.height}; all in <code>{_e(rel)}</code>)</summary>'
                         + _table(["id", "source", "task", "prompt", "response", "detail"], trs, "rows") + "</details>")
    q = run.dir / "quarantine.jsonl"
    qn = 0
    if q.is_file():
        lines = [ln for ln in q.read_text(encoding="utf-8").splitlines() if ln.strip()]
        qn = len(lines)
        if qn:
            data["quarantine"] = qn
            trs = []
            for ln in lines[:REJECT_SAMPLE]:
                e = json.loads(ln)
                trs.append([_e(e.get("file")), _e(e.get("line")), _e(e.get("field")), _e(e.get("error")),
                            f'<div class="txt">{_e(_excerpt(e.get("raw"), 200))}</div>'])
            parts.append(f'<h3>quarantine <span class="dim">— {qn:,} unparseable inputs in <code>quarantine.jsonl</code></span></h3>'
                         f'<details class="reason" data-stage="quarantine" data-reason="unparseable" data-count="{qn}">'
                         f'<summary><b>unparseable</b> — {qn:,} (showing {len(trs)})</summary>'
                         + _table(["file", "line", "field", "error", "raw"], trs, "rows") + "</details>")
    if not parts:
        return Section("rejects", "Rejected rows", None, "no row was dropped or quarantined")
    return Section("rejects", "Rejected rows", "".join(parts), data=data)


def section_lengths(run: RunData) -> Section:
    if not run.tables:
        return Section("lengths", "Lengths per task", None, "no stage outputs on disk")
    (bname, bpath), (aname, apath) = run.tables[0], run.tables[-1]
    tok = run.tokenizer
    # one sampling step for both tables, so sampled token counts stay comparable
    rows_max = max(scan_dataset(p).select(pl.len()).collect().item() for p in (bpath, apath))
    step = max(1, -(-rows_max // insp.TOKEN_SAMPLE))
    before = insp.conversation_lengths(bpath, tok, step=step)
    after = insp.conversation_lengths(apath, tok, step=step)
    tasks = [t for t, _ in before.group_by("task").len().sort(["len", "task"], descending=[True, False]).iter_rows()]
    figs, rows, n = [], [], 0
    for task in tasks:
        b = before.filter(pl.col("task") == task)
        a = after.filter(pl.col("task") == task)
        rows.append([_e(task), b.height, a.height, insp._num(b["chars"].median()), insp._num(a["chars"].median())]
                    + ([insp._num(b["tokens"].median()), insp._num(a["tokens"].median())] if tok else []))
        if len(figs) >= 2 * MAX_TASKS:
            continue
        for col, label in (("chars", "characters per conversation"), ("tokens", "tokens per conversation")):
            if col not in b.columns:
                continue
            bv, av = b[col].drop_nulls().to_numpy(), a[col].drop_nulls().to_numpy()
            edges, over = _hist_edges([bv, av], lo=0)
            of = f" (1 in {step})" if col == "tokens" and step > 1 else ""
            figs.append(charts.histogram(edges, [(f"before ({bname}) {len(bv):,}{of}", _hist_counts(bv, edges), charts.GREY),
                                                 (f"after ({aname}) {len(av):,}{of}", _hist_counts(av, edges), charts.BLUE)],
                                         title=f"{task}: {col}", x_label=label, overflow=over))
            n += 1
    header = ["task", f"rows {bname}", f"rows {aname}", "median chars before", "median chars after"]
    if tok:
        header += ["median tokens before", "median tokens after"]
    note = "" if tok else '<p class="note">no tokenizer in [render]: token histograms skipped.</p>'
    if tok and step > 1:
        note += (f'<p class="note">tokens counted on one row in {step} of both tables (an evenly spread sample of '
                 f'at most {insp.TOKEN_SAMPLE:,} rows per table); characters on all rows.</p>')
    if len(tasks) > MAX_TASKS:
        note += f'<p class="note">charts for the {MAX_TASKS} largest tasks; all tasks in the table.</p>'
    html = (f'<p>Conversation text (all turns, without the chat template) before <code>{_e(bname)}</code> and after '
            f'<code>{_e(aname)}</code>.</p>' + note + _grid(figs) + _table(header, rows))
    return Section("lengths", "Lengths per task, before and after", html, charts=n,
                   data={"before": before.height, "after": after.height, "tasks": tasks})


def section_rendered(run: RunData) -> Section:
    shards = insp.shard_files(run.dir / "shards")
    if not shards:
        return Section("rendered", "Rendered lengths (shards)", None, "no shards: the run had no [render] section")
    ex = insp.shard_examples(shards)
    if ex.height == 0:
        return Section("rendered", "Rendered lengths (shards)", None, "the shards hold no examples")
    max_len = (run.manifest.get("render") or {}).get("max_length")
    figs = []
    tasks = ex.group_by("task").len().sort(["len", "task"], descending=[True, False])["task"].to_list()
    for task in tasks[:MAX_TASKS]:
        e = ex.filter(pl.col("task") == task)
        tv, sv = e["tokens"].to_numpy(), e["supervised"].to_numpy()
        edges, over = _hist_edges([tv, sv], lo=0, hi_q=1.0)
        figs.append(charts.histogram(edges, [("all tokens", _hist_counts(tv, edges), charts.GREY),
                                             ("supervised tokens", _hist_counts(sv, edges), charts.GREEN)],
                                     title=f"{task}: tokens per example", x_label="tokens (chat template applied)",
                                     markers=[(max_len, f"max_length {max_len}")] if max_len and max_len <= edges[-1] * 1.5 else [],
                                     overflow=over))
    rows = []
    for task, n, tok, sup in ex.group_by("task").agg(pl.len(), pl.col("tokens").sum(), pl.col("supervised").sum()) \
            .sort("task").iter_rows():
        rows.append([_e(task), int(n), int(tok), int(sup), f"{sup / tok:.1%}" if tok else "—"])
    files = []
    for split, entries in (run.manifest.get("shards") or {}).items():
        for f in entries:
            files.append([_e(split), f'<code>{_e(f.get("file"))}</code>', int(f.get("rows", 0)), int(f.get("examples", 0)),
                          int(f.get("tokens", 0)), int(f.get("supervised_tokens", 0)), f'<code>{_e(str(f.get("sha256", ""))[:12])}</code>'])
    html = _grid(figs) + _table(["task", "examples", "tokens", "supervised", "supervised share"], rows)
    if files:
        html += "<details><summary>shard files</summary>" + _table(
            ["split", "file", "rows", "examples", "tokens", "supervised", "sha256"], files) + "</details>"
    return Section("rendered", "Rendered lengths (shards)", html, charts=len(figs),
                   data={"examples": ex.height, "tokens": int(ex["tokens"].sum()),
                         "supervised_tokens": int(ex["supervised"].sum())})


def section_scores(run: RunData) -> Section:
    selects = [s for s in run.stages if s.get("kind") == "select"]
    extra = insp.run_score_columns(run.stages) + tuple(
        c for c in (run.stage_config(s).get("column") for s in selects) if isinstance(c, str))
    cols: list[str] = []
    for _, path in run.tables:
        for c in insp.score_columns(run.schema(path), extra):
            if c not in cols:
                cols.append(c)
    if not cols:
        return Section("scores", "Quality scores", None, "no score column (a quality stage's, or quality_*) in any stage output")
    figs, data = [], {}
    for col in cols:
        having = [(n, p) for n, p in run.tables if col in run.schema(p)]
        (sname, spath), (kname, kpath) = having[0], having[-1]

        def read(path):
            return (read_dataset(path, columns=["task", col]).with_columns(pl.col(col).cast(pl.Float64))
                    .filter(pl.col(col).is_not_null() & pl.col(col).is_not_nan()))

        scored_df, kept_df = read(spath), read(kpath)
        if scored_df.height == 0:
            continue
        markers, task_markers = [], {}
        for s in selects:
            st, cf = s.get("stats") or {}, run.stage_config(s)
            if (st.get("column") or cf.get("column")) != col:
                continue
            for key in ("min", "max"):
                if cf.get(key) is not None:
                    markers.append((float(cf[key]), f"{s['name']} {key} {charts.fmt_num(float(cf[key]))}"))
            if markers:
                continue
            # no fixed threshold: the effective cut-off is the worst score the select kept
            highest = (st.get("keep") or cf.get("keep", "highest")) == "highest"
            ks = st.get("kept_score") or {}
            edge = ks.get("min") if highest else ks.get("max")
            if edge is not None:
                markers.append((float(edge), f"{s['name']}: cut-off {charts.fmt_num(float(edge))}"))
            out = run.dir / s.get("output", "")
            if (st.get("by") or cf.get("by")) == "task" and has_dataset(out):
                per = read(out).group_by("task").agg(pl.col(col).min() if highest else pl.col(col).max())
                task_markers = {t: [(float(v), f"cut-off {charts.fmt_num(float(v))}")] for t, v in per.iter_rows()}
        scored, kept = scored_df[col].to_numpy(), kept_df[col].to_numpy()
        edges, _ = _hist_edges([scored, kept], hi_q=1.0)
        if len(edges) > 1 and edges[-1] - edges[0] < 1e-9:
            edges = np.linspace(edges[0] - 0.5, edges[0] + 0.5, BINS + 1)
        two = kname != sname or len(kept) != len(scored)

        def hist(sv, kv, title, marks, width=520):
            series = [(f"scored ({sname}) {len(sv):,}", _hist_counts(sv, edges), charts.GREY)]
            if two:
                series.append((f"kept ({kname}) {len(kv):,}", _hist_counts(kv, edges), charts.BLUE))
            return charts.histogram(edges, series, title=title, x_label=col, markers=marks, width=width)

        figs.append(hist(scored, kept, f"{col}: all tasks", markers))
        tasks = scored_df.group_by("task").len().sort(["len", "task"], descending=[True, False])["task"].to_list()
        if 1 < len(tasks) <= MAX_TASKS:
            for t in tasks:
                figs.append(hist(scored_df.filter(pl.col("task") == t)[col].to_numpy(),
                                 kept_df.filter(pl.col("task") == t)[col].to_numpy(),
                                 f"{col}: {t}", markers if not task_markers else task_markers.get(t, []), width=400))
        data[col] = {"scored": int(len(scored)), "kept": int(len(kept)), "thresholds": [m[0] for m in markers],
                     "task_thresholds": {t: m[0][0] for t, m in task_markers.items()}}
    tables = []
    for s in selects:
        groups = (s.get("stats") or {}).get("groups") or {}
        if groups:
            rows = [[_e(g), int(d.get("in", 0)), int(d.get("kept", 0)), _e(d.get("quota")),
                     _e(", ".join(f"{r} {n:,}" for r, n in sorted((d.get("dropped") or {}).items())))] for g, d in groups.items()]
            head = ["group", "in", "kept", "quota", "dropped"]
            gate = (s.get("stats") or {}).get("gate")
            if gate:  # gate_min: each group's gate mean and whether the cut applied there
                head.append(f"mean {gate.get('column')} (gate {gate.get('min')})")
                for row, g in zip(rows, groups):
                    d = (gate.get("groups") or {}).get(g) or {}
                    rate = "no value" if d.get("rate") is None else f"{d['rate']:.3f}"
                    row.append(_e(f"{rate}: " + ("cut" if d.get("applied") else "not cut (passed untouched)")))
            mixture = (s.get("stats") or {}).get("mixture")
            if mixture:  # cut = "mixture": each group's estimated noise and whether the fit was trusted
                head.append(f"2-component mixture on {mixture.get('column')}")
                for row, g in zip(rows, groups):
                    d = (mixture.get("groups") or {}).get(g) or {}
                    noise = f"est. noise {d['noise']:.1%}, D {d['separation']:.2f}: " if "noise" in d else ""
                    row.append(_e("not fitted (no row to cut: outside the scope or the gate)" if not d
                                  else noise + (f"cut, {d.get('dropped', 0):,} dropped" if d.get("applied")
                                                else f"REFUSED ({d.get('reason')}): all kept")))
            tables.append(f"<h3>{_e(s['name'])}: per group</h3>" + _table(head, rows))
    return Section("scores", "Quality scores", _grid(figs) + "".join(tables), charts=len(figs), data=data)


def section_languages(run: RunData) -> Section:
    """Rows per language: judged (what the language stage saw, from its stats or its
    output) against what is left after the last stage."""
    cols: list[str] = []
    for _, p in run.tables:
        cols += [c for c in insp.run_lang_columns(run.stages, run.schema(p)) if c not in cols]
    if not cols:
        return Section("languages", "Languages", None,
                       "no language column (a language stage's <name>_<role>, or lang/language/*_lang)")
    figs, data = [], {}
    for col in cols:
        having = [(n, p) for n, p in run.tables if col in run.schema(p)]
        (bname, bpath), (aname, apath) = having[0], having[-1]
        before = None
        for s in run.stages:
            langs = (s.get("stats") or {}).get("languages") or {}
            if s.get("kind") == "language" and col.startswith(s["name"] + "_") and col[len(s["name"]) + 1:] in langs:
                before, bname = dict(langs[col[len(s["name"]) + 1:]]), f"judged by {s['name']}"
        if before is None:
            before = {k: v for k, v in insp.counts(read_dataset(bpath, columns=[col]), col).items() if k != "None"}
        after = {k: v for k, v in insp.counts(read_dataset(apath, columns=[col]), col).items() if k != "None"}
        langs = sorted(set(before) | set(after), key=lambda k: (-before.get(k, 0), -after.get(k, 0), k))[:15]
        rest_b = sum(v for k, v in before.items() if k not in langs)
        rest_a = sum(v for k, v in after.items() if k not in langs)
        labels = langs + (["other"] if rest_b or rest_a else [])
        bv = [before.get(k, 0) for k in langs] + ([rest_b] if len(labels) > len(langs) else [])
        av = [after.get(k, 0) for k in langs] + ([rest_a] if len(labels) > len(langs) else [])
        series = [(f"{bname} ({sum(before.values()):,})", bv, charts.GREY)]
        if aname != bname or before != after:
            series.append((f"after {aname} ({sum(after.values()):,})", av, charts.BLUE))
        figs.append(charts.hbars(labels, series, title=f"rows per language: {col}", width=480))
        data[col] = {"before": before, "after": after}
    note = '<p class="note">Texts too short to judge have no language and are not counted.</p>'
    return Section("languages", "Languages", note + _grid(figs), charts=len(figs), data=data)


def _cluster_from_rejects(run: RunData, s: dict, k: int = 5) -> list[dict]:
    """Duplicate clusters rebuilt from the rejects (detail = the kept id), when the
    stage's stats carry no examples."""
    path = run.dir / s["rejects"]
    if not path.is_file():
        return []
    scan = pl.scan_parquet(path).filter(pl.col("reason") == "duplicate_of")
    top = scan.group_by("detail").len().sort(["len", "detail"], descending=[True, False]).head(k).collect()
    if top.height == 0:
        return []
    kept_ids = top["detail"].to_list()
    members = (scan.filter(pl.col("detail").is_in(kept_ids)).sort("id")
               .select("id", "source", "detail", text_view("prompt").alias("text")).collect())
    out_path = run.dir / s["output"]
    kept = (scan_dataset(out_path).filter(pl.col("id").is_in(kept_ids))
            .select("id", "source", text_view("prompt").alias("text")).collect()) if has_dataset(out_path) else pl.DataFrame()
    out = []
    for kid, n in top.iter_rows():
        ms = [{"id": r["id"], "source": r["source"], "kept": True, "text": r["text"]}
              for r in (kept.filter(pl.col("id") == kid).iter_rows(named=True) if kept.height else [])]
        ms += [{"id": r["id"], "source": r["source"], "kept": False, "text": r["text"]}
               for r in members.filter(pl.col("detail") == kid).head(4).iter_rows(named=True)]
        out.append({"kept": kid, "size": int(n) + 1, "members": ms})
    return out


def section_duplicates(run: RunData) -> Section:
    dd = [s for s in run.stages if s.get("kind") == "dedup"]
    if not dd:
        return Section("duplicates", "Duplicate clusters", None, "no dedup stage in this run")
    parts, data, nfig = [], {}, 0
    for s in dd:
        st = s.get("stats") or {}
        cl = st.get("clusters") if isinstance(st.get("clusters"), dict) else {}
        dups = st.get("duplicates", sum((s.get("dropped") or {}).values()))
        facts = [("method", st.get("method")), ("view", st.get("view")), ("threshold", st.get("threshold")),
                 ("rows in", s.get("rows_in")), ("duplicates dropped", dups), ("clusters", cl.get("count")),
                 ("largest cluster", cl.get("largest")), ("exact copies", st.get("dropped_exact")),
                 ("near duplicates", st.get("dropped_near")), ("candidate pairs", st.get("candidate_pairs")),
                 ("verified pairs", st.get("verified_pairs"))]
        parts.append(f"<h3>{_e(s['name'])}</h3><p class=\"meta\">" + " · ".join(
            f"{_e(k)} <b>{_e(v if not isinstance(v, int) else f'{v:,}')}</b>" for k, v in facts if v is not None) + "</p>")
        hist = cl.get("size_histogram") or {}
        if hist:
            sizes = sorted(hist, key=lambda x: int(x))
            parts.append(charts.hbars([f"size {x}" for x in sizes], [("clusters", [hist[x] for x in sizes], charts.BLUE)],
                                      title="clusters by size", width=420))
            nfig += 1
        examples = st.get("examples") if isinstance(st.get("examples"), list) else None
        if not examples:
            examples = _cluster_from_rejects(run, s)
        for ex in examples or []:
            cards, kept_shown = [], False
            for m in ex.get("members") or []:
                # exact copies share their content-hash id, so "is the kept id" marks
                # every copy: only the first is the kept row
                kept = bool(m.get("kept")) and not kept_shown
                kept_shown = kept_shown or kept
                what = "kept" if kept else ("dropped (identical copy)" if m.get("kept") else "dropped")
                cards.append(f'<div class="member{" kept" if kept else ""}"><div class="dim">{what} · <code>{_e(m.get("id"))}'
                             f'</code> · {_e(m.get("source"))}</div><div class="txt">{_e(_excerpt(m.get("text")))}</div></div>')
            cards = "".join(cards)
            kind = "" if ex.get("exact") is None else (" · exact copies" if ex.get("exact") else " · near duplicates")
            parts.append(f'<div class="cluster" data-size="{_e(ex.get("size"))}"><div class="dim">cluster of {_e(ex.get("size"))}'
                         f'{kind}, kept <code>{_e(ex.get("kept"))}</code></div><div class="members">{cards}</div></div>')
        data[s["name"]] = {"duplicates": dups, "clusters": cl.get("count"), "examples": len(examples or [])}
    return Section("duplicates", "Duplicate clusters", "".join(parts), charts=nfig, data=data)


def section_decontamination(run: RunData) -> Section:
    dc = [s for s in run.stages if s.get("kind") == "decontaminate"]
    if not dc:
        return Section("decontamination", "Decontamination hits", None, "no decontaminate stage in this run")
    parts, data = [], {}
    for s in dc:
        st = s.get("stats") or {}
        hits = int(sum((s.get("dropped") or {}).values()))
        flat = {k: v for k, v in st.items() if isinstance(v, (int, float, str, bool))}
        parts.append(f"<h3>{_e(s['name'])} <span class=\"dim\">— {hits:,} training rows dropped</span></h3>")
        if flat:
            parts.append('<p class="meta">' + " · ".join(f"{_e(k)} <b>{_e(v)}</b>" for k, v in flat.items()) + "</p>")
        for key, val in st.items():  # per eval set counts and the like
            if isinstance(val, dict) and val and all(isinstance(v, (int, float)) for v in val.values()):
                parts.append(charts.hbars(list(val), [(key, list(val.values()), charts.VERMILION)], title=f"{s['name']}: {key}", width=460))
        path = run.dir / s["rejects"]
        if path.is_file() and hits:
            rows = (pl.scan_parquet(path).sort("id").head(20)
                    .select("reason", "id", "source", "detail", text_view("prompt").alias("prompt")).collect())
            trs = [[_e(r["reason"]), f'<code>{_e(r["id"])}</code> {_e(r["source"])}<div class="txt">{_e(_excerpt(r["prompt"]))}</div>',
                    f'<div class="txt">{_e(_excerpt(r["detail"], 500))}</div>'] for r in rows.iter_rows(named=True)]
            parts.append(_table(["reason", "training example (prompt)", "matching eval item"], trs, "rows side"))
            if hits > rows.height:
                parts.append(f'<p class="note">{rows.height} of {hits:,} shown; all in <code>{_e(s["rejects"])}</code>.</p>')
        data[s["name"]] = {"hits": hits}
    html = "".join(parts)
    return Section("decontamination", "Decontamination hits", html, charts=html.count("<svg"), data=data)


def section_mix(run: RunData) -> Section:
    mixes = [s for s in run.stages if s.get("kind") == "mix" and (s.get("stats") or {}).get("requested")]
    by_task = (run.manifest.get("tokens") or {}).get("by_task") or {}
    if not mixes and not by_task:
        return Section("mix", "Task mix", None, "no mix stage and no rendered shards")
    parts, figs, data = [], [], {}
    for s in mixes:
        st = s["stats"]
        req, ach = st.get("requested") or {}, st.get("achieved") or {}
        groups = sorted(set(req) | set(ach))
        unit = st.get("unit", "examples")
        figs.append(charts.hbars(groups, [("requested share", [(req.get(g) or {}).get("share") for g in groups], charts.GREY),
                                          (f"achieved share ({unit})", [(ach.get(g) or {}).get("share") for g in groups], charts.BLUE)],
                                 title=f"{s['name']}: share of train {unit} by {st.get('by', 'task')}",
                                 value_fmt=lambda v: f"{v:.1%}", max_value=1.0 if groups else None))
        rows = []
        for g in groups:
            r, a = req.get(g) or {}, ach.get(g) or {}
            short = (st.get("shortfall") or {}).get(g)
            rows.append([_e(g), f"{r.get('share', 0):.1%}", _e(r.get("target")), _e(r.get("available")),
                         f"{a.get('share', 0):.1%}", int(a.get("examples", 0))]
                        + ([_e(a.get(unit))] if unit != "examples" else [])
                        + [int(a.get("unique", 0)), int(a.get("repeated", 0)),
                           _e(short.get("why") if isinstance(short, dict) else short or "")])
        parts.append(_table(["group", "requested", f"target ({unit})", "available", "achieved", "examples"]
                            + ([unit] if unit != "examples" else []) + ["unique", "repeated", "shortfall"], rows))
        parts.append(f'<p class="meta">mode <b>{_e(st.get("mode"))}</b> · counted with <b>{_e(st.get("counted_with"))}</b> · '
                     f'max share error <b>{_e(st.get("max_share_error"))}</b> · within 1% <b>{_e(st.get("within_1pct"))}</b></p>')
        data[s["name"]] = {"requested": {g: (req.get(g) or {}).get("share") for g in groups},
                           "achieved": {g: (ach.get(g) or {}).get("share") for g in groups}}
    if by_task:
        tasks = sorted(by_task)
        ne = sum(v.get("examples", 0) for v in by_task.values()) or 1
        nt = sum(v.get("tokens", 0) for v in by_task.values()) or 1
        ns = sum(v.get("supervised_tokens", 0) for v in by_task.values()) or 1
        figs.append(charts.hbars(tasks, [("examples", [by_task[t].get("examples", 0) / ne for t in tasks], charts.BLUE),
                                         ("tokens", [by_task[t].get("tokens", 0) / nt for t in tasks], charts.ORANGE),
                                         ("supervised tokens", [by_task[t].get("supervised_tokens", 0) / ns for t in tasks], charts.GREEN)],
                                 title="achieved in the shards: share by task", value_fmt=lambda v: f"{v:.1%}", max_value=1.0))
        data["shards"] = by_task
    return Section("mix", "Task mix: requested and achieved", _grid(figs) + "".join(parts), charts=len(figs), data=data)


def section_samples(run: RunData) -> Section:
    samples = ((run.manifest.get("render") or {}).get("stats") or {}).get("samples") or []
    source = "render stats"
    if not samples:
        shards = insp.shard_files(run.dir / "shards")
        if shards and run.tokenizer is not None:
            samples, source = insp.shard_samples(shards, run.tokenizer, SAMPLES), "decoded from the shards"
    if not samples:
        return Section("samples", "Rendered samples", None, "no rendered samples (no [render] section, or no tokenizer to decode shards)")
    parts = ['<p>Text as the model sees it, chat template applied; <mark class="sup">highlighted</mark> tokens carry '
             f'loss (labels ≠ -100), the rest is context only. ({_e(source)})</p>']
    for s in samples[:SAMPLES]:
        segs = s.get("segments")
        if segs is None and "marked" in s:  # only the [[...]] form: rebuild segments
            segs = [{"text": t, "supervised": i % 2 == 1} for i, t in enumerate(s["marked"].replace("]]", "[[").split("[["))]
        parts.append(f'<div class="sample"><div class="dim"><code>{_e(s.get("id"))}</code> · task {_e(s.get("task"))} · '
                     f'{_e(s.get("tokens"))} tokens, {_e(s.get("supervised_tokens"))} supervised</div>'
                     f'<pre>{_segments_html(segs or [])}</pre></div>')
    return Section("samples", "Rendered samples with the loss mask", "".join(parts), data={"samples": len(samples[:SAMPLES])})


def _flatten(row: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def section_training(run: RunData) -> Section:
    path = run.dir / "train" / "metrics.jsonl"
    if not path.is_file():
        return Section("training", "Training", None, "no train/metrics.jsonl: no train stage ran")
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not rows:
        return Section("training", "Training", None, "train/metrics.jsonl is empty")
    figs, data = [], {}
    adapters = sorted({str(r.get("adapter", "default")) for r in rows})
    for ad in adapters:
        rs = [r for r in rows if str(r.get("adapter", "default")) == ad and "step" in r]
        flat = [(float(r["step"]), _flatten(r)) for r in rs]
        keys = sorted({k for _, f in flat for k in f if k not in ("step", "epoch")})

        def series(key):
            pts = [(s, f[key]) for s, f in flat if key in f]
            return [p[0] for p in pts], [p[1] for p in pts]

        prefix = f"{ad}: " if len(adapters) > 1 else ""
        loss = [(k, *series(k), c) for k, c in (("loss", charts.BLUE), ("val_loss", charts.ORANGE)) if k in keys]
        if loss:
            figs.append(charts.lines(loss, title=f"{prefix}loss and val loss", x_label="step", y_label="loss"))
        by_task = [k for k in keys if k.startswith("val_loss_by_task/")]
        if by_task:
            figs.append(charts.lines([(k.split("/", 1)[1], *series(k), charts.PALETTE[i % len(charts.PALETTE)])
                                      for i, k in enumerate(by_task)], title=f"{prefix}val loss per task", x_label="step",
                                     y_label="loss"))
        kl = [(k, *series(k), c) for k, c in (("kl_to_base", charts.VERMILION), ("kl_train", charts.PINK)) if k in keys]
        if kl:
            figs.append(charts.lines(kl, title=f"{prefix}KL to the base model", x_label="step", y_label="KL (nats/token)"))
        ref = [(k, *series(k), c) for k, c in (("ref_loss", charts.BLUE), ("ref_loss_base", charts.GREY)) if k in keys]
        if ref:
            figs.append(charts.lines(ref, title=f"{prefix}loss on reference text (forgetting)", x_label="step", y_label="loss"))
        for k, title in (("lr", "learning rate"), ("tokens_per_s", "tokens/s")):
            if k in keys:
                figs.append(charts.lines([(k, *series(k), charts.GREEN)], title=f"{prefix}{title}", x_label="step"))
        val = [f["val_loss"] for _, f in flat if "val_loss" in f]
        data[ad] = {"steps": int(max((s for s, _ in flat), default=0)), "rows": len(rs),
                    "first_val_loss": val[0] if val else None, "last_val_loss": val[-1] if val else None,
                    "best_val_loss": min(val) if val else None}
    rows_html = [[_e(a), d["steps"], _e(charts.fmt_num(d["first_val_loss"]) if d["first_val_loss"] is not None else "—"),
                  _e(charts.fmt_num(d["best_val_loss"]) if d["best_val_loss"] is not None else "—"),
                  _e(charts.fmt_num(d["last_val_loss"]) if d["last_val_loss"] is not None else "—")] for a, d in data.items()]
    html = _grid(figs) + _table(["adapter", "steps", "val loss at start", "best val loss", "last val loss"], rows_html)
    extra, extra_data = _training_outcome(run)
    data.update(extra_data)
    return Section("training", "Training curves", html + extra, charts=len(figs), data=data)


def _training_outcome(run: RunData) -> tuple[str, dict]:
    """Forgetting before/after on the monitor's reference, and `curate eval`'s table (manifest `eval`)."""
    def num(v):
        return _e(charts.fmt_num(v)) if isinstance(v, (int, float)) else "—"

    parts, data = [], {}
    tr = run.manifest.get("train") or {}
    units = tr.get("adapters") or ({"default": tr} if tr else {})
    warns = [(a, w) for a, u in units.items() for w in (u.get("warnings") or [])]
    if warns:  # the trainer's warnings (an early stop in the first quarter of steps), as the console gave them
        parts.append("".join(
            f'<p class="warn"><b>WARNING</b> {_e(a) + ": " if len(units) > 1 else ""}{_e(w)}</p>' for a, w in warns))
        data["warnings"] = [w for _, w in warns]
    rows = [[_e(a), num(u.get("kl_to_base")), num(u.get("ref_loss_before")), num(u.get("ref_loss_after"))]
            for a, u in units.items() if u.get("kl_to_base") is not None]
    if rows:
        parts.append(f"<h3>Forgetting <span class=\"dim\">— on {_e(tr.get('forgetting_reference', 'the reference'))} "
                     f"text</span></h3>" + _table(["adapter", "KL to base", "reference loss before", "reference loss after"], rows))
    ev = run.manifest.get("eval") or {}
    if ev.get("tasks"):
        arms = ev.get("arms") or []
        head = ["task", "n"] + [f"{a} {m}" for a in arms for m in ("EM", "loss")]
        trs = [[_e(t), (by.get(arms[0]) or {}).get("n", "")]
               + [num((by.get(a) or {}).get(m)) for a in arms for m in ("exact_match", "answer_loss")]
               for t, by in [*ev["tasks"].items(), ("(all)", ev.get("overall") or {})]]
        parts.append(f"<h3>Eval <span class=\"dim\">— {_e(ev.get('source'))}, few-shot k = {_e(ev.get('k'))}, exact match "
                     f"(normalised) and answer loss per token</span></h3>" + _table(head, trs))
        data["eval"] = ev.get("overall")
    return "".join(parts), data


def section_frontier(run: RunData) -> Section | None:
    """The mitigation frontier (benchmarks/train_frontier.py's JSON): its table and the
    exact-match-vs-KL scatter. Not listed at all when there is no such file (most runs)."""
    p = run.frontier_path
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        arms = [a for a in doc["arms"] if isinstance(a, dict)]
    except (ValueError, KeyError, TypeError) as exc:
        return Section("frontier", "Mitigation frontier", None, f"{p.name} is not a frontier results file ({exc})")

    def ms(a: dict, k: str) -> str:
        v, sd = a.get(k), a.get(k + "_std")
        if not isinstance(v, (int, float)):
            return "—"
        return f"{v:.3f} ± {sd:.3f}" if isinstance(sd, (int, float)) else f"{v:.3f}"

    tasks = sorted({t for a in arms for t in (a.get("exact_match_by_task") or {})})

    def by(a: dict, t: str) -> str:
        v = (a.get("exact_match_by_task") or {}).get(t)
        return f"{v:.3f}" if isinstance(v, (int, float)) else "—"

    rows = [[_e(a.get("label", a.get("arm"))), _e(a.get("seeds", "")), ms(a, "exact_match"), *[by(a, t) for t in tasks],
             ms(a, "kl_to_base"), ms(a, "ref_loss"), _e(charts.fmt_num(a.get("tokens"))),
             _e(charts.fmt_num(a.get("wall_s"))), "yes" if a.get("pareto") else ""]
            for a in arms]
    pts = [{"label": a.get("label", a.get("arm")), "x": a.get("kl_to_base"), "y": a.get("exact_match"),
            "dx": a.get("kl_to_base_std"), "dy": a.get("exact_match_std"), "frontier": bool(a.get("pareto"))} for a in arms]
    fig = charts.scatter(pts, title="Task skill vs forgetting", x_label="KL to base (nats/token, log scale)",
                         y_label="exact match", frontier="upper-left", log_x=True)
    meta = doc.get("meta") or {}
    note = (f'<p class="dim">{_e(meta.get("model", ""))}, {_e(meta.get("seeds", "?"))} seed(s) per arm: '
            f'<code>{_e(meta.get("command", ""))}</code></p>')
    if meta.get("partial"):  # a grid cut short (--summarise): say so above the chart
        note += f'<p class="warn"><b>WARNING</b> partial grid: {_e(meta["partial"])}</p>'
    html = note + _grid([fig]) + _table(["arm", "seeds", "exact match", *[f"EM {t}" for t in tasks], "KL to base",
                                        "reference loss", "tokens", "wall s", "on the frontier"], rows)
    return Section("frontier", "Mitigation frontier", html, charts=1,
                   data={"arms": len(arms), "pareto": [a.get("arm") for a in arms if a.get("pareto")]})


def section_stats(run: RunData) -> Section:
    items = [(s["name"], s.get("stats") or {}) for s in run.stages]
    render = run.manifest.get("render")
    if render:
        items.append(("render", {k: v for k, v in (render.get("stats") or {}).items() if k != "samples"}))
    items = [(n, st) for n, st in items if st]
    if not items:
        return Section("stats", "Stage statistics", None, "no stage recorded statistics")
    html = "".join(f"<details><summary>{_e(n)}</summary><pre>{_e(json.dumps(st, indent=1, sort_keys=True, default=str))}</pre></details>"
                   for n, st in items)
    return Section("stats", "Stage statistics (raw)", html)


# Pictures first, the row-level browsers (rejects, raw stats) last.
def section_consensus(run: RunData) -> Section:
    """Prompt groups whose answers conflict (consensus stages): counts, per task, and the
    largest conflicting groups with each distinct answer's count and support."""
    cs = [s for s in run.stages if s.get("kind") == "consensus"]
    if not cs:
        return Section("consensus", "Answer conflicts", None, "no consensus stage in this run")
    parts, data = [], {}
    for s in cs:
        st = s.get("stats") or {}
        facts = [("rows in", st.get("rows_in")), ("prompt groups", st.get("groups")),
                 ("repeated prompts", st.get("groups_repeated")), ("conflicting groups", st.get("conflict_groups")),
                 ("rows in conflicting groups", st.get("rows_in_conflict_groups")), ("ties", st.get("tie_groups")),
                 ("minority answers dropped", st.get("dropped_minority")), ("largest group", st.get("largest_group"))]
        parts.append(f"<h3>{_e(s['name'])}</h3><p class=\"meta\">" + " · ".join(
            f"{_e(k)} <b>{_e(f'{v:,}' if isinstance(v, int) else v)}</b>" for k, v in facts if v is not None) + "</p>")
        by_task = st.get("by_task") or {}
        if by_task:
            parts.append(_table(["task", "rows", "in conflicting groups", "dropped (minority answer)"],
                                [[_e(t), int(v.get("rows", 0)), int(v.get("in_conflict", 0)), int(v.get("dropped", 0))]
                                 for t, v in sorted(by_task.items())]))
        for ex in st.get("examples") or []:
            rows = [[_e(_excerpt(a.get("answer"), 160)), int(a.get("count", 0)), int(a.get("support", 0)),
                     f"<code>{_e(a.get('id'))}</code>"] for a in ex.get("top") or []]
            parts.append(f'<div class="cluster"><div class="dim">group <code>{_e(ex.get("group"))}</code> · '
                         f'{_e(ex.get("size"))} records · {_e(ex.get("answers"))} distinct answers</div>'
                         f'<div class="txt">{_e(_excerpt(ex.get("prompt")))}</div>'
                         + _table(["answer", "records", "support", "e.g."], rows) + "</div>")
        data[s["name"]] = {"conflict_groups": st.get("conflict_groups"), "dropped_minority": st.get("dropped_minority"),
                           "examples": len(st.get("examples") or [])}
    note = ('<p class="note">Records with the same normalised prompt vote with their answers; support counts the '
            'records whose answer agrees (exactly or near-equal). Run consensus before dedup: dedup removes the copies '
            'that are the votes.</p>')
    return Section("consensus", "Answer conflicts", note + "".join(parts), data=data)


def section_scorers(run: RunData) -> Section:
    """Each scorer's measured power (AUC on trusted labels, bootstrap interval) and each
    select's verdict; a select on an unvalidated or chance-level score says so loudly."""
    rows, warns, data = [], [], {}
    for s in run.stages:
        if s.get("kind") not in ("quality", "select"):
            continue
        st = s.get("stats") or {}
        m = st.get("signal")
        col = st.get("column")
        if not isinstance(m, dict):
            if s.get("kind") == "quality":
                continue
            m = {"verdict": "unvalidated", "note": "no validation recorded"}
        ci = m.get("ci")
        rows.append([_e(s["name"]), _e(s["kind"]), _e(col), _e(m.get("labels") or "none"),
                     _e(m.get("labelled", "")), _e(m.get("auc") if m.get("auc") is not None else ""),
                     _e(f"{ci[0]}-{ci[1]}" if ci else ""), f"<b>{_e(m.get('verdict'))}</b>"])
        if s.get("kind") == "select" and m.get("verdict") != "signal":
            warns.append(m.get("warning") or f"{s['name']}: selection on {col!r} is unvalidated ({m.get('note', '')})")
        data[s["name"]] = {"auc": m.get("auc"), "verdict": m.get("verdict")}
    if not rows:
        return Section("scorers", "Scorer validation", None, "no quality or select stage in this run")
    body = "".join(f'<p class="warn"><b>WARNING</b> {_e(w)}</p>' for w in warns)
    body += _table(["stage", "kind", "score", "labels", "labelled rows", "AUC", "95% interval", "verdict"], rows)
    body += ('<p class="note">AUC: the chance that a record the labels call good scores better than one they call bad '
             '(0.5 = a coin). A select whose score is not shown to beat a coin keeps a random sample of its input.</p>')
    return Section("scorers", "Scorer validation", body, data=data)


SECTIONS = (section_overview, section_funnel, section_lengths, section_rendered, section_scores, section_languages,
            section_scorers, section_consensus, section_mix, section_duplicates, section_decontamination, section_samples, section_training,
            section_frontier, section_rejects, section_stats)

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1a1a1a;background:#fafafa}
header{background:#12355b;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
nav{padding:6px 24px;background:#e8eef5;font-size:13px}nav a{margin-right:12px;color:#12355b}
nav a.skipped{color:#888}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;margin:14px 0}
section h2{margin:4px 0 8px;font-size:17px}section h3{font-size:14px;margin:12px 0 6px}
.note{color:#666;font-style:italic}.warn{color:#a00;background:#fee;padding:4px 8px;border-left:4px solid #a00}.dim{color:#666;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:10px}.cell{border:1px solid #eee;border-radius:4px;padding:4px;background:#fff}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px}th,td{border:1px solid #ddd;padding:3px 7px;vertical-align:top;text-align:left}
th{background:#f0f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.txt{max-width:420px;max-height:9em;overflow:auto;white-space:pre-wrap;word-break:break-word}
table.side .txt{max-width:560px}
.cards{display:flex;gap:10px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:110px;background:#f7f9fb}
.big{font-size:22px;font-weight:600}.ok{color:#00734d}.bad{color:#b00020;font-weight:600}
.cluster{border:1px solid #e3e3e3;border-radius:4px;padding:6px;margin:8px 0}
.members{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:6px}
.member{border-left:4px solid #D55E00;padding:4px 8px;background:#fff8f3}.member.kept{border-color:#009E73;background:#f2fbf7}
.sample pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:8px;border-radius:4px;max-height:24em;overflow:auto}
mark.sup{background:#c9efd9;color:#00432a;border-bottom:2px solid #009E73}
details{margin:4px 0}summary{cursor:pointer}code{font-size:12px}
pre{font-size:12px}
"""


def build_report(run_dir: Path, tokenizer: str | Path | None = None, frontier: str | Path | None = None) -> str:
    run = RunData(Path(run_dir), tokenizer, frontier)
    sections = [s for f in SECTIONS if (s := f(run)) is not None]  # None: a section this run has no use for
    nav = "".join(f'<a href="#{s.id}" class="{"" if s.body is not None else "skipped"}">{_e(s.title)}</a>' for s in sections)
    body = []
    for s in sections:
        inner = s.body if s.body is not None else f'<p class="note">Skipped: {_e(s.note)}.</p>'
        body.append(f'<section id="{s.id}" data-status="{"ok" if s.body is not None else "skipped"}" data-charts="{s.charts}">'
                    f"<h2>{_e(s.title)}</h2>{inner}</section>")
    summary = {"sections": {s.id: {"status": "ok" if s.body is not None else "skipped", "note": s.note, "charts": s.charts,
                                   "data": s.data} for s in sections}}
    summary_json = json.dumps(summary, sort_keys=True, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = f"curate report: {run.dir.name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{_e(title)}</h1></header><nav>{nav}</nav><main>"
            + "".join(body) + "</main>"
            f'<script type="application/json" id="report-summary">{summary_json}</script></body></html>\n')
