"""Small hand-written SVG charts for the HTML report: histograms, horizontal bars, line
charts, a labelled scatter with a Pareto frontier, and the ledger funnel.

Why not matplotlib: inline SVG needs no dependency, renders offline in any browser, is a
few kilobytes per chart, and is byte-for-byte deterministic (matplotlib embeds ids and
font metrics that vary across versions). The trade-off is fewer chart kinds; the report
only needs these five. Charts label series directly (swatch + name in the header, line
names at the line ends, point names beside the points) so nobody has to hunt for a
legend. All text is escaped here: labels come from user data.
"""
from __future__ import annotations

import math
from html import escape
from typing import Sequence

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
BLUE, ORANGE, GREEN, PINK, SKY, VERMILION, YELLOW, GREY = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#8C8C8C")
PALETTE = (BLUE, ORANGE, GREEN, PINK, SKY, VERMILION, YELLOW, GREY)
FONT = 'font-family="system-ui, sans-serif"'


def fmt_num(x: float) -> str:
    """Compact, deterministic number text: 1234 -> 1,234; 12345 -> 12.3k; 0.1234 -> 0.123."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:.3g}M"
    if ax >= 1e4:
        return f"{x / 1e3:.3g}k"
    if float(x).is_integer():
        return f"{int(x):,}"
    if ax >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 4, integer: bool = False) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 x 10^k steps; whole steps when
    `integer`, e.g. training steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, round(step))
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Tick texts with just enough decimals to tell neighbours apart (8.315, 8.32, 8.325
    rather than three times 8.32)."""
    if len(ticks) < 2:
        return [fmt_num(t) for t in ticks]
    step = min(abs(b - a) for a, b in zip(ticks, ticks[1:])) or 1.0
    if max(abs(t) for t in ticks) >= 1e4 or step >= 1:
        return [fmt_num(t) for t in ticks]
    if step < 1e-3:
        return [f"{t:.2g}" if t else "0" for t in ticks]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    decimals += 1 if any(round(t, decimals) != round(t, decimals + 3) for t in ticks) else 0
    return [f"{t:.{decimals}f}" for t in ticks]


def _svg(width: int, height: int, title: str, body: list[str], kind: str) -> str:
    return (f'<svg class="chart" data-kind="{kind}" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" {FONT} font-size="11">'
            f'<title>{escape(title)}</title>' + "".join(body) + "</svg>")


def _header(title: str, series: Sequence[tuple[str, str]], width: int) -> list[str]:
    """Title at the left, the series' swatches and names right after it: a legend in
    the reading path rather than in a corner."""
    out = [f'<text x="8" y="16" font-weight="600" font-size="12">{escape(title)}</text>']
    if len(series) > 1:
        x = 8
        for name, color in series:
            out.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{color}"/>')
            out.append(f'<text x="{x + 14}" y="33">{escape(name)}</text>')
            x += 22 + 7 * len(name)
    return out


def _fx(v: float) -> str:
    return f"{v:.1f}"


