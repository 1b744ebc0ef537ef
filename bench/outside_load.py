#!/usr/bin/env python3
"""Which jobs of one anchors.sh run had the machine shared with something else.

usage: outside_load.py ANCHORS_OUTPUT [--limit 20]

For each FUSE job (``cpu.qemu_fuse.*`` and ``cpu.subject.*`` lines) it prints the CPU of the
run's own processes (tgtd, the daemon, the client) and what the whole machine used
(``all_of_N00``); the difference is CPU used by processes outside the run (and the kernel
work nobody is charged for). anchors.sh runs qemu's whole set and then the subject's, so
load that comes and goes lands on one side of a ratio only: a job whose outside share is
above ``--limit`` %CPU on either side is marked, and its ratio says more about the machine
than about the two daemons.
"""
from __future__ import annotations

import argparse
import re
import sys

OWN = ("tgtd", "daemon", "client")


def parse(path: str) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float]]:
    cpu: dict[str, dict[str, dict[str, float]]] = {}
    ratios: dict[str, float] = {}
    for line in open(path, encoding="utf-8"):
        parts = line.split()
        if len(parts) < 2 or line.startswith("#"):
            continue
        try:
            value = float(parts[1])
        except ValueError:
            continue
        m = re.fullmatch(r"cpu\.(qemu_fuse|subject)\.([^.]+)\.(tgtd|daemon|client|all_of_\d+)",
                         parts[0])
        if m:
            side, job, who = m.groups()
            cpu.setdefault(job, {}).setdefault(side, {})["all" if who.startswith("all_of")
                                                          else who] = value
        elif parts[0].startswith("ratio."):
            ratios[parts[0][6:]] = value
    return cpu, ratios


def outside(side: dict[str, float]) -> float | None:
    if "all" not in side:
        return None
    return side["all"] - sum(side.get(k, 0.0) for k in OWN)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output")
    ap.add_argument("--limit", type=float, default=20.0, help="%%CPU (100 = one core)")
    args = ap.parse_args(argv)
    cpu, ratios = parse(args.output)
    if not cpu:
        print(f"outside_load: no cpu.qemu_fuse / cpu.subject lines in {args.output}",
              file=sys.stderr)
        return 1
    print(f"# outside load per job (%CPU; above {args.limit:g} on either side: distrust)")
    print(f"{'job':<28} {'ratio':>7} {'qemu side':>10} {'subject side':>13}")
    marked = 0
    for job, sides in cpu.items():
        q, s = outside(sides.get("qemu_fuse", {})), outside(sides.get("subject", {}))
        bad = any(x is not None and x > args.limit for x in (q, s))
        marked += bad
        fmt = lambda x: "-" if x is None else f"{x:.1f}"       # noqa: E731
        ratio = ratios.get(job)
        print(f"{job:<28} {'-' if ratio is None else f'{ratio:.3f}':>7} {fmt(q):>10} "
              f"{fmt(s):>13}{'  DISTRUST' if bad else ''}")
    print(f"# {marked} of {len(cpu)} jobs shared the machine")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
