"""How many threads a command uses: chosen from the CPUs this process may use, set at run time.

BLAS (OpenBLAS, MKL) and the compiled element-wise kernels (kernels.py) share one count. The count
changes the last bits of some products (OpenBLAS splits a reduction over its threads), so it is
chosen once, when a command starts, recorded in summary.json, and never adapted while it runs.

Order of precedence: `--threads N`, then `CIFAR2L_THREADS`, then a BLAS variable the user set
(`OPENBLAS_NUM_THREADS`, `OMP_NUM_THREADS`, `MKL_NUM_THREADS`), then the CPUs this process may
use: the smallest of its CPU affinity, its cgroup CPU quota and `SLURM_CPUS_PER_TASK`.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError

ENV = "CIFAR2L_THREADS"
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int  # BLAS and element-wise threads of this process
    source: str  # what chose it: --threads, CIFAR2L_THREADS, OPENBLAS_NUM_THREADS, ..., cpus
    cpus: int  # CPUs this process may use
    cpus_source: str  # which limit gave `cpus`: affinity, cgroup quota, SLURM_CPUS_PER_TASK

    def to_dict(self) -> dict:
        return asdict(self)


def affinity_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """CPUs allowed by a cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), or None."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    return None


def available_cpus(environ=os.environ, root: Path = CGROUP) -> tuple[int, str]:
    """(CPUs this process may use, which limit set it)."""
    limits = {"affinity": affinity_cpus()}
    quota = cgroup_quota(root)
    if quota is not None:
        limits["cgroup quota"] = max(1, math.floor(quota))  # 1.5 CPUs cannot run 2 threads
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    source = min(limits, key=lambda k: limits[k])
    return limits[source], source


def choose(requested: int | None = None, environ=os.environ, root: Path = CGROUP) -> ThreadChoice:
    """The thread count of this command (see the module docstring for the precedence)."""
    cpus, cpus_source = available_cpus(environ, root)
    if requested is not None:
        return ThreadChoice(_positive(requested, "--threads"), "--threads", cpus, cpus_source)
    for var in (ENV, *BLAS_VARS):
        if environ.get(var, "").strip():
            return ThreadChoice(_positive(environ[var], var), var, cpus, cpus_source)
    return ThreadChoice(cpus, "cpus", cpus, cpus_source)


def _positive(value, what: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{what}={value}: expected a whole number of threads >= 1")
    return int(text)


def split(cpus: int, workers: int) -> int:
    """Threads of each of `workers` processes sharing `cpus` CPUs (at least 1)."""
    return max(1, cpus // max(1, workers))


@contextlib.contextmanager
def limited(choice: ThreadChoice):
    """Run with BLAS set to `choice.threads`; the previous setting is restored afterwards."""
    from threadpoolctl import threadpool_limits

    from . import kernels  # the compiled element-wise kernels share the setting

    kernels.set_threads(choice.threads)  # each command sets it: nothing to restore
    with threadpool_limits(limits=choice.threads, user_api="blas"):
        yield choice


def blas_threads() -> int | None:
    """The BLAS library's live thread count (None when threadpoolctl sees no BLAS)."""
    counts = [lib["num_threads"] for lib in blas_libraries()]
    return min(counts) if counts else None


def blas_libraries() -> list[dict]:
    """threadpoolctl's view of the loaded BLAS libraries (name, version, threads, ...)."""
    import numpy  # noqa: F401  (threadpoolctl sees only libraries already loaded)
    from threadpoolctl import threadpool_info

    return [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]


def load_warning(choice: ThreadChoice, load: float | None = None) -> str | None:
    """A warning when other work already keeps the CPUs busy and several BLAS threads would
    wait on each other (measured here: see the README's Performance section)."""
    if choice.threads < 2:
        return None
    if load is None:
        with contextlib.suppress(OSError, AttributeError):
            load = os.getloadavg()[0]
    if load is None or load < choice.cpus + 0.5:
        return None
    return (f"load average {load:.1f} on {choice.cpus} CPUs: {choice.threads} BLAS threads "
            f"may run many times slower than 1; consider --threads 1 (or {ENV}=1)")  # fmt: skip
