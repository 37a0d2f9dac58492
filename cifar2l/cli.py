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
from .errors import Cifar2lError, brief
from .usage_errors import OneLineUsageErrors

app = typer.Typer(
    cls=OneLineUsageErrors,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Reproducible experiments with a from-scratch NumPy two-layer network on CIFAR-10.",
)

ConfigArg = Annotated[Path, typer.Argument(help=(
    "Experiment YAML file, or a shipped config's name (`cifar2l config --list`)."),
    show_default=False)]
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
ThreadsOpt = Annotated[int | None, typer.Option("--threads", metavar="N", help=(
    "BLAS and element-wise threads (default: CIFAR2L_THREADS, else the CPUs this process may "
    "use: affinity, cgroup quota, SLURM_CPUS_PER_TASK)."), show_default=False)]

# The `search` command's own arguments and options.
SearchConfigArg = Annotated[str | None, typer.Argument(
    help="Experiment YAML with a search: section (or any config, with --grid), or the word "
         "`collect`.",
    show_default=False)]
SearchRunDirArg = Annotated[Path | None, typer.Argument(
    help="After `collect`: the search directory to merge.", show_default=False)]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", help="Worker processes on this machine.")]
ShardOpt = Annotated[str | None, typer.Option("--shard", metavar="I/N", help=(
    "Run only trials with index % N == I (default: SLURM_ARRAY_TASK_ID/COUNT when set)."))]
SearchDirOpt = Annotated[Path | None, typer.Option("--dir", help=(
    "Search directory shared by all shards (created once); default: a fresh run dir."))]
SearchResumeOpt = Annotated[Path | None, typer.Option("--resume", metavar="RUN_DIR", help=(
    "Continue the search stored in RUN_DIR; finished trials are skipped."))]
RefineOpt = Annotated[Path | None, typer.Option("--refine", metavar="RUN_DIR", help=(
    "Narrow (log-)uniform ranges to the best trials of that search (search.refine_top)."))]
RepeatBestOpt = Annotated[int, typer.Option("--repeat-best", metavar="K", min=1, help=(
    "After the search, retrain the best trial over K initialisation seeds (best-repeat/): "
    "its mean and std, free of the winner's luck."))]
NoCollectOpt = Annotated[bool, typer.Option("--no-collect", hidden=True)]  # for --jobs workers
GridOpt = Annotated[list[str] | None, typer.Option("--grid", "-g", metavar="KEY=V1,V2,...", help=(
    "A grid axis: every value is run, YAML-typed as --set (repeatable: the Cartesian product, "
    "the last --grid fastest). Replaces KEY's entry in search.space; with random keys beside "
    "it, every grid point gets search.trials draws of them. Not refined by --refine."))]


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


def _execute(work, quiet: bool, as_json: bool, n_threads: int | None = None) -> None:
    """Run `work()` -> summary with the chosen thread count; map errors to one line and an
    exit code."""
    from .checkpoint import Interrupted, install_handlers

    console.set_quiet(quiet or as_json, keep_bars=as_json and not quiet)
    install_handlers()
    try:
        summary = _with_threads(work, n_threads)
    except Cifar2lError as e:
        console.error(str(e))
        raise typer.Exit(e.exit_code) from None
    except Interrupted as e:
        console.error(e.message())
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.error("interrupted")
        raise typer.Exit(130) from None
    except OSError as e:  # the machine, not a bug: a full disk, a read-only or vanished file
        from .errors import describe_os_error

        console.error(describe_os_error(e))
        raise typer.Exit(1) from None
    except MemoryError as e:  # a config too big for this machine (model.hidden, --repeat)
        console.error(f"out of memory{f': {e}' if str(e) else ''}; reduce model.hidden, "
                      "--repeat or the data, or use a machine with more memory")  # fmt: skip
        raise typer.Exit(1) from None
    except Exception as e:  # a bug: still one line, unless debugging
        if os.environ.get("CIFAR2L_DEBUG"):
            raise
        console.error(f"internal error: {type(e).__name__}: {e} (set CIFAR2L_DEBUG=1 to see more)")
        raise typer.Exit(1) from None
    if as_json:
        from .runs import rounded_floats

        sys.stdout.write(json.dumps(rounded_floats(summary), default=str) + "\n")
    _say_where(summary)
    if summary.get("passed") is False:
        raise typer.Exit(1)


