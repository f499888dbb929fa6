#!/usr/bin/env python3
"""Draws the samples of a soak run (scripts/soak.sh writes them to bench/soak/soak-<N>s.csv)
as one SVG, the server's RSS above and the chat latency below, and prints the figures
docs/performance.md quotes. Python 3 standard library only; the SVG is drawn by hand, as
scripts/bench_report.py draws the benchmark's (it reuses that script's axis rounding).

Usage: soak_report.py CSV [SVG]        (SVG defaults to the CSV's name with .svg)
"""

import csv
import math
import os
import statistics
import sys
from html import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report import nice_max  # noqa: E402

# The slope is judged after the first fifth of the run, as loadgen's soak mode does.
WARMUP_FRACTION = 0.2


def read(path):
    with open(path, newline="") as f:
        rows = [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(f)]
    # The last line is taken after every client left (no deliveries): keep it for RSS and
    # descriptors, not for latency.
    return rows


def slope_per_10min(points):
    """Least-squares slope of (t, y) points, per 600 s; None for fewer than 3 points."""
    if len(points) < 3:
        return None
    mt = statistics.fmean(t for t, _ in points)
    my = statistics.fmean(y for _, y in points)
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mt) * (y - my) for t, y in points) / var * 600, mt, my


def panel(o, x0, y0, w, h, t_max, series, y_max, unit, log=False, y_min=None):
    """One plot: series = [(label, colour, [(t, v)], dashed)]; returns the y mapping."""
    if log:
        lo, hi = math.log10(y_min), math.log10(y_max)

        def y(v):
            v = max(v, y_min)
            return y0 + h - (math.log10(v) - lo) / (hi - lo) * h
        ticks = [10 ** e for e in range(int(math.floor(lo)), int(math.ceil(hi)) + 1)]
    else:
        def y(v):
            return y0 + h - v / y_max * h
        ticks = [y_max * i / 4 for i in range(5)]

    def x(t):
        return x0 + t / t_max * w
    for t in ticks:
        o.append(f'<line x1="{x0}" y1="{y(t):.1f}" x2="{x0 + w}" y2="{y(t):.1f}" stroke="#e3e3e3"/>')
        o.append(f'<text x="{x0 - 6}" y="{y(t) + 4:.1f}" text-anchor="end" fill="#444">{t:g}</text>')
    minutes = max(1, int(t_max // 60))
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60) if minutes / s <= 10)
    for m in range(0, minutes + 1, step):
        o.append(f'<text x="{x(m * 60):.1f}" y="{y0 + h + 16}" text-anchor="middle" fill="#444">{m}</text>')
    o.append(f'<text x="{x0 - 52}" y="{y0 + h / 2}" text-anchor="middle" fill="#444" '
             f'transform="rotate(-90 {x0 - 52} {y0 + h / 2})">{escape(unit)}</text>')
    o.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#333"/>')
    for i, (label, colour, pts, dashed) in enumerate(series):
        if not pts:
            continue
        d = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        o.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
        lx = x0 + 8 + i * 190
        o.append(f'<line x1="{lx}" y1="{y0 + 12}" x2="{lx + 18}" y2="{y0 + 12}" stroke="{colour}" stroke-width="2"{dash}/>')
        o.append(f'<text x="{lx + 23}" y="{y0 + 16}">{escape(label)}</text>')
    return x, y


