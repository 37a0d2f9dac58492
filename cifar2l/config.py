"""Experiment configuration: YAML files with `extends:`, `--set` overrides, pydantic validation.

Every knob lives in one validated tree. Unknown keys, wrong types and inconsistent values fail at
load time with `<file>: <dotted.key>: <what is wrong>`, before anything is written.
"""

from __future__ import annotations

import difflib
import math
import re
import types
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from . import untrusted
from .errors import ConfigError, brief, clip

BATCH_NAMES = [f"data_batch_{k}" for k in range(1, 6)]


class _Section(BaseModel):
    # strict: YAML already types values, so "10" for an int is a mistake, not a conversion.
    # allow_inf_nan=False: `1e400` (inf) or `.nan` would only surface later as a diverged run.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True,
                              allow_inf_nan=False)  # fmt: skip


class DataConfig(_Section):
    root: str | None = Field(None, description=(
        "dataset dir or archive; the CIFAR2L_DATA env var takes precedence"))
    train: list[str] | Literal["all"] = Field(["data_batch_1"], description=(
        "training batches (data_batch_1..5), or `all`"))
    val: list[str] | None = Field(["data_batch_2"], description=(
        "validation batches, or null to hold out val_size images"))
    test: Literal["test_batch"] | None = Field("test_batch", description=(
        "test_batch, or null for no test split"))
    val_size: int | None = Field(None, ge=1, description=(
        "images held out of train for validation (with val: null)"))
    standardize: Literal["per_feature", "per_channel"] = Field("per_feature", description=(
        "per_feature (mean/std per input) | per_channel (per colour plane)"))
    zca_eps: float | None = Field(None, gt=0, description=(
        "ZCA-whiten the standardised inputs with this epsilon; null: off"))

    @field_validator("train", "val")
    @classmethod
    def _known_batches(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("must name at least one batch")
            bad = [b for b in v if b not in BATCH_NAMES]
            if bad:
                raise ValueError(f"unknown batch {brief(bad[0])}; allowed: "
                                 f"{', '.join(BATCH_NAMES)} (test_batch only as data.test)")
            twice = [b for b, n in Counter(v).items() if n > 1]
            if twice:  # its images would be trained twice, or leak into a val_size split
                raise ValueError(f"{twice[0]} is listed twice: an image belongs to one split, "
                                 "once")  # fmt: skip
        return v

    @model_validator(mode="after")
    def _one_validation_source(self):
        if self.val is not None and self.val_size is not None:
            raise ValueError("set either data.val (batch names) or data.val_size, not both")
        if self.val is None and self.val_size is None:
            raise ValueError("a validation split is needed: set data.val or data.val_size")
        if self.val is not None:
            train = BATCH_NAMES if self.train == "all" else self.train
            overlap = sorted(set(train) & set(self.val))
            if overlap:
                raise ValueError(f"batch {overlap[0]} is in both data.train and data.val")
        return self


class ModelConfig(_Section):
    hidden: int = Field(50, ge=1, description="hidden ReLU units (m); input d = 3072, 10 classes")
    dropout: float = Field(0.0, ge=0, lt=1, description=(
        "drop probability of a hidden unit in training (0: off)"))


class OptimConfig(_Section):
    lambda_: float = Field(0.01, alias="lambda", ge=0, description=(
        "L2: cost = loss + lambda * (||W1||^2 + ||W2||^2), biases free"))
    momentum: float = Field(0.0, ge=0, lt=1, description=(
        "gamma: delta_w = eta * grad + gamma * delta_w_prev (0: off)"))
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = Field(0.0, ge=0, description=(
        "decoupled: W -= eta_t * weight_decay * W per update (0: off)"))
    label_smoothing: float = Field(0.0, ge=0, lt=1, description=(
        "training target 1 - e on the label, e / 10 on every class (0: off)"))

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: true needs momentum > 0")
        return self


class NoiseConfig(_Section):
    fraction: float = Field(0.0, ge=0, le=1, description=(
        "share of each batch's rows that get Gaussian noise (0: off)"))
    std: float = Field(0.01, ge=0, description=(
        "std of that noise, in standardised input units"))


class AugmentConfig(_Section):
    flip: bool = Field(False, description="mirror each training image left-right, p = 1/2")
    translate: int = Field(0, ge=0, le=16, description=(
        "random shift of up to this many pixels each way (0: off)"))
    pad: Literal["reflect", "zero"] = Field("reflect", description=(
        "reflect | zero: what fills the border a shift uncovers"))
    brightness: float = Field(0.0, ge=0, description=(
        "offset uniform in [-b, b] per image, standardised units (0: off)"))
    contrast: float = Field(0.0, ge=0, lt=1, description=(
        "deviation from the image mean scaled by U[1 - c, 1 + c] (0: off)"))
    noise: NoiseConfig = Field(NoiseConfig(), description="Gaussian input noise")


class ScheduleConfig(_Section):
    kind: Literal["cyclical", "constant", "one_cycle"] = Field("cyclical", description=(
        "cyclical (triangular, Smith 2015) | constant | one_cycle"))
    eta_min: float = Field(1e-5, gt=0, description=(
        "learning rate at the bottom of a cycle (cyclical, one_cycle)"))
    eta_max: float = Field(1e-1, gt=0, description=(
        "learning rate at the top of a cycle (cyclical, one_cycle)"))
    n_s: int = Field(500, ge=1, description=(
        "cyclical: updates per half cycle (a cycle = 2 * n_s updates)"))
    cycles: int = Field(1, ge=1, description=(
        "cyclical: 2 * n_s * cycles updates; one_cycle: cycles in steps"))
    eta: float = Field(1e-2, gt=0, description="constant: the learning rate")
    steps: int = Field(1000, ge=1, description=(
        "constant, one_cycle: updates in all"))
    warmup: float = Field(0.3, ge=0, le=1, description=(
        "one_cycle: fraction of each cycle warming up linearly to eta_max"))

    @model_validator(mode="after")
    def _ordered(self):
        if self.kind == "one_cycle" and self.steps % self.cycles:
            raise ValueError(f"steps ({self.steps}) must be a multiple of cycles ({self.cycles})")
        if self.kind != "constant" and self.eta_min > self.eta_max:
            raise ValueError(f"eta_min ({self.eta_min}) must not exceed eta_max ({self.eta_max})")
        return self


class AverageConfig(_Section):
    """Weight averaging (average.py): a running average of the weights over the end of training,
    kept beside the raw weights (weights-avg.npz) and scored separately."""

    kind: Literal["ema", "swa"] = Field("ema", description=(
        "ema (moving average) | swa (uniform mean of the samples)"))
    start: float = Field(0.75, ge=0, lt=1, description=(
        "fraction of the updates done before averaging starts"))
    every: int = Field(10, ge=1, description="updates between two samples of the weights")
    decay: float = Field(0.99, gt=0, lt=1, description=(
        "ema: the old average's weight at each sample"))


class TrainConfig(_Section):
    batch_size: int = Field(100, ge=1, description="images per update")
    shuffle: bool = Field(True, description="reshuffle the training rows at every epoch")
    log_every: int | None = Field(None, ge=1, description=(
        "updates between metric rows; null: 10 rows per cycle"))
    checkpoint_every: int | None = Field(None, ge=1, description=(
        "updates between checkpoints; null: at cycle ends and on a signal"))
    snapshots: list[int] | Literal["cycles"] | None = Field(None, description=(
        "snapshot ensemble: weights kept at these steps, or `cycles`; null: off"))
    average: AverageConfig | None = Field(None, description=(
        "weight averaging (weights-avg.npz), scored apart; null: off"))

    @field_validator("snapshots")
    @classmethod
    def _positive_steps(cls, v):
        if isinstance(v, list) and (not v or min(v) < 1):
            raise ValueError("must be 'cycles' or a non-empty list of update steps >= 1")
        return sorted(set(v)) if isinstance(v, list) else v


MAX_METRIC_ROWS = 10_000_000  # metrics.csv rows of one run: far past any real schedule


class GradcheckConfig(_Section):
    """The gradient check (cifar2l/gradcheck.py; configs/gradcheck.yaml documents each knob).

    The verdict compares the floored relative error |ga - gn| / max(|ga| + |gn|, noise /
    resolution) with the tolerances: the relative error wherever the centred difference
    resolves the gradient to `resolution`, so correct code sits near `resolution` (1e-8) on any
    machine, 100x under the 1e-6 tolerance; entries at ReLU kinks are skipped.
    """

    dims: int = Field(20, ge=1, description="reduced problem: the first input features used")
    samples: int = Field(2, ge=1, description="reduced problem: the first training images used")
    hidden: int = Field(50, ge=1, description="hidden units of the reduced network")
    lambdas: list[NonNegativeFloat] = Field([0.0, 0.01], min_length=1, description=(
        "the check runs once per L2 weight (as optim.lambda)"))
    h: float = Field(1e-5, gt=0, description=(
        "centred-difference step (parameter units); probes use h and 2h"))
    tolerance: float = Field(1e-6, gt=0, description=(
        "max floored relative error (dimensionless), reduced problem"))
    resolution: float = Field(1e-8, gt=0, lt=1, description=(
        "relative accuracy (dimensionless) a resolved gradient needs"))
    full_size_samples: int = Field(10, ge=1, description="full-size network: images used")
    full_size_coords: int = Field(40, ge=1, description=(
        "full-size network: random entries checked per parameter"))
    full_size_tolerance: float = Field(1e-6, gt=0, description=(
        "max floored relative error (dimensionless), full-size network"))
    dropout: float = Field(0.5, ge=0, lt=1, description=(
        "drop probability of the dropout check (one fixed mask)"))


class Distribution(_Section):
    """One of: log_uniform [lo, hi], uniform [lo, hi], int_uniform [lo, hi], choice [a, b, ...]
    (drawn at random), or grid [a, b, ...] (every value, a grid axis: search/grid.py)."""

    log_uniform: list[float] | None = Field(None, description="[lo, hi]: uniform in log space")
    uniform: list[float] | None = Field(None, description="[lo, hi]: uniform")
    int_uniform: list[int] | None = Field(None, description="[lo, hi]: integers, inclusive")
    choice: list[Any] | None = Field(None, description="[a, b, ...]: one of the values")
    grid: list[Any] | None = Field(None, description="[a, b, ...]: every value (a grid axis)")

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)}")
        kind, args = given[0], getattr(self, given[0])
        if kind in ("choice", "grid"):
            if not args:
                raise ValueError(f"{kind}: needs at least one value")
            if kind == "grid" and len({repr(a) for a in args}) < len(args):
                raise ValueError(f"grid: a value is given twice in {brief(args)}")
        elif len(args) != 2 or args[0] > args[1]:
            raise ValueError(f"{kind}: expected [low, high] with low <= high, got {brief(args)}")
        elif not all(math.isfinite(a) for a in args):
            raise ValueError(f"{kind}: bounds must be finite numbers, got {args}")
        elif kind == "log_uniform" and args[0] <= 0:
            raise ValueError(f"log_uniform: bounds must be > 0, got {args}")
        elif kind == "int_uniform" and not -(2**63) <= args[0] <= args[1] < 2**63:
            raise ValueError(f"int_uniform: bounds must be 64-bit integers, got {brief(args)}")
        return self

    @model_serializer
    def _only_the_given(self) -> dict:
        return {self.kind: self.args}

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def args(self) -> list:
        return getattr(self, self.kind)


