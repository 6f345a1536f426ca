"""Speech Commands data: a tiny generated copy in the real layout, its splits, checks, and a
download from 127.0.0.1.

(Named ``..._data`` so that it does not clash with ``tests/unit/tasks/test_speech_commands.py``: the
test folders are not packages, so two test files may not share a name.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import tarfile
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dynbench.cli import main
from dynbench.tasks.data.archive import ArchiveSpec, extract_tar
from dynbench.tasks.data.catalog import DatasetCorruptError, DatasetMissingError, get_dataset
from dynbench.tasks.data.speech_commands import (
    EXTRACTED,
    NOISE_DIR,
    POINTER,
    SPEECH_COMMANDS,
    TESTING_LIST,
    VALIDATION_LIST,
    WORDS,
    read_wav,
    wav_problem,
)


def write_wav(path: Path, samples: np.ndarray, *, rate: int = 16_000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())
    return path


def make_layout(root: Path, *, noise: bool = True) -> Path:
    """35 words × 3 speakers of 0.1 s tones: speaker 0 trains, 1 is in the validation list, 2 in the
    testing list."""
    rng = np.random.default_rng(0)
    lists: dict[str, list[str]] = {VALIDATION_LIST: [], TESTING_LIST: []}
    t = np.arange(1600) / 16_000
    for i, word in enumerate(WORDS):
        for speaker in range(3):
            name = f"{word}/{speaker:08x}_nohash_0.wav"
            write_wav(root / name, 8000 * np.sin(2 * np.pi * (200 + 50 * i) * t) + rng.normal(0, 50, t.size))
            if speaker:
                lists[VALIDATION_LIST if speaker == 1 else TESTING_LIST].append(name)
    for list_name, names in lists.items():
        (root / list_name).write_text("\n".join(names[::-1]) + "\n")  # any order: splits come back sorted
    if noise:
        write_wav(root / NOISE_DIR / "white_noise.wav", rng.normal(0, 3000, 40_000))
        (root / NOISE_DIR / "README.md").write_text("not a clip\n")
    return root


def make_archive(layout: Path, out: Path) -> ArchiveSpec:
    """A .tar.gz of ``layout`` with members named ./word/file.wav, as upstream's; returns its
    spec."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        tar.add(layout, arcname=".")
    data = out.read_bytes()
    return ArchiveSpec(out.name, hashlib.sha256(data).hexdigest(), len(data))


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The data root, under tmp_path; no system folder can be seen."""
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "root"))
    return tmp_path / "root"


def spec(**changes):
    return dataclasses.replace(SPEECH_COMMANDS, system_dirs=(), **changes)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """``serve(directory)`` → base URL of an HTTP server on 127.0.0.1 serving that directory."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_registered_with_the_canonical_archive_and_its_published_checksum():
    ds = get_dataset("speech-commands")
    assert ds is SPEECH_COMMANDS and len(WORDS) == 35 and list(WORDS) == sorted(WORDS)
    assert ds.archive.name == "speech_commands_v0.02.tar.gz" and ds.archive.size == 2_428_923_189
    assert ds.archive.sha256.startswith("af14739e") and ds.urls[0] == "http://download.tensorflow.org/data"
    assert "_background_noise_" not in WORDS


def test_splits_follow_the_official_lists_and_train_is_the_rest(tmp_path: Path, root: Path):
    layout = make_layout(tmp_path / "sc")
    copy = spec().locate(layout)
    assert copy.source == "path" and copy.root == layout
    splits = {s: copy.split_files(s) for s in ("train", "val", "test")}
    assert {s: len(f) for s, f in splits.items()} == {"train": 35, "val": 35, "test": 35}
    assert all(name.split("/")[1].startswith("00000000") for name, _ in splits["train"])
    assert all(name.split("/")[1].startswith("00000002") for name, _ in splits["test"])
    assert splits["test"] == sorted(splits["test"])
    for files in splits.values():
        assert all(label == WORDS.index(name.split("/")[0]) for name, label in files)
        assert sorted({label for _, label in files}) == list(range(35))
    assert [p.name for p in copy.noise_files()] == ["white_noise.wav"]


