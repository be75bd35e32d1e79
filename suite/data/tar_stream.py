"""Reading tar shards member by member without `tarfile`: the shards' per-sample cost on the CPU.

A shard sample is two small members (`<key>.jpg`, `<key>.cls`), and `tarfile` spends about 50 µs a sample
building `TarInfo` objects and file wrappers in Python; a 32-px JPEG decodes and augments in about 150 µs, so
that was a quarter of a loader worker's time (BENCHMARKS.md, "How input cost grows with the dataset"). This
reader parses each 512-byte header with slicing and `int(…, 8)` and reads the data with one `read` call.

It reads what POSIX (ustar), GNU and pax tar writers produce for regular files: the ustar name prefix, GNU long
names (`L`), pax `path` and `size` records (`x`), and global pax headers (`g`, ignored); directories, links and
other member types are skipped. Each header's checksum is verified, as `tarfile` does, so a file that is not a
tar, or a truncated one, raises `tarfile.ReadError` instead of yielding garbage.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
REGULAR = (b"0", b"\0", b"7")  # a regular file; '7' is a contiguous file, read as a regular one
# How much each read asks for: one shard of small JPEGs in a few dozen system calls.
READ_BUFFER = 1 << 20


def _number(field: bytes) -> int:
    """A header's numeric field: octal text, or GNU's base-256 (first byte 0x80) for sizes of 8 GiB up."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    # The checksum field counts as eight spaces (POSIX); old writers summed signed bytes, which tarfile also
    # accepts, but every writer since uses unsigned ones.
    try:
        stored = _number(header[148:156])
    except ValueError:
        return False
    return stored == sum(header[:148]) + 8 * 32 + sum(header[156:])


def _pax_records(data: bytes) -> dict[str, str]:
    """`"%d %s=%s\\n"` records of a pax extended header (POSIX.1-2001)."""
    records, at = {}, 0
    while at < len(data):
        space = data.index(b" ", at)
        length = int(data[at:space])
        key, _, value = data[space + 1 : at + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


def members(f: BinaryIO, where: str) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular file in the tar stream `f`, in order; `where` names it in errors."""
    read = f.read
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = read(BLOCK)
        if len(header) < BLOCK:
            if not header:
                return  # a stream cut at a member boundary, without the end-of-archive blocks
            raise tarfile.ReadError(f"{where}: truncated tar header")
        if header.count(0) == BLOCK:
            return  # the end-of-archive marker
        if not _checksum_ok(header):
            raise tarfile.ReadError(f"{where}: a tar header with a bad checksum (not a tar, or damaged)")
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax else _number(header[124:136])
        data = read(size)
        if len(data) < size:
            raise tarfile.ReadError(f"{where}: truncated tar member")
        padding = -size % BLOCK
        if padding:
            read(padding)
        if kind == b"x":
            pax = _pax_records(data)
            continue
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind == b"K":  # GNU long link name: for the link member that follows, which is skipped
            continue
        if kind in REGULAR:
            name = pax.get("path") or long_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix and header[257:262] == b"ustar":
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            yield name, data
        # Per-member headers apply to the next member only; a global one ('g') applies to none read here.
        long_name, pax = None, {}


def samples(path: str) -> Iterator[tuple[str, bytes, bytes]]:
    """(key, image bytes, label bytes) of one WebDataset-layout shard: consecutive members sharing a key (the
    path up to the first dot of the file name), one `.cls` and one image each; a key missing either is left
    out."""
    key = image = label = None
    with open(path, "rb", buffering=READ_BUFFER) as f:
        for name, data in members(f, path):
            folder, _, base = name.rpartition("/")
            stem, _, ext = base.partition(".")
            stem = f"{folder}/{stem}" if folder else stem
            if stem != key:
                if image is not None and label is not None:
                    yield key, image, label
                key, image, label = stem, None, None
            if ext == "cls":
                label = data
            else:
                image = data
    if image is not None and label is not None:
        yield key, image, label
