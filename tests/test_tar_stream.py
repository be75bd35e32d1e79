"""The shard reader (suite/data/tar_stream.py) against Python's own tarfile, for what every common tar writer
produces: ustar, GNU and pax archives with long names, directories, links and empty members, and refusals of
what is not a tar or is cut short."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from suite.data import tar_stream
from suite.data.preflight import prepare_data
from suite.errors import UserError
from tests.test_data_shards import packed, shard_cfg  # noqa: F401  (the `packed` fixture)

LONG = "d" * 90 + "/" + "k" * 95  # 186 bytes, past the 100 of a header name: ustar splits off a prefix


def write_tar(path: Path, fmt: int, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar in format `fmt`; a member whose data is None is a directory, "->target" data a symlink."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif data.startswith(b"->"):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:].decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def tarfile_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def stream_members(path: Path) -> list[tuple[str, bytes]]:
    with open(path, "rb") as f:
        return list(tar_stream.members(f, str(path)))


MEMBERS = [
    ("top", None),
    ("top/000000001.jpg", bytes(range(256)) * 3),  # 768 bytes: padded to two blocks
    ("top/000000001.cls", b"7"),
    ("top/link", b"->000000001.jpg"),
    ("top/empty.txt", b""),
    (LONG + ".jpg", b"\xff\xd8" + b"x" * 511),  # exactly one block of data
    (LONG + ".cls", b"12"),
    ("ünïcode/000000002.png", b"\x89PNG" + b"\0" * 1000),
    ("ünïcode/000000002.cls", b"3"),
]


@pytest.mark.parametrize(
    "fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT], ids=["gnu", "pax", "ustar"]
)
def test_the_reader_yields_what_tarfile_reads(tmp_path, fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in MEMBERS if "ü" not in m[0]]
    path = write_tar(tmp_path / "s.tar", fmt, members)
    got = stream_members(path)
    assert got == tarfile_members(path)
    assert [name for name, _ in got] == [n for n, d in members if d is not None and not d.startswith(b"->")]


def test_samples_pair_each_key_with_its_image_and_label(tmp_path):
    path = write_tar(tmp_path / "s.tar", tarfile.PAX_FORMAT, MEMBERS)
    got = list(tar_stream.samples(str(path)))
    assert [(key, label) for key, _, label in got] == [
        ("top/000000001", b"7"),
        (LONG, b"12"),
        ("ünïcode/000000002", b"3"),
    ]
    assert got[0][1] == bytes(range(256)) * 3 and got[2][1].startswith(b"\x89PNG")


def test_a_pax_size_record_overrides_the_header(tmp_path):
    # pax writers put sizes of 8 GiB and more in a `size` record and leave the header's field short. Here the
    # header of a.bin says 0 after writing, so only a reader of the record finds its 600 bytes and b.bin.
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.bin")
        info.size, info.pax_headers = 600, {"size": "600"}
        tar.addfile(info, io.BytesIO(b"z" * 600))
        info = tarfile.TarInfo("b.bin")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    blob = bytearray(path.read_bytes())
    at = blob.index(b"a.bin\0")  # the ustar header after the pax one
    assert int(blob[at + 124 : at + 135], 8) == 600
    blob[at + 124 : at + 136] = b"00000000000\0"
    blob[at + 148 : at + 156] = b" " * 8
    blob[at + 148 : at + 156] = b"%06o\0 " % sum(blob[at : at + 512])
    path.write_bytes(bytes(blob))
    assert tarfile_members(path) == [("a.bin", b"z" * 600), ("b.bin", b"abc")]  # tarfile reads the record too
    assert stream_members(path) == [("a.bin", b"z" * 600), ("b.bin", b"abc")]


def test_what_is_not_a_whole_tar_is_a_read_error(tmp_path):
    path = write_tar(tmp_path / "s.tar", tarfile.GNU_FORMAT, MEMBERS)
    whole = path.read_bytes()
    cases = {
        "a file that is not a tar": b"not a tar at all " * 64,
        "a header cut short": whole[:700],  # the first member's data is 0 bytes: block 2 is a header
        "a member cut short": whole[: 1024 + 600],
        "a damaged header": whole[:512] + b"\x01" + whole[513:],
    }
    for blob in cases.values():
        path.write_bytes(blob)
        with pytest.raises(tarfile.ReadError, match=r"s\.tar"):
            stream_members(path)


def test_a_shard_that_is_not_a_tar_is_a_one_line_error_before_training(packed):  # noqa: F811
    _, dest = packed
    shard = dest / "train-000000.tar"
    size = shard.stat().st_size
    shard.write_bytes(b"\0\1" * (size // 2))  # the size the index lists, so only the content is wrong
    index = json.loads((dest / "index.json").read_text())
    assert index["splits"]["train"][0]["bytes"] == size
    with pytest.raises(UserError, match=r"the first image of shard .*train-000000\.tar does not decode"):
        prepare_data(shard_cfg(dest))
