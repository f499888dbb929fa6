#!/usr/bin/env python3
"""Judge an Autobahn|Testsuite fuzzingclient report (reports/autobahn/index.json).

    scripts/autobahn_check.py [--mode default|full|tls] [--agent NAME] [INDEX_JSON]

Passes (exit 0) only if
  * every case's `behavior` is OK, NON-STRICT or INFORMATIONAL (UNIMPLEMENTED
    counts as a failure: the server takes permessage-deflate, so the 12.* and
    13.* compression cases must all run; `--allow-unimplemented` accepts it
    for those two categories, for a server run with `--compression off`);
  * every case's `behaviorClose` is OK or INFORMATIONAL;
  * the report holds exactly the cases the mode runs, category by category.
    wstest writes index.json with whatever cases had finished when it stops:
    if the server dies mid-run, wstest logs "Connection ... failed" and still
    writes a (truncated) report and exits 0. The count check is what turns
    that into a failure.

Prints one summary line, e.g.
    autobahn: 463 cases: 451 OK, 9 NON-STRICT, 3 INFORMATIONAL, 0 FAILED
where the numbers before FAILED count accepted cases by behavior and FAILED
counts every case not accepted by the rules above (whatever its behavior
label: FAILED, WRONG CODE, UNCLEAN, or an OK one with a bad close), so they
add up to the case count. Problems are listed one per line before it.
Exits 1 on failure, 2 on a usage error or unreadable report.
"""

import argparse
import json
import sys
from collections import Counter

# Number of fuzzingclient cases per top-level category in autobahntestsuite
# 25.10.1, the version pinned in scripts/autobahn-requirements.txt. The 0.8.2
# release (the one most projects use, with autobahn 0.10.9) has the same case
# set: both give 517 for "*" and 463 for "*" minus "9.*". Worked out with the
# suite's own CaseSet.parseSpecCases and confirmed by real runs. Category 8
# and 11 do not exist in the suite.
CASES_PER_CATEGORY = {
    1: 16,    # framing: text/binary payload lengths
    2: 11,    # pings/pongs
    3: 7,     # reserved bits
    4: 10,    # reserved opcodes
    5: 20,    # fragmentation
    6: 145,   # UTF-8 handling
    7: 37,    # close handling
    9: 54,    # limits/performance: 64 KiB .. 16 MiB messages, slow
    10: 1,    # auto-fragmentation
    12: 90,   # permessage-deflate (compression) -- we do not offer it
    13: 126,  # permessage-deflate parameters -- idem
}

# What scripts/autobahn.sh runs in each mode: cases ["*"] with these
# exclude-cases. Keep the two in sync.
MODES = {
    "default": {9},  # --full runs the 9.* bulk cases too
    "full": set(),
    # --tls: over wss://, the bulk cases included (large messages cross many
    # TLS records), but not the compression cases (12.*, 13.* test
    # permessage-deflate, which the plain run covers; TLS changes only the
    # transport under them).
    "tls": {12, 13},
}

OK_BEHAVIORS = {"OK", "NON-STRICT", "INFORMATIONAL"}
OK_CLOSE = {"OK", "INFORMATIONAL"}
UNIMPLEMENTED_OK_CATEGORIES = {12, 13}
# Order of the accepted behaviors in the summary line.
SUMMARY_ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"]


def expected_counts(mode):
    return {c: n for c, n in CASES_PER_CATEGORY.items() if c not in MODES[mode]}


def category(case_id):
    try:
        return int(case_id.split(".")[0])
    except ValueError:
        return None


def case_sort_key(case_id):
    try:
        return tuple(int(p) for p in case_id.split("."))
    except ValueError:
        return (10**9, case_id)


def check(report, mode, agent=None, allow_unimplemented=False):
    """Return (summary_line, problems)."""
    problems = []
    if not isinstance(report, dict) or not report:
        return "autobahn: 0 cases: empty report", ["report has no agent (wstest ran no case)"]
    if agent is None:
        if len(report) != 1:
            return ("autobahn: ambiguous report",
                    ["report has agents %s; pass --agent" % ", ".join(sorted(report))])
        agent = next(iter(report))
    if agent not in report:
        return ("autobahn: 0 cases: agent %r not in report" % agent,
                ["agents in report: %s" % ", ".join(sorted(report))])
    cases = report[agent]

    behaviors = Counter()  # behavior labels of the accepted cases
    failed = []
    for case_id in sorted(cases, key=case_sort_key):
        res = cases[case_id]
        b = res.get("behavior", "MISSING")
        bc = res.get("behaviorClose", "MISSING")
        b_ok = b in OK_BEHAVIORS or (
            allow_unimplemented and b == "UNIMPLEMENTED" and category(case_id) in UNIMPLEMENTED_OK_CATEGORIES)
        if b_ok and bc in OK_CLOSE:
            behaviors[b] += 1
        else:
            failed.append("case %s: behavior=%s behaviorClose=%s remoteCloseCode=%s (%s)" % (
                case_id, b, bc, res.get("remoteCloseCode"), res.get("reportfile", "?")))

    # Completeness, per category, so a truncated run says where it stopped.
    want = expected_counts(mode)
    got = Counter(category(c) for c in cases)
    total_want = sum(want.values())
    for cat in sorted(set(want) | set(got), key=lambda c: (c is None, c or 0)):
        w, g = want.get(cat, 0), got.get(cat, 0)
        if w != g:
            problems.append("category %s.*: %d cases in report, expected %d (mode %s)" % (
                cat, g, w, mode))
    if len(cases) != total_want:
        problems.append("report has %d cases, expected %d for mode %s "
                        "(truncated run? did the server die?)" % (len(cases), total_want, mode))
    problems = failed + problems

    # The numbers add up to the case count: accepted cases by behavior, then
    # every rejected case (FAILED, WRONG CODE, UNCLEAN, bad close...) as FAILED.
    parts = ["%d %s" % (behaviors[b], b) for b in SUMMARY_ORDER if behaviors[b] or b != "UNIMPLEMENTED"]
    parts.append("%d FAILED" % len(failed))
    summary = "autobahn: %d cases: %s" % (len(cases), ", ".join(parts))
    if len(cases) != total_want:
        summary += " (expected %d cases)" % total_want
    return summary, problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", nargs="?", default="reports/autobahn/index.json",
                    help="wstest's index.json (default: %(default)s)")
    ap.add_argument("--mode", choices=sorted(MODES), default="default",
                    help="which case set was run: default (no 9.*), full, or tls (no 12.*/13.*)")
    ap.add_argument("--agent", help="agent name in the report (default: the only one)")
    ap.add_argument("--allow-unimplemented", action="store_true",
                    help="accept UNIMPLEMENTED for 12.* and 13.* (a server run with --compression off)")
    ap.add_argument("--max-problems", type=int, default=60,
                    help="list at most this many problem lines (default: %(default)s)")
    args = ap.parse_args(argv)

    try:
        with open(args.index, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        print("autobahn: cannot read report %s: %s" % (args.index, e))
        print("autobahn: FAIL")
        return 2

    summary, problems = check(report, args.mode, args.agent, args.allow_unimplemented)
    for p in problems[:args.max_problems]:
        print("autobahn: " + p)
    if len(problems) > args.max_problems:
        print("autobahn: ... and %d more problems" % (len(problems) - args.max_problems))
    print(summary)
    if problems:
        print("autobahn: FAIL (details per case: %s)" % args.index.replace("index.json", "index.html"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
