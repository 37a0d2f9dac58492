"""cifar2l: a reproducible experiment runner for a two-layer NumPy network on CIFAR-10."""

__version__ = "0.1.0"
