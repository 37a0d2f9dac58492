"""What a run's numbers depend on besides its config: CPU, BLAS library and threads, versions.

Same config + same seed give bitwise the same numbers only on the same CPU model, with the same
BLAS library, version and thread count, and the same numpy: every summary.json records them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from . import threads


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform reports."""
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def blas() -> list[dict]:
    """Each loaded BLAS library: name, version, threads, threading layer, kernel architecture."""
    keys = {"library": "internal_api", "version": "version", "threads": "num_threads",
            "threading_layer": "threading_layer", "architecture": "architecture"}
    return [{k: lib.get(v) for k, v in keys.items()} for lib in threads.blas_libraries()]


def describe() -> dict:
    """The facts summary.json records under `machine`."""
    cpus, limit = threads.available_cpus()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpus_available": cpus,
        "cpus_limited_by": limit,
        "threads": threads.blas_threads(),
        "blas": blas(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load_average(),  # other work on the CPUs when the run started
    }


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def one_line(facts: dict | None = None) -> str:
    """`Intel(R) Xeon(R) ..., 2 CPUs, openblas 0.3.31 (2 threads), numpy 2.4.6, Python 3.11.7`."""
    f = facts or describe()
    libs = ", ".join(f"{b['library']} {b['version']}" for b in f.get("blas", [])) or "no BLAS seen"
    return (f"{f['cpu']}, {f['cpus_available']} CPUs, {libs} ({f['threads']} threads), "
            f"numpy {f['numpy']}, Python {f['python']}")  # fmt: skip


def same_machine(a: dict | None, b: dict | None) -> bool:
    """Whether two `machine` records name the same CPU, BLAS and versions (threads aside)."""
    if not a or not b:
        return False
    keys = ("cpu", "numpy", "python")
    libs = [[(x["library"], x["version"]) for x in m.get("blas", [])] for m in (a, b)]
    return all(a.get(k) == b.get(k) for k in keys) and libs[0] == libs[1]
