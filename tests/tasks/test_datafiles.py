"""Download, checksum and lookup helpers, against a real local HTTP server and the real MNIST files."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from irnn_search.tasks.base import TaskError
from irnn_search.tasks.datafiles import ENV_DATA_DIR, DataError, Locations, fetch, md5sum, resolve

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGES = "t10k-images-idx3-ubyte.gz"
LABELS = "t10k-labels-idx1-ubyte.gz"
MD5 = {
    IMAGES: "9fb629c4189551a2d022fa330f9573f3",
    LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
}


@pytest.fixture
def mnist_dir() -> Path:
    d = SHARED / "mnist"
    if not (d / IMAGES).is_file():
        pytest.skip(f"real MNIST files not found at {d} (the shared offline data folder is absent)")
    return d


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Requests to 127.0.0.1 must not go through a proxy, and a user's data folder must not leak in.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)


class _Server:
    def __init__(self, root: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path, mnist_dir: Path) -> Iterator[_Server]:
    """Serves good/ (the real t10k files), bad/ (a corrupted images file); missing/ gives 404."""
    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    for name in (IMAGES, LABELS):
        shutil.copy(mnist_dir / name, root / "good" / name)
    data = bytearray((mnist_dir / IMAGES).read_bytes())
    data[1000:1010] = bytes(b ^ 0xFF for b in data[1000:1010])
    (root / "bad" / IMAGES).write_bytes(bytes(data))
    srv = _Server(root)
    yield srv
    srv.close()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused
    return f"http://127.0.0.1:{port}/mnist/"


def test_md5sum_of_the_real_files(mnist_dir: Path) -> None:
    for name, md5 in MD5.items():
        assert md5sum(mnist_dir / name) == md5


def test_data_error_is_a_task_error() -> None:
    assert issubclass(DataError, TaskError)


def test_fetch_falls_back_to_the_second_mirror(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    path = fetch(IMAGES, md5=MD5[IMAGES], mirrors=[server.base + "missing/", server.base + "good/"], dest_dir=dest)
    assert path == dest / IMAGES
    assert md5sum(path) == MD5[IMAGES]
    assert sorted(p.name for p in dest.iterdir()) == [IMAGES]  # no temporary file left
    assert server.requests == [f"/missing/{IMAGES}", f"/good/{IMAGES}"]


def test_fetch_all_mirrors_fail_lists_each_reason(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    mirrors = [server.base + "missing/", server.base + "bad/", closed_port_url()]
    with pytest.raises(DataError) as err:
        fetch(IMAGES, md5=MD5[IMAGES], mirrors=mirrors, dest_dir=dest)
    msg = str(err.value)
    assert "HTTP 404" in msg
    assert "md5 mismatch" in msg and MD5[IMAGES] in msg
    assert "connection refused" in msg
    assert f"put it in {dest}" in msg and ENV_DATA_DIR in msg and "data_dir" in msg
    assert list(dest.iterdir()) == []  # the bad download was removed


def test_fetch_offline_gives_one_clear_error(tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch(IMAGES, md5=MD5[IMAGES], mirrors=[closed_port_url(), closed_port_url()], dest_dir=dest, timeout=5)
    msg = str(err.value)
    assert msg.count("connection refused") == 2
    assert f"download {IMAGES} (md5 {MD5[IMAGES]}) and put it in {dest}" in msg
    assert list(dest.iterdir()) == []


def test_fetch_without_mirrors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no mirrors configured"):
        fetch(IMAGES, md5=MD5[IMAGES], mirrors=[], dest_dir=tmp_path)


def test_fetch_interrupted_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Response:
        def __init__(self) -> None:
            self.calls = 0

        def __enter__(self) -> Response:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def read(self, n: int) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return b"x" * 1000

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response())
    with pytest.raises(KeyboardInterrupt):
        fetch(IMAGES, md5=MD5[IMAGES], mirrors=["http://example.invalid/"], dest_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_resolve_downloads_into_the_cache_once(server: _Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kw = dict(dataset="mnist", md5=MD5[LABELS], mirrors=[server.base + "good/"], cache_dir=cache)
    assert resolve(LABELS, **kw) == cache / LABELS
    assert resolve(LABELS, **kw) == cache / LABELS
    assert server.requests == [f"/good/{LABELS}"]  # the second call used the cache


def test_resolve_never_downloads_into_a_data_dir(server: _Server, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError) as err:
        resolve(IMAGES, dataset="mnist", md5=MD5[IMAGES], mirrors=[server.base + "good/"], data_dir=data_dir)
    msg = str(err.value)
    assert f"put {IMAGES} (md5 {MD5[IMAGES]}) in {data_dir}" in msg
    assert list(data_dir.iterdir()) == [] and server.requests == []


def test_resolve_finds_files_in_data_dir_and_its_dataset_subfolder(mnist_dir: Path) -> None:
    for data_dir in (mnist_dir, mnist_dir.parent):
        path = resolve(IMAGES, dataset="mnist", md5=MD5[IMAGES], mirrors=[], data_dir=data_dir)
        assert path == mnist_dir / IMAGES


def test_resolve_uses_the_environment_variable(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DATA_DIR, str(mnist_dir.parent))
    assert resolve(LABELS, dataset="mnist", md5=MD5[LABELS], mirrors=[]) == mnist_dir / LABELS
    with pytest.raises(DataError, match=ENV_DATA_DIR):
        resolve("absent.gz", dataset="mnist", md5="0" * 32, mirrors=[])


def test_resolve_rejects_a_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        Locations.create("mnist", data_dir=tmp_path / "nope")


@pytest.mark.parametrize("explicit", [True, False])
def test_resolve_reports_a_corrupt_file(mnist_dir: Path, tmp_path: Path, explicit: bool) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    data = bytearray((mnist_dir / LABELS).read_bytes())
    data[100] ^= 0x01
    (folder / LABELS).write_bytes(bytes(data))
    actual = md5sum(folder / LABELS)
    kw = {"data_dir": folder} if explicit else {"cache_dir": folder}
    with pytest.raises(DataError) as err:
        resolve(LABELS, dataset="mnist", md5=MD5[LABELS], mirrors=[], **kw)
    msg = str(err.value)
    assert f"{folder / LABELS} is corrupt" in msg
    assert actual in msg and MD5[LABELS] in msg
    assert ("replace it" if explicit else "delete it") in msg
