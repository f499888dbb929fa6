#!/usr/bin/env python3
"""Turns the raw runs of scripts/bench.sh into bench/results.json, bench/results.md and
bench/*.svg. Python 3 standard library only.

Usage: bench_report.py RAW_DIR OUT_DIR [--append]
       bench_report.py --render OUT_DIR      (redraw results.md and the charts from results.json)

RAW_DIR holds invocation.env and one folder per run (meta.env, loadgen.json, loadgen.err,
samples.txt, server.log, and for chatroom servers metrics.txt: /metrics scraped right before
the server was stopped), as bench.sh writes them.
"""

import json
import math
import os
import statistics
import sys
from datetime import datetime, timezone
from html import escape

CHATROOMS = ["chatroom", "chatroom-base", "chatroom-mem", "chatroom-mem-base"]
# bench.sh --baseline BIN: the same chatroom configurations started from an older binary
BASE_OF = {"chatroom": "chatroom-base", "chatroom-mem": "chatroom-mem-base"}
PEERS = ["tokio_ws", "node_ws", "django"]
SERVER_ORDER = CHATROOMS + PEERS
COLOURS = {
    "chatroom": "#1f6feb",
    "chatroom-base": "#f0a202",
    "chatroom-mem": "#79b8ff",
    "chatroom-mem-base": "#f6cf71",
    "tokio_ws": "#d1495b",
    "node_ws": "#2e9e5b",
    "django": "#8e6cc9",
}
LABELS = {
    "chatroom": "chatroom (SQLite)",
    "chatroom-base": "chatroom-base (SQLite, --baseline)",
    "chatroom-mem": "chatroom --data none",
    "chatroom-mem-base": "chatroom-mem-base (--data none, --baseline)",
    "tokio_ws": "tokio_ws",
    "node_ws": "node_ws",
    "django": "django+redis",
}

# What each scenario measures and which target (if any) it is judged by.
SCENARIOS = {
    "a": dict(kind="room", title="(a) 1 room × 1,000 clients, 10 senders, closed loop",
              target=("cpu", "tokio_ws", "lt"), room_size=1000),
    "b": dict(kind="room", title="(b) 100 rooms × 10 clients, 1 sender per room, closed loop",
              target=("cpu", "tokio_ws", "lt"), room_size=10),
    "sweep10": dict(kind="room", title="room-size sweep: 100 rooms × 10 clients, 10 senders in total",
                    info=("cpu", "tokio_ws", "lt"), room_size=10),
    "sweep100": dict(kind="room", title="room-size sweep: 10 rooms × 100 clients, 10 senders in total",
                     info=("cpu", "tokio_ws", "lt"), room_size=100),
    "c1": dict(kind="latency", title="(c1) latency: 1 room × 100 clients, 10 senders, 200 msgs/s offered",
               target=("p99", "best", "le")),
    "c2": dict(kind="latency", title="(c2) latency: 1 room × 1,000 clients, 10 senders, 100 msgs/s offered",
               target=("p99", "best", "le")),
    "d": dict(kind="idle", title="(d) 10,000 idle WebSockets (100 rooms × 100)",
              target=("rss", "node_ws", "lt")),
    "e": dict(kind="churn", title="(e) connection churn: 50 concurrent connect → post → own copy → close",
              target=("rate", "best", "ge")),
    "f": dict(kind="echo", title="(f) raw echo round trips (/ws/echo), 10 clients closed loop",
              target=("rate", "best", "ge")),
    "a_small": dict(kind="room", title="(a, scaled down for django) 1 room × 100 clients, 10 senders, closed loop",
                    info=("cpu", "tokio_ws", "lt"), room_size=100),
    "c_small": dict(kind="latency", title="(c, scaled down for django) 1 room × 100 clients, 10 senders, 10 msgs/s offered",
                    info=("p99", "best", "le")),
}
SCENARIO_ORDER = ["a", "b", "sweep10", "sweep100", "c1", "c2", "d", "e", "f", "a_small", "c_small"]
METRIC_NAMES = {
    "cpu": "server CPU per delivery",
    "p99": "p99 latency",
    "rss": "RSS per idle connection",
    "rate": "rate",
}


# ---------------------------------------------------------------------------------------------
# reading the raw runs