def histogram(edges: Sequence[float], series: Sequence[tuple[str, Sequence[int], str]], *, title: str,
              x_label: str, markers: Sequence[tuple[float, str]] = (), width: int = 440, height: int = 210,
              overflow: bool = False) -> str:
    """Bars over shared bin `edges`; several series are overlaid, the later ones
    translucent, so before/after shapes compare directly. `markers` draw labelled
    vertical lines (e.g. a selection threshold). `overflow`: the last bin also holds
    everything above its right edge (labelled "≥")."""
    left, right, top, bottom = 48, 12, 42 if len(series) > 1 else 26, 34
    pw, ph = width - left - right, height - top - bottom
    lo, hi = float(edges[0]), float(edges[-1])
    span = (hi - lo) or 1.0
    ymax = max((max(c) if len(c) else 0) for _, c, _ in series) or 1
    yt = nice_ticks(0, ymax, 3, integer=True)
    ytop = max(yt[-1], ymax)

    def X(v):
        return left + (v - lo) / span * pw

    def Y(v):
        return top + ph - v / ytop * ph

    body = _header(title, [(n, c) for n, _, c in series], width)
    for t in yt:
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{_fx(Y(t))}" y2="{_fx(Y(t))}" stroke="#e5e5e5"/>')
        body.append(f'<text x="{left - 4}" y="{_fx(Y(t) + 4)}" text-anchor="end">{fmt_num(t)}</text>')
    for si, (name, counts, color) in enumerate(series):
        opacity = "1" if si == 0 else "0.7"
        for i, c in enumerate(counts):
            if not c:
                continue
            x0, x1 = X(edges[i]), X(edges[i + 1])
            y = Y(c)
            body.append(f'<rect x="{_fx(x0 + 0.5)}" y="{_fx(y)}" width="{_fx(max(x1 - x0 - 1, 0.8))}" '
                        f'height="{_fx(top + ph - y)}" fill="{color}" fill-opacity="{opacity}">'
                        f'<title>{escape(name)}: {fmt_num(edges[i])}–{fmt_num(edges[i + 1])}: {c:,}</title></rect>')
    body.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
    for t in nice_ticks(lo, hi, 4):
        if lo <= t <= hi and not (overflow and X(t) > left + pw - 46):
            body.append(f'<line x1="{_fx(X(t))}" x2="{_fx(X(t))}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#333"/>')
            body.append(f'<text x="{_fx(X(t))}" y="{top + ph + 15}" text-anchor="middle">{fmt_num(t)}</text>')
    if overflow:
        body.append(f'<text x="{left + pw}" y="{top + ph + 15}" text-anchor="end" fill="#666">≥{fmt_num(hi)}</text>')
    body.append(f'<text x="{left + pw / 2:.1f}" y="{height - 3}" text-anchor="middle" fill="#444">{escape(x_label)}</text>')
    for value, label in markers:
        if value is None or not math.isfinite(value):
            continue
        x = X(min(max(value, lo), hi))
        body.append(f'<line class="marker" x1="{_fx(x)}" x2="{_fx(x)}" y1="{top - 4}" y2="{top + ph}" '
                    f'stroke="{VERMILION}" stroke-width="2" stroke-dasharray="4 3"/>')
        anchor = "end" if x > left + pw * 0.7 else "start"
        dx = -4 if anchor == "end" else 4
        body.append(f'<text x="{_fx(x + dx)}" y="{top + 8}" text-anchor="{anchor}" fill="{VERMILION}" '
                    f'font-weight="600">{escape(label)}</text>')
    return _svg(width, height, title, body, "histogram")


def hbars(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float], str]], *, title: str,
          value_fmt=fmt_num, width: int = 520, bar_h: int = 12, max_value: float | None = None) -> str:
    """Horizontal bars, one group per label, one bar per series, each bar with its value
    written at its end (no axis to read values off)."""
    label_w = min(180, 10 + 7 * max((len(str(x)) for x in labels), default=4))
    top = 42 if len(series) > 1 else 26
    group_h = bar_h * len(series) + 6
    height = top + group_h * len(labels) + 8
    pw = width - label_w - 70
    vmax = max_value or max((v for _, vals, _ in series for v in vals if v is not None), default=0) or 1
    body = _header(title, [(n, c) for n, _, c in series], width)
    for gi, label in enumerate(labels):
        y0 = top + gi * group_h
        text = str(label)
        if len(text) > 26:
            text = text[:25] + "…"
        body.append(f'<text x="{label_w - 6}" y="{y0 + group_h / 2 + 1:.1f}" text-anchor="end">{escape(text)}</text>')
        for si, (name, vals, color) in enumerate(series):
            v = vals[gi] if gi < len(vals) else None
            y = y0 + si * bar_h
            w = 0.0 if v is None else max(v / vmax * pw, 0.0)
            if v:
                body.append(f'<rect x="{label_w}" y="{y}" width="{_fx(max(w, 1))}" height="{bar_h - 2}" fill="{color}">'
                            f'<title>{escape(str(label))} / {escape(name)}: {value_fmt(v)}</title></rect>')
            body.append(f'<text x="{_fx(label_w + w + 4)}" y="{y + bar_h - 3}" fill="#333">'
                        f'{"-" if v is None else escape(value_fmt(v))}</text>')
    return _svg(width, height, title, body, "bars")