def _say_where(summary: dict) -> None:
    """The run dir again as the last line (the one printed at the start has scrolled away);
    console.log keeps it off --quiet and --json."""
    if summary.get("run_dir"):
        console.log(f"Run dir: {summary['run_dir']}")
    elif summary.get("report"):  # report: its --out
        console.log(f"Report dir: {Path(summary['report']).parent}")


def _with_threads(work, n_threads: int | None):
    from . import threads

    choice = threads.choose(n_threads)
    warning = threads.load_warning(choice)
    if warning and console.stderr.is_terminal:  # a hint for a person at a terminal; the load
        console.warn(warning)  # itself is in summary.json (machine.load_average)
    with threads.limited(choice):
        return work()


def _load(config: Path, overrides: list[str] | None, seed: int | None,
          grid: list[str] | None = None):  # fmt: skip
    """CONFIG (a file, or a shipped config's bare name: shipped.resolve) with the overrides;
    for a search, the --grid axes put into search.space (search/grid.py)."""
    from .config import dump_yaml, load_config
    from .shipped import resolve

    sets = list(overrides or []) + ([f"seed={seed}"] if seed is not None else [])
    if grid:
        from .search.grid import load_search_config

        cfg = load_search_config(resolve(config), sets, grid)
    else:
        cfg = load_config(resolve(config), sets)
    return cfg, dump_yaml(cfg)


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help=(
        "Experiment YAML file, or a shipped config's name (`cifar2l config --list`)."),
        show_default=False)] = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help=(
        "Train K initialisation seeds fused in one pass; report mean and std."))] = 1,
    resume: Annotated[Path | None, typer.Option("--resume", metavar="RUN_DIR", help=(
        "Continue an interrupted run from its checkpoint.npz, in its own directory."))] = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs"),
    name: NameOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    n_threads: ThreadsOpt = None,
):
    """Train the network described by CONFIG; write metrics, weights, plots and a summary.

    Example:

        cifar2l train configs/default.yaml --set optim.lambda=0.005 --name lam005

        cifar2l train configs/default.yaml --repeat 5

        cifar2l train --resume runs/20261127-101500-train-default
    """
    _execute(lambda: _train(config, repeat, resume, set_, out, name, seed), quiet, as_json,
             n_threads)  # fmt: skip


def _train(config, repeat, resume, set_, out, name, seed):
    """The `train` command's work: a resumed run, K fused seeds or one run."""
    from .errors import ConfigError
    from .train import run_repeat, run_resume, run_train

    if resume is not None:
        if config is not None or set_ or seed is not None or repeat > 1:
            raise ConfigError("--resume RUN_DIR takes no CONFIG, --set, --seed or --repeat: "
                              "the run's own config.yaml is used")  # fmt: skip
        return run_resume(resume)
    if config is None:
        raise ConfigError("train: give a CONFIG file (or --resume RUN_DIR)")
    cfg, text = _load(config, set_, seed)
    if repeat > 1:
        return run_repeat(cfg, text, str(config), out, name or config.stem, repeat)
    return run_train(cfg, text, str(config), out, name or config.stem)


@app.command()
def gradcheck(
    config: ConfigArg,
    set_: SetOpt = None,
    out: OutOpt = Path("runs"),
    name: NameOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    n_threads: ThreadsOpt = None,
):
    """Compare analytic gradients with centred differences (Table 1); exit 1 if they disagree.

    Example:

        cifar2l gradcheck configs/gradcheck.yaml
    """
    from .gradcheck import run_gradcheck

    def work():
        cfg, text = _load(config, set_, seed)
        return run_gradcheck(cfg, text, out, name or config.stem)

    _execute(work, quiet, as_json, n_threads)