def chart(rows, title):
    t_max = max(r["t_s"] for r in rows) or 1
    width, left, right = 760, 80, 20
    w = width - left - right
    top, h, gap = 44, 170, 46
    height = top + 2 * h + gap + 40
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
         f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
         f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>']
    rss = [(r["t_s"], r["rss_kib"] / 1024) for r in rows]
    warm = t_max * WARMUP_FRACTION
    fit = slope_per_10min([p for p in rss if p[0] >= warm])
    line = []
    if fit:
        slope, mt, my = fit
        line = [(t, my + slope / 600 * (t - mt)) for t in (warm, t_max)]
    x, _ = panel(o, left, top, w, h, t_max,
                 [("server RSS", "#1f6feb", rss, False), ("fit after warm-up", "#d1242f", line, True)],
                 nice_max(max(v for _, v in rss) * 1.1), "RSS (MiB)")
    o.append(f'<rect x="{left}" y="{top}" width="{x(warm) - left:.1f}" height="{h}" fill="#000" fill-opacity="0.05"/>')
    o.append(f'<text x="{left + 6}" y="{top + h - 6}" fill="#666">warm-up</text>')
    live = [r for r in rows if r["deliveries"]]
    p50 = [(r["t_s"], r["p50_us"] / 1000) for r in live]
    p99 = [(r["t_s"], r["p99_us"] / 1000) for r in live]
    top2 = top + h + gap
    highest = max([v for _, v in p99] + [1])
    panel(o, left, top2, w, h, t_max,
          [("chat latency p50 (5 s)", "#2da44e", p50, False), ("p99 (5 s)", "#bf8700", p99, False)],
          10 ** math.ceil(math.log10(highest)), "latency (ms, log)", log=True, y_min=0.1)
    o.append(f'<text x="{left + w / 2}" y="{height - 8}" text-anchor="middle" fill="#444">minutes</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def summary(rows):
    t_max = max(r["t_s"] for r in rows)
    warm = t_max * WARMUP_FRACTION
    fit = slope_per_10min([(r["t_s"], r["rss_kib"]) for r in rows if r["t_s"] >= warm])
    live = [r for r in rows if r["deliveries"]]
    last = rows[-1]
    during = rows[1:-1] or rows
    lines = [
        f"samples: {len(rows)} over {t_max / 60:.1f} min",
        f"RSS: {rows[0]['rss_kib'] / 1024:.1f} MiB at start, {max(r['rss_kib'] for r in rows) / 1024:.1f} max, "
        f"{last['rss_kib'] / 1024:.1f} at end; after the first {warm / 60:.1f} min: "
        + (f"{fit[0]:+.0f} KiB per 10 min" if fit else "too few samples"),
        f"descriptors: {rows[0]['fds']:.0f} at start, {min(r['fds'] for r in during):.0f}-{max(r['fds'] for r in during):.0f} "
        f"during, {last['fds']:.0f} after the clients left",
        f"chat latency per 5 s: p50 median {statistics.median(r['p50_us'] for r in live) / 1000:.2f} ms "
        f"(max {max(r['p50_us'] for r in live) / 1000:.2f}), p99 median {statistics.median(r['p99_us'] for r in live) / 1000:.2f} ms "
        f"(max {max(r['p99_us'] for r in live) / 1000:.1f})",
        f"messages: {last['messages_received']:.0f} received, {last['messages_delivered']:.0f} deliveries, "
        f"{last['history_writes']:.0f} committed, {last['slow_consumers']:.0f} slow consumers dropped",
    ]
    # Windows with a flood burst stand out by their posts: a burst adds thousands to the
    # chat rooms' ~1,000 per 5 s.
    posts = [(r, r["messages_received"] - p["messages_received"]) for p, r in zip(rows, rows[1:]) if r["deliveries"]]
    usual = statistics.median(d for _, d in posts) if posts else 0
    burst = [r["p99_us"] / 1000 for r, d in posts if d > 2 * usual]
    calm = [r["p99_us"] / 1000 for r, d in posts if d <= 2 * usual]
    if burst and calm:
        lines.append(f"chat p99 per 5 s, median: {statistics.median(calm):.2f} ms in {len(calm)} windows without a "
                     f"flood burst, {statistics.median(burst):.2f} ms in {len(burst)} with one")
    by_minute = {}
    for r in live:
        # The last sample, at exactly the run's length, belongs to the last full 5 minutes.
        by_minute.setdefault(min(int(r["t_s"] // 300), max(0, int((t_max - 1) // 300))), []).append(r)
    lines.append("per 5 min: minute, RSS MiB, fds max, p50 ms median, p99 ms median, p99 ms max")
    for k in sorted(by_minute):
        rs = by_minute[k]
        lines.append(f"  {k * 5:>3}  {rs[-1]['rss_kib'] / 1024:6.1f}  {max(r['fds'] for r in rs):4.0f}  "
                     f"{statistics.median(r['p50_us'] for r in rs) / 1000:6.2f}  "
                     f"{statistics.median(r['p99_us'] for r in rs) / 1000:7.2f}  {max(r['p99_us'] for r in rs) / 1000:7.1f}")
    return "\n".join(lines)


def main(argv):
    if not argv or argv[0] in ("-h", "--help") or len(argv) > 2:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    rows = read(argv[0])
    if len(rows) < 2:
        print(f"soak_report: {argv[0]} has fewer than two samples", file=sys.stderr)
        return 1
    out = argv[1] if len(argv) > 1 else os.path.splitext(argv[0])[0] + ".svg"
    minutes = max(r["t_s"] for r in rows) / 60
    with open(out, "w") as f:
        f.write(chart(rows, f"Soak, {minutes:.0f} min: server RSS and chat latency (scripts/soak.sh)"))
    print(summary(rows))
    print(f"chart: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
