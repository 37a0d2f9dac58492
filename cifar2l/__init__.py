"""cifar2l: a reproducible experiment runner for a two-layer NumPy network on CIFAR-10."""

import os

# OpenBLAS's idle worker threads busy-wait for 2^28 CPU cycles (~0.1 s) after each matrix
# product before they sleep, so the compiled kernels that run between two products shared
# the cores with spinning threads: a 4096-unit layer's dW1 product and update took 40.5 ms
# together against 31.6 ms with this setting (16.9 + 14.2 ms apart; README, Performance).
# 2^4 cycles, the least OpenBLAS accepts: its workers sleep at once. OpenBLAS reads this when
# numpy first loads it, so it counts only when cifar2l is imported before numpy (the CLI
# is); a user's own value stands. It changes timing only, never results.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# NumPy asks Linux for transparent huge pages on every array of 4 MiB or more. On the 2-core
# KVM guests we run on, a fresh 2 MiB page is backed by the host on first touch, so writing a
# new 123 MB array took 0.42-0.56 s against 0.03-0.07 s with 4 KiB pages, and a default run
# writes three (the standardised splits): its start-up took ~0.6 s longer. The training loops
# ran no slower without them (README, Performance). Read when numpy loads, as above; a user's
# own value stands. Timing only, never results.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

__version__ = "0.1.0"
