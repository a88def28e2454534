"""Penn Treebank, character level (PTB-c), as in nnRNN and asRNN; and an honest smoke variant.

Data: ``ptb.char.{train,valid,test}.txt`` from Mikolov's ``simple-examples.tgz``. Tokenisation
follows NNR/ASR (awd-lstm-lm's ``Corpus``): each line becomes ``line.split() + ["<eos>"]``; the
vocabulary assigns ids in order of first appearance over train, valid, test (for ``ptb-smoke``:
valid, test).

``<unk>``: in the real ``ptb.char`` files unknown words are spelled out as ``< u n k >``, so the
reference code's ``line.split()`` reads five single-character tokens (vocabulary 50, ``<eos>``
included). Option ``unk``:

- ``token`` (default): ``< u n k >`` is read as one ``<unk>`` token (vocabulary 49: ``<`` and
  ``>`` occur nowhere else). One unknown word is one prediction, not five mostly trivial ones.
- ``chars``: the five characters, exactly as the NNR/ASR code tokenised these files. Use it when
  comparing BPC with their published numbers: the two choices count different positions.

Batching (NNR language_task.py, ASR pennchar.py): a split's token ids are cut into ``B``
contiguous streams (``batchify``: the tail that does not fill a row is dropped), giving a ``(L, B)``
matrix. Chunk ``i`` holds rows ``[i*bptt, (i+1)*bptt)`` as inputs and the same rows shifted by one
as targets; the last chunk of a pass is shorter (it ends at row ``L - 2`` for inputs), as in the
literature. The hidden state is carried from chunk to chunk (``carry_state``); ``Batch.reset`` is
True at chunk 0 of each training epoch and on the first evaluation chunk, where the loop zeroes the
state. Training step ``s`` is chunk ``s % chunks_per_epoch`` of epoch ``s // chunks_per_epoch``;
the order is fixed (no shuffling, as in the literature), so it does not depend on the seed.

Metric: bits per character, mean cross-entropy over every predicted position / ln 2.
"""

from __future__ import annotations

import math
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from irnn_search.tasks.base import Batch, Split, Task, TaskConfig, TaskError
from irnn_search.tasks.datafiles import DataError, Locations, fetch, normalise_file_options, verify_md5

DATASET = "ptb"
EOS = "<eos>"
ARCHIVE = "simple-examples.tgz"
ARCHIVE_MD5 = "30177ea32e27c525793142b6bf2c8e2d"
ARCHIVE_DIR = "simple-examples/data/"
DEFAULT_MIRRORS: tuple[str, ...] = (
    "http://www.fit.vutbr.cz/~imikolov/rnnlm/",
    "https://dataset.bj.bcebos.com/imikolov%2F",
)
FILES = {"train": "ptb.char.train.txt", "valid": "ptb.char.valid.txt", "test": "ptb.char.test.txt"}
#: MD5 of the files we could check. The train file's MD5 is not known to us, so it is checked by
#: format instead (see :func:`read_tokens`); we do not make one up.
MD5 = {
    "ptb.char.valid.txt": "9e0fe5bec2a8bf43fd686dc23d5ab8bb",
    "ptb.char.test.txt": "1f9a2d1afe00f76e8bfbe09a65439681",
}
#: the official train file has about 5 M characters; far fewer means a truncated or wrong file
MIN_TRAIN_TOKENS = 1_000_000