def lines(series: Sequence[tuple[str, Sequence[float], Sequence[float], str]], *, title: str, x_label: str,
          y_label: str = "", width: int = 440, height: int = 220, log_y: bool = False) -> str:
    """Line chart; each line is named at its last point (direct labels)."""
    pts = [(x, y) for _, xs, ys, _ in series for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    left, right, top, bottom = 64, 138, 26, 34
    pw, ph = width - left - right, height - top - bottom
    if not pts:
        return _svg(width, height, title, _header(title, [], width), "lines")
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    ys = [p[1] for p in pts]
    if log_y and min(ys) > 0:
        tr = math.log10
    else:
        log_y, tr = False, (lambda v: v)
    y0, y1 = tr(min(ys)), tr(max(ys))
    if y1 - y0 <= abs(y0) * 1e-9:
        half = abs(y0) * 0.5 or 0.5
        y0, y1 = y0 - half, y1 + half
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    if x1 == x0:
        x1 = x0 + 1

    def X(v):
        return left + (v - x0) / (x1 - x0) * pw

    def Y(v):
        return top + ph - (tr(v) - y0) / (y1 - y0) * ph

    body = _header(title, [], width)
    yt = nice_ticks(y0, y1, 4)
    ylabels = [fmt_num(10 ** t) for t in yt] if log_y else tick_labels(yt)
    for t, text in zip(yt, ylabels):
        yy = top + ph - (t - y0) / (y1 - y0) * ph
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{_fx(yy)}" y2="{_fx(yy)}" stroke="#e5e5e5"/>')
        body.append(f'<text x="{left - 4}" y="{_fx(yy + 4)}" text-anchor="end">{text}</text>')
    integer_x = all(float(p[0]).is_integer() for p in pts)
    xt = [t for t in nice_ticks(x0, x1, 4, integer=integer_x) if x0 <= t <= x1]
    for t, text in zip(xt, tick_labels(xt)):
        body.append(f'<text x="{_fx(X(t))}" y="{top + ph + 15}" text-anchor="middle">{text}</text>')
    body.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
    body.append(f'<text x="{left + pw / 2:.1f}" y="{height - 3}" text-anchor="middle" fill="#444">{escape(x_label)}</text>')
    if y_label:
        body.append(f'<text x="12" y="{top + ph / 2:.1f}" transform="rotate(-90 12 {top + ph / 2:.1f})" '
                    f'text-anchor="middle" fill="#444">{escape(y_label)}</text>')
    ends = []
    for name, xs, ys_, color in series:
        p = [(x, y) for x, y in zip(xs, ys_) if y is not None and math.isfinite(y) and (not log_y or y > 0)]
        if not p:
            continue
        d = " ".join(f"{'M' if i == 0 else 'L'}{_fx(X(x))},{_fx(Y(y))}" for i, (x, y) in enumerate(p))
        body.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.8"><title>{escape(name)}</title></path>')
        if len(p) <= 40:
            body += [f'<circle cx="{_fx(X(x))}" cy="{_fx(Y(y))}" r="2" fill="{color}"/>' for x, y in p]
        ends.append([Y(p[-1][1]), name, color, p[-1][1]])
    ends.sort()
    for i in range(1, len(ends)):  # keep end labels from overlapping
        ends[i][0] = max(ends[i][0], ends[i - 1][0] + 12)
    for y, name, color, v in ends:
        label = name if len(name) <= 13 else name[:12] + "…"
        body.append(f'<text x="{left + pw + 4}" y="{_fx(y + 4)}" fill="{color}">{escape(label)} {fmt_num(v)}</text>')
    return _svg(width, height, title, body, "lines")


def scatter(points: Sequence[dict], *, title: str, x_label: str, y_label: str, frontier: str | None = None,
            width: int = 560, height: int = 340, log_x: bool = False) -> str:
    """One labelled point per dict `{label, x, y, dx?, dy?, frontier?}`, with +-dx / +-dy
    error bars; points whose `frontier` is true are filled and joined by a step line (the
    Pareto frontier, in x order), the rest drawn hollow. `frontier` names the better corner
    ("upper-left": high y, low x) and is written in the header. Labels sit beside their
    points, nudged apart vertically; the axes start at 0 when the data is non-negative
    (an error bar never makes an axis negative). `log_x`: a log-10 x axis (for values that
    span decades, such as KL to base across mitigations); points with x <= 0 are left out
    and an error bar that would reach 0 is cut at the axis."""
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None
           and math.isfinite(p["x"]) and math.isfinite(p["y"]) and (p["x"] > 0 or not log_x)]
    left, right, top, bottom = 52, 170, 40, 36
    pw, ph = width - left - right, height - top - bottom
    body = _header(title, [], width)
    if frontier:
        body.append(f'<text x="8" y="32" fill="#666">filled, joined: the Pareto frontier (better: {escape(frontier)})</text>')
    if not pts:
        return _svg(width, height, title, body, "scatter")

    def span(vals, errs):
        lo = min(v - e for v, e in zip(vals, errs))
        hi = max(v + e for v, e in zip(vals, errs))
        lo = 0.0 if min(vals) >= 0 else lo
        if hi <= lo:
            hi = lo + (abs(lo) or 1.0)
        return lo, hi + (hi - lo) * 0.05

    y0, y1 = span([p["y"] for p in pts], [abs(p.get("dy") or 0) for p in pts])
    if log_x:
        lx = [math.log10(p["x"]) for p in pts]
        hi = max(math.log10(p["x"] + abs(p.get("dx") or 0)) for p in pts)
        x0, x1 = math.floor(min(lx)), max(math.ceil(hi), math.floor(min(lx)) + 1)

        def X(v):
            v = math.log10(v) if v > 0 else x0
            return left + (min(max(v, x0), x1) - x0) / (x1 - x0) * pw
    else:
        x0, x1 = span([p["x"] for p in pts], [abs(p.get("dx") or 0) for p in pts])

        def X(v):
            return left + (min(max(v, x0), x1) - x0) / (x1 - x0) * pw

    def Y(v):
        return top + ph - (min(max(v, y0), y1) - y0) / (y1 - y0) * ph

    yt = [t for t in nice_ticks(y0, y1, 4) if y0 <= t <= y1]
    for t, text in zip(yt, tick_labels(yt)):
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{_fx(Y(t))}" y2="{_fx(Y(t))}" stroke="#e5e5e5"/>')
        body.append(f'<text x="{left - 4}" y="{_fx(Y(t) + 4)}" text-anchor="end">{text}</text>')
    if log_x:  # decades, labelled with their values
        xt = [10.0 ** e for e in range(int(x0), int(x1) + 1)]
        xlabels = [fmt_num(t) if t >= 1 else f"{t:g}" for t in xt]
    else:
        xt = [t for t in nice_ticks(x0, x1, 4) if x0 <= t <= x1]
        xlabels = tick_labels(xt)
    for t, text in zip(xt, xlabels):
        body.append(f'<line x1="{_fx(X(t))}" x2="{_fx(X(t))}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#333"/>')
        body.append(f'<text x="{_fx(X(t))}" y="{top + ph + 15}" text-anchor="middle">{text}</text>')
    body.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
    body.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#333"/>')
    body.append(f'<text x="{left + pw / 2:.1f}" y="{height - 3}" text-anchor="middle" fill="#444">{escape(x_label)}</text>')
    body.append(f'<text x="12" y="{top + ph / 2:.1f}" transform="rotate(-90 12 {top + ph / 2:.1f})" '
                f'text-anchor="middle" fill="#444">{escape(y_label)}</text>')
    front = sorted((p for p in pts if p.get("frontier")), key=lambda p: (p["x"], p["y"]))
    if len(front) > 1:  # a step line: from each frontier point across to the next one's x, then up
        d = f"M{_fx(X(front[0]['x']))},{_fx(Y(front[0]['y']))}"
        for p in front[1:]:
            d += f" L{_fx(X(p['x']))},{_fx(Y(front[front.index(p) - 1]['y']))} L{_fx(X(p['x']))},{_fx(Y(p['y']))}"
        body.append(f'<path class="frontier" d="{d}" fill="none" stroke="{VERMILION}" stroke-width="1.5" '
                    f'stroke-dasharray="5 3"/>')
    labels = []
    for i, p in enumerate(pts):
        color = PALETTE[i % len(PALETTE)]
        cx, cy = X(p["x"]), Y(p["y"])
        dx, dy = abs(p.get("dx") or 0), abs(p.get("dy") or 0)
        if dx:
            body.append(f'<line x1="{_fx(X(p["x"] - dx))}" x2="{_fx(X(p["x"] + dx))}" y1="{_fx(cy)}" y2="{_fx(cy)}" '
                        f'stroke="{color}" stroke-opacity="0.6"/>')
        if dy:
            body.append(f'<line x1="{_fx(cx)}" x2="{_fx(cx)}" y1="{_fx(Y(p["y"] - dy))}" y2="{_fx(Y(p["y"] + dy))}" '
                        f'stroke="{color}" stroke-opacity="0.6"/>')
        fill = color if p.get("frontier") else "white"
        tip = f'{p["label"]}: x {fmt_num(p["x"])} ± {fmt_num(dx)}, y {fmt_num(p["y"])} ± {fmt_num(dy)}'
        body.append(f'<circle cx="{_fx(cx)}" cy="{_fx(cy)}" r="4" fill="{fill}" stroke="{color}" stroke-width="1.8">'
                    f'<title>{escape(tip)}</title></circle>')
        labels.append([cy, cx, str(p["label"]), color])
    labels.sort()
    for i in range(1, len(labels)):  # keep labels from overlapping
        labels[i][0] = max(labels[i][0], labels[i - 1][0] + 11)
    if labels and labels[-1][0] > height - 8:  # many points at the bottom (exact match 0): push the stack up
        labels[-1][0] = height - 8
        for i in range(len(labels) - 2, -1, -1):
            labels[i][0] = min(labels[i][0], labels[i + 1][0] - 11)
    for y, x, name, color in labels:
        text = name if len(name) <= 30 else name[:29] + "…"
        body.append(f'<line x1="{_fx(x + 4)}" x2="{left + pw + 4}" y1="{_fx(y)}" y2="{_fx(y)}" stroke="{color}" '
                    f'stroke-opacity="0.25"/>')
        body.append(f'<text x="{left + pw + 6}" y="{_fx(y + 4)}" fill="{color}">{escape(text)}</text>')
    return _svg(width, height, title, body, "scatter")


