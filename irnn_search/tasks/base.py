"""What every benchmark task provides to the training loop.

A task owns its data, its loss and its metrics; models only map inputs to outputs. Every
training batch is a pure function of ``(seed, step)``, so the data position of a run is just its
step counter: a checkpoint needs no data-loader state, and a resumed run sees exactly the batches
an uninterrupted run would have seen.

Tensors are time-major: inputs are ``(T, B, input_size)`` floats, or ``(T, B)`` token ids when the
task has a vocabulary.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch

Split = Literal["val", "test"]
Direction = Literal["minimize", "maximize"]
_MASK64 = (1 << 64) - 1
#: which way is better for a metric name whatever the task reports it (a task's own primary metric
#: goes by its ``direction``)
METRIC_DIRECTIONS: dict[str, Direction] = {
    "loss": "minimize",
    "mse": "minimize",
    "bpc": "minimize",
    "accuracy": "maximize",
}


class TaskError(ValueError):
    """A task was asked for something it cannot do (bad option, missing or corrupt data)."""


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (stable across runs, platforms and Python versions).

    Used so that e.g. batch 7 of seed 0 and batch 0 of seed 7 get unrelated random streams.
    """
    h = 0x2545F4914F6CDD1D
    for p in parts:
        h = _splitmix64(h ^ (p & _MASK64))
    return h >> 1


def generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``derive_seed(*parts)``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


# Stream ids keep the random streams of the splits apart for the same user seed.
STREAM_TRAIN, STREAM_VAL, STREAM_TEST = 1, 2, 3


def eval_chunks(split: Split, *, val_size: int, test_size: int, chunk: int) -> Iterator[tuple[int, torch.Generator]]:
    """Size and generator of each evaluation batch of a generated task. The sets do not depend on
    the training seed, so every trial is scored on the same data."""
    size = val_size if split == "val" else test_size
    stream = STREAM_VAL if split == "val" else STREAM_TEST
    for i, start in enumerate(range(0, size, chunk)):
        yield min(chunk, size - start), generator(0, stream, i)


@dataclass(frozen=True)
class Batch:
    """One batch. ``reset`` tells a state-carrying task's loop to start from a zero state."""

    x: torch.Tensor
    y: torch.Tensor
    reset: bool = True


@dataclass(frozen=True)
class TaskConfig:
    """Base of the per-task option dataclasses (one field per option, with its default)."""

    @classmethod
    def option_help(cls) -> dict[str, str]:
        """Field name -> help text, taken from each field's ``metadata['help']``."""
        return {f.name: str(f.metadata.get("help", "")) for f in fields(cls)}


@dataclass(frozen=True)
class Threshold:
    """When a model counts as having solved a task: its validation ``metric`` is below ``value``
    (the metrics with a threshold are all minimized). ``rule`` says it in words, with why."""

    metric: str
    value: float
    rule: str


class Task(abc.ABC):
    """A benchmark: its data, loss, metrics and memoryless baseline.

    Subclasses set the class attributes and implement the abstract methods.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    config_cls: ClassVar[type[TaskConfig]]
    #: primary validation metric used for model selection, and its direction
    metric: ClassVar[str]
    direction: ClassVar[Direction]
    #: the validation metrics ``summarize`` reports (without the ``val_`` prefix, ``loss`` included);
    #: a spec may name each as its objective. None: ``loss`` and ``metric`` (see ``reported_metrics``;
    #: which way each is better: ``metric_direction``)
    metrics: ClassVar[tuple[str, ...] | None] = None
    #: batch size the literature uses for this task
    default_batch_size: ClassVar[int]
    #: the option that says the task's size (``T``, ``bptt``), where the literature publishes settings
    #: per size; a warm start prefers the settings published for the spec's size. None: no such option
    size_option: ClassVar[str | None] = None
    #: a smoke task: the real task it shrinks. It starts from that task's published settings but never
    #: borrows its published numbers (a smoke score is not comparable with them). None: not a smoke task
    smoke_of: ClassVar[str | None] = None
    #: "last": the loss only looks at the final step; "all": at every step
    readout: ClassVar[Literal["last", "all"]] = "last"
    #: carry the hidden state across consecutive training batches (truncated BPTT)
    carry_state: ClassVar[bool] = False

    @classmethod
    def reported_metrics(cls) -> tuple[str, ...]:
        """The validation metrics this task reports: ``metrics``, else ``loss`` and ``metric``."""
        return tuple(cls.metrics) if cls.metrics is not None else ("loss", cls.metric)

    @classmethod
    def metric_direction(cls, metric: str) -> Direction | None:
        """Which way ``metric`` (without ``val_``) is better: a common name by ``METRIC_DIRECTIONS``,
        the primary metric by ``direction``; None when neither says (a spec must then state it)."""
        if metric in METRIC_DIRECTIONS:
            return METRIC_DIRECTIONS[metric]
        return cls.direction if metric == cls.metric else None

    def __init__(self, config: TaskConfig, *, seed: int = 0, batch_size: int | None = None):
        self.config = config
        self.seed = seed
        self.batch_size = batch_size or self.default_batch_size
        if self.batch_size < 1:
            raise TaskError(f"batch size must be >= 1, got {self.batch_size}")

    # -- shapes --------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def input_size(self) -> int:
        """Features per time step (for token tasks: the vocabulary size)."""

    @property
    @abc.abstractmethod
    def output_size(self) -> int:
        """Outputs per read-out step (classes, or 1 for regression)."""

    @property
    def vocab_size(self) -> int | None:
        """Vocabulary size when inputs are token ids ``(T, B)``; ``None`` for float inputs."""
        return None

    @property
    def seq_len(self) -> int:
        """Length of a training sequence (for throughput figures)."""
        return int(self.train_batch(0).x.shape[0])

    # -- data ----------------------------------------------------------------------------
    @abc.abstractmethod
    def train_batch(self, step: int) -> Batch:
        """The training batch for optimizer step ``step`` (pure function of seed and step)."""

    @abc.abstractmethod
    def eval_batches(self, split: Split) -> Iterator[Batch]:
        """The fixed evaluation batches of ``split`` (identical on every call)."""

    def has_split(self, split: Split) -> bool:
        return True

    # -- loss and metrics ----------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Scalar training loss from the model output for ``batch``."""

    @abc.abstractmethod
    def stats(self, output: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Additive statistics of one evaluation batch (sums and counts)."""

    @abc.abstractmethod
    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        """Turn summed ``stats`` into metrics (``loss`` plus task metrics)."""

    @abc.abstractmethod
    def baseline(self) -> dict[str, float]:
        """What a memoryless predictor scores, keyed like the metrics (e.g. ``{"mse": 1/6}``)."""

    def solve_threshold(self) -> Threshold | None:
        """The "solved" line of this task, or None where the literature compares scores instead
        (classification and language modelling)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Name and resolved options, for summaries and run records."""
        return {"task": self.name, **{f.name: getattr(self.config, f.name) for f in fields(self.config)}}