DISTRIBUTIONS = ("log_uniform", "uniform", "int_uniform", "choice", "grid")


class SearchConfig(_Section):
    trials: int = Field(16, ge=1, description="trials to sample")
    seed: int = Field(0, ge=0, description=(  # numpy seeds are non-negative
        "seed of the sampled values and of each trial's init_seed"))
    metric: Literal["val_accuracy", "best_val_accuracy", "ensemble_val_accuracy",
                    "tta_val_accuracy", "average_val_accuracy"] = Field(
        "val_accuracy", description=(
            "what ranks trials: val_accuracy (final) | best_val_accuracy | "
            "ensemble_, tta_, average_val_accuracy"))
    space: dict[str, Distribution] = Field({}, description=(
        "dotted key -> log_uniform | uniform | int_uniform | choice [...], "
        "e.g. {optim.lambda: {log_uniform: [1.0e-5, 0.1]}}"))
    refine_from: str | None = Field(None, description=(
        "search dir whose best trials narrow the ranges (--refine)"))
    refine_top: int = Field(2, ge=1, description="best trials a refined range spans")
    top_k: int = Field(4, ge=1, description="rows of the printed top table")
    fuse: Literal["auto", "off"] = Field("auto", description=(
        "auto: fusable trials train as one wide network | off"))
    fuse_max: int = Field(16, ge=1, description="most trials in one fused group (memory)")

    @field_validator("fuse", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        # YAML 1.1 reads a bare `off` as false (and `on` as true).
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("space", mode="before")
    @classmethod
    def _plain_list_is_grid(cls, space):
        # `optim.lambda: [0.001, 0.01]` is short for `optim.lambda: {grid: [0.001, 0.01]}`
        if not isinstance(space, dict):
            return space
        return {k: {"grid": v} if isinstance(v, list) else v for k, v in space.items()}

    @field_validator("space")
    @classmethod
    def _known_keys(cls, space):
        for key in space:
            if key == "init_seed":  # trial_raw sets it per trial: a searched value would be lost
                raise ValueError("'init_seed' is drawn per trial from search.seed; "
                                 "it cannot be searched")  # fmt: skip
            if not _is_leaf(key.split(".")):
                raise ValueError(f"{brief(key)} is not a config key (e.g. optim.lambda, "
                                 "model.hidden)")  # fmt: skip
        return space


def is_config_key(key: str) -> bool:
    """Whether a dotted key names one value of the config (what search.space may search)."""
    return _is_leaf(key.split("."))


def _is_leaf(parts: list[str]) -> bool:
    if parts[0] in ("search", "extends", "expected"):
        return False
    model: Any = Config
    for part in parts:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False  # a key below a leaf, e.g. model.hidden.x
        names = {f.alias or n: f for n, f in model.model_fields.items()}
        if part not in names:
            return False
        model = names[part].annotation
    return not (isinstance(model, type) and issubclass(model, BaseModel))


TTA_VIEWS = ("flip", "shift")


class EvaluateConfig(_Section):
    """Test-time augmentation (tta.py): the softmax outputs averaged over views of each image."""

    tta: list[Literal["flip", "shift"]] = Field([], description=(
        "test-time augmentation: flip (+ mirror), shift (+ 1-pixel shifts)"))

    @field_validator("tta")
    @classmethod
    def _once_each(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"a view is listed twice: {v}; allowed: {', '.join(TTA_VIEWS)}")
        return v


class LRRangeConfig(_Section):
    lr_min: float = Field(1e-5, gt=0, description="learning rate at the first update")
    lr_max: float = Field(1.0, gt=0, description="learning rate at the last update")
    epochs: int = Field(8, ge=1, description="length of the sweep in epochs (unless steps)")
    steps: int | None = Field(None, ge=2, description=(
        "length of the sweep in updates; null: epochs"))
    mode: Literal["linear", "exponential"] = Field("exponential", description=(
        "exponential (geometric rise) | linear"))
    eval_every: int = Field(36, ge=1, description="updates between evaluations")
    stop_factor: float = Field(4.0, gt=1, description=(
        "stop when the train loss exceeds this multiple of its minimum"))
    smooth: int = Field(5, ge=1, description=(
        "odd moving-average window (evaluation points) for the suggestion"))
    train_eval_rows: int = Field(5000, ge=1, description=(
        "training rows evaluated at each point (a fixed subset)"))

    @model_validator(mode="after")
    def _ordered(self):
        if self.smooth % 2 == 0:
            raise ValueError(f"smooth ({self.smooth}) must be odd: the window is centred")
        if self.lr_min >= self.lr_max:
            raise ValueError(f"lr_min ({self.lr_min}) must be below lr_max ({self.lr_max})")
        return self


Split = Literal["train", "val", "test"]


class ExpectedConfig(_Section):
    """The study's numbers for the item a config reproduces (read by `cifar2l report` only)."""

    item: str = Field(description='the item\'s label, e.g. "Table 2: n_s=500, 1 cycle"')
    source: str = Field("", description="where the study's numbers come from")
    accuracy: dict[Split, float] = Field({}, description=(
        "the study's accuracies, e.g. {train: 0.62, val: 0.46, test: 0.46}"))
    minimum: dict[Split, float] = Field({}, description=(
        "accuracies ours must reach (no study number)"))
    ensemble_minimum: dict[Split, float] = Field({}, description=(
        "the same for the snapshot ensemble"))
    tta_minimum: dict[Split, float] = Field({}, description=(
        "the same with test-time augmentation"))
    top: list[list[float]] = Field([], description=(
        "search: [lambda, val accuracy] pairs, best first"))
    eta_min: float | None = Field(None, gt=0, description="LR range test: the study's eta_min")
    eta_max: float | None = Field(None, gt=0, description="LR range test: the study's eta_max")
    max_rel_error: float | None = Field(None, gt=0, description=(
        "gradient check: the study's bound on the floored relative error"))
    tolerance: float = Field(0.015, gt=0, description=(
        "absolute accuracy difference allowed (accuracy units)"))
    lr_factor: float = Field(3.0, gt=1, description="LR picks: allowed ratio either way")
    seeds: int = Field(1, ge=1, description="initialisation seeds `make report` trains")
    note: str = Field("", description="why a row misses its expected value")

    @field_validator("top")
    @classmethod
    def _pairs(cls, v):
        if any(len(p) != 2 for p in v):
            raise ValueError("each entry must be [lambda, val_accuracy]")
        return v


class Config(_Section):
    seed: int = Field(42, ge=0, description=(  # numpy seeds are non-negative
        "master seed: init, shuffles and hold-out splits derive from it"))
    init_seed: int | None = Field(None, ge=0, description=(
        "seed of the weight initialisation alone; null: derived from seed"))
    dtype: Literal["float32", "float64"] = Field("float32", description=(
        "float32 | float64: precision of data, weights and arithmetic"))
    data: DataConfig = Field(DataConfig(), description="the CIFAR-10 splits")
    model: ModelConfig = Field(ModelConfig(), description="the two-layer network")
    optim: OptimConfig = Field(OptimConfig(), description="regularisation and momentum")
    augment: AugmentConfig = Field(AugmentConfig(), description=(
        "training-batch augmentation, on the fly (all off by default)"))
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="the learning rate")
    train: TrainConfig = Field(TrainConfig(), description="the training loop")
    gradcheck: GradcheckConfig = Field(GradcheckConfig(), description=(
        "`cifar2l gradcheck` (configs/gradcheck.yaml explains it)"))
    search: SearchConfig = Field(SearchConfig(), description="`cifar2l search`")
    lrrange: LRRangeConfig = Field(LRRangeConfig(), description="`cifar2l lrrange`")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="scoring")
    expected: ExpectedConfig | None = Field(None, description=(
        "the study's numbers, for `cifar2l report` only; null: none"))

    @model_validator(mode="after")
    def _snapshots_in_run(self):
        from .schedule import total_steps

        snaps, total = self.train.snapshots, total_steps(self.schedule)
        if snaps == "cycles" and self.schedule.kind == "constant":
            raise ValueError("train.snapshots: 'cycles' needs a cyclical or one_cycle schedule")
        if isinstance(snaps, list) and snaps[-1] > total:
            raise ValueError(f"train.snapshots: step {snaps[-1]} is after the last update "
                             f"({total})")  # fmt: skip
        if self.search.metric == "ensemble_val_accuracy" and not snaps:
            raise ValueError("search.metric: ensemble_val_accuracy needs train.snapshots")
        if self.search.metric == "tta_val_accuracy" and not self.evaluate.tta:
            raise ValueError("search.metric: tta_val_accuracy needs evaluate.tta (e.g. [flip])")
        if self.search.metric == "average_val_accuracy" and self.train.average is None:
            raise ValueError("search.metric: average_val_accuracy needs train.average")
        self._average_samples(total)
        self._metric_rows_bounded(total)
        return self

    def _average_samples(self, total: int) -> None:
        avg = self.train.average
        if avg is not None and int(avg.start * total) + avg.every > total:
            raise ValueError(f"train.average: no sample of the weights: start {avg.start} of "
                             f"{total} updates leaves fewer than every ({avg.every}) after it")

    def _metric_rows_bounded(self, total: int) -> None:
        """An extra zero or two in n_s (or cycles) beside a small log_every asked for more
        metric rows than memory holds: the run was killed (or raised MemoryError) at its start
        with its status left `running`."""
        from .schedule import default_log_every

        rows = total // (self.train.log_every or default_log_every(self.schedule)) + 1
        if rows > MAX_METRIC_ROWS:
            every = self.train.log_every or "default"
            raise ValueError(f"schedule: {total} updates with train.log_every {every} make "
                             f"{rows} metric rows (at most {MAX_METRIC_ROWS}): shorten the "
                             "schedule or log less often")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


