"""Sequential and permuted MNIST (IRNN paper §4.2; expRNN, nnRNN, asRNN), and honest smoke variants.

Each 28x28 image is read one pixel per step in row-major order (784 steps, input size 1), scaled
to [0, 1] by /255 with no mean/std normalisation (as in expRNN, asRNN and nnRNN). The class is read
out from the last step and scored by cross-entropy; the metric is accuracy.

Permuted MNIST applies one fixed pixel permutation to every image of every split,
``x_perm[i] = x[perm[i]]``, with ``perm = numpy.random.RandomState(permutation_seed).permutation(784)``
reproduced in pure Python (:mod:`irnn_search.tasks.mt19937`): seed 92916 gives the expRNN/asRNN
permutation, 1234 the nnRNN one.

Splits of ``smnist``/``pmnist``: ``val_size`` images of the 60k training file are held out for
validation (the same images for every trial and seed: the first ``val_size`` entries of
``RandomState(VAL_SPLIT_SEED).permutation(60000)``); the rest is trained on. The t10k file is the
test split, for final evaluation only. (expRNN and asRNN instead train on all 60k and report the
best test accuracy over epochs; nnRNN holds out 10k for validation, as here.)

The ``digits-smoke`` tasks need only the t10k file (which is available offline): they train on its
first 8,000 images and validate on its last 2,000, and have no test split. Their numbers are NOT
sMNIST/pMNIST accuracies.
"""

from __future__ import annotations

import abc
import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from irnn_search.tasks.base import STREAM_TRAIN, Batch, Split, Task, TaskConfig, TaskError, generator
from irnn_search.tasks.datafiles import DataError, normalise_file_options, resolve
from irnn_search.tasks.mt19937 import legacy_permutation

DATASET = "mnist"
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
#: official file stem -> MD5 of the official .gz file
MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
SIZES = {"train": 60000, "t10k": 10000}
ROWS = COLS = 28
PIXELS = ROWS * COLS
CLASSES = 10
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
#: seed of the fixed train/validation split of the 60k training file (NumPy-compatible permutation)
VAL_SPLIT_SEED = 0
SMOKE_TRAIN, SMOKE_VAL = 8000, 2000


# -- IDX files ----------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an MNIST IDX file (gzip-compressed or raw; detected from the content) as a uint8 tensor.

    Accepts magic 2051 (images, dims ``(N, rows, cols)``) and 2049 (labels, dims ``(N,)``), big
    endian. Checks the magic, the dimensions and that the payload has exactly ``prod(dims)``
    bytes; anything else raises :class:`DataError` naming the file. Returns ``(N, rows, cols)``
    or ``(N,)``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc}); delete it or replace it") from exc
    if len(raw) < 8:
        raise DataError(f"{path} is not an IDX file: only {len(raw)} bytes")
    (magic,) = struct.unpack(">i", raw[:4])
    if magic == IDX_IMAGES_MAGIC:
        ndim = 3
    elif magic == IDX_LABELS_MAGIC:
        ndim = 1
    else:
        raise DataError(
            f"{path} is not an MNIST IDX file: magic {magic}, expected {IDX_IMAGES_MAGIC} (images) "
            f"or {IDX_LABELS_MAGIC} (labels)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX payload is {len(raw) - header} bytes but dims {tuple(dims)} need {expected} "
            f"(truncated or corrupt file; delete it or replace it)"
        )
    data = (
        torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8) if expected else torch.empty(0, dtype=torch.uint8)
    )
    return data.reshape(dims)


