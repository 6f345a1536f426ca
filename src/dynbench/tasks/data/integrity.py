"""Checks that a data file is the right one: a cheap look (size, gzip trailer) and a full checksum.

A :class:`FileSpec` says what a file should hold. Every file is checked by its payload (decompressed
for ``.gz``) against that SHA-256 and size. :func:`read_payload` checks while it reads, so loading a
data set costs one pass over its bytes and never uses a file that fails its checksum.

This stays hand-written, not pooch: pooch's ``known_hash`` is the hash of the file as stored, and
``pooch.Decompress`` writes the decompressed copy to disk. A payload checksum lets a repackaged
``.gz`` (or an uncompressed copy from a system package) pass, and is checked while the bytes are
read for use.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from dynbench.tasks.data.catalog import DatasetCorruptError

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class FileSpec:
    """One file of a data set.

    A ``.gz`` file is checked by its decompressed payload, so two gzip encodings of the same bytes
    (the upstream archive and a repackaged copy) both pass, and the uncompressed file (the name
    without ``.gz``) is accepted too.
    """

    name: str  # file name as the canonical source spells it (the download URL ends with it)
    sha256: str  # hex SHA-256 of the payload: the decompressed bytes for a .gz file, else the file itself
    size: int  # payload bytes (decompressed for a .gz file); a cheap truncation check before hashing

    @property
    def compressed(self) -> bool:
        """Whether the canonical file is gzip-compressed."""
        return self.name.endswith(".gz")

    @property
    def candidates(self) -> tuple[str, ...]:
        """File names accepted in a directory, preferred first.

        The canonical name, then the decompressed one.
        """
        return (self.name, self.name.removesuffix(".gz")) if self.compressed else (self.name,)


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def quick_problem(path: Path, spec: FileSpec) -> str | None:
    """A cheap check, not reading the whole file: the size, or for gzip the trailer's payload size.

    Catches truncated and wrong files in microseconds; the full check of :func:`read_payload` still
    runs before the data is used.

    Returns:
        ``None`` when the file looks right, else what is wrong (for an error message).
    """
    size = path.stat().st_size
    if not is_gzip(path):
        return None if size == spec.size else f"it has {size:,} bytes, expected {spec.size:,}"
    if size < 18:  # a gzip header (10 bytes) and trailer (8 bytes) at least
        return f"it has {size:,} bytes, too short for a gzip file"
    with open(path, "rb") as f:
        f.seek(-4, 2)
        (isize,) = struct.unpack("<I", f.read(4))  # the payload size mod 2**32, the last field of a gzip stream
    if isize != spec.size % 2**32:
        return f"its gzip trailer gives {isize:,} payload bytes, expected {spec.size:,} (truncated?)"
    return None


def read_payload(path: Path, spec: FileSpec, *, advice: str = "") -> bytes:
    """The file's payload (decompressed when it is gzip), after checking its size and SHA-256.

    Args:
        path: the file.
        spec: what it should hold.
        advice: what the user should do if it is bad (a default names the file to delete).

    Raises:
        DatasetCorruptError: truncated, not valid gzip, wrong size or wrong checksum; the message
            names ``path``.
    """
    advice = advice or f"Delete it (rm '{path}') and get a good copy of {spec.name}."
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetCorruptError(path, f"it is not a complete gzip file ({exc})", advice) from None
    if len(data) != spec.size:
        raise DatasetCorruptError(path, f"its payload has {len(data):,} bytes, expected {spec.size:,}", advice)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise DatasetCorruptError(path, f"its payload SHA-256 is {digest}, expected {spec.sha256}", advice)
    return data


def payload_problem(path: Path, spec: FileSpec) -> str | None:
    """What is wrong with ``path`` after the full check, or ``None`` when it passes.

    Never raises for a bad file.
    """
    try:
        read_payload(path, spec)
    except DatasetCorruptError as exc:
        return exc.problem
    return None
