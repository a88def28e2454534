"""PTB character-level tasks on the real valid/test files; archive download/extraction on a local server."""

from __future__ import annotations

import functools
import http.server
import io
import math
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from irnn_search.tasks import ptb
from irnn_search.tasks.base import TaskError
from irnn_search.tasks.datafiles import ENV_DATA_DIR, DataError, md5sum
from irnn_search.tasks.ptb import (
    EOS,
    PTBConfig,
    PTBSmokeTask,
    PTBTask,
    batchify,
    extract_char_files,
    read_tokens,
    resolve_ptb_file,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VALID, TEST = "ptb.char.valid.txt", "ptb.char.test.txt"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)


@pytest.fixture(scope="module")
def ptb_dir() -> Path:
    d = SHARED / "ptb"
    if not (d / VALID).is_file() or not (d / TEST).is_file():
        pytest.skip(f"real PTB char files not found at {d} (the shared offline data folder is absent)")
    return d


@pytest.fixture(scope="module")
def smoke_task(ptb_dir: Path) -> PTBSmokeTask:
    task = PTBSmokeTask(PTBConfig(data_dir=str(ptb_dir)))
    task.prepare()
    return task


def test_real_files_have_the_known_md5(ptb_dir: Path) -> None:
    assert md5sum(ptb_dir / VALID) == "9e0fe5bec2a8bf43fd686dc23d5ab8bb"
    assert md5sum(ptb_dir / TEST) == "1f9a2d1afe00f76e8bfbe09a65439681"


def test_valid_file_tokenisation_as_the_reference_code(ptb_dir: Path) -> None:
    vocab: dict[str, int] = {}
    ids = read_tokens(ptb_dir / VALID, vocab, unk="chars")
    lines = (ptb_dir / VALID).read_text().splitlines()
    print(f"PTB valid: {len(vocab)} token types, {ids.numel()} tokens, {len(lines)} lines")
    assert 45 <= len(vocab) <= 55  # 50 measured: 49 characters + <eos>
    assert ids.dtype == torch.int64
    eos = vocab[EOS]
    assert int((ids == eos).sum()) == len(lines)  # one <eos> per line
    assert int(ids[-1]) == eos
    first = lines[0].split()
    assert [list(vocab)[i] for i in ids[: len(first) + 1]] == [*first, EOS]
    assert "_" in vocab and all(len(t) == 1 for t in vocab if t != EOS)
    # In the real ptb.char files unknown words are spelled out "< u n k >": five one-character tokens.
    assert "<unk>" not in vocab and "< u n k >" in lines[1]


def test_spelled_out_unk_is_one_token_by_default(ptb_dir: Path) -> None:
    chars: dict[str, int] = {}
    merged: dict[str, int] = {}
    ids_chars = read_tokens(ptb_dir / VALID, chars, unk="chars")
    ids = read_tokens(ptb_dir / VALID, merged)
    n_unk = (ptb_dir / VALID).read_text().count("< u n k >")
    print(f"PTB valid with <unk> as one token: {len(merged)} token types, {n_unk} <unk>")
    assert n_unk > 1000 and int((ids == merged["<unk>"]).sum()) == n_unk
    assert ids.numel() == ids_chars.numel() - 4 * n_unk
    # '<' and '>' occur only inside the spelled-out <unk>: one type replaces two.
    assert "<" not in merged and ">" not in merged and len(merged) == len(chars) - 1
    assert 45 <= len(merged) <= 55


