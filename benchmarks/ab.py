"""Interleaved A/B of a training loop between two source trees of cifar2l, on this machine.

    python benchmarks/ab.py OLD_TREE NEW_TREE CONFIG [--set KEY=VALUE ...] [--rounds R] [--loops L]

OLD_TREE and NEW_TREE are checkouts (e.g. `git worktree add /tmp/old HEAD~3`); each round runs
one process per tree, in alternating order, and each process times L loops of CONFIG (after
one untimed loop) with that tree's engine (`loop.run`, as `make bench` does). A virtual machine
whose speed drifts within minutes makes one-off timings of two versions meaningless; paired,
alternating rounds are what this prints: each round's medians and their ratio new / old.
Needs CIFAR2L_DATA. Each tree compiles its own kernels into its own cache on first use.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import statistics, sys
tree, name, loops, sets = sys.argv[1], sys.argv[2], int(sys.argv[3]), tuple(sys.argv[4:])
sys.path[:0] = [tree, tree + "/benchmarks"]
import bench
from cifar2l import kernels
cfgs, _ = bench.trial_configs(name, sets, None)
prep = bench.prepare(cfgs[0])
kernels.warm_up(cfgs[0].dtype)
bench.train_loop(cfgs, prep)
print(statistics.median(bench.train_loop(cfgs, prep)["train_s"] for _ in range(loops)))
"""


def child(tree: Path, config: str, loops: int, sets: list[str]) -> float:
    """Median train seconds of `loops` loops in a fresh process running `tree`'s engine."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), config, str(loops), *sets],
                         check=True, capture_output=True, text=True, cwd=tree).stdout  # fmt: skip
    return float(out.split()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("config", help="a file name under configs/, e.g. default.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--loops", type=int, default=3)
    a = ap.parse_args(argv)
    print("| round | old s | new s | new / old |\n|---|---|---|---|")
    ratios = []
    for r in range(a.rounds):
        trees = (a.old, a.new) if r % 2 == 0 else (a.new, a.old)
        got = {t: child(t.resolve(), a.config, a.loops, a.sets) for t in trees}
        old, new = got[a.old], got[a.new]
        ratios.append(new / old)
        print(f"| {r + 1} | {old:.3f} | {new:.3f} | {new / old:.3f} |", flush=True)
    print(f"\nmedian new / old over {a.rounds} rounds: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