# ---------------------------------------------------------------- YAML loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` as a float (YAML 1.1 wants `1.0e-5`)."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _mapping_without_duplicates(loader, node, deep=False):
    # PyYAML keeps the last of two equal keys: a second `data:` block would silently drop the
    # first one's settings. Refuse instead (merge keys `<<` are YAML's own override and pass).
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str | int | float | bool):
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {brief(key)}",
                                                        key_node.start_mark)  # fmt: skip
            seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)

MAX_ALIAS_NODES = 10_000  # nodes aliases may add: a block reused is dozens, a YAML bomb billions


class _SelfAlias(Exception):
    """An alias inside the node its anchor names: a structure that contains itself."""

    def __init__(self, node):
        super().__init__()
        self.node = node


def expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(distinct nodes, nodes once every alias is expanded) of a composed YAML document.

    An alias is the same node object as its anchor, so the expansion is counted without being
    built: each distinct node once, memoised. Raises _SelfAlias on a node that contains itself.
    """
    sizes: dict[int, int] = {}
    inside: set[int] = set()

    def size(node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in inside:
            raise _SelfAlias(node)
        inside.add(id(node))
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
            else [])  # fmt: skip
        sizes[id(node)] = 1 + sum(size(child) for child in children)
        inside.discard(id(node))
        return sizes[id(node)]

    total = size(root)
    return len(sizes), total


def _check_aliases(root: yaml.Node, source: str) -> None:
    try:
        distinct, total = expanded_size(root)
    except _SelfAlias as e:
        mark = e.node.start_mark
        raise ConfigError(f"{source}: invalid YAML (line {mark.line + 1}, column "
                          f"{mark.column + 1}): an alias refers to the node that contains it "
                          "(a structure that contains itself)") from None  # fmt: skip
    if total - distinct > MAX_ALIAS_NODES:
        raise ConfigError(f"{source}: invalid YAML: aliases expand {distinct} nodes to {total} "
                          f"(at most {MAX_ALIAS_NODES} more are allowed): an alias bomb?")


def parse_yaml(text: str, source: str) -> Any:
    """One YAML document, read safely: no Python tags, no duplicate keys, bounded aliases."""
    try:
        return _load_bounded(text, source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {clip(problem, 200)}") from None
    except RecursionError:  # PyYAML composes recursively: thousands of nested [ or {
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None


def _load_bounded(text: str, source: str) -> Any:
    loader = _Loader(text)  # checks the characters first (a NUL byte is a ReaderError)
    try:
        node = loader.get_single_node()  # composed only: aliases are still shared nodes here
        if node is None:
            return None
        _check_aliases(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    """The file's text (UTF-8). A FIFO would block, /dev/zero never end, a huge file fill
    memory: untrusted.read_limited reads only a regular file, and at most 1 MiB of it."""
    blob = untrusted.read_limited(path, untrusted.MAX_CONFIG_BYTES, ConfigError, "config file")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read config file (not UTF-8: byte {e.start} is "
                          f"{blob[e.start:e.start + 1]!r})") from None  # fmt: skip


def _read_yaml_file(path: Path) -> dict[str, Any]:
    doc = parse_yaml(_read_text(path), str(path))
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {_kind(doc)}")
    return doc


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving `extends:` (a file or a list, relative to the file)."""
    path = Path(path)
    try:
        real = path.resolve()
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
        raise ConfigError(f"{path}: cannot read config file (a symlink loop)") from None
    if real in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, real))
        raise ConfigError(f"{path}: extends: cycle ({cycle})")
    doc = _read_yaml_file(path)
    parents = doc.pop("extends", None)
    if parents is None:
        return doc
    if isinstance(parents, str):
        parents = [parents]
    if not (isinstance(parents, list) and parents and all(isinstance(p, str) for p in parents)):
        raise ConfigError(f"{path}: extends: must be a file name or a list of file names")
    merged: dict = {}
    for parent in parents:  # later parents override earlier ones; the file itself wins
        parent_path = path.parent / parent
        if not parent_path.is_file():
            raise ConfigError(f"{path}: extends: parent config {parent_path} not found")
        merged = deep_merge(merged, load_raw(parent_path, (*_chain, real)))
    if "expected" in doc:  # a config's study numbers are its own: never merged with a parent's
        merged.pop("expected", None)
    return deep_merge(merged, doc)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value typed as YAML); a key of search.space is a
    dotted config key itself: `search.space.optim.lambda=...` -> (["search", "space",
    "optim.lambda"], ...)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set {brief(text)}: expected dotted.key=value, e.g. "
                          "optim.lambda=0.01")  # fmt: skip
    return _space_key(parts), parse_yaml(value, f"--set {clip(key, 80)}") if value.strip() else None