def test_angle_bracket_tokens_stay_whole(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("a <unk> b\n\nc _ d\n")
    vocab: dict[str, int] = {}
    ids = read_tokens(f, vocab)
    assert list(vocab) == ["a", "<unk>", "b", EOS, "c", "_", "d"]  # ids in order of first appearance
    assert ids.tolist() == [0, 1, 2, 3, 3, 4, 5, 6, 3]


def test_vocabulary_spans_files_in_order(ptb_dir: Path, smoke_task: PTBSmokeTask) -> None:
    vocab: dict[str, int] = {}
    read_tokens(ptb_dir / VALID, vocab)
    read_tokens(ptb_dir / TEST, vocab)
    assert smoke_task.vocab == list(vocab)
    assert smoke_task.vocab_size == smoke_task.input_size == smoke_task.output_size == len(vocab)


def test_format_check_of_unknown_md5_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("a b\nword c\n")
    with pytest.raises(DataError, match=r"bad.txt:2: token 'word' is not a single character"):
        read_tokens(bad, {})
    short = tmp_path / "ptb.char.train.txt"
    short.write_text("a b c\n")
    with pytest.raises(DataError, match=r"only 4 tokens, expected at least 1000000"):
        read_tokens(short, {}, min_tokens=ptb.MIN_TRAIN_TOKENS)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(DataError, match="not UTF-8"):
        read_tokens(binary, {})


def test_batchify() -> None:
    s = batchify(torch.arange(23), 4)
    assert s.shape == (5, 4)
    assert s[:, 1].tolist() == [5, 6, 7, 8, 9]  # each column is a contiguous stream


def test_train_chunks_reset_and_shifted_targets(ptb_dir: Path) -> None:
    task = PTBSmokeTask(PTBConfig(data_dir=str(ptb_dir), bptt=100), batch_size=64)
    streams = task.train_streams()
    L = streams.shape[0]
    assert streams.shape == (task.split_ids("train").numel() // 64, 64)
    assert torch.equal(streams[:, 3], task.split_ids("train")[3 * L : 4 * L])
    n = task.chunks_per_epoch
    assert n == math.ceil((L - 1) / 100)
    batches = [task.train_batch(s) for s in range(n + 2)]
    assert [b.reset for b in batches] == [True] + [False] * (n - 1) + [True, False]
    for i, b in enumerate(batches[:n]):
        assert b.x.dtype == b.y.dtype == torch.int64
        assert torch.equal(b.x, streams[i * 100 : i * 100 + b.x.shape[0]])
        assert torch.equal(b.y[:-1], b.x[1:])  # targets are the inputs shifted by one
        if i + 1 < n:
            assert b.x.shape == (100, 64)
            assert torch.equal(b.y[-1], batches[i + 1].x[0])
    assert batches[n - 1].x.shape[0] == (L - 1) - (n - 1) * 100  # the last chunk is shorter
    assert torch.equal(batches[n - 1].y[-1], streams[L - 1])
    assert torch.equal(batches[n].x, batches[0].x)  # epoch 2 starts over
    assert task.seq_len == 100 and task.carry_state and task.readout == "all"


def test_eval_chunks_cover_the_split_once(smoke_task: PTBSmokeTask) -> None:
    batches = list(smoke_task.eval_batches("val"))
    assert [b.reset for b in batches[:3]] == [True, False, False] and not any(b.reset for b in batches[1:])
    assert all(b.x.shape[1] == 10 for b in batches)
    streams = batchify(smoke_task.split_ids("val"), 10)
    assert torch.equal(torch.cat([b.y for b in batches]), streams[1:])
    assert torch.equal(torch.cat([b.x for b in batches]), streams[:-1])


def test_eval_max_tokens_evaluates_a_prefix(ptb_dir: Path, smoke_task: PTBSmokeTask) -> None:
    task = PTBSmokeTask(PTBConfig(data_dir=str(ptb_dir), eval_max_tokens=2000, bptt=50))
    batches = list(task.eval_batches("val"))
    assert sum(b.y.numel() for b in batches) == (2000 // 10 - 1) * 10
    assert torch.equal(task.split_ids("val"), smoke_task.split_ids("val")[:2000])
    assert task.split_ids("train").numel() == smoke_task.split_ids("train").numel()  # training is not cut


def test_unigram_baseline(smoke_task: PTBSmokeTask) -> None:
    base = smoke_task.baseline()
    print(f"ptb-smoke unigram baseline (valid -> test): {base}")
    targets = torch.cat([b.y.reshape(-1) for b in smoke_task.eval_batches("val")])
    p = torch.bincount(targets, minlength=smoke_task.vocab_size).double()
    p = p[p > 0] / targets.numel()
    entropy_bits = float(-(p * p.log2()).sum())
    # Measured: 4.346 bpc against a target entropy of 4.345 bits. A unigram model estimated on
    # another split can only do worse than the targets' own entropy (Gibbs), and valid and test
    # have nearly the same character frequencies, so the gap is tiny.
    assert 4.2 < base["bpc"] < 4.5
    assert 0.0 <= base["bpc"] - entropy_bits < 0.01
    assert base["bpc"] < math.log2(smoke_task.vocab_size)  # better than uniform
    assert base["loss"] == pytest.approx(base["bpc"] * math.log(2))
    # Always predicting "_" (the word separator, the most frequent character): about 17 %.
    assert 0.15 < base["accuracy"] < 0.19


def test_loss_stats_summarize(smoke_task: PTBSmokeTask) -> None:
    b = next(iter(smoke_task.eval_batches("val")))
    V = smoke_task.vocab_size
    uniform = torch.zeros(*b.y.shape, V)
    assert float(smoke_task.loss(uniform, b)) == pytest.approx(math.log(V))
    m = smoke_task.summarize(smoke_task.stats(uniform, b))
    assert m["bpc"] == pytest.approx(math.log2(V)) and m["loss"] == pytest.approx(math.log(V))
    perfect = torch.nn.functional.one_hot(b.y, V).float() * 50
    s = smoke_task.stats(perfect, b)
    assert s["correct"] == s["n"] == b.y.numel()
    assert smoke_task.summarize(s)["accuracy"] == 1.0


def test_smoke_task_naming_and_splits(smoke_task: PTBSmokeTask) -> None:
    assert "smoke: PTB valid trains, test evaluates; not PTB-c test BPC" in smoke_task.description
    assert smoke_task.has_split("val") and not smoke_task.has_split("test")
    with pytest.raises(TaskError, match="no test split"):
        next(smoke_task.eval_batches("test"))
    assert smoke_task.metric == "bpc" and smoke_task.direction == "minimize"


def test_full_task_says_which_file_is_missing(ptb_dir: Path) -> None:
    task = PTBTask(PTBConfig(data_dir=str(ptb_dir)))  # cheap: nothing is read yet
    with pytest.raises(DataError) as err:
        task.prepare()
    msg = str(err.value)
    assert f"put ptb.char.train.txt in {ptb_dir}" in msg and "simple-examples.tgz" in msg


def test_corrupt_valid_file_is_rejected(ptb_dir: Path, tmp_path: Path) -> None:
    text = (ptb_dir / VALID).read_bytes()
    (tmp_path / VALID).write_bytes(text.replace(b"c o n s", b"c o m s", 1))
    (tmp_path / TEST).write_bytes((ptb_dir / TEST).read_bytes())
    with pytest.raises(DataError, match=r"ptb.char.valid.txt is corrupt: md5 [0-9a-f]{32}, expected 9e0fe5bec"):
        PTBSmokeTask(PTBConfig(data_dir=str(tmp_path))).prepare()


def _tgz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def test_extraction_takes_only_the_char_files(tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    files = {f"simple-examples/data/ptb.char.{p}.txt": f"{p} _ x\n".encode() for p in ("train", "valid", "test")}
    evil = {"../evil.txt": b"x", "simple-examples/data/ptb.train.txt": b"w", "/tmp/abs.txt": b"y"}
    archive.write_bytes(_tgz({**evil, **files}))
    dest = tmp_path / "out"
    dest.mkdir()
    extract_char_files(archive, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(ptb.FILES.values())
    assert (dest / "ptb.char.valid.txt").read_text() == "valid _ x\n"
    assert not (tmp_path / "evil.txt").exists()
    linked = tmp_path / "b.tgz"
    linked.write_bytes(_tgz({}, {"simple-examples/data/ptb.char.valid.txt": "/etc/passwd"}))
    with pytest.raises(DataError, match="not a regular file"):
        extract_char_files(linked, tmp_path / "out")
    partial = tmp_path / "c.tgz"
    partial.write_bytes(_tgz({"simple-examples/data/ptb.char.test.txt": b"t\n"}))
    with pytest.raises(DataError, match=r"does not contain simple-examples/data/ptb\.char\.train\.txt"):
        extract_char_files(partial, tmp_path / "out")


def test_download_extracts_into_the_cache(ptb_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in archive with the real valid/test files (the real 34 MB tgz is not available offline);
    # its MD5 replaces the official one for this test only.
    www = tmp_path / "www"
    www.mkdir()
    data = {f"simple-examples/data/{n}": (ptb_dir / n).read_bytes() for n in (VALID, TEST)}
    data["simple-examples/data/ptb.char.train.txt"] = (ptb_dir / VALID).read_bytes()
    (www / ptb.ARCHIVE).write_bytes(_tgz(data))
    monkeypatch.setattr(ptb, "ARCHIVE_MD5", md5sum(www / ptb.ARCHIVE))
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}/"
        cache = tmp_path / "cache"
        mirrors = (base + "nothing-here/", base)
        path = resolve_ptb_file("test", cache_dir=str(cache), mirrors=mirrors)
        assert path == cache / TEST and md5sum(path) == md5sum(ptb_dir / TEST)
        assert sorted(p.name for p in cache.iterdir()) == sorted(ptb.FILES.values())  # archive removed
        assert requests == [f"/nothing-here/{ptb.ARCHIVE}", f"/{ptb.ARCHIVE}"]
        task = PTBSmokeTask(PTBConfig(cache_dir=str(cache), mirrors=mirrors))
        assert task.vocab_size == 49  # <unk> as one token (50 with unk="chars")
        assert len(requests) == 2  # served from the cache
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_config_validation() -> None:
    for bad in ({"bptt": 0}, {"eval_batch_size": 0}, {"eval_max_tokens": 1}, {"mirrors": ("nope",)}, {"unk": "x"}):
        with pytest.raises(TaskError):
            PTBConfig(**bad)
    assert PTBConfig(mirrors="http://a/, http://b/").mirrors == ("http://a/", "http://b/")  # type: ignore[arg-type]
    assert set(PTBConfig.option_help()) == {
        "bptt",
        "unk",
        "eval_batch_size",
        "eval_max_tokens",
        "data_dir",
        "cache_dir",
        "mirrors",
    }


def test_too_large_a_batch_is_a_clear_error(ptb_dir: Path) -> None:
    task = PTBSmokeTask(PTBConfig(data_dir=str(ptb_dir), eval_max_tokens=15), batch_size=128)
    with pytest.raises(TaskError, match="too few"):
        next(task.eval_batches("val"))
