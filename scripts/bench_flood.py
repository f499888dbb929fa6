#!/usr/bin/env python3
"""The flood scenarios' figures (scripts/bench.sh --scenarios flood,flood1000).

    bench_flood.py line DIR                  one run's summary line (for bench.sh's log)
    bench_flood.py report RAW OUT.md COMMAND the table of medians over every run in RAW

Each run directory holds meta.env (written by bench.sh), quiet.json (the quiet load
generator's JSON line) and metrics.txt (the server's /metrics after the run).
"""
import glob
import json
import statistics
import sys


def load(d):
    meta = dict(l.strip().split("=", 1) for l in open(d + "/meta.env") if "=" in l)
    try:
        quiet = json.loads(open(d + "/quiet.json").read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        quiet = {}
    metrics = {}
    try:
        for line in open(d + "/metrics.txt"):
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                metrics[parts[0]] = float(parts[1])
    except (OSError, ValueError):
        pass
    secs = float(meta.get("seconds") or 0)
    return {
        "scenario": meta["scenario"],
        "server": meta["server"],
        "flood": meta["with"] == "flood",
        "ok": bool(quiet.get("ok")),
        "p50": quiet.get("p50_us"),
        "p99": quiet.get("p99_us"),
        "max": quiet.get("max_us"),
        "rss": (int(meta["rss_peak_kib"]) - int(meta["rss0_kib"])) / 1024,
        "rate": metrics.get("chatroom_messages_received_total", 0) / secs if secs > 0 else None,
        "paused": metrics.get("chatroom_reads_paused_total"),
        "flood_alive": meta.get("flood_alive_at_end") == "1",
    }


def ms(us):
    return "–" if us is None else f"{us / 1000:.2f}"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def line(d):
    r = load(d)
    print(
        f"ok={r['ok']} p50={ms(r['p50'])}ms p99={ms(r['p99'])}ms max={ms(r['max'])}ms "
        f"rss+={r['rss']:.1f}MiB posts/s={r['rate'] or 0:.0f} paused={r['paused']} flood_alive={r['flood_alive']}"
    )


def report(raw, out, command):
    groups = {}
    for d in sorted(glob.glob(raw + "/flood-*")):
        r = load(d)
        groups.setdefault((r["scenario"], r["server"], r["flood"]), []).append(r)
    rows = [
        "# Flood: quiet rooms next to a flooded one",
        "",
        f"Command: `{command}`",
        "",
        "Medians over the repeats, [min–max] of the repeats for p99 and RSS. Latency in ms, from each",
        "quiet post's scheduled send time to its delivery; RSS growth = peak VmRSS during the quiet",
        "run minus VmRSS at start, in MiB; posts/s = every post the server received (flood and",
        "quiet) over the quiet run; paused = chatroom_reads_paused_total (– for a binary without it);",
        "flood alive = the flooder was still connected at the end, in how many runs.",
        "",
        "| scenario | server | flood | p50 | p99 [min–max] | max | RSS growth [min–max] | posts/s | paused | quiet ok | flood alive |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (scen, server, flood), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], not kv[0][2])):
        p99 = [r["p99"] for r in rs if r["p99"] is not None]
        rss = [r["rss"] for r in rs]
        paused = median([r["paused"] for r in rs])
        rate = median([r["rate"] for r in rs])
        rows.append(
            f"| {scen} | {server} | {'yes' if flood else 'no'} | {ms(median([r['p50'] for r in rs]))} | "
            f"{ms(median(p99))} [{ms(min(p99) if p99 else None)}–{ms(max(p99) if p99 else None)}] | "
            f"{ms(median([r['max'] for r in rs]))} | {median(rss):.1f} [{min(rss):.1f}–{max(rss):.1f}] | "
            f"{'–' if rate is None else f'{rate:,.0f}'} | {'–' if paused is None else f'{paused:.0f}'} | "
            f"{sum(r['ok'] for r in rs)}/{len(rs)} | {sum(r['flood_alive'] for r in rs) if flood else '–'} |"
        )
    text = "\n".join(rows) + "\n"
    open(out, "w").write(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "line":
        line(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "report":
        report(*sys.argv[2:5])
    else:
        sys.exit(__doc__)