def funnel(steps: Sequence[dict], *, title: str = "Rows through the pipeline", width: int = 900) -> str:
    """The ledger as a funnel: one bar per step (`name`, `rows`), with what the step
    dropped (`dropped`: {reason: n}) written beside it."""
    top, row_h, label_w = 26, 30, 150
    height = top + row_h * len(steps) + 6
    pw = 330
    vmax = max((s["rows"] for s in steps), default=0) or 1
    body = [f'<text x="8" y="16" font-weight="600" font-size="12">{escape(title)}</text>']
    for i, s in enumerate(steps):
        y = top + i * row_h
        w = s["rows"] / vmax * pw
        x = label_w + (pw - w) / 2
        body.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{escape(s["name"])}</text>')
        body.append(f'<rect class="step" data-step="{escape(s["name"])}" data-rows="{s["rows"]}" x="{_fx(x)}" y="{y + 4}" '
                    f'width="{_fx(max(w, 1))}" height="{row_h - 8}" fill="{s.get("color", BLUE)}" rx="2">'
                    f'<title>{escape(s["name"])}: {s["rows"]:,} rows</title></rect>')
        body.append(f'<text x="{label_w + pw / 2}" y="{y + 18}" text-anchor="middle" fill="#fff" '
                    f'font-weight="600" stroke="#000" stroke-width="0.15">{s["rows"]:,}</text>')
        dropped = s.get("dropped") or {}
        if dropped:
            parts = ", ".join(f"{r} {n:,}" for r, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])))
            total = sum(dropped.values())
            text = f"−{total:,}: {parts}"
            limit = int((width - label_w - pw - 16) / 6.2)
            if len(text) > limit:
                text = text[:limit - 1] + "…"
            body.append(f'<text x="{label_w + pw + 10}" y="{y + 17}" fill="{VERMILION}">{escape(text)}'
                        f'<title>{escape(parts)}</title></text>')
        elif s.get("note"):
            body.append(f'<text x="{label_w + pw + 10}" y="{y + 17}" fill="#555">{escape(s["note"])}</text>')
    return _svg(width, height, title, body, "funnel")