def _space_key(parts: list[str]) -> list[str]:
    if parts[:2] != ["search", "space"] or len(parts) < 4:
        return parts
    for end in range(len(parts), 3, -1):  # the longest config key: optim.lambda, then .uniform
        if _is_leaf(parts[2:end]):
            return [*parts[:2], ".".join(parts[2:end]), *parts[end:]]
    return [*parts[:2], ".".join(parts[2:])]  # not a config key: search.space says so


def set_dotted(raw: dict, parts: list[str], value: Any, what: str) -> dict:
    """A copy of `raw` with raw[p0][p1]...[pn] = value, creating missing sections."""
    out = dict(raw)
    node = out
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{what}: {clip('.'.join(parts[: i + 1]), 80)} is not a section")
        node[part] = dict(child)
        node = node[part]
    node[parts[-1]] = value
    return out


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        raw = set_dotted(raw, parts, value, f"--set {brief(text)}")
    return raw


def validate(raw: dict, source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e.errors()[0], raw)}") from None


def _describe(err: dict, raw: dict) -> str:
    loc = [clip(part, 80) for part in _error_keys(err["loc"], raw)]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden" and loc:
        return f"{key}: unknown key{_unknown_key_hint(loc)}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("missing",):
        return f"{key}: required"
    if "input" in err and err["type"] != "value_error":
        return f"{key}: {msg} (got {brief(err['input'])})"
    return f"{key}: {msg}"