def read_env(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if "=" in line:
                    k, v = line.split("=", 1)
                    out[k] = v
    except OSError:
        pass
    return out


def read_loadgen(path):
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def stat_cpu_ticks(stat_line):
    """utime + stime (clock ticks) from a /proc/PID/stat line, or None."""
    if not stat_line or ")" not in stat_line:
        return None
    fields = stat_line.rsplit(")", 1)[1].split()
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


def core_ticks(line):
    """(busy, total) ticks of a 'cpuN ...' line of /proc/stat."""
    parts = line.split()
    try:
        v = [int(x) for x in parts[1:9]]
    except ValueError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = v
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def read_samples(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("|")
                if len(parts) < 4:
                    continue
                try:
                    t = float(parts[0])
                except ValueError:
                    continue
                rows.append(dict(t=t, c0=core_ticks(parts[1]), c1=core_ticks(parts[2]),
                                 lg=stat_cpu_ticks(parts[3]),
                                 srv=[stat_cpu_ticks(p) for p in parts[4:]]))
    except OSError:
        pass
    return rows


HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def derive(samples, lg, meta):
    """Figures from the /proc samples: how busy loadgen's core was after connecting, how much
    CPU the server's whole process group used (django: daphne + redis-server), and how much
    CPU other processes on this shared machine took from cores 0 and 1 during the run."""
    d = {}
    if len(samples) < 2:
        return d
    first, last = samples[0], samples[-1]
    wall = last["t"] - first["t"]
    if wall <= 0:
        return d
    # loadgen's own core, after the connect phase (the part that limits deliveries/s)
    skip = 0.3 + float((lg or {}).get("connect_s") or 0)
    later = [s for s in samples if s["t"] - first["t"] >= skip and s["lg"] is not None]
    if len(later) >= 3:
        a, b = later[0], later[-1]
        if b["t"] > a["t"]:
            d["loadgen_core_busy"] = round((b["lg"] - a["lg"]) / HZ / (b["t"] - a["t"]), 3)
    # the server's process group over the whole loadgen run
    srv0 = [x for x in first["srv"]]
    srv1 = [x for x in last["srv"]]
    group = 0
    for a, b in zip(srv0, srv1):
        if a is not None and b is not None:
            group += b - a
    d["server_group_cpu_s"] = round(group / HZ, 3)
    # the listening process alone over the same span (to scale loadgen's in-window figure)
    pid = meta.get("server_pid")
    pids = meta.get("group_pids", "").split()
    if pid in pids:
        i = pids.index(pid)
        if i < len(srv0) and srv0[i] is not None and srv1[i] is not None:
            d["server_listener_cpu_s"] = round((srv1[i] - srv0[i]) / HZ, 3)
    # other processes on cores 0 and 1 (the machine is shared)
    if first["c0"] and last["c0"] and first["c1"] and last["c1"] and first["lg"] is not None and last["lg"] is not None:
        busy = (last["c0"][0] - first["c0"][0]) + (last["c1"][0] - first["c1"][0])
        total = (last["c0"][1] - first["c0"][1]) + (last["c1"][1] - first["c1"][1])
        ours = group + (last["lg"] - first["lg"])
        if total > 0:
            d["other_load"] = round(max(0.0, (busy - ours) / total), 3)
    d["sampled_s"] = round(wall, 2)
    return d


# chatroom's /metrics counters kept with each run (name in results.json: Prometheus name)
SERVER_COUNTERS = {
    "messages_received": "chatroom_messages_received_total",
    "messages_delivered": "chatroom_messages_delivered_total",
    "flushes": "chatroom_flushes_total",
    "held_turns": "chatroom_held_turns_total",
}


def read_metrics(path):
    """The SERVER_COUNTERS of a scraped /metrics text, or None if there is no scrape; a counter
    the binary does not have (an older build) is left out."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            try:
                values[parts[0]] = int(float(parts[1]))
            except ValueError:
                pass
    return {k: values[name] for k, name in SERVER_COUNTERS.items() if name in values}


def server_log_hint(path):
    """The last error-looking line of a server's log (a failed run's likely cause)."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if any(w in line for w in ("Error", "Exception", "panicked", "error:", "ERROR")):
            return line.strip()[:300]
    return None


def collect(raw_dir):
    inv = read_env(os.path.join(raw_dir, "invocation.env"))
    inv_id = inv.get("date", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    inv["id"] = inv_id
    runs = []
    for name in sorted(os.listdir(raw_dir)):
        d = os.path.join(raw_dir, name)
        if not os.path.isdir(d):
            continue
        meta = read_env(os.path.join(d, "meta.env"))
        if not meta.get("scenario"):
            continue
        lg = read_loadgen(os.path.join(d, "loadgen.json"))
        run = dict(invocation=inv_id, scenario=meta["scenario"], server=meta["server"],
                   repeat=int(meta.get("repeat", 0)))
        if meta.get("start_failed"):
            run["error"] = "server did not start"
            runs.append(run)
            continue
        try:
            with open(os.path.join(d, "loadgen.err")) as f:
                err = f.read().strip()
        except OSError:
            err = ""
        derived = derive(read_samples(os.path.join(d, "samples.txt")), lg, meta)
        run.update(
            loadgen_args=meta.get("loadgen_args"),
            loadgen_rc=int(meta.get("loadgen_rc", -1)),
            loadavg_before=meta.get("loadavg_before"),
            server_pid=meta.get("server_pid"),
            server_processes=len(meta.get("group_pids", "").split()),
            rss_ready_kib=int(meta["rss_ready_kib"]) if meta.get("rss_ready_kib", "").isdigit() else None,
            startup_s=round(float(meta["t_ready"]) - float(meta["t_launch"]), 3) if meta.get("t_ready") else None,
            loadgen_wall_s=round(float(meta["t_lg_end"]) - float(meta["t_lg_start"]), 3) if meta.get("t_lg_end") else None,
            server_alive_after=meta.get("server_alive_after") == "1",
            loadgen=lg,
            derived=derived,
        )
        counters = read_metrics(os.path.join(d, "metrics.txt"))
        if counters is not None:
            run["server_metrics"] = counters
        if err:
            run["loadgen_stderr"] = err[-2000:]
        if lg is None or not lg.get("ok"):
            hint = server_log_hint(os.path.join(d, "server.log"))
            if hint:
                run["server_log_hint"] = hint
        if lg is None:
            run["error"] = "loadgen printed no JSON" + (": " + err[-300:] if err else "")
        elif not lg.get("ok"):
            run["error"] = lg.get("error") or "; ".join(lg.get("failures") or []) or "loadgen check failed"
        runs.append(run)
    return inv, runs


# ---------------------------------------------------------------------------------------------
# figures of one run, and their medians

def run_figures(run):
    """The comparable figures of one run (None where not applicable)."""
    lg = run.get("loadgen") or {}
    dv = run.get("derived") or {}
    f = {}
    kind = SCENARIOS.get(run["scenario"], {}).get("kind")
    if kind in ("room", "latency"):
        f["rate"] = lg.get("deliveries_per_sec")
        per = lg.get("server_cpu_us_per_delivery")
        f["lost"] = lg.get("lost")
        f["events"] = lg.get("delivered")
    elif kind == "echo":
        f["rate"] = lg.get("round_trips_per_sec")
        per = lg.get("server_cpu_us_per_round_trip")
        f["lost"] = lg.get("lost")
        f["events"] = lg.get("round_trips")
    elif kind == "churn":
        f["rate"] = lg.get("cycles_per_sec")
        per = lg.get("server_cpu_us_per_cycle")
        f["lost"] = (lg.get("failed_cycles") or 0) + (lg.get("stalled") or 0) if lg else None
        f["events"] = lg.get("cycles")
    else:
        per = None
        f["lost"] = (lg.get("failed") or 0) + (lg.get("dropped") or 0) if lg else None
        f["connected"] = lg.get("connected")
        f["connect_rate"] = lg.get("connects_per_sec")
        f["rss_before_kib"] = lg.get("rss_before_kib")
        f["rss_after_kib"] = lg.get("rss_after_kib")
        rpc = lg.get("rss_per_conn_bytes")
        f["rss"] = rpc / 1024 if rpc is not None else None
    # loadgen samples the listening process; scale by the whole group's CPU (django's redis)
    f["cpu_listener"] = per
    g, l = dv.get("server_group_cpu_s"), dv.get("server_listener_cpu_s")
    if per is not None and g and l and l > 0 and run.get("server_processes", 1) > 1:
        f["cpu"] = per * g / l
    else:
        f["cpu"] = per
    for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us"):
        v = lg.get(k)
        f[k[:-3]] = v / 1000 if v is not None else None  # ms
    if lg.get("server_cpu_s") is not None and lg.get("elapsed_s"):
        f["server_core_busy"] = lg["server_cpu_s"] / lg["elapsed_s"]
    f["loadgen_core_busy"] = dv.get("loadgen_core_busy")
    f["other_load"] = dv.get("other_load")
    # chatroom's batching, from /metrics over the whole run (connect and warm-up included)
    sm = run.get("server_metrics")
    if sm is not None:
        f["msgs_per_flush"] = sm["messages_delivered"] / sm["flushes"] \
            if sm.get("flushes") and sm.get("messages_delivered") is not None else None
        f["held_turns"] = sm.get("held_turns")
    f["offered"] = None
    args = (run.get("loadgen_args") or "").split()
    if "--rate" in args:
        try:
            f["offered"] = float(args[args.index("--rate") + 1])
        except (IndexError, ValueError):
            pass
    return f


def norm_error(text):
    """An error with its counts replaced by N, so that repeats of one failure read as one."""
    import re
    return re.sub(r"\b\d+\b", "N", text)


# figures whose min–max over the repeats the summary keeps
SPREAD_KEYS = ("rate", "cpu", "p99", "rss", "msgs_per_flush", "held_turns")


def med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def summarise(runs):
    """Per (invocation, scenario, server): medians over the repeats, with the spread of the
    main figures, and the failures."""
    groups = {}
    for r in runs:
        groups.setdefault((r["invocation"], r["scenario"], r["server"]), []).append(r)
    out = []
    for (inv, scen, server), rs in groups.items():
        figs = [run_figures(r) for r in rs if not r.get("error") or r.get("loadgen")]
        keys = set()
        for f in figs:
            keys.update(f)
        s = dict(invocation=inv, scenario=scen, server=server, runs=len(rs),
                 failed_runs=sum(1 for r in rs if r.get("error")),
                 errors=list({norm_error(r["error"]): r["error"] for r in rs if r.get("error")}.values()))
        for k in sorted(keys):
            if k in ("lost",):
                vals = [f.get(k) for f in figs if f.get(k) is not None]
                s[k] = sum(vals) if vals else None
            else:
                s[k] = med([f.get(k) for f in figs])
        for k in SPREAD_KEYS:
            vals = [f.get(k) for f in figs if f.get(k) is not None]
            if len(vals) > 1:
                s[k + "_min"], s[k + "_max"] = min(vals), max(vals)
        s["loadavg_before"] = [r.get("loadavg_before") for r in rs]
        out.append(s)
    return out


def judge(summary):
    """Adds to each chatroom row the ratio against its reference (same invocation only) and,
    for the performance targets, PASS/FAIL."""
    by = {}
    for s in summary:
        by.setdefault((s["invocation"], s["scenario"]), {})[s["server"]] = s
    for (inv, scen), rows in by.items():
        spec = SCENARIOS.get(scen, {})
        rule = spec.get("target") or spec.get("info")
        if not rule:
            continue
        metric, ref, cmp = rule
        peers = {k: v for k, v in rows.items() if k in PEERS and v.get(metric) is not None}
        if ref == "best":
            if not peers:
                continue
            pick = min if cmp in ("lt", "le") else max
            ref_name = pick(peers, key=lambda k: peers[k][metric])
        else:
            ref_name = ref
            if ref_name not in peers:
                continue
        ref_val = peers[ref_name][metric]
        for name, row in rows.items():
            if name not in CHATROOMS or row.get(metric) is None or not ref_val:
                continue
            ratio = row[metric] / ref_val
            ok = {"lt": ratio < 1, "le": ratio <= 1, "ge": ratio >= 1}[cmp]
            row["ratio"] = ratio
            row["ratio_ref"] = ref_name
            row["ratio_metric"] = metric
            row["verdict"] = ("PASS" if ok else "FAIL") if spec.get("target") else "info"
            if spec.get("target") and (row.get("failed_runs") or (row.get("lost") or 0) > 0):
                row["verdict"] += " (runs with errors/loss)"
    return summary


# ---------------------------------------------------------------------------------------------
# formatting

def fmt_num(v, digits=3):
    if v is None:
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f}k"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.1f}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits - 1}f}" if abs(v) >= 1 else f"{v:.{digits}f}"


def fmt_count(v):
    """A counter (or the median of counters: maybe a half)."""
    if v is None:
        return "–"
    return f"{int(v):,}" if v == int(v) else f"{v:,.1f}"


# figures that are counts, printed whole
COUNT_KEYS = ("held_turns",)


def fmt_fig(key, v, digits=3):
    return fmt_count(v) if key in COUNT_KEYS else fmt_num(v, digits)


def fmt_spread(s, key, digits=3):
    v = s.get(key)
    if v is None:
        return "–"
    text = fmt_fig(key, v, digits)
    lo, hi = s.get(key + "_min"), s.get(key + "_max")
    if lo is not None and hi is not None and hi > lo:
        text += f" <sub>{fmt_fig(key, lo, digits)}–{fmt_fig(key, hi, digits)}</sub>"
    return text


def pct(v):
    return "–" if v is None else f"{100 * v:.0f}%"


def ratio_cell(s):
    if s.get("ratio") is None:
        return "" if s["server"] not in CHATROOMS else "–"
    return f"{s['ratio']:.2f}× {s['ratio_ref']} **{s['verdict']}**" if s["verdict"] != "info" else f"{s['ratio']:.2f}× {s['ratio_ref']}"


def loss_cell(s):
    parts = []
    if s.get("lost"):
        parts.append(f"{s['lost']} lost")
    if s.get("failed_runs"):
        parts.append(f"check failed in {s['failed_runs']}/{s['runs']} runs: " + "; ".join(e[:120] for e in s["errors"]))
    return ", ".join(parts) if parts else "0"


def lg_cell(s):
    v = s.get("loadgen_core_busy")
    if v is None:
        return "–"
    return pct(v) + (" ⚠" if v >= 0.9 else "")


def table(scen, rows):
    kind = SCENARIOS[scen]["kind"]
    out = []
    if kind == "room":
        # chatroom's /metrics batching figures, when this run scraped them
        batching = any(s.get("msgs_per_flush") is not None or s.get("held_turns") is not None for s in rows)
        extra_head = " msgs/flush | held turns |" if batching else ""
        out.append("| server | deliveries/s | server CPU µs/delivery | p50 ms | p99 ms |" + extra_head
                   + " server core | loadgen core | other load | loss | CPU vs reference |")
        out.append("|---|---:|---:|---:|---:|" + ("---:|---:|" if batching else "") + "---:|---:|---:|---|---|")
        for s in rows:
            extra = f" {fmt_spread(s, 'msgs_per_flush')} | {fmt_spread(s, 'held_turns')} |" if batching else ""
            out.append(f"| {LABELS.get(s['server'], s['server'])} | {fmt_spread(s, 'rate')} | {fmt_spread(s, 'cpu')} | "
                       f"{fmt_num(s.get('p50'))} | {fmt_num(s.get('p99'))} |{extra} {pct(s.get('server_core_busy'))} | "
                       f"{lg_cell(s)} | {pct(s.get('other_load'))} | {loss_cell(s)} | {ratio_cell(s)} |")
    elif kind == "latency":
        out.append("| server | offered msgs/s | deliveries/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU µs/delivery | server core | other load | loss | p99 vs best peer |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for s in rows:
            out.append(f"| {LABELS.get(s['server'], s['server'])} | {fmt_num(s.get('offered'))} | {fmt_num(s.get('rate'))} | "
                       f"{fmt_num(s.get('p50'))} | {fmt_num(s.get('p90'))} | {fmt_spread(s, 'p99')} | {fmt_num(s.get('p999'))} | "
                       f"{fmt_num(s.get('max'))} | {fmt_num(s.get('cpu'))} | {pct(s.get('server_core_busy'))} | "
                       f"{pct(s.get('other_load'))} | {loss_cell(s)} | {ratio_cell(s)} |")
    elif kind == "idle":
        out.append("| server | connected | RSS fresh MiB | RSS with 10k MiB | RSS per connection KiB | connects/s | dropped/failed | vs node_ws |")
        out.append("|---|---:|---:|---:|---:|---:|---|---|")
        for s in rows:
            mib = lambda k: "–" if s.get(k) is None else f"{s[k] / 1024:.1f}"
            out.append(f"| {LABELS.get(s['server'], s['server'])} | {fmt_num(s.get('connected'))} | {mib('rss_before_kib')} | "
                       f"{mib('rss_after_kib')} | {fmt_spread(s, 'rss')} | {fmt_num(s.get('connect_rate'))} | {loss_cell(s)} | {ratio_cell(s)} |")
    else:
        unit = "cycles/s" if kind == "churn" else "round trips/s"
        per = "cycle" if kind == "churn" else "round trip"
        out.append(f"| server | {unit} | server CPU µs/{per} | p50 ms | p99 ms | server core | loadgen core | other load | failures | rate vs best peer |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for s in rows:
            out.append(f"| {LABELS.get(s['server'], s['server'])} | {fmt_spread(s, 'rate')} | {fmt_spread(s, 'cpu')} | "
                       f"{fmt_num(s.get('p50'))} | {fmt_num(s.get('p99'))} | {pct(s.get('server_core_busy'))} | "
                       f"{lg_cell(s)} | {pct(s.get('other_load'))} | {loss_cell(s)} | {ratio_cell(s)} |")
    return out


# ---------------------------------------------------------------------------------------------
# SVG charts, drawn by hand

def nice_max(v):
    if v <= 0:
        return 1
    import math
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def bar_chart(title, groups, series, values, unit, spreads=None, log=False, colours=None, subtitle=""):
    """Grouped bars: for each group (x), one bar per series. values[(group, series)] = number or
    None; spreads[(group, series)] = (min, max) drawn as a whisker."""
    import math
    colours = colours or {}
    spreads = spreads or {}
    present = [s for s in series if any(values.get((g, s)) is not None for g in groups)]
    groups = [g for g in groups if any(values.get((g, s)) is not None for s in present)]
    if not groups or not present:
        return None
    bar_w, gap = 26, 22
    left, right, top, bottom = 70, 20, 58, 58
    plot_h = 250
    natural = len(groups) * (len(present) * bar_w + gap) + gap
    width = int(max(480, left + right + natural, len(title) * 8.2 + 40, len(subtitle) * 6.2 + 40))
    plot_w = width - left - right
    slot = plot_w / len(groups)
    legend_cols = max(1, plot_w // 170)
    legend_rows = (len(present) + legend_cols - 1) // legend_cols
    height = top + plot_h + bottom + 18 * legend_rows
    vals = [v for v in values.values() if v is not None]
    highs = vals + [hi for (_, hi) in spreads.values() if hi is not None]
    if log:
        positives = [v for v in vals if v > 0] or [1]
        lo_e = math.floor(math.log10(min(positives)))
        hi_e = math.ceil(math.log10(max(highs + [10 ** (lo_e + 1)])))
        if hi_e == lo_e:
            hi_e += 1

        def y(v):
            v = max(v, 10 ** lo_e)
            return top + plot_h - (math.log10(v) - lo_e) / (hi_e - lo_e) * plot_h
        ticks = [10 ** e for e in range(lo_e, hi_e + 1)]
    else:
        vmax = nice_max(max(highs) * 1.08)

        def y(v):
            return top + plot_h - (v / vmax) * plot_h
        ticks = [vmax * i / 5 for i in range(6)]
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
         f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
         f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>']
    if subtitle:
        o.append(f'<text x="{width / 2}" y="37" text-anchor="middle" font-size="11" fill="#555">{escape(subtitle)}</text>')
    for t in ticks:
        ty = y(t)
        o.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{width - right}" y2="{ty:.1f}" stroke="#e3e3e3"/>')
        o.append(f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" fill="#444">{escape(f"{t:g}" if log and t < 1000 else fmt_num(t))}</text>')
    o.append(f'<text x="16" y="{top + plot_h / 2}" text-anchor="middle" fill="#444" '
             f'transform="rotate(-90 16 {top + plot_h / 2})">{escape(unit)}{" (log scale)" if log else ""}</text>')
    o.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#333"/>')
    o.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>')
    for gi, g in enumerate(groups):
        gx = left + gi * slot + (slot - len(present) * bar_w) / 2
        for si, s in enumerate(present):
            v = values.get((g, s))
            x = gx + si * bar_w
            if v is None:
                o.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{top + plot_h - 4}" text-anchor="middle" fill="#999">n/a</text>')
                continue
            yv = y(v)
            base = top + plot_h
            o.append(f'<rect x="{x:.1f}" y="{yv:.1f}" width="{bar_w - 4}" height="{max(0.5, base - yv):.1f}" '
                     f'fill="{colours.get(s, "#888")}"><title>{escape(f"{g} · {s}: {v:.4g} {unit}")}</title></rect>')
            sp = spreads.get((g, s))
            if sp and sp[0] is not None and sp[1] is not None and sp[1] > sp[0]:
                cx = x + (bar_w - 4) / 2
                o.append(f'<line x1="{cx:.1f}" y1="{y(sp[0]):.1f}" x2="{cx:.1f}" y2="{y(sp[1]):.1f}" stroke="#222" stroke-width="1"/>')
                for yy in (y(sp[0]), y(sp[1])):
                    o.append(f'<line x1="{cx - 3:.1f}" y1="{yy:.1f}" x2="{cx + 3:.1f}" y2="{yy:.1f}" stroke="#222"/>')
            label_y = min(yv, y(sp[1]) if sp and sp[1] is not None else yv) - 4
            o.append(f'<text x="{x + (bar_w - 4) / 2:.1f}" y="{label_y:.1f}" text-anchor="start" font-size="9" fill="#222" '
                     f'transform="rotate(-60 {x + (bar_w - 4) / 2:.1f} {label_y:.1f})">{escape(fmt_num(v))}</text>')
        o.append(f'<text x="{gx + len(present) * bar_w / 2 - 2:.1f}" y="{top + plot_h + 18}" text-anchor="middle" fill="#222">{escape(str(g))}</text>')
    ly = top + plot_h + 42
    for i, s in enumerate(present):
        lx = left + (i % legend_cols) * 170
        yy = ly + (i // legend_cols) * 18
        o.append(f'<rect x="{lx}" y="{yy - 9}" width="12" height="12" fill="{colours.get(s, "#888")}"/>')
        o.append(f'<text x="{lx + 17}" y="{yy + 1}">{escape(LABELS.get(s, s))}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def latest(summary, scen):
    """Rows of a scenario from the newest invocation that ran it, in server order."""
    rows = [s for s in summary if s["scenario"] == scen]
    if not rows:
        return []
    inv = max(r["invocation"] for r in rows)
    rows = [r for r in rows if r["invocation"] == inv]
    return sorted(rows, key=lambda r: SERVER_ORDER.index(r["server"]) if r["server"] in SERVER_ORDER else 99)


def charts(summary, out_dir):
    made = []

    def save(name, svg):
        if svg:
            with open(os.path.join(out_dir, name), "w") as f:
                f.write(svg)
            made.append(name)

    # room-size sweep: deliveries/s and CPU/delivery by room size
    sweep = {10: latest(summary, "sweep10"), 100: latest(summary, "sweep100"), 1000: latest(summary, "a")}
    for metric, name, unit, title in (("rate", "sweep_deliveries.svg", "deliveries/s", "Deliveries/s by room size"),
                                      ("cpu", "sweep_cpu.svg", "server CPU µs per delivery", "Server CPU per delivery by room size")):
        vals, spreads = {}, {}
        for size, rows in sweep.items():
            for r in rows:
                g = f"{size} members"
                vals[(g, r["server"])] = r.get(metric)
                spreads[(g, r["server"])] = (r.get(metric + "_min"), r.get(metric + "_max"))
        save(name, bar_chart(title, [f"{s} members" for s in sweep], SERVER_ORDER, vals, unit, spreads,
                             colours=COLOURS, subtitle="1,000 clients, 10 senders, closed loop; server on 1 core; median, whisker = min–max"))
    # (a), (b): CPU per delivery
    vals, spreads = {}, {}
    for scen in ("a", "b", "a_small"):
        for r in latest(summary, scen):
            vals[(scen, r["server"])] = r.get("cpu")
            spreads[(scen, r["server"])] = (r.get("cpu_min"), r.get("cpu_max"))
    save("cpu_per_delivery.svg", bar_chart("Server CPU per delivery: (a) 1×1,000, (b) 100×10, a_small 1×100",
                                            ["a", "b", "a_small"], SERVER_ORDER, vals, "µs per delivery", spreads,
                                            log=True, colours=COLOURS, subtitle="lower is better; median of repeats"))
    # (c): latency percentiles per server
    pc = {"p50": "#9ecae1", "p90": "#4292c6", "p99": "#08519c"}
    for scen in ("c1", "c2", "c_small"):
        rows = latest(summary, scen)
        if not rows:
            continue
        vals = {}
        for r in rows:
            for p in pc:
                vals[(LABELS.get(r["server"], r["server"]), p)] = r.get(p)
        save(f"latency_{scen}.svg", bar_chart(f"Latency percentiles: {SCENARIOS[scen]['title']}",
                                              [LABELS.get(r["server"], r["server"]) for r in rows], list(pc), vals,
                                              "milliseconds", log=True, colours=pc,
                                              subtitle="open loop, measured from the scheduled send time; lower is better"))
    # (d): memory per idle connection
    rows = latest(summary, "d")
    vals = {("10,000 idle", r["server"]): r.get("rss") for r in rows}
    spreads = {("10,000 idle", r["server"]): (r.get("rss_min"), r.get("rss_max")) for r in rows}
    save("memory_per_connection.svg", bar_chart("Server RSS per idle WebSocket (10,000 connections)", ["10,000 idle"],
                                                SERVER_ORDER, vals, "KiB per connection", spreads, log=True, colours=COLOURS,
                                                subtitle="(RSS with 10k − fresh RSS) / 10k; lower is better"))
    # (e), (f): rates
    for scen, name, unit, title in (("e", "churn.svg", "cycles/s", "Connection churn: connect → post → own copy → close"),
                                    ("f", "echo.svg", "round trips/s", "Raw echo round trips, 10 clients")):
        rows = latest(summary, scen)
        vals = {(unit, r["server"]): r.get("rate") for r in rows}
        spreads = {(unit, r["server"]): (r.get("rate_min"), r.get("rate_max")) for r in rows}
        save(name, bar_chart(title, [unit], SERVER_ORDER, vals, unit, spreads, colours=COLOURS,
                             subtitle="higher is better; median, whisker = min–max"))
    return made


# ---------------------------------------------------------------------------------------------
# results.md

TARGET_HEADS = {"chatroom": "chatroom", "chatroom-base": "chatroom-base",
                "chatroom-mem": "chatroom --data none", "chatroom-mem-base": "chatroom-mem-base"}

# what the old-vs-new table compares per kind of scenario: (figure, name, unit, better)
COMPARE = {
    "room": [("cpu", "server CPU per delivery", "µs", "lower"), ("rate", "deliveries/s", "/s", "higher"),
             ("msgs_per_flush", "messages delivered per flush", "", "higher"),
             ("held_turns", "held turns (whole run)", "", None)],
    "latency": [("p99", "p99 latency", "ms", "lower"), ("cpu", "server CPU per delivery", "µs", "lower")],
    "idle": [("rss", "RSS per idle connection", "KiB", "lower")],
    "churn": [("rate", "cycles/s", "/s", "higher"), ("cpu", "server CPU per cycle", "µs", "lower")],
    "echo": [("rate", "round trips/s", "/s", "higher"), ("cpu", "server CPU per round trip", "µs", "lower")],
}


def old_vs_new(data):
    """Lines of the "old vs new" section: each chatroom configuration against the same one
    started from the --baseline binary, in the same invocation: medians, the min–max over the
    repeats, the ratio new/old, and whether the two ranges overlap."""
    summary = data["summary"]
    pairs = [(new, old) for new, old in BASE_OF.items() if any(s["server"] == old for s in summary)]
    if not pairs:
        return []
    runs_by = {}
    for r in data["runs"]:
        if not r.get("error") or r.get("loadgen"):
            runs_by.setdefault((r["invocation"], r["scenario"], r["server"]), []).append(run_figures(r))
    L = ["## Old vs new (--baseline)", ""]
    invs = {i["id"]: i for i in data["invocations"]}
    bases = sorted({(i.get("baseline"), i.get("chatroom_base_sha256")) for i in data["invocations"] if i.get("baseline")})
    L.append("Old = the `--baseline` binary (" + "; ".join(f"`{b}`, sha256 {h}…" for b, h in bases)
             + "), new = this tree's build"
             + "".join(f" (sha256 {i.get('chatroom_sha256')}…)" for i in data["invocations"] if i.get("baseline"))
             + ", same flags, run alternately in one invocation. Each cell: median (min–max over the repeats). "
             "*overlap*: whether the two min–max ranges overlap (if they do, the difference is within this "
             "machine's run-to-run noise). Messages per flush = `chatroom_messages_delivered_total` ÷ "
             "`chatroom_flushes_total` and held turns = `chatroom_held_turns_total`, scraped from `/metrics` "
             "before the server stops, over the whole run (connects and warm-up included); – where the binary "
             "lacks the counter. Disjoint ranges are weak evidence with few repeats: two identical binaries give "
             "disjoint ranges by chance with probability 2 / C(n+m, n) for n and m runs (33% at 2 repeats each, "
             "10% at 3, 3% at 4, 0.8% at 5), shown in the last column.")
    L.append("")
    L.append("| scenario | figure | old | new | new/old | ranges overlap |")
    L.append("|---|---|---:|---:|---:|---|")

    def cell(key, vals):
        if not vals:
            return "–"
        m = statistics.median(vals)
        return fmt_fig(key, m) + (f" ({fmt_fig(key, min(vals))}–{fmt_fig(key, max(vals))})" if len(vals) > 1 else "")

    for scen in SCENARIO_ORDER:
        rows = {r["server"]: r for r in latest(summary, scen)}
        kind = SCENARIOS[scen]["kind"]
        for new, old in pairs:
            if new not in rows or old not in rows:
                continue
            inv = rows[new]["invocation"]
            label = scen if new == "chatroom" else f"{scen} ({TARGET_HEADS[new]})"
            for key, name, unit, better in COMPARE.get(kind, []):
                nv = [f[key] for f in runs_by.get((inv, scen, new), []) if f.get(key) is not None]
                ov = [f[key] for f in runs_by.get((inv, scen, old), []) if f.get(key) is not None]
                if not nv and not ov:
                    continue
                ratio = "–"
                if nv and ov and statistics.median(ov):
                    ratio = f"{statistics.median(nv) / statistics.median(ov):.2f}×"
                if not nv or not ov:
                    overlap = "–"
                elif len(nv) < 2 or len(ov) < 2:
                    overlap = "– (one run: no range)"
                elif min(nv) <= max(ov) and min(ov) <= max(nv):
                    overlap = "yes (within noise)"
                else:
                    higher = min(nv) > max(ov)
                    overlap = "**no**: new " + ("higher" if higher else "lower")
                    if better:
                        overlap += " (better)" if (better == "higher") == higher else " (worse)"
                    # the chance that n and m runs of one and the same binary give disjoint
                    # ranges (every run of one side above every run of the other): 2 / C(n+m, n)
                    overlap += f"; by chance alone {100 * 2 / math.comb(len(nv) + len(ov), len(nv)):.0f}%"
                unit_s = f" ({unit})" if unit and unit != "/s" else ""
                L.append(f"| {label} | {name}{unit_s} | {cell(key, ov)} | {cell(key, nv)} | {ratio} | {overlap} |")
    L.append("")
    return L


def markdown(data, made):
    inv_by_id = {i["id"]: i for i in data["invocations"]}
    summary = data["summary"]
    L = ["# chatroom end-to-end benchmark", ""]
    L.append("Generated by `scripts/bench.sh` (raw figures in `results.json`). Every server runs pinned to core 0 "
             "(`taskset -c 0`), the load generator (`target/release/loadgen`) to core 1; every run starts the server "
             "fresh and reads its CPU time (utime+stime) and RSS from the server's own `/proc` entry, so the load "
             "generator's limits cannot flatter or hide the server's cost. Ratios compare servers measured in the same "
             "invocation. Figures are medians over the repeats; a small range below a figure is min–max.")
    L.append("")
    L.append("## Runs")
    L.append("")
    L.append("| invocation (UTC) | command | duration | machine | load average start → end |")
    L.append("|---|---|---:|---|---|")
    for inv in data["invocations"]:
        L.append(f"| {inv.get('date')} | `{inv.get('command', '').strip()}` | {inv.get('elapsed_s', '?')} s | "
                 f"{inv.get('nproc')} × {inv.get('cpu_model')}, Linux {inv.get('kernel')}, "
                 f"{int(inv.get('mem_total_kib', 0) or 0) // 1024} MiB; chatroom {inv.get('git_rev')}"
                 f"{'+' + inv.get('git_dirty_files') + ' changed files' if inv.get('git_dirty_files') not in (None, '', '0') else ''}"
                 f"{'; baseline `' + inv['baseline'] + '` (sha256 ' + str(inv.get('chatroom_base_sha256')) + '…)' if inv.get('baseline') else ''} "
                 f"| {inv.get('loadavg_start')} → {inv.get('loadavg_end')} |")
    L.append("")
    # the targets
    L.append("## Targets (ratios within one run)")
    L.append("")
    # chatroom-base / chatroom-mem-base columns only when a --baseline run is in the data
    target_cols = [c for c in CHATROOMS if c in BASE_OF or any(s["server"] == c for s in summary)]
    L.append("| scenario | target | " + " | ".join(TARGET_HEADS.get(c, c) for c in target_cols) + " |")
    L.append("|---|---|" + "---|" * len(target_cols))
    for scen in SCENARIO_ORDER:
        spec = SCENARIOS[scen]
        if not spec.get("target"):
            continue
        rows = {r["server"]: r for r in latest(summary, scen)}
        if not rows:
            continue
        metric, ref, cmp = spec["target"]
        want = {"lt": "below", "le": "no worse than", "ge": "at least"}[cmp]
        refname = "the best peer" if ref == "best" else ref
        cells = []
        for c in target_cols:
            r = rows.get(c)
            if not r:
                cells.append("not run")
            elif r.get("ratio") is None:
                cells.append("no reference in this run")
            else:
                unit = {"cpu": "µs", "p99": "ms", "rss": "KiB", "rate": "/s"}[metric]
                ref_row = rows.get(r["ratio_ref"], {})
                lo, hi = r.get(metric + "_min"), r.get(metric + "_max")
                rlo, rhi = ref_row.get(metric + "_min"), ref_row.get(metric + "_max")
                overlap = None not in (lo, hi, rlo, rhi) and lo <= rhi and rlo <= hi
                cells.append(f"**{r['verdict']}** {fmt_num(r.get(metric))} vs {fmt_num(ref_row.get(metric))} {unit} "
                             f"({r['ratio_ref']}) = {r['ratio']:.2f}×" + (" (ranges overlap)" if overlap else ""))
        L.append(f"| {scen} | {METRIC_NAMES[metric]} {want} {refname} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("*(ranges overlap)*: the min–max of chatroom's repeats and of the reference's overlap, so on this "
             "noisy machine the verdict is within the noise.")
    L.append("")
    L.extend(old_vs_new(data))
    L.append("Columns: *server core* = server CPU ÷ measurement window (100% = its one core was full); "
             "*loadgen core* = the load generator's CPU ÷ wall time after connecting, from `/proc` samples "
             "(⚠ at 90% or more: the load generator, not the server, may have set the pace, so deliveries/s is a "
             "lower bound for the server while its CPU per delivery still holds); *other load* = CPU that other "
             "processes of this shared machine took on cores 0–1 during the run (noise).")
    L.append("")
    for scen in SCENARIO_ORDER:
        invs = sorted({s["invocation"] for s in summary if s["scenario"] == scen})
        if not invs:
            continue
        L.append(f"## {SCENARIOS[scen]['title']}")
        L.append("")
        for inv in invs:
            rows = sorted([s for s in summary if s["scenario"] == scen and s["invocation"] == inv],
                          key=lambda r: SERVER_ORDER.index(r["server"]) if r["server"] in SERVER_ORDER else 99)
            by_args = {}
            for r in data["runs"]:
                if r["scenario"] == scen and r["invocation"] == inv and r.get("loadgen_args"):
                    by_args.setdefault(r["loadgen_args"], [])
                    if r["server"] not in by_args[r["loadgen_args"]]:
                        by_args[r["loadgen_args"]].append(r["server"])
            nrep = max(r["runs"] for r in rows)
            if len(by_args) <= 1:
                args = next(iter(by_args), "")
                L.append(f"`loadgen {args}` — {nrep} run(s) per server, invocation {inv}")
            else:
                L.append(f"{nrep} run(s) per server, invocation {inv}; " + "; ".join(
                    f"{', '.join(v)}: `loadgen {k}`" for k, v in by_args.items()))
            L.append("")
            L.extend(table(scen, rows))
            L.append("")
            if any(r["server"] == "django" for r in rows):
                L.append("django+redis: CPU per delivery counts daphne and its redis-server (the process group); "
                         "daphne alone: " + ", ".join(f"{fmt_num(r.get('cpu_listener'))} µs" for r in rows if r["server"] == "django")
                         + ". django runs only the scaled-down scenarios (it manages a few thousand deliveries/s); CHANNEL_CAPACITY=100000.")
                L.append("")
        for name in made:
            if (scen == "a" and name.startswith("sweep_")) or (scen == "b" and name == "cpu_per_delivery.svg") \
                    or name == f"latency_{scen}.svg" or (scen == "d" and name.startswith("memory")) \
                    or (scen == "e" and name == "churn.svg") or (scen == "f" and name == "echo.svg"):
                L.append(f"![{name}]({name})")
                L.append("")
    notes = data.get("notes") or []
    if notes:
        L.append("## Notes")
        L.append("")
        L.extend(f"- {n}" for n in notes)
        L.append("")
    return "\n".join(L)


def auto_notes(data):
    notes = []
    seen = {}
    for r in data["runs"]:
        if r.get("error"):
            key = (r["scenario"], r["server"], norm_error(r["error"]), r.get("server_log_hint"))
            seen.setdefault(key, (r["error"], []))[1].append(str(r["repeat"]))
    for (scen, server, _, hint), (err, reps) in seen.items():
        notes.append(f"{scen} / {server}, repeat {', '.join(reps)}: check failed: {err[:300]}"
                     + (f" — server log: `{hint}`" if hint else "")
                     + (" (the figures of these runs still count: every cycle completed, only the close handshake was skipped)"
                        if "without a close frame" in err else ""))
    sat = sorted({(s["scenario"], s["server"]) for s in data["summary"] if (s.get("loadgen_core_busy") or 0) >= 0.9})
    if sat:
        notes.append("load generator core ≥ 90% busy (its rate may be the limit, not the server's): "
                     + ", ".join(f"{a}/{b}" for a, b in sat))
    loads = sorted(r["derived"]["other_load"] for r in data["runs"] if (r.get("derived") or {}).get("other_load") is not None)
    if loads:
        notes.append(f"other processes on this shared machine took {pct(loads[0])}–{pct(loads[-1])} (median "
                     f"{pct(statistics.median(loads))}) of cores 0–1 during the runs (column *other load*): rates and "
                     "latencies are depressed by that noise, CPU per event less so; compare ratios within one run.")
    if any(r.get("scenario") == "a_small" for r in data["runs"]):
        notes.append("a_small: django posts 30 messages per sender, the other servers 500, so that each server's "
                     "CPU figure spans enough 10 ms clock ticks; rates and CPU per delivery do not depend on the count.")
    return notes


def render(data, out_dir):
    data["summary"] = judge(summarise(data["runs"]))
    data["notes"] = auto_notes(data) + [n for n in data.get("manual_notes", [])]
    made = charts(data["summary"], out_dir)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(data, made))
    return data


def main(argv):
    if len(argv) >= 2 and argv[0] == "--render":
        out_dir = argv[1]
        with open(os.path.join(out_dir, "results.json")) as f:
            data = json.load(f)
        render(data, out_dir)
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    raw_dir, out_dir = argv[0], argv[1]
    append = "--append" in argv[2:]
    inv, runs = collect(raw_dir)
    data = {"invocations": [], "runs": []}
    old_path = os.path.join(out_dir, "results.json")
    if append and os.path.exists(old_path):
        with open(old_path) as f:
            old = json.load(f)
        fresh = {(r["scenario"], r["server"]) for r in runs}
        data["runs"] = [r for r in old.get("runs", []) if (r["scenario"], r["server"]) not in fresh]
        kept = {r["invocation"] for r in data["runs"]}
        data["invocations"] = [i for i in old.get("invocations", []) if i["id"] in kept]
        data["manual_notes"] = old.get("manual_notes", [])
    data["invocations"].append(inv)
    data["runs"].extend(runs)
    data["generated"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    os.makedirs(out_dir, exist_ok=True)
    # remove charts of an earlier report that this one may not redraw
    for name in os.listdir(out_dir):
        if name.endswith(".svg"):
            os.remove(os.path.join(out_dir, name))
    render(data, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
