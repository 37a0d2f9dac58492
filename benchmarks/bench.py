"""`make bench`: where the time of a cifar2l run goes, against the machine's BLAS speed.

Writes benchmarks/results.md and benchmarks/results.json. Every figure comes from this run,
on this machine, through the package's own functions and CLI. Needs CIFAR2L_DATA (or data.root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cifar2l import data, machine, network, runs, threads
from cifar2l.config import load_config
from cifar2l.rngs import make_rngs
from cifar2l.schedule import total_steps
from cifar2l.train import train

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def best_of(fn, repeat: int = 5) -> float:
    """Fastest of `repeat` calls (after one warm-up): the machine's speed, not its noise."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def step_products(n: int, d: int, h: int, c: int, dtype) -> float:
    """Seconds for one training step's matrix products alone (forward and backward)."""
    rng = np.random.default_rng(0)
    x, w1 = rng.standard_normal((n, d), dtype=dtype), rng.standard_normal((d, h), dtype=dtype)
    hid, w2 = rng.standard_normal((n, h), dtype=dtype), rng.standard_normal((h, c), dtype=dtype)
    ds = rng.standard_normal((n, c), dtype=dtype)

    def products():
        x @ w1, hid @ w2, ds @ w2.T, hid.T @ ds, x.T @ hid

    return best_of(lambda: [products() for _ in range(20)]) / 20


def eval_products(n: int, d: int, h: int, c: int, dtype, chunk: int = 10000) -> float:
    """Seconds for the forward products of an evaluation of n rows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((min(n, chunk), d), dtype=dtype)
    w1, w2 = rng.standard_normal((d, h), dtype=dtype), rng.standard_normal((h, c), dtype=dtype)
    one = best_of(lambda: (x @ w1) @ w2)
    return one * n / min(n, chunk)


def training_loop(config: Path, overrides: tuple[str, ...] = ()) -> dict:
    cfg = load_config(config, list(overrides))
    rngs = make_rngs(cfg.seed)
    prep = data.prepare(cfg.data, cfg.dtype, rngs["split"])
    steps = total_steps(cfg.schedule)
    quiet = cfg.model_copy(update={"train": cfg.train.model_copy(update={"log_every": steps})})
    params = network.init_params(prep.train.x.shape[1], cfg.model.hidden, 10, rngs["init"],
                                 cfg.dtype)  # fmt: skip
    clock = runs.Clock()
    train(params, prep.train, prep.val, quiet, rngs, clock=clock)
    n, d = cfg.train.batch_size, prep.train.x.shape[1]
    bound = step_products(n, d, cfg.model.hidden, 10, cfg.dtype) * steps
    ev_bound = eval_products(len(prep.train.y), d, cfg.model.hidden, 10, cfg.dtype)
    ev = best_of(lambda: network.evaluate(params, prep.train.x, prep.train.y, 0.01), 3)
    return {
        "config": " ".join([config.name, *overrides]), "steps": steps, "batch": n, "hidden": cfg.model.hidden,
        "train_s": clock.seconds["train"], "images_per_s": steps * n / clock.seconds["train"],
        "gemm_bound_s": bound, "ratio": clock.seconds["train"] / bound,
        "eval_rows": len(prep.train.y), "eval_s": ev, "eval_bound_s": ev_bound,
        "eval_ratio": ev / ev_bound,
    }  # fmt: skip


def child_rusage(cmd: list[str], env=None) -> tuple[float, float, str]:
    """Wall seconds, peak resident MB and stdout of `cmd`, measured from a fresh wrapper."""
    probe = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
             "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True); "
             "print(json.dumps([time.perf_counter() - t, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, p.stdout]))")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                         env=env, check=True).stdout  # fmt: skip
    return tuple(json.loads(out))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifar2l", *args, "--json", "--quiet"]


def whole_process(out: str) -> dict:
    cmd = cli("train", str(CONFIGS / "default.yaml"), "--out", out)
    child_rusage(cmd)  # warm the data cache and the OS page cache
    wall, rss, stdout = child_rusage(cmd)
    t = json.loads(stdout)["timing"]
    return {"wall_s": wall, "peak_mb": rss, "train_s": t["train"], "eval_s": t["eval"],
            "other_s": wall - t["train"] - t["eval"]}  # fmt: skip


def data_load() -> dict:
    source = data.find_source(None)
    old = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        try:
            cold = best_of(lambda: None, 1) + _timed(lambda: data.load_dataset(source))
            warm = best_of(lambda: data.load_dataset(source).train_x[:].sum(), 3)
        finally:
            if old is None:
                os.environ.pop("XDG_CACHE_HOME")
            else:
                os.environ["XDG_CACHE_HOME"] = old
    return {"source": str(source), "cold_s": cold, "warm_s": warm}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def memory_45k(out: str) -> float:
    cmd = cli("train", str(CONFIGS / "final.yaml"), "--out", out, "--set", "schedule.n_s=50",
              "--set", "schedule.cycles=1")  # fmt: skip
    return child_rusage(cmd)[1]


def fused_search(out: str) -> dict:
    """The 16-trial coarse search, fused against one trial at a time, both in one process."""
    res = {}
    for mode in ("off", "auto"):
        d = Path(out) / f"search-{mode}"
        cmd = cli("search", str(CONFIGS / "search-coarse.yaml"), "--dir", str(d),
                  "--set", f"search.fuse={mode}")  # fmt: skip
        wall = child_rusage(cmd)[0]
        trials = [json.loads(p.read_text()) for p in sorted(d.glob("trials/*/summary.json"))]
        res[mode] = {
            "wall_s": wall,
            "train_s": sum(t["timing"]["train"] for t in trials),
            "eval_s": sum(t["timing"]["eval"] for t in trials),
            "val": {t["run_dir"][-3:]: t["accuracy"]["val"] for t in trials},
        }
    off, auto = res["off"], res["auto"]
    res["speedup"] = off["wall_s"] / auto["wall_s"]
    res["max_val_diff"] = max(abs(off["val"][k] - auto["val"][k]) for k in off["val"])
    return res


BUSY = "while True: pass"  # one busy CPU: what other users' jobs do to a shared machine


def loaded_machine(out: str) -> dict:
    """Training-loop seconds of the whole default run with 1 and with all BLAS threads, on the
    idle machine and beside 1x and 2x as many busy processes as there are CPUs."""
    cpus = threads.available_cpus()[0]
    res = {"cpus": cpus, "rows": []}
    for busy in (0, cpus, 2 * cpus):
        procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
        try:
            time.sleep(1.0 if busy else 0.0)  # let the scheduler see them
            for n in sorted({1, cpus}):
                cmd = cli("train", str(CONFIGS / "default.yaml"), "--out", out, "--threads", str(n))
                wall, _, stdout = child_rusage(cmd)
                res["rows"].append({"busy": busy, "threads": n, "wall_s": wall,
                                    "train_s": json.loads(stdout)["timing"]["train"]})
        finally:
            for p in procs:
                p.kill()
                p.wait()
    return res


def report(r: dict) -> str:
    rows = "\n".join(
        f"| `{t['config']}` (m={t['hidden']}, batch {t['batch']}, {t['steps']} steps) "
        f"| {t['train_s']:.2f} s | {t['images_per_s']:,.0f} | {t['gemm_bound_s']:.2f} s "
        f"| **{t['ratio']:.2f}x** | {t['eval_s'] * 1000:.1f} ms / {t['eval_rows']:,} rows "
        f"| {t['eval_bound_s'] * 1000:.1f} ms | **{t['eval_ratio']:.2f}x** |"
        for t in r["loops"])
    w, dl, fs = r["whole"], r["data"], r["fused"]
    return f"""# Benchmarks

