"""MNIST loader, sequential/permuted MNIST tasks and the digits smoke tasks, on the real t10k files."""

from __future__ import annotations

import gzip
import math
import socket
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch

from irnn_search.tasks.base import TaskError
from irnn_search.tasks.datafiles import ENV_DATA_DIR, DataError, md5sum
from irnn_search.tasks.mnist import (
    VAL_SPLIT_SEED,
    DigitsSmokeConfig,
    DigitsSmokeTask,
    MnistConfig,
    PDigitsSmokeTask,
    PMnistTask,
    SMnistTask,
    load_mnist_file,
    read_idx,
)
from irnn_search.tasks.mt19937 import legacy_permutation

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGES = "t10k-images-idx3-ubyte"
LABELS = "t10k-labels-idx1-ubyte"


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    d = SHARED / "mnist"
    if not (d / f"{IMAGES}.gz").is_file() or not (d / f"{LABELS}.gz").is_file():
        pytest.skip(f"real MNIST t10k files not found at {d} (the shared offline data folder is absent)")
    return d


@pytest.fixture(scope="module")
def t10k(mnist_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return read_idx(mnist_dir / f"{IMAGES}.gz"), read_idx(mnist_dir / f"{LABELS}.gz")


def smoke(mnist_dir: Path, cls: type = DigitsSmokeTask, **kw: object) -> DigitsSmokeTask:
    seed = kw.pop("seed", 0)
    batch_size = kw.pop("batch_size", None)
    return cls(DigitsSmokeConfig(data_dir=str(mnist_dir), **kw), seed=seed, batch_size=batch_size)


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/mnist/"


# -- loader ---------------------------------------------------------------------------------------
def test_reads_the_real_t10k_files(mnist_dir: Path, t10k: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert md5sum(mnist_dir / f"{IMAGES}.gz") == "9fb629c4189551a2d022fa330f9573f3"
    assert md5sum(mnist_dir / f"{LABELS}.gz") == "ec29112dd5afa0611ce80d1b7f02629c"
    images, labels = t10k
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.uint8
    assert int(images.max()) == 255 and int(labels.max()) == 9
    # Well-known facts of the official test file: its first labels and class counts.
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(labels.long()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_reads_the_real_train_labels(mnist_dir: Path) -> None:
    path = mnist_dir / "train-labels-idx1-ubyte.gz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    labels = read_idx(path)
    assert labels.shape == (60000,)
    assert int(torch.bincount(labels.long()).argmax()) == 1  # "1" is the most frequent training digit


def test_uncompressed_files_are_accepted_after_the_structural_check(
    mnist_dir: Path, tmp_path: Path, t10k: tuple[torch.Tensor, torch.Tensor]
) -> None:
    for name in (IMAGES, LABELS):
        (tmp_path / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    images, labels = load_mnist_file("t10k", data_dir=str(tmp_path), mirrors=())
    assert torch.equal(images, t10k[0].reshape(-1, 784))
    assert torch.equal(labels, t10k[1].long())


def test_truncated_raw_idx_is_rejected(mnist_dir: Path, tmp_path: Path) -> None:
    raw = gzip.decompress((mnist_dir / f"{IMAGES}.gz").read_bytes())
    (tmp_path / IMAGES).write_bytes(raw[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: IDX payload is 7839900 bytes but dims"):
        read_idx(tmp_path / IMAGES)
    (tmp_path / f"{LABELS}.gz").write_bytes((mnist_dir / f"{LABELS}.gz").read_bytes())
    with pytest.raises(DataError, match="truncated"):
        load_mnist_file("t10k", data_dir=str(tmp_path), mirrors=())


def test_malformed_headers_are_rejected(tmp_path: Path) -> None:
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(struct.pack(">iI", 2050, 0))
    with pytest.raises(DataError, match="bad-magic is not an MNIST IDX file: magic 2050"):
        read_idx(bad_magic)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">iI", 2051, 1))
    with pytest.raises(DataError, match="short: truncated IDX header"):
        read_idx(short)
    not_gzip = tmp_path / "broken.gz"
    not_gzip.write_bytes(b"\x1f\x8b" + b"\x00" * 30)
    with pytest.raises(DataError, match=r"broken\.gz is not a valid gzip file"):
        read_idx(not_gzip)
    wrong_shape = tmp_path / IMAGES
    wrong_shape.write_bytes(struct.pack(">iIII", 2051, 10000, 28, 27) + bytes(10000 * 28 * 27))
    (tmp_path / LABELS).write_bytes(struct.pack(">iI", 2049, 10000) + bytes(10000))
    with pytest.raises(DataError, match=r"shape \(10000, 28, 27\), expected \(10000, 28, 28\)"):
        load_mnist_file("t10k", data_dir=str(tmp_path), mirrors=())


def test_corrupted_gz_copy_is_rejected_as_corrupt(mnist_dir: Path, tmp_path: Path) -> None:
    data = bytearray((mnist_dir / f"{IMAGES}.gz").read_bytes())
    for i in range(5000, 5010):
        data[i] ^= 0x5A
    (tmp_path / f"{IMAGES}.gz").write_bytes(bytes(data))
    (tmp_path / f"{LABELS}.gz").write_bytes((mnist_dir / f"{LABELS}.gz").read_bytes())
    task = DigitsSmokeTask(DigitsSmokeConfig(data_dir=str(tmp_path), mirrors=()))
    with pytest.raises(DataError) as err:
        task.prepare()
    msg = str(err.value)
    assert f"{tmp_path / (IMAGES + '.gz')} is corrupt" in msg
    assert "expected 9fb629c4189551a2d022fa330f9573f3" in msg and md5sum(tmp_path / f"{IMAGES}.gz") in msg


def test_offline_error_names_the_file_and_the_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # Constructing a task is cheap and touches neither the network nor the disk.
    task = SMnistTask(MnistConfig(cache_dir=str(cache), mirrors=(closed_port_url(),)))
    assert not cache.exists()
    with pytest.raises(DataError) as err:
        task.train_batch(0)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "connection refused" in msg
    assert f"put it in {cache}" in msg and ENV_DATA_DIR in msg
    assert list(cache.iterdir()) == []


def test_full_mnist_with_the_offline_folder_says_which_file_is_missing(mnist_dir: Path) -> None:
    task = PMnistTask(MnistConfig(data_dir=str(mnist_dir)))
    with pytest.raises(DataError) as err:
        task.prepare()
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert f"in {mnist_dir}" in msg


# -- full sMNIST split, with a synthetic (structurally valid) raw training image file ----------------
def test_full_mnist_validation_split_is_fixed(mnist_dir: Path, tmp_path: Path) -> None:
    train_labels = mnist_dir / "train-labels-idx1-ubyte.gz"
    if not train_labels.is_file():
        pytest.skip(f"{train_labels} not present")
    for name in (f"{IMAGES}.gz", f"{LABELS}.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((mnist_dir / name).read_bytes())
    # Image i carries its index in its first two pixels, so that the split can be inspected.
    idx = torch.arange(60000)
    images = torch.zeros(60000, 784, dtype=torch.uint8)
    images[:, 0] = (idx // 256).to(torch.uint8)
    images[:, 1] = (idx % 256).to(torch.uint8)
    header = struct.pack(">iIII", 2051, 60000, 28, 28)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())

    def ids(x: torch.Tensor) -> torch.Tensor:  # (784, B, 1) -> image indices
        return (x[0, :, 0] * 255).round().long() * 256 + (x[1, :, 0] * 255).round().long()

    task = SMnistTask(MnistConfig(data_dir=str(tmp_path), val_size=10000), seed=3)
    assert task.split_size("train") == 50000 and task.split_size("val") == 10000 and task.split_size("test") == 10000
    val = torch.cat([ids(b.x) for b in task.eval_batches("val")])
    expected = sorted(legacy_permutation(VAL_SPLIT_SEED, 60000)[:10000])
    assert val.tolist() == expected
    seen = torch.cat([ids(task.train_batch(s).x) for s in range(task.batches_per_epoch)])
    assert seen.numel() == 390 * 128 and seen.unique().numel() == seen.numel()  # an epoch has no repeats
    assert not set(seen.tolist()) & set(expected)
    other = SMnistTask(MnistConfig(data_dir=str(tmp_path), val_size=10000), seed=4)
    assert torch.equal(torch.cat([ids(b.x) for b in other.eval_batches("val")]), val)
    assert not torch.equal(ids(other.train_batch(0).x), ids(task.train_batch(0).x))
    test_labels = torch.cat([b.y for b in task.eval_batches("test")])
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


# -- permutation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seed", "n"), [(0, 10), (1, 1), (42, 2), (92916, 784), (1234, 784), (2**32 - 1, 1000), (7, 3000)]
)
def test_legacy_permutation_matches_numpy(seed: int, n: int) -> None:
    np = pytest.importorskip("numpy")
    assert legacy_permutation(seed, n) == np.random.RandomState(seed).permutation(n).tolist()


def test_literature_permutations_known_prefix() -> None:
    # Values printed once by numpy 2.4: np.random.RandomState(seed).permutation(784)[:8] (runs without numpy).
    assert legacy_permutation(92916, 784)[:8] == [319, 576, 323, 107, 355, 716, 197, 20]  # expRNN, asRNN
    assert legacy_permutation(1234, 784)[:8] == [529, 511, 328, 133, 532, 378, 156, 305]  # nnRNN
    assert sorted(legacy_permutation(92916, 784)) == list(range(784))


def test_permutation_is_fixed_and_shared_by_train_and_val(
    mnist_dir: Path, t10k: tuple[torch.Tensor, torch.Tensor]
) -> None:
    task = smoke(mnist_dir, PDigitsSmokeTask, permutation_seed=1234)
    perm = task.permutation
    assert perm is not None and perm.tolist() == legacy_permutation(1234, 784)
    assert smoke(mnist_dir, PDigitsSmokeTask, permutation_seed=1234, seed=9).permutation.tolist() == perm.tolist()
    images = t10k[0].reshape(-1, 784).float() / 255
    # val: its first image is t10k image 8000, read in permuted order: x_perm[i] = x[perm[i]].
    first_val = next(iter(task.eval_batches("val"))).x[:, 0, 0]
    assert torch.equal(first_val, images[8000][perm])
    # train: undoing the same permutation gives back real images of the first 8000.
    x = task.train_batch(0).x[:, :, 0].t()  # (B, 784), permuted
    unperm = torch.empty_like(x)
    unperm[:, perm] = x
    weights = torch.randint(1, 2**20, (784,), generator=torch.Generator().manual_seed(0))

    def fingerprint(imgs: torch.Tensor) -> torch.Tensor:  # exact integer hash of each image
        return ((imgs * 255).round().long() * weights).sum(dim=1)

    assert bool(torch.isin(fingerprint(unperm), fingerprint(images[:8000])).all())
    assert not bool(torch.isin(fingerprint(x), fingerprint(images[:8000])).any())  # still permuted


def test_sequential_order_is_row_major(mnist_dir: Path, t10k: tuple[torch.Tensor, torch.Tensor]) -> None:
    task = smoke(mnist_dir)
    assert task.permutation is None
    x = next(iter(task.eval_batches("val"))).x
    image = t10k[0][8000].float() / 255  # (28, 28)
    for r, c in [(0, 0), (5, 20), (14, 14), (27, 27)]:
        assert x[r * 28 + c, 0, 0] == image[r, c]


# -- the smoke tasks ---------------------------------------------------------------------------------
def test_digits_smoke_splits_and_naming(mnist_dir: Path, t10k: tuple[torch.Tensor, torch.Tensor]) -> None:
    for cls in (DigitsSmokeTask, PDigitsSmokeTask):
        task = smoke(mnist_dir, cls)
        assert "smoke: MNIST test file split 8k/2k, not sMNIST/pMNIST accuracy" in task.description
        assert task.split_size("train") == 8000 and task.split_size("val") == 2000
        assert task.has_split("val") and not task.has_split("test")
        with pytest.raises(TaskError, match="no test split"):
            next(task.eval_batches("test"))
    labels = torch.cat([b.y for b in smoke(mnist_dir).eval_batches("val")])
    assert torch.equal(labels, t10k[1][8000:].long())
    assert smoke(mnist_dir, eval_batch_size=300).batches_per_epoch == 8000 // 128


def test_batch_shapes_dtypes_and_range(mnist_dir: Path) -> None:
    task = smoke(mnist_dir, PDigitsSmokeTask, batch_size=32)
    assert (task.input_size, task.output_size, task.seq_len, task.vocab_size) == (1, 10, 784, None)
    assert task.readout == "last" and task.metric == "accuracy" and task.direction == "maximize"
    b = task.train_batch(0)
    assert b.x.shape == (784, 32, 1) and b.x.dtype == torch.float32
    assert b.y.shape == (32,) and b.y.dtype == torch.int64
    assert float(b.x.min()) >= 0.0 and float(b.x.max()) <= 1.0 and float(b.x.max()) > 0.9
    val = list(task.eval_batches("val"))
    assert [v.x.shape[1] for v in val] == [1000, 1000]


def test_train_batches_are_deterministic_per_seed_and_step(mnist_dir: Path) -> None:
    a, b, c = smoke(mnist_dir, seed=5), smoke(mnist_dir, seed=5), smoke(mnist_dir, seed=6)
    for step in (0, 7, 62, 200):  # 62 batches per epoch: 62 and 200 are later epochs
        assert torch.equal(a.train_batch(step).x, b.train_batch(step).x)
        assert torch.equal(a.train_batch(step).y, b.train_batch(step).y)
        assert not torch.equal(a.train_batch(step).x, c.train_batch(step).x)
    assert not torch.equal(a.train_batch(0).x, a.train_batch(1).x)
    assert not torch.equal(a.train_batch(0).x, a.train_batch(62).x)  # each epoch is reshuffled
    # Out-of-order access gives the same batches (a pure function of the step).
    assert torch.equal(b.train_batch(3).x, smoke(mnist_dir, seed=5).train_batch(3).x)


def test_loss_stats_summarize_and_baseline(mnist_dir: Path, t10k: tuple[torch.Tensor, torch.Tensor]) -> None:
    task = smoke(mnist_dir)
    b = next(iter(task.eval_batches("val")))
    uniform = torch.zeros(b.y.shape[0], 10)
    assert float(task.loss(uniform, b)) == pytest.approx(math.log(10))
    perfect = torch.nn.functional.one_hot(b.y, 10).float() * 50
    s = task.stats(perfect, b)
    assert s["correct"] == s["n"] == 1000
    m = task.summarize(task.stats(uniform, b))
    assert m["loss"] == pytest.approx(math.log(10))
    base = task.baseline()
    train_labels = t10k[1][:8000].tolist()
    majority = Counter(train_labels).most_common(1)[0][0]
    val_labels = t10k[1][8000:].tolist()
    assert majority == 1
    assert base["accuracy"] == pytest.approx(val_labels.count(majority) / 2000)
    assert 0.09 < base["accuracy"] < 0.13
    assert base["loss"] == pytest.approx(math.log(10))


def test_config_validation() -> None:
    with pytest.raises(TaskError, match="val_size"):
        MnistConfig(val_size=0)
    with pytest.raises(TaskError, match="permutation_seed"):
        MnistConfig(permutation_seed=-1)
    with pytest.raises(TaskError, match="eval_batch_size"):
        DigitsSmokeConfig(eval_batch_size=0)
    with pytest.raises(TaskError, match="mirrors"):
        DigitsSmokeConfig(mirrors=("not a url",))
    cfg = DigitsSmokeConfig(mirrors="http://a/x/, http://b/y/")  # type: ignore[arg-type]
    assert cfg.mirrors == ("http://a/x/", "http://b/y/")
    assert DigitsSmokeConfig(data_dir=Path("/tmp")).data_dir == "/tmp"  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="batch size 9000 exceeds"):
        DigitsSmokeTask(DigitsSmokeConfig(), batch_size=9000)
    assert set(MnistConfig.option_help()) == {
        "permutation_seed",
        "val_size",
        "data_dir",
        "cache_dir",
        "mirrors",
        "eval_batch_size",
    }
    assert all(MnistConfig.option_help().values())
