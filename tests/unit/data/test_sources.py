"""The data layer on a tiny fixture data set: source order, checksums, truncation, downloads from
127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynbench.tasks.data.catalog import DatasetCorruptError, DatasetMissingError
from dynbench.tasks.data.integrity import FileSpec, quick_problem, read_payload
from dynbench.tasks.data.sources import DatasetSpec, locate, prepare, verify

PAYLOADS = {"images.bin.gz": bytes(range(256)) * 40, "labels.txt": b"0 1 2 3 4 5 6 7 8 9\n" * 3}


def make_spec(system: Path, urls: tuple[str, ...] = ()) -> DatasetSpec:
    files = tuple(FileSpec(n, hashlib.sha256(p).hexdigest(), len(p)) for n, p in PAYLOADS.items())
    return DatasetSpec(
        name="tiny",
        title="Tiny",
        files=files,
        urls=urls,
        system_dirs=(str(system),),
        debian_package="dataset-tiny",
    )


def write_copy(directory: Path, *, gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, payload in PAYLOADS.items():
        if name.endswith(".gz") and gz:
            (directory / name).write_bytes(gzip.compress(payload, mtime=0))
        else:
            (directory / name.removesuffix(".gz")).write_bytes(payload)
    return directory


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """``serve(directory)`` → base URL of an HTTP server on 127.0.0.1 serving that directory."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def start(directory: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/data"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "root"))
    return {"root": tmp_path / "root", "cache": tmp_path / "root" / "tiny", "system": tmp_path / "system"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket closes


def test_sources_are_tried_in_order_path_cache_system_download(tmp_path: Path, env: dict[str, Path], serve):
    url = serve(write_copy(tmp_path / "www" / "data").parent)
    spec = make_spec(env["system"], urls=(url,))
    explicit = write_copy(tmp_path / "mine")
    write_copy(env["cache"])
    write_copy(env["system"])
    assert locate(spec, explicit).source == "path"
    assert locate(spec).source == "cache"
    for f in env["cache"].iterdir():
        f.unlink()
    assert locate(spec).source == "system"
    for f in env["system"].iterdir():
        f.unlink()
    with pytest.raises(DatasetMissingError):
        locate(spec)  # loading never downloads
    got = prepare(spec)
    assert got.source == "download" and got.directory == env["cache"]
    assert locate(spec).source == "cache"


def test_explicit_path_missing_a_file_is_an_error_not_a_fallback(tmp_path: Path, env: dict[str, Path]):
    spec = make_spec(env["system"])
    write_copy(env["system"])
    partial = write_copy(tmp_path / "mine")
    (partial / "labels.txt").unlink()
    with pytest.raises(DatasetMissingError, match=r"not complete in .*mine: missing labels\.txt"):
        locate(spec, partial)


def test_missing_message_says_exactly_how_to_get_it(env: dict[str, Path]):
    spec = make_spec(env["system"], urls=("https://example.org/tiny",))
    with pytest.raises(DatasetMissingError) as err:
        prepare(DatasetSpec(**{**spec.__dict__, "urls": ()}))
    msg = str(err.value)
    assert "sudo apt-get install dataset-tiny" in msg
    assert "bench data prepare tiny --path DIR" in msg and str(env["cache"]) in msg
    assert "https://example.org/tiny" in spec.how_to_get()
    assert not spec.status().present and "not found" in spec.status().problem


def test_uncompressed_copies_are_accepted_and_prepare_path_copies_into_the_cache(tmp_path: Path, env):
    spec = make_spec(env["system"])
    mine = write_copy(tmp_path / "mine", gz=False)
    found = locate(spec, mine)
    assert found.path("images.bin.gz").name == "images.bin"
    assert found.read("images.bin.gz") == PAYLOADS["images.bin.gz"]
    got = prepare(spec, mine)
    assert got.source == "path" and got.directory == env["cache"]
    assert sorted(p.name for p in env["cache"].iterdir()) == ["images.bin", "labels.txt"]
    assert locate(spec).source == "cache"


def test_checksum_failure_names_the_file(env: dict[str, Path]):
    spec = make_spec(env["system"])
    write_copy(env["cache"])
    bad = env["cache"] / "labels.txt"
    bad.write_bytes(b"9" + PAYLOADS["labels.txt"][1:])  # same size: only the checksum can tell
    found = locate(spec)  # the cheap check passes
    with pytest.raises(DatasetCorruptError) as err:
        found.read("labels.txt")
    assert str(bad) in str(err.value) and "SHA-256" in str(err.value)
    assert f"rm '{bad}'" in str(err.value) and "bench data prepare tiny" in str(err.value)
    with pytest.raises(DatasetCorruptError, match="labels.txt"):
        prepare(spec)
    problems = {c.path.name: c.problem for c in verify(spec)}
    assert problems["images.bin.gz"] == "" and "SHA-256" in problems["labels.txt"]
    again = pickle.loads(pickle.dumps(err.value))
    assert str(again) == str(err.value)


def test_truncated_gzip_is_detected_cheaply_and_fully(env: dict[str, Path]):
    spec = make_spec(env["system"])
    write_copy(env["system"])
    gz = env["system"] / "images.bin.gz"
    gz.write_bytes(gz.read_bytes()[:-100])
    assert "truncated" in (quick_problem(gz, spec.files[0]) or "")
    with pytest.raises(DatasetCorruptError, match=r"images\.bin\.gz is corrupt.*apt-get install --reinstall"):
        locate(spec)
    assert not spec.status().present and spec.status().corrupt
    with pytest.raises(DatasetCorruptError, match="not a complete gzip file"):
        read_payload(gz, spec.files[0])


def test_download_from_local_http_with_progress(tmp_path: Path, env: dict[str, Path], serve):
    www = write_copy(tmp_path / "www" / "data")
    url = serve(www.parent)
    spec = make_spec(env["system"], urls=(url,))
    calls: list[tuple[str, int, int | None]] = []
    got = prepare(spec, progress=lambda what, done, total: calls.append((what, done, total)))
    assert got.source == "download"
    assert sorted(p.name for p in env["cache"].iterdir()) == ["images.bin.gz", "labels.txt"]  # no .part left
    size = (www / "images.bin.gz").stat().st_size
    assert ("images.bin.gz", 0, size) in calls and ("images.bin.gz", size, size) in calls
    assert got.read("images.bin.gz") == PAYLOADS["images.bin.gz"]
    assert all(c.problem == "" for c in verify(spec))


def test_download_of_a_corrupt_file_names_it_and_writes_nothing(tmp_path: Path, env: dict[str, Path], serve):
    www = write_copy(tmp_path / "www" / "data")
    (www / "labels.txt").write_bytes(b"not the labels")
    spec = make_spec(env["system"], urls=(serve(www.parent),))
    with pytest.raises(DatasetCorruptError) as err:
        prepare(spec)
    assert "labels.txt" in str(err.value) and "expected" in str(err.value)
    assert sorted(p.name for p in env["cache"].iterdir()) == ["images.bin.gz"]  # the good one is kept


def test_unreachable_server_and_404_are_a_missing_error_with_every_attempt(tmp_path: Path, env, serve):
    empty = serve((tmp_path / "www" / "data").mkdir(parents=True) or tmp_path / "www")
    dead = f"http://127.0.0.1:{closed_port()}/data"
    spec = make_spec(env["system"], urls=(dead, empty))
    with pytest.raises(DatasetMissingError) as err:
        prepare(spec)
    msg = str(err.value)
    assert "cannot connect" in msg and "HTTP 404" in msg and dead in msg
    assert "sudo apt-get install dataset-tiny" in msg  # and still says how to get it
    assert not any(env["cache"].glob("*"))