def load_mnist_file(
    part: str,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    mirrors: tuple[str, ...] = DEFAULT_MIRRORS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 784)`` uint8 and labels ``(N,)`` int64 of ``part`` ("train" or "t10k").

    The official ``.gz`` files are checked against their published MD5s. An uncompressed file
    (``train-images-idx3-ubyte`` etc.) found in a data or cache folder is accepted too, but only
    after a strict structural check (magic, 28x28, the official image count, matching label
    count, labels in 0..9): we do not know official MD5s of the uncompressed files, so they cannot
    be checked by digest.
    """
    if part not in SIZES:
        raise TaskError(f"mnist: unknown file set {part!r}; expected one of {', '.join(SIZES)}")
    out = []
    for kind in ("images", "labels"):
        stem = f"{part}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        path = resolve(
            stem + ".gz",
            dataset=DATASET,
            md5=MD5[stem],
            mirrors=mirrors,
            data_dir=data_dir,
            cache_dir=cache_dir,
            alternatives=(stem,),
        )
        t = read_idx(path)
        want = (SIZES[part], ROWS, COLS) if kind == "images" else (SIZES[part],)
        if tuple(t.shape) != want:
            raise DataError(f"{path}: MNIST {kind} of shape {tuple(t.shape)}, expected {want}")
        out.append((path, t))
    (_, images), (lpath, labels) = out
    if int(labels.max()) >= CLASSES:
        raise DataError(f"{lpath}: label {int(labels.max())} out of range 0..9")
    return images.reshape(-1, PIXELS), labels.long()


# -- configuration ------------------------------------------------------------------------------
def _normalise_files_options(cfg: MnistConfig | DigitsSmokeConfig, task: str) -> None:
    normalise_file_options(cfg, task)
    seed = cfg.permutation_seed
    if not isinstance(seed, int) or not 0 <= seed <= 0xFFFFFFFF:
        raise TaskError(f"{task}: permutation_seed must be an integer in [0, 2**32 - 1] (as NumPy), got {seed!r}")
    if cfg.eval_batch_size < 1:
        raise TaskError(f"{task}: eval_batch_size must be >= 1, got {cfg.eval_batch_size}")


_HELP_PERM = "seed of the fixed pixel permutation (permuted variants only): 92916 = expRNN/asRNN, 1234 = nnRNN"
_HELP_DATA = "folder holding the MNIST files (never downloaded into); default: $IRNN_SEARCH_DATA_DIR, else the cache"
_HELP_CACHE = "download cache folder (default ~/.cache/irnn-search/mnist)"
_HELP_MIRRORS = "base URLs tried in order to download the MNIST .gz files"


@dataclass(frozen=True)
class MnistConfig(TaskConfig):
    permutation_seed: int = field(default=92916, metadata={"help": _HELP_PERM})
    val_size: int = field(
        default=10000,
        metadata={"help": "validation images held out of the 60k training file (same split for every trial)"},
    )
    data_dir: str | None = field(default=None, metadata={"help": _HELP_DATA})
    cache_dir: str | None = field(default=None, metadata={"help": _HELP_CACHE})
    mirrors: tuple[str, ...] = field(default=DEFAULT_MIRRORS, metadata={"help": _HELP_MIRRORS})
    eval_batch_size: int = field(default=1000, metadata={"help": "batch size for validation and test"})

    def __post_init__(self) -> None:
        _normalise_files_options(self, "mnist")
        if not 1 <= self.val_size < SIZES["train"]:
            raise TaskError(f"mnist: val_size must be in [1, {SIZES['train'] - 1}], got {self.val_size}")


@dataclass(frozen=True)
class DigitsSmokeConfig(TaskConfig):
    permutation_seed: int = field(default=92916, metadata={"help": _HELP_PERM})
    data_dir: str | None = field(default=None, metadata={"help": _HELP_DATA})
    cache_dir: str | None = field(default=None, metadata={"help": _HELP_CACHE})
    mirrors: tuple[str, ...] = field(default=DEFAULT_MIRRORS, metadata={"help": _HELP_MIRRORS})
    eval_batch_size: int = field(default=1000, metadata={"help": "batch size for validation"})

    def __post_init__(self) -> None:
        _normalise_files_options(self, "digits-smoke")


# -- tasks --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Splits:
    images: dict[str, torch.Tensor]  # split -> (N, 784) uint8
    labels: dict[str, torch.Tensor]  # split -> (N,) int64


class _MnistTaskBase(Task):
    """Shared machinery: lazy loading, per-epoch shuffling, pixel permutation, CE and accuracy."""

    metric = "accuracy"
    direction = "maximize"
    metrics = ("loss", "accuracy")
    default_batch_size = 128  # expRNN, asRNN
    readout = "last"
    permuted: ClassVar[bool] = False
    #: training images, known without loading (checked against the batch size at construction)
    n_train: ClassVar[int]
    config: MnistConfig | DigitsSmokeConfig

    def __init__(self, config: TaskConfig, *, seed: int = 0, batch_size: int | None = None):
        super().__init__(config, seed=seed, batch_size=batch_size)
        if self._train_count() < self.batch_size:
            raise TaskError(
                f"{self.name}: batch size {self.batch_size} exceeds the {self._train_count()} training images"
            )
        self._splits: _Splits | None = None
        self._perm: torch.Tensor | None = None
        self._epoch: tuple[int, torch.Tensor] | None = None

    def _train_count(self) -> int:
        return self.n_train

    @abc.abstractmethod
    def _load_splits(self) -> _Splits:
        """Load the files and return the split tensors."""

    # -- data --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load (downloading if needed) and check the data now, so that a CLI can fail early."""
        self._data()

    def _data(self) -> _Splits:
        if self._splits is None:
            self._splits = self._load_splits()
        return self._splits

    def _files_kwargs(self) -> dict:
        c = self.config
        return {"data_dir": c.data_dir, "cache_dir": c.cache_dir, "mirrors": c.mirrors}

    @property
    def permutation(self) -> torch.Tensor | None:
        """The fixed pixel permutation (int64, 784) of permuted variants, else ``None``."""
        if not self.permuted:
            return None
        if self._perm is None:
            self._perm = torch.tensor(legacy_permutation(self.config.permutation_seed, PIXELS), dtype=torch.long)
        return self._perm

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return CLASSES

    @property
    def seq_len(self) -> int:
        return PIXELS

    @property
    def batches_per_epoch(self) -> int:
        """Full training batches per epoch (the last incomplete batch is dropped)."""
        return self._train_count() // self.batch_size

    def _make_batch(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        x = images.float().div_(255.0)  # (B, 784) in [0, 1]
        perm = self.permutation
        if perm is not None:
            x = x[:, perm]  # x_perm[:, i] = x[:, perm[i]]
        return Batch(x.t().unsqueeze(-1).contiguous(), labels.clone())

    def train_batch(self, step: int) -> Batch:
        if step < 0:
            raise TaskError(f"{self.name}: step must be >= 0, got {step}")
        d = self._data()
        epoch, i = divmod(step, self.batches_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            n = d.labels["train"].shape[0]
            self._epoch = (epoch, torch.randperm(n, generator=generator(self.seed, STREAM_TRAIN, epoch)))
        idx = self._epoch[1][i * self.batch_size : (i + 1) * self.batch_size]
        return self._make_batch(d.images["train"][idx], d.labels["train"][idx])

    def eval_batches(self, split: Split) -> Iterator[Batch]:
        if split not in ("val", "test"):
            raise TaskError(f"{self.name}: unknown split {split!r}; expected val or test")
        if not self.has_split(split):
            raise TaskError(f"{self.name}: has no {split} split ({self.description})")
        d = self._data()
        images, labels = d.images[split], d.labels[split]
        bs = self.config.eval_batch_size
        for start in range(0, labels.shape[0], bs):
            yield self._make_batch(images[start : start + bs], labels[start : start + bs])

    def split_size(self, split: str) -> int:
        """Number of images in ``split`` ("train", "val" or "test"); loads the data."""
        d = self._data()
        if split not in d.labels:
            raise TaskError(f"{self.name}: has no {split} split")
        return int(d.labels[split].shape[0])

    # -- loss and metrics ----------------------------------------------------------------------
    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(output, batch.y)

    def stats(self, output: torch.Tensor, batch: Batch) -> dict[str, float]:
        ce = F.cross_entropy(output.detach().float(), batch.y, reduction="sum")
        correct = (output.detach().argmax(dim=-1) == batch.y).sum()
        return {"ce_sum": float(ce), "correct": float(correct), "n": float(batch.y.numel())}

    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        n = totals["n"]
        return {"loss": totals["ce_sum"] / n, "accuracy": totals["correct"] / n}

    def baseline(self) -> dict[str, float]:
        """Memoryless scores on the validation split.

        ``accuracy``: always predicting the most frequent class of the training split (computed
        from the labels). ``loss``: ln 10, the cross-entropy of the uniform distribution over the
        10 classes, i.e. of an untrained classifier with equal logits (the majority predictor's
        own cross-entropy would be infinite).
        """
        d = self._data()
        majority = int(torch.bincount(d.labels["train"], minlength=CLASSES).argmax())
        val = d.labels["val"]
        return {"accuracy": int((val == majority).sum()) / int(val.numel()), "loss": math.log(CLASSES)}


class _FullMnist(_MnistTaskBase):
    config_cls = MnistConfig
    config: MnistConfig

    def _train_count(self) -> int:
        return SIZES["train"] - self.config.val_size

    def _load_splits(self) -> _Splits:
        kw = self._files_kwargs()
        train_x, train_y = load_mnist_file("train", **kw)
        test_x, test_y = load_mnist_file("t10k", **kw)
        order = torch.tensor(legacy_permutation(VAL_SPLIT_SEED, SIZES["train"]), dtype=torch.long)
        val_idx = order[: self.config.val_size].sort().values
        train_idx = order[self.config.val_size :].sort().values
        return _Splits(
            images={"train": train_x[train_idx], "val": train_x[val_idx], "test": test_x},
            labels={"train": train_y[train_idx], "val": train_y[val_idx], "test": test_y},
        )


class SMnistTask(_FullMnist):
    name = "smnist"
    description = "sequential MNIST: 784 pixels one per step (row-major), class at the last step (CE, accuracy)"


class PMnistTask(_FullMnist):
    name = "pmnist"
    description = "permuted MNIST: 784 pixels in a fixed permutation (permutation_seed), class at the last step"
    permuted = True


_SMOKE_NOTE = "smoke: MNIST test file split 8k/2k, not sMNIST/pMNIST accuracy"


class _DigitsSmoke(_MnistTaskBase):
    config_cls = DigitsSmokeConfig
    config: DigitsSmokeConfig
    n_train = SMOKE_TRAIN

    def has_split(self, split: Split) -> bool:
        return split == "val"

    def _load_splits(self) -> _Splits:
        x, y = load_mnist_file("t10k", **self._files_kwargs())
        return _Splits(
            images={"train": x[:SMOKE_TRAIN], "val": x[SMOKE_TRAIN:]},
            labels={"train": y[:SMOKE_TRAIN], "val": y[SMOKE_TRAIN:]},
        )


class DigitsSmokeTask(_DigitsSmoke):
    name = "digits-smoke"
    smoke_of = "smnist"
    description = f"{_SMOKE_NOTE} (sequential pixel order)"


class PDigitsSmokeTask(_DigitsSmoke):
    name = "digits-smoke-permuted"
    smoke_of = "pmnist"
    description = f"{_SMOKE_NOTE} (fixed pixel permutation from permutation_seed)"
    permuted = True
