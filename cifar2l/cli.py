"""The `cifar2l` command line: a thin layer over the library's run_* functions.

Library errors (Cifar2lError) become one `Error: ...` line on stderr and their exit code:
2 for usage and config errors, 1 for runtime failures. Nothing else prints a traceback
unless CIFAR2L_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import __version__, console
from .errors import Cifar2lError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Reproducible experiments with a from-scratch NumPy two-layer network on CIFAR-10.",
)

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a config key, YAML-typed (repeatable): --set optim.lambda=0.005"),
]  # fmt: skip
OutOpt = Annotated[Path, typer.Option("--out", help="Runs root; each run gets a fresh directory.")]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Run name (default: the config file name).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Override the config's seed.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only the summary JSON on stdout.")]


def _version(value: bool):
    if value:
        print(f"cifar2l {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
):
    """Reproducible experiments with a from-scratch NumPy two-layer network on CIFAR-10."""


def _execute(work, quiet: bool, as_json: bool) -> None:
    """Run `work()` -> summary; map errors to one line and an exit code."""
    console.set_quiet(quiet or as_json)
    try:
        summary = work()
    except Cifar2lError as e:
        console.error(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.error("interrupted")
        raise typer.Exit(130) from None
    except Exception as e:  # a bug: still one line, unless debugging
        if os.environ.get("CIFAR2L_DEBUG"):
            raise
        console.error(f"internal error: {type(e).__name__}: {e} (set CIFAR2L_DEBUG=1 to see more)")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    if summary.get("passed") is False:
        raise typer.Exit(1)


def _load(config: Path, overrides: list[str] | None, seed: int | None):
    from .config import dump_yaml, load_config

    sets = list(overrides or []) + ([f"seed={seed}"] if seed is not None else [])
    cfg = load_config(config, sets)
    return cfg, dump_yaml(cfg)


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    out: OutOpt = Path("runs"),
    name: NameOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Train the network described by CONFIG; write metrics, weights, plots and a summary.

    Example:

        cifar2l train configs/default.yaml --set optim.lambda=0.005 --name lam005
    """
    from .train import run_train

    def work():
        cfg, text = _load(config, set_, seed)
        return run_train(cfg, text, str(config), out, name or config.stem)

    _execute(work, quiet, as_json)


@app.command()
def gradcheck(
    config: ConfigArg,
    set_: SetOpt = None,
    out: OutOpt = Path("runs"),
    name: NameOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Compare analytic gradients with centred differences (Table 1); exit 1 if they disagree.

    Example:

        cifar2l gradcheck configs/gradcheck.yaml
    """
    from .gradcheck import run_gradcheck

    def work():
        cfg, text = _load(config, set_, seed)
        return run_gradcheck(cfg, text, out, name or config.stem)

    _execute(work, quiet, as_json)


@app.command()
def evaluate(
    target: Annotated[Path, typer.Argument(help="A run directory or a weights.npz file.",
                                           show_default=False)],  # fmt: skip
    split: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    set_: SetOpt = None,
    out: OutOpt = Path("runs"),
    name: NameOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Score saved weights on a split: accuracy, per-class accuracy, confusion matrix.

    The split is rebuilt from the config stored with the weights (overrides apply to it).

    Example:

        cifar2l evaluate runs/20261127-101500-train-default --split test
    """
    from .evaluate import run_evaluate

    def work():
        sets = list(set_ or []) + ([f"seed={seed}"] if seed is not None else [])
        return run_evaluate(target, split, sets, out, name)

    _execute(work, quiet, as_json)


def main() -> None:
    app()
