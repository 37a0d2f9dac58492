"""cifar2l: a reproducible experiment runner for a two-layer NumPy network on CIFAR-10."""

import os

# OpenBLAS's idle worker threads busy-wait for 2^N CPU cycles after each matrix product before
# they sleep (N = 28 by default: ~0.1 s). Spinning that long took the cores from the compiled
# kernels that run between two products of a wide layer (a 4096-unit dW1 product and update:
# 40.5 ms together against 31.6 ms with N = 4, on the 2026-12-01 machine). Sleeping at once
# cost the small products instead, which then wake their workers every time (on the 2026-12-02
# machine the default loop took 15-25% longer with N = 4 than with 21 or 28, best.yaml's 5-10%).
# N = 21 (~0.8 ms): workers stay awake across the default loop's gaps between products (under
# 0.5 ms) and sleep early in a wide layer's kernels (5-15 ms). README, Performance. OpenBLAS
# reads this when numpy first loads it, so it counts only when cifar2l is imported before
# numpy (the CLI is); a user's own value stands. It changes timing only, never results.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "21")

# NumPy asks Linux for transparent huge pages on every array of 4 MiB or more. On the 2-core
# VM guests we run on, a fresh 2 MiB page is often backed by the host at its first touch:
# writing a new 123 MB array took 0.42-0.62 s against 0.06-0.09 s without the advice, and a
# default run writes three (the standardised splits), until the guest's memory had been
# touched once (then 0.04-0.06 s either way): it matters on fresh machines, like CI's. The
# training loops ran no slower without it (README, Performance). Read when numpy loads, as
# above; a user's own value stands. Timing only, never results.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

__version__ = "0.1.0"