# -- files --------------------------------------------------------------------------------------
def extract_char_files(archive: Path, dest_dir: Path) -> list[Path]:
    """Extract only ``simple-examples/data/ptb.char.*.txt`` from ``archive`` into ``dest_dir``.

    Members are matched by exact name and written to ``dest_dir / <basename>`` chosen by us, never
    to a path taken from the archive, so a hostile archive cannot write elsewhere (no path
    traversal, no links). Each file goes through a temporary file and ``os.replace``.
    """
    wanted = {ARCHIVE_DIR + name: name for name in FILES.values()}
    done: list[Path] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name not in wanted:
                    continue
                if not member.isfile():
                    raise DataError(f"{archive}: {member.name} is not a regular file")
                src = tar.extractfile(member)
                assert src is not None
                fd, tmp = tempfile.mkstemp(prefix=f".{wanted[name]}.", suffix=".part", dir=dest_dir)
                try:
                    with os.fdopen(fd, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    os.replace(tmp, dest_dir / wanted[name])
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                done.append(dest_dir / wanted[name])
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"cannot extract the PTB files from {archive}: {exc}") from exc
    missing = sorted(set(wanted.values()) - {p.name for p in done})
    if missing:
        raise DataError(f"{archive} does not contain {', '.join(ARCHIVE_DIR + m for m in missing)}")
    return done


def resolve_ptb_file(
    part: str,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    mirrors: tuple[str, ...] = DEFAULT_MIRRORS,
    timeout: float = 30,
) -> Path:
    """Path to ``ptb.char.<part>.txt`` ("train", "valid" or "test"), downloading if needed.

    Looks in the data folder, else the cache; if the cache lacks it, downloads
    ``simple-examples.tgz`` (MD5-checked) into the cache, extracts the three char files and deletes
    the archive. Valid and test are checked against their MD5s wherever they are found.
    """
    fname = FILES[part]
    loc = Locations.create(DATASET, data_dir=data_dir, cache_dir=cache_dir)
    path = loc.find([fname])
    if path is None:
        if loc.explicit:
            err = loc.missing_error(fname, MD5.get(fname))
            raise DataError(f"{err} (It is {ARCHIVE_DIR}{fname} inside {ARCHIVE}, md5 {ARCHIVE_MD5}.)")
        archive = fetch(ARCHIVE, md5=ARCHIVE_MD5, mirrors=mirrors, dest_dir=loc.cache_dir, timeout=timeout)
        try:
            extract_char_files(archive, loc.cache_dir)
        finally:
            archive.unlink(missing_ok=True)
        path = loc.cache_dir / fname
    if fname in MD5:
        verify_md5(path, MD5[fname], explicit=loc.explicit)
    return path


SPELLED_UNK = "< u n k >"
UNK_MODES = ("token", "chars")


def read_tokens(path: Path, vocab: dict[str, int], *, min_tokens: int = 1, unk: str = "token") -> torch.Tensor:
    """Token ids (int64) of a PTB char file, extending ``vocab`` (token -> id) in first-seen order.

    Each line is ``line.split() + ["<eos>"]``, after joining the spelled-out ``< u n k >`` into one
    ``<unk>`` token when ``unk="token"``. Format check (the only check possible for the train
    file, whose MD5 we do not know): UTF-8 text, every token a single character or an ``<...>``
    tag, and at least ``min_tokens`` tokens. A failure raises :class:`DataError` naming the file.
    """
    ids: list[int] = []
    append = ids.append
    merge_unk = unk == "token"
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if merge_unk:
                    line = line.replace(SPELLED_UNK, "<unk>")
                toks = line.split()
                toks.append(EOS)
                for t in toks:
                    i = vocab.get(t)
                    if i is None:
                        if len(t) > 1 and not (t[0] == "<" and t[-1] == ">"):
                            raise DataError(
                                f"{path}:{lineno}: token {t!r} is not a single character; not a PTB char file"
                            )
                        i = vocab[t] = len(vocab)
                    append(i)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); not a PTB char file") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(ids) < min_tokens:
        raise DataError(f"{path}: only {len(ids)} tokens, expected at least {min_tokens} (truncated or wrong file)")
    return torch.tensor(ids, dtype=torch.long)