@app.command()
def lrrange(
    config: ConfigArg,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help=(
        "Sweep K initialisation seeds; suggest their geometric-mean rates."))] = 1,
    set_: SetOpt = None,
    out: OutOpt = Path("runs"),
    name: NameOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    n_threads: ThreadsOpt = None,
):
    """LR range test: train while the rate rises, suggest eta_min / eta_max (suggestion.yaml).

    Example:

        cifar2l lrrange configs/lrrange-80.yaml --set lrrange.epochs=4

        cifar2l lrrange configs/lrrange-80.yaml --repeat 5
    """
    from .lrrange import run_lrrange

    def work():
        cfg, text = _load(config, set_, seed)
        return run_lrrange(cfg, text, str(config), out, name or config.stem, repeat)

    _execute(work, quiet, as_json, n_threads)


@app.command()
def evaluate(
    target: Annotated[Path, typer.Argument(help="A run directory or a weights.npz file.",
                                           show_default=False)],  # fmt: skip
    split: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    ensemble: Annotated[bool, typer.Option("--ensemble", help=(
        "Score the run's snapshot ensemble (the mean of the softmax outputs of its "
        "snapshots/*.npz) instead of its final weights."))] = False,
    tta: Annotated[str | None, typer.Option("--tta", metavar="VIEWS", show_default=False, help=(
        "Test-time augmentation: also score the softmax outputs averaged over these views "
        "(flip, shift, or flip,shift; none for no TTA). Default: the run's evaluate.tta."))
    ] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", metavar="data.root=PATH",
        help="Where the data lives now (the only key evaluate may change)."),
    ] = None,
    out: OutOpt = Path("runs"),
    name: NameOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    n_threads: ThreadsOpt = None,
):
    """Score saved weights on a split: accuracy, per-class accuracy, confusion matrix.

    The split is rebuilt exactly as at training time from the config stored with the weights
    and checked against the fingerprint recorded then; only --set data.root=PATH may change.

    Example:

        cifar2l evaluate runs/20261127-101500-train-default --split test

        cifar2l evaluate runs/20261127-120000-train-best --ensemble --tta flip

        cifar2l evaluate runs/20261127-120000-train-best/weights-avg.npz  (train.average)
    """
    from .evaluate import run_evaluate

    def work():
        return run_evaluate(target, split, list(set_ or []), out, name, ensemble, tta)

    _execute(work, quiet, as_json, n_threads)


@app.command()
def search(
    config: SearchConfigArg = None,
    run_dir: SearchRunDirArg = None,
    jobs: JobsOpt = 1,
    shard: ShardOpt = None,
    directory: SearchDirOpt = None,
    resume: SearchResumeOpt = None,
    refine: RefineOpt = None,
    repeat_best: RepeatBestOpt = 1,
    no_collect: NoCollectOpt = False,
    grid: GridOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs"),
    name: NameOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    n_threads: ThreadsOpt = None,
):
    """Random or grid search: train one run per trial, rank them, write results.csv and best.yaml.

    `cifar2l search collect RUN_DIR` merges the trials of a sharded search.

    Example:

        cifar2l search configs/search-coarse.yaml --jobs 2 --repeat-best 5

        cifar2l search configs/search-fine.yaml --refine runs/20261127-140000-search-search-coarse

        cifar2l search configs/search-coarse.yaml --dir runs/coarse --shard 0/4

        cifar2l search configs/smoke.yaml --grid optim.lambda=0.001,0.01 --grid model.hidden=50,100

        cifar2l search collect runs/coarse
    """
    def work():
        return _search(config, run_dir, jobs, shard, directory, resume, refine, repeat_best,
                       no_collect, set_, out, name, seed, grid)  # fmt: skip

    _execute(work, quiet, as_json, n_threads)


def _search(config, run_dir, jobs, shard, directory, resume, refine, repeat_best, no_collect,
            set_, out, name, seed, grid=None):  # fmt: skip
    """The `search` command's work: `collect RUN_DIR`, --resume RUN_DIR or a CONFIG."""
    from . import search as search_mod
    from .errors import ConfigError

    if grid and (config in (None, "collect")):
        raise ConfigError(_GRID_NEEDS_CONFIG)
    if config == "collect":
        if run_dir is None:
            raise ConfigError("search collect: give the search directory, e.g. "
                              "cifar2l search collect runs/coarse")  # fmt: skip
        return search_mod.collect_command(run_dir)
    if run_dir is not None:
        raise ConfigError(f"unexpected argument {brief(str(run_dir))} (only `collect` takes one)")
    if resume is not None and config is None:
        return search_mod.resume_search(resume, jobs=jobs, shard=shard,
                                        collect_after=not no_collect,
                                        repeat_best=repeat_best)  # fmt: skip
    if config is None:
        raise ConfigError("search: give a CONFIG, `collect RUN_DIR` or --resume RUN_DIR")
    if resume is not None and directory is not None:
        raise ConfigError("search: give --resume RUN_DIR or --dir DIR, not both")
    cfg, text = _load(Path(config), set_, seed, grid)
    if resume is not None:  # continues a search: one must be there (--dir may start one)
        search_mod.load_plan(resume)
    return search_mod.run_search(
        cfg, text, config, out, name or Path(config).stem, jobs=jobs, shard=shard,
        directory=resume or directory, refine=refine, collect_after=not no_collect,
        repeat_best=repeat_best)