def _unknown_key_hint(loc: list[str]) -> str:
    """A did-you-mean, or how to nest a dotted key, then the allowed keys."""
    allowed = _allowed_keys(loc[:-1])
    parts = [*loc[:-1], *loc[-1].split(".")]
    if "." in loc[-1] and _is_leaf(parts):  # `optim.lambda: 0.1` in a file
        head, *rest = loc[-1].split(".")
        nested = "".join(f"{k}: {{" for k in rest[:-1])
        hint = f"; write it nested, as {head}: {{{nested}{rest[-1]}: ...{'}' * len(rest)}"
    else:
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (allowed: {', '.join(allowed)})"


def _error_keys(loc: tuple, raw: Any) -> list[str]:
    """The keys of an error location, without the union members pydantic inserts.

    A part that is a key of the document at that point is a key even when it looks like a tag
    (a user's `int:` or `a[b]:`), so it is kept.
    """
    keys, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        elif _is_union_tag(part):
            continue
        else:
            node = None
        keys.append(str(part))
    return keys


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member it tried ("list[str]", "literal['all']") into the location.
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


def _allowed_keys(section: list[str]) -> list[str]:
    model: Any = Config
    for part in section:
        if get_origin(model) is dict:  # part is a key of search.space: its value's model
            model = get_args(model)[1]
        else:
            model = model.model_fields[part].annotation
        if get_origin(model) in (Union, types.UnionType):  # Optional section: its model
            model = next(a for a in get_args(model) if isinstance(a, type)
                         and issubclass(a, BaseModel))  # fmt: skip
    return [f.alias or name for name, f in model.model_fields.items()]


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, extend, override and validate a config file. Raises ConfigError."""
    raw = apply_overrides(load_raw(Path(path)), overrides or [])
    return validate(raw, str(path))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