def batchify(ids: torch.Tensor, n_streams: int) -> torch.Tensor:
    """Cut ``ids`` into ``n_streams`` contiguous streams: ``(len(ids) // n_streams, n_streams)``."""
    rows = ids.numel() // n_streams
    return ids[: rows * n_streams].view(n_streams, rows).t().contiguous()


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PTBConfig(TaskConfig):
    bptt: int = field(default=150, metadata={"help": "truncated-BPTT chunk length (150 or 300 in the papers)"})
    unk: str = field(
        default="token",
        metadata={"help": "token: '< u n k >' is one <unk> token | chars: five characters, as the reference code"},
    )
    eval_batch_size: int = field(default=10, metadata={"help": "streams for validation and test (10 in the papers)"})
    eval_max_tokens: int | None = field(
        default=None,
        metadata={"help": "evaluate only the first N tokens of a split (smoke runs); default: the whole split"},
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "folder holding ptb.char.*.txt (never downloaded into); default: $IRNN_SEARCH_DATA_DIR"},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "download cache folder (default ~/.cache/irnn-search/ptb)"}
    )
    mirrors: tuple[str, ...] = field(
        default=DEFAULT_MIRRORS, metadata={"help": f"base URLs tried in order to download {ARCHIVE}"}
    )

    def __post_init__(self) -> None:
        normalise_file_options(self, "ptb")
        if self.unk not in UNK_MODES:
            raise TaskError(f"ptb: unk must be one of {', '.join(UNK_MODES)}; got {self.unk!r}")
        if self.bptt < 1:
            raise TaskError(f"ptb: bptt must be >= 1, got {self.bptt}")
        if self.eval_batch_size < 1:
            raise TaskError(f"ptb: eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.eval_max_tokens is not None and self.eval_max_tokens < 2:
            raise TaskError(f"ptb: eval_max_tokens must be >= 2 or unset, got {self.eval_max_tokens}")


# -- tasks --------------------------------------------------------------------------------------
class _PTBBase(Task):
    config_cls = PTBConfig
    config: PTBConfig
    metric = "bpc"
    direction = "minimize"
    metrics = ("loss", "bpc", "accuracy")
    default_batch_size = 128  # NNR, ASR
    size_option = "bptt"
    readout = "all"
    carry_state = True
    #: task split -> file part; the vocabulary is built over these files in this order
    parts: ClassVar[dict[str, str]]

    def __init__(self, config: TaskConfig, *, seed: int = 0, batch_size: int | None = None):
        super().__init__(config, seed=seed, batch_size=batch_size)
        self._ids: dict[str, torch.Tensor] | None = None
        self._vocab: list[str] | None = None
        self._train: torch.Tensor | None = None

    # -- data --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load (downloading if needed) and check the data now, so that a CLI can fail early."""
        self._data()

    def _data(self) -> dict[str, torch.Tensor]:
        if self._ids is None:
            c = self.config
            vocab: dict[str, int] = {}
            ids = {}
            for split, part in self.parts.items():
                path = resolve_ptb_file(part, data_dir=c.data_dir, cache_dir=c.cache_dir, mirrors=c.mirrors)
                ids[split] = read_tokens(path, vocab, min_tokens=MIN_TRAIN_TOKENS if part == "train" else 1, unk=c.unk)
            self._vocab = list(vocab)
            self._ids = ids
        return self._ids

    @property
    def vocab(self) -> list[str]:
        """Tokens by id (loads the data)."""
        self._data()
        assert self._vocab is not None
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def input_size(self) -> int:
        return self.vocab_size

    @property
    def output_size(self) -> int:
        return self.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.bptt

    def split_ids(self, split: str) -> torch.Tensor:
        """Token ids of ``split`` ("train", "val", "test"); eval splits cut to ``eval_max_tokens``."""
        ids = self._data()
        if split not in ids:
            raise TaskError(f"{self.name}: has no {split} split ({self.description})")
        out = ids[split]
        if split != "train" and self.config.eval_max_tokens is not None:
            out = out[: self.config.eval_max_tokens]
        return out

    def _streams(self, split: str, n_streams: int) -> torch.Tensor:
        streams = batchify(self.split_ids(split), n_streams)
        if streams.shape[0] < 2:
            raise TaskError(
                f"{self.name}: {split} split has {self.split_ids(split).numel()} tokens, too few for "
                f"{n_streams} streams of at least 2 tokens"
            )
        return streams

    def train_streams(self) -> torch.Tensor:
        """The batchified training split ``(L, batch_size)``."""
        if self._train is None:
            self._train = self._streams("train", self.batch_size)
        return self._train

    @property
    def chunks_per_epoch(self) -> int:
        """Training chunks per pass over the data (the last one may be shorter than ``bptt``)."""
        return math.ceil((self.train_streams().shape[0] - 1) / self.config.bptt)

    def _chunk(self, streams: torch.Tensor, i: int, reset: bool) -> Batch:
        start = i * self.config.bptt
        end = min(start + self.config.bptt, streams.shape[0] - 1)
        return Batch(streams[start:end], streams[start + 1 : end + 1], reset=reset)

    def train_batch(self, step: int) -> Batch:
        if step < 0:
            raise TaskError(f"{self.name}: step must be >= 0, got {step}")
        _, i = divmod(step, self.chunks_per_epoch)
        return self._chunk(self.train_streams(), i, reset=(i == 0))

    def has_split(self, split: Split) -> bool:
        return split in self.parts

    def eval_batches(self, split: Split) -> Iterator[Batch]:
        if split not in ("val", "test"):
            raise TaskError(f"{self.name}: unknown split {split!r}; expected val or test")
        if not self.has_split(split):
            raise TaskError(f"{self.name}: has no {split} split ({self.description})")
        streams = self._streams(split, self.config.eval_batch_size)
        n = math.ceil((streams.shape[0] - 1) / self.config.bptt)
        for i in range(n):
            yield self._chunk(streams, i, reset=(i == 0))

    # -- loss and metrics ----------------------------------------------------------------------
    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), batch.y.reshape(-1))

    def stats(self, output: torch.Tensor, batch: Batch) -> dict[str, float]:
        logits = output.detach().float().reshape(-1, output.shape[-1])
        y = batch.y.reshape(-1)
        ce = F.cross_entropy(logits, y, reduction="sum")
        correct = (logits.argmax(dim=-1) == y).sum()
        return {"ce_sum": float(ce), "correct": float(correct), "n": float(y.numel())}

    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        loss = totals["ce_sum"] / totals["n"]
        return {"loss": loss, "bpc": loss / math.log(2), "accuracy": totals["correct"] / totals["n"]}

    def baseline(self) -> dict[str, float]:
        """The unigram model: character frequencies of the training split, scored on the validation split.

        Counts get add-one smoothing over the vocabulary so that a character absent from the
        training split has a finite cost. It is scored on exactly the positions that
        ``eval_batches("val")`` predicts; accuracy is that of always predicting the most frequent
        training character.
        """
        counts = torch.bincount(self.split_ids("train"), minlength=self.vocab_size).double() + 1.0
        logp = (counts / counts.sum()).log()
        top = int(counts.argmax())
        totals = {"ce_sum": 0.0, "correct": 0.0, "n": 0.0}
        for b in self.eval_batches("val"):
            y = b.y.reshape(-1)
            totals["ce_sum"] -= float(logp[y].sum())
            totals["correct"] += float((y == top).sum())
            totals["n"] += y.numel()
        return self.summarize(totals)


class PTBTask(_PTBBase):
    name = "ptb"
    description = "Penn Treebank characters (PTB-c): next-character prediction, truncated BPTT (bits per char)"
    parts: ClassVar[dict[str, str]] = {"train": "train", "val": "valid", "test": "test"}


class PTBSmokeTask(_PTBBase):
    name = "ptb-smoke"
    smoke_of = "ptb"
    description = "smoke: PTB valid trains, test evaluates; not PTB-c test BPC"
    parts: ClassVar[dict[str, str]] = {"train": "valid", "val": "test"}