def test_read_wav_returns_the_samples_and_names_a_bad_file(tmp_path: Path):
    good = write_wav(tmp_path / "a.wav", np.arange(-50, 50) * 100)
    assert read_wav(good).tolist() == (np.arange(-50, 50) * 100).tolist() and wav_problem(good) is None
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DatasetCorruptError, match=r"cut\.wav is corrupt: its header promises 100 samples, it holds 80"):
        read_wav(cut)
    assert "truncated" in (wav_problem(cut) or "")
    stereo = write_wav(tmp_path / "stereo.wav", np.zeros(200), channels=2)
    with pytest.raises(DatasetCorruptError, match=r"stereo\.wav.*2 channel\(s\).*expected 1 channel"):
        read_wav(stereo)
    slow = write_wav(tmp_path / "8k.wav", np.zeros(100), rate=8000)
    assert "8,000 Hz" in (wav_problem(slow) or "")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav at all")
    with pytest.raises(DatasetCorruptError, match=r"junk\.wav is corrupt: it is not a readable WAV"):
        read_wav(junk)


def test_missing_data_says_exactly_how_to_get_it(tmp_path: Path, root: Path):
    ds = spec()
    with pytest.raises(DatasetMissingError) as err:
        ds.locate()
    msg = str(err.value)
    assert "not present" in msg and str(root / "speech-commands" / EXTRACTED) in msg
    assert "bench data prepare speech-commands" in msg and "--path DIR" in msg
    assert "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz" in msg
    assert not ds.status().present and not ds.status().corrupt
    partial = make_layout(tmp_path / "sc")
    (partial / TESTING_LIST).unlink()
    with pytest.raises(DatasetMissingError, match=r"not complete in .*sc: missing testing_list\.txt"):
        ds.locate(partial)  # an explicit path is the only place looked at
    with pytest.raises(DatasetMissingError):
        spec(urls=()).prepare()


def test_prepare_path_records_the_folder_without_copying(tmp_path: Path, root: Path):
    layout = make_layout(tmp_path / "mine")
    ds = spec()
    status = ds.prepare(layout)
    assert status.present and status.source == "recorded" and status.where == str(layout)
    assert status.size == sum(p.stat().st_size for p in layout.glob("*/0*.wav"))  # the 105 clips, no noise
    assert sorted(p.name for p in (root / "speech-commands").iterdir()) == [POINTER]  # nothing copied
    assert ds.locate().source == "recorded" and ds.locate().root == layout.resolve()
    assert ds.status().where == str(layout.resolve()) and ds.status().size == status.size
    (root / "speech-commands" / POINTER).write_text("[1, 2]")
    assert ds.status().corrupt and "source.json is corrupt" in ds.status().problem


def test_verify_checks_layout_lists_and_every_wav_header(tmp_path: Path, root: Path):
    layout = make_layout(tmp_path / "sc")
    ds = spec()
    checks = ds.verify(layout)
    assert all(c.problem == "" for c in checks)
    assert len(checks) == 2 + 35 + 1  # the two lists, the word folders, the noise folder
    bad = layout / "cat" / "00000000_nohash_0.wav"
    bad.write_bytes(bad.read_bytes()[:100])
    gone = layout / "dog" / "00000002_nohash_0.wav"
    gone.unlink()
    problems = {c.path: c.problem for c in ds.verify(layout) if c.problem}
    assert set(problems) == {bad, gone}
    assert "truncated" in problems[bad] and problems[gone] == "listed in testing_list.txt but missing"
    with pytest.raises(DatasetCorruptError, match=r"dog/00000002_nohash_0\.wav is corrupt.*2 problem\(s\)"):
        ds.prepare(layout)


def test_a_malformed_list_line_is_reported_with_its_line_number(tmp_path: Path, root: Path):
    layout = make_layout(tmp_path / "sc")
    (layout / VALIDATION_LIST).write_text("cat/a.wav\ncats/b.wav\n")
    with pytest.raises(DatasetCorruptError, match=r"validation_list\.txt is corrupt: line 2 is 'cats/b\.wav'"):
        spec().locate(layout).split_files("val")


