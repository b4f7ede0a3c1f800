#!/usr/bin/env python3
"""Where two callgrind profiles differ, per request, function by function.

    bench/callgrind-diff.py BEFORE.out AFTER.out REQUESTS [--events E,E] [--top N]
    bench/callgrind-diff.py BEFORE.out AFTER.out REQUESTS --callers-of memcpy

Each profile is a callgrind output file covering REQUESTS requests (as
`bench/gateway-cost.sh` with KEEP_TMP=1 keeps them: the counters are zeroed
after the warm-up and dumped after the measured requests). For every
function, its *self* cost in the chosen events (default: last-level misses,
DLmr,DLmw,ILmr, which need CACHE_SIM=1) divided by REQUESTS, in both
profiles, sorted by how much it grew. With --callers-of NAME: the inclusive
cost of the calls to functions whose name contains NAME, by caller (what
the callers of `memcpy` copy, for instance).

It reads the file format itself (name compression, `calls=` lines) rather
than `callgrind_annotate`, whose 3.19 release printed inclusive-looking
costs for Rust binaries with inlined frames. Standard library only.
"""

import argparse
import re
import sys
from collections import defaultdict

NAME = re.compile(r"(c?fn)=\((\d+)\)(?: (.*))?$")
POSITION = re.compile(r"^[0-9+\-*]")


def read_profile(path, events, callers_of=None):
    """Self cost per function, or with callers_of, the inclusive cost of
    calls to matching functions per caller."""
    names = {}
    columns = None
    current = callee = None
    after_calls = False
    cost = defaultdict(int)
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if line.startswith("events:"):
                header = line.split()[1:]
                missing = [e for e in events if e not in header]
                if missing:
                    sys.exit(f"error: {path} has no {', '.join(missing)} events (it has {' '.join(header)}); "
                             "last-level misses need CACHE_SIM=1")
                columns = [header.index(e) for e in events]
                continue
            named = NAME.match(line)
            if named:
                kind, number, name = named.groups()
                if name:
                    names[number] = name
                if kind == "fn":
                    current = names.get(number, number)
                else:
                    callee = names.get(number, number)
                continue
            if line.startswith("calls="):
                after_calls = True
                continue
            if columns is None or not POSITION.match(line):
                continue
            values = line.split()[1:]
            amount = sum(int(values[c]) for c in columns if c < len(values))
            if after_calls:
                after_calls = False
                if callers_of is not None and callee and callers_of in callee:
                    cost[current] += amount
            elif callers_of is None:
                cost[current] += amount
    if columns is None:
        sys.exit(f"error: {path} is not a callgrind profile (no `events:` line)")
    return cost


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("requests", type=float, help="requests each profile covers")
    parser.add_argument("--events", default="DLmr,DLmw,ILmr",
                        help="comma-separated callgrind events to add up (default: last-level misses)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--callers-of", metavar="NAME")
    args = parser.parse_args()
    if args.requests <= 0:
        sys.exit("error: REQUESTS must be positive: the number of requests each profile covers")
    events = args.events.split(",")
    before = read_profile(args.before, events, args.callers_of)
    after = read_profile(args.after, events, args.callers_of)
    n = args.requests
    what = f"calls to *{args.callers_of}*, by caller" if args.callers_of else "self cost"
    print(f"{'+'.join(events)} per request, {what}")
    print(f"total: {sum(before.values()) / n:.2f} before, {sum(after.values()) / n:.2f} after")
    print(f"{'change':>8} {'before':>8} {'after':>8}  function")
    grown = sorted(set(before) | set(after), key=lambda f: before.get(f, 0) - after.get(f, 0))
    for function in grown[: args.top]:
        b, a = before.get(function, 0) / n, after.get(function, 0) / n
        print(f"{a - b:+8.2f} {b:8.2f} {a:8.2f}  {function[:120]}")


if __name__ == "__main__":
    main()