Machine: {r['machine']}. Measured {r['date']} by `make bench` (benchmarks/bench.py).

GEMM bound: the matrix products of the same shapes and dtype alone, at this machine's BLAS
speed (fastest of repeated runs), times the number of steps (evaluation: the forward products of
all rows). Ratio = measured / bound.

| training loop, no evaluation | seconds | images/s | GEMM bound | ratio | evaluation of the train split | its bound | ratio |
|---|---|---|---|---|---|---|---|
{rows}

| whole `cifar2l train configs/default.yaml` (warm cache) | seconds |
|---|---|
| wall time of the process | {w['wall_s']:.2f} |
| training loop / evaluation (from summary.json `timing`) | {w['train_s']:.2f} / {w['eval_s']:.2f} |
| everything else: start-up, data, plots, writing | **{w['other_s']:.2f}** |

| data loading ({Path(dl['source']).name}) | seconds |
|---|---|
| cold: decode the source, write the cache | {dl['cold_s']:.2f} |
| warm: from the cache (memory-mapped, every training row touched) | {dl['warm_s']:.2f} |

| peak resident memory | MB |
|---|---|
| `cifar2l train configs/default.yaml` (10,000 training images) | {w['peak_mb']:.0f} |
| `cifar2l train configs/final.yaml` (45,000 training images, shortened) | {r['memory_45k_mb']:.0f} |

| 16-trial coarse search (`configs/search-coarse.yaml`, one process) | one trial at a time | fused |
|---|---|---|
| wall seconds | {fs['off']['wall_s']:.1f} | {fs['auto']['wall_s']:.1f} |
| of which training loops (sum over trials) | {fs['off']['train_s']:.1f} | {fs['auto']['train_s']:.1f} |
| of which metric evaluation (sum over trials) | {fs['off']['eval_s']:.1f} | {fs['auto']['eval_s']:.1f} |
| rest: start-up, data, final metrics, writing 16 run dirs | {fs['off']['wall_s'] - fs['off']['train_s'] - fs['off']['eval_s']:.1f} | {fs['auto']['wall_s'] - fs['auto']['train_s'] - fs['auto']['eval_s']:.1f} |

Fused is **{fs['speedup']:.2f}x** faster; the largest difference in a trial's final validation
accuracy between the two is {fs['max_val_diff']:.4f}.

{loaded_table(r['loaded'])}
"""


def loaded_table(ld: dict) -> str:
    rows = "\n".join(f"| {x['busy']} | {x['threads']} | {x['train_s']:.2f} s | {x['wall_s']:.2f} s |"
                     for x in ld["rows"])
    return f"""| `cifar2l train configs/default.yaml` beside busy processes ({ld['cpus']} CPUs) | BLAS threads | training loop | whole process |
|---|---|---|---|
{rows}"""


def main() -> int:
    if not (os.environ.get("CIFAR2L_DATA")):
        print("Error: benchmarks need CIFAR2L_DATA (a CIFAR-10 source)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as out:
        facts = machine.describe()
        r = {"machine": machine.one_line(facts), "machine_facts": facts,
             "date": time.strftime("%Y-%m-%d %H:%M"),
             "data": data_load(),
             "loops": [training_loop(CONFIGS / "default.yaml"),
                       training_loop(CONFIGS / "table4-140.yaml"),
                       training_loop(CONFIGS / "best.yaml", ("schedule.steps=300", "train.snapshots=null"))],
             "whole": whole_process(out), "memory_45k_mb": memory_45k(out),
             "fused": fused_search(out), "loaded": loaded_machine(out)}  # fmt: skip
    here = Path(__file__).resolve().parent
    (here / "results.json").write_text(json.dumps(r, indent=2) + "\n")
    (here / "results.md").write_text(report(r))
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