def test_download_checks_and_extracts_the_archive_into_the_cache(tmp_path: Path, root: Path, serve):
    www = tmp_path / "www" / "data"
    archive = make_archive(make_layout(tmp_path / "src"), www / "speech_commands_v0.02.tar.gz")
    ds = spec(archive=archive, urls=(f"{serve(www.parent)}/data",))
    assert not ds.status().present
    calls: list[tuple[str, int, int | None]] = []
    status = ds.prepare(progress=lambda what, done, total: calls.append((what, done, total)))
    cache = root / "speech-commands"
    assert status.present and status.source == "download" and status.where == str(cache / EXTRACTED)
    assert sorted(p.name for p in cache.iterdir()) == [EXTRACTED, f"{EXTRACTED}.json"]  # archive deleted, no .part
    assert status.size == sum(p.stat().st_size for p in (tmp_path / "src").rglob("*") if p.is_file())
    whats = {what for what, _, _ in calls}
    assert whats == {archive.name, f"checking {archive.name}", f"extracting {archive.name}"}
    assert (archive.name, archive.size, archive.size) in calls
    found = ds.locate()
    assert found.source == "cache" and len(found.split_files("train")) == 35
    assert ds.status().size == status.size and all(c.problem == "" for c in ds.verify())


def test_a_corrupt_download_names_the_url_and_leaves_nothing(tmp_path: Path, root: Path, serve):
    www = tmp_path / "www" / "data"
    archive = make_archive(make_layout(tmp_path / "src"), www / "speech_commands_v0.02.tar.gz")
    wrong = dataclasses.replace(archive, sha256="0" * 64)
    ds = spec(archive=wrong, urls=(f"{serve(www.parent)}/data",))
    with pytest.raises(DatasetCorruptError, match=r"127\.0\.0\.1.*speech_commands_v0\.02\.tar\.gz is corrupt: its SHA"):
        ds.prepare()
    assert not any((root / "speech-commands").iterdir())


def test_prepare_path_with_a_hand_downloaded_archive_extracts_it(tmp_path: Path, root: Path):
    archive = make_archive(make_layout(tmp_path / "src"), tmp_path / "dl" / "speech_commands_v0.02.tar.gz")
    status = spec(archive=archive).prepare(tmp_path / "dl")
    assert status.source == "path" and status.where == str(root / "speech-commands" / EXTRACTED)
    assert (tmp_path / "dl" / archive.name).is_file()  # the user's archive is left alone
    truncated = tmp_path / "bad" / archive.name
    truncated.parent.mkdir()
    truncated.write_bytes((tmp_path / "dl" / archive.name).read_bytes()[:-500])
    with pytest.raises(DatasetCorruptError, match=rf"{truncated} is corrupt: it has .* bytes, expected"):
        spec(archive=archive).prepare(truncated.parent)


def test_extraction_refuses_unsafe_members_and_truncated_archives(tmp_path: Path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DatasetCorruptError, match=r"evil\.tar\.gz is corrupt: member '\.\./escaped\.txt'"):
        extract_tar(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    symlinked = tmp_path / "link.tar.gz"
    with tarfile.open(symlinked, "w:gz") as tar:
        info = tarfile.TarInfo("cat/x.wav")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DatasetCorruptError, match="is a link"):
        extract_tar(symlinked, tmp_path / "out2")
    good = tmp_path / "good.tar.gz"
    make_archive(make_layout(tmp_path / "src", noise=False), good)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetCorruptError, match=r"cut\.tar\.gz is corrupt: it is not a complete tar archive"):
        extract_tar(cut, tmp_path / "out3")
    files, size = extract_tar(good, tmp_path / "out4")
    assert files == 35 * 3 + 2 and (tmp_path / "out4" / "cat" / "00000001_nohash_0.wav").is_file()


def test_bench_data_prepare_path_then_verify(tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]):
    layout = make_layout(tmp_path / "mine")
    assert main(["data", "prepare", "speech-commands", "--path", str(layout)]) == 0
    assert f"speech-commands: ready, recorded (used in place, not copied) at {layout}" in capsys.readouterr().out
    assert main(["data", "verify", "speech-commands"]) == 0
    out = capsys.readouterr().out
    assert "speech-commands: 38 file(s) OK" in out
    (layout / "yes" / "00000001_nohash_0.wav").write_bytes(b"RIFF")
    assert main(["data", "verify", "speech-commands"]) == 1
    assert f"BAD {layout / 'yes' / '00000001_nohash_0.wav'}" in capsys.readouterr().out