@app.command()
def export(
    run_dirs: Annotated[list[Path], typer.Argument(
        metavar="RUN", help="Run directories to export; the runs inside one (a --repeat run's "
                            "repeats, a search's trials) become runs of their own.",
        show_default=False)],
    tensorboard: Annotated[Path | None, typer.Option("--tensorboard", metavar="DIR", help=(
        "Write TensorBoard event files: DIR/<run dir name>/ per RUN (refused when it exists). "
        "Needs: pip install 'cifar2l\\[tensorboard]'."), show_default=False)] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Export runs to TensorBoard: metrics as scalars, the config, hyperparameters.

    Per-step metrics as scalars, the config as text, hyperparameters with final accuracies.

    Example:

        cifar2l export runs/20261127-101500-train-default runs/coarse --tensorboard tb

        tensorboard --logdir tb
    """
    from .export import run_export

    _execute(lambda: run_export(run_dirs, tensorboard), quiet, as_json)


RootArg = Annotated[Path, typer.Argument(help="Runs root to list.")]


@app.command("runs")
def runs_(
    root: RootArg = Path("runs"),
    command: Annotated[str | None, typer.Option("--command", help=(
        "Only runs of this command: train, search, lrrange, gradcheck, evaluate, compare."))
    ] = None,
    status: Annotated[str | None, typer.Option("--status", help=(
        "Only runs with this status: completed, running, interrupted, failed, diverged, "
        "unreadable."))] = None,
    name: Annotated[str | None, typer.Option("--name", metavar="GLOB", help=(
        "Only runs whose directory name matches GLOB, e.g. '*-train-best*'."))] = None,
    sort: Annotated[str, typer.Option("--sort", help=(
        "name, when, wall, val, test or tta (the last four highest first)."))] = "name",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as a JSON list.")
                       ] = False,  # fmt: skip
):
    """List the run directories under ROOT: status, start, wall time, overrides, accuracies.

    Overrides are the keys where a run's config.yaml differs from the config file it was started from (its --set and --seed); a --repeat run shows mean +- std, a search its best trial.

    Example:

        cifar2l runs

        cifar2l runs runs --command train --sort test

        cifar2l runs --status interrupted --json
    """  # noqa: E501
    from . import catalog

    def work():
        rows = catalog.list_runs(root, command, status, name, sort)
        if as_json:
            sys.stdout.write(json.dumps(rows, default=str) + "\n")
        else:
            title = f"{len(rows)} run{'s' * (len(rows) != 1)} in {root}"
            console.show(catalog.table(rows, title), whole=True)
        return {}

    _execute(work, as_json, False)  # --json: the rows, printed above, are all of stdout


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Two or more run directories (train, --repeat, search, ... any command).",
        show_default=False)],
    metric: Annotated[list[str] | None, typer.Option("--metric", metavar="M", help=(
        "Metrics CSV column to plot (repeatable): val_accuracy, train_accuracy, val_cost, "
        "train_cost, val_loss, train_loss, lr. Default: the accuracies and costs."))] = None,
    out: OutOpt = Path("runs"),
    name: Annotated[str | None, typer.Option("--name", help=(
        "Name of the compare directory (default: <N>-runs)."))] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Show runs side by side: config differences, final metrics, overlaid curves.

    Writes curves.png (one colour per run; a --repeat run as its mean with a +-1 std band, a search as its best trial) and a self-contained compare.html into a fresh run directory.

    Example:

        cifar2l compare runs/*-train-default runs/*-train-cycles3

        cifar2l compare runs/*-train-best runs/search-zca2 --metric val_loss
    """  # noqa: E501
    from .compare import run_compare

    _execute(lambda: run_compare(run_dirs, metric, out, name), quiet, as_json)


@app.command("config")
def config_(
    config: Annotated[str | None, typer.Argument(metavar="CONFIG", help=(
        "Experiment YAML file, or a shipped config's name (`cifar2l config --list`)."),
        show_default=False)] = None,
    defaults: Annotated[bool, typer.Option("--defaults", help=(
        "Print every knob with its default and its meaning (as configs/base.yaml)."))] = False,
    list_: Annotated[bool, typer.Option("--list", help=(
        "Name the shipped configs (a bare name works in every command)."))] = False,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
):
    """Print CONFIG resolved (extends:, --set, --seed applied) and validate it; train nothing.

    Exit 2 with one line naming the file and key when it is invalid.

    Example:

        cifar2l config configs/default.yaml --set optim.lambda=0.005

        cifar2l config best --json

        cifar2l config --defaults

        cifar2l config --list
    """
    _execute(lambda: _config(config, defaults, list_, set_, seed, as_json), False, as_json)


def _config(config, defaults, list_, set_, seed, as_json):
    """The `config` command's work: one of CONFIG, --defaults, --list; returns its JSON."""
    from .errors import ConfigError

    if (config is not None) + defaults + list_ != 1:
        raise ConfigError("config: give one of CONFIG, --defaults or --list")
    if config is None and (set_ or seed is not None):
        raise ConfigError("config: --set and --seed apply to a CONFIG")
    if list_:
        return _config_list()
    if defaults:
        from dataclasses import asdict

        from .knobs import defaults_yaml, knobs

        _print(defaults_yaml(), as_json)
        return {"knobs": [asdict(k) for k in knobs()]}
    cfg, text = _load(Path(config), set_, seed)
    _print(text, as_json)
    return cfg.to_dict()


def _print(text: str, as_json: bool) -> None:
    if not as_json:  # plain text: YAML's [a, b] is no rich markup
        sys.stdout.write(text)


def _config_list() -> dict:
    from .shipped import configs_dir, listing

    rows = listing()
    console.table(f"Shipped configs ({configs_dir()}): cifar2l train NAME",
                  ["name", "about"], [[r["name"], r["about"]] for r in rows],
                  text=("about",))  # fmt: skip
    return {"configs": rows}


_GRID_NEEDS_CONFIG = ("--grid needs a CONFIG: cifar2l search CONFIG --grid KEY=V1,V2,... (to "
                      "continue a grid search: cifar2l search --resume RUN_DIR, or CONFIG with "
                      "the same --grid and --resume RUN_DIR)")


def main() -> None:
    """The console entry point (`cifar2l`, `python -m cifar2l`): the command, then a fast exit."""
    try:
        app()
        code = 0
    except SystemExit as e:
        code = e.code
    leave(code)


def leave(code) -> None:
    """Exit with SystemExit's `code` without tearing the interpreter down: with numba, llvmlite
    and matplotlib loaded, the teardown took 0.35 s of every command (2 cores), after the last
    file of the run was written and closed. Only what is still buffered needs saving."""
    if code is None:
        rc = 0
    elif isinstance(code, int):
        rc = code
    else:  # SystemExit("message"): Python prints it and exits 1
        print(code, file=sys.stderr)
        rc = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`cifar2l runs | head`) or stream
            pass
    os._exit(rc)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Finished run directories whose configs carry an expected: block.",
        show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Where REPORT.md, report.html and the "
                                                    "figures go.")] = Path("report"),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Compare runs with the study: REPORT.md and a self-contained report.html.

    Ours is the mean +- std over each run's seeds; a row is ok when |mean - study| <= max(tolerance, 2 std).

    A run that differs from its item's shipped config is shown as modified and not counted.

    Runs of other commands are skipped with a note. `make report` runs what is missing first.

    Example:

        cifar2l report runs/*-train-default runs/*-train-cycles3 --out report
    """  # noqa: E501
    from .report import run_report

    _execute(lambda: run_report(run_dirs, out), quiet, as_json)
