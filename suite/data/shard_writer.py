"""`resnet-bench data shard SRC DEST`: an image folder packed into tar shards for parallel file systems.

Lustre and GPFS serve a few large files far better than 1.33 M small ones. Each shard is a plain tar in the
WebDataset layout: per sample `<key>.jpg` (or `.png`: the file's bytes as they were, never re-encoded) then
`<key>.cls` (the label as decimal text), samples consecutive. `index.json` beside the shards lists the classes,
every shard with its sample count and size, and how the select split was drawn; it is written last, so a
directory with an index holds complete shards (suite/data/shards.py reads it).

The select split is held out here, once, into `select-NNNNNN.tar` (stratified by class, as for folders:
suite/data/loaders.py `select_split`), so a run reads it without scanning the training shards: every repeat on
these shards shares one select split. The training samples are shuffled across classes before they are cut
into shards (a shard then holds every class), which the loaders' per-epoch shard order and shuffle buffer
build on; `val/` is packed in its order.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path

from suite.data.config import DataConfig, DatasetInfo
from suite.data.loaders import select_split
from suite.data.preflight import prepare_data
from suite.errors import UserError, check
from suite.files import write_atomic

INDEX_NAME = "index.json"
INDEX_VERSION = 1
SHARD_SPLITS = ("train", "select", "val")  # val is the test split, as for folders
DEFAULT_SHARD_SIZE = 1000  # samples: about 110 MB of ImageNet JPEGs, WebDataset's usual 100 MB–1 GB range


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def write_shards(
    src: str, dest: str, *, shard_size: int = DEFAULT_SHARD_SIZE, select_fraction: float = 0.1, seed: int = 0
) -> dict:
    """Pack the image folder `src` into shards under `dest` (missing or empty); returns the index written."""
    check(shard_size >= 1, f"--shard-size must be ≥ 1, got {shard_size}")
    check(0 < select_fraction <= 0.5, f"--select-fraction must be in (0, 0.5], got {select_fraction}")
    out = Path(os.path.abspath(os.path.expanduser(dest)))
    check(not out.is_file(), f"{out} is a file; accepted: a missing or empty directory")
    check(
        not out.is_dir() or not any(out.iterdir()),
        f"{out} is not empty; accepted: a missing or empty directory (shards are never written over)",
    )
    info = prepare_data(DataConfig(backend="imagefolder", data_dir=src, select_fraction=select_fraction))
    train, select = select_split(info.samples("train"), select_fraction, seed)
    random.Random(f"shards/{seed}").shuffle(train)
    samples = {"train": train, "select": select, "val": info.samples("val")}
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        splits = {
            split: _write_split(info, out, split, samples[split], shard_size, written)
            for split in SHARD_SPLITS
        }
        index = {
            "version": INDEX_VERSION,
            "layout": "webdataset",
            "source": info.root,
            "classes": list(info.classes),
            "shard_size": shard_size,
            "select_fraction": select_fraction,
            "select_seed": seed,
            "corrupt_files": list(info.corrupt_files),  # found by the source's sample decode, left out
            "splits": splits,
        }
        write_atomic(out / INDEX_NAME, lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
    except BaseException:
        for path in written:  # no half-written set: shards without their index are removed
            path.unlink(missing_ok=True)
        raise
    return index


def _write_split(
    info: DatasetInfo, out: Path, split: str, samples: list[tuple[str, int]], size: int, written: list[Path]
) -> list[dict]:
    shards = []
    for number, start in enumerate(range(0, len(samples), size)):
        path = out / shard_name(split, number)
        chunk = samples[start : start + size]
        write_atomic(path, lambda tmp, chunk=chunk, first=start: _write_tar(tmp, info.root, chunk, first))
        written.append(path)
        shards.append({"name": path.name, "samples": len(chunk), "bytes": path.stat().st_size})
    return shards


def _write_tar(path: Path, root: str, samples: list[tuple[str, int]], first: int) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for offset, (rel, label) in enumerate(samples):
            key = f"{first + offset:09d}"
            ext = os.path.splitext(rel)[1].lower().lstrip(".")
            source = os.path.join(root, rel)
            try:
                with open(source, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise UserError(
                    f"cannot read {source}: {e.strerror}; accepted: readable image files"
                ) from None
            _add(tar, f"{key}.{'jpg' if ext == 'jpeg' else ext}", data)
            _add(tar, f"{key}.cls", str(label).encode())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with fixed metadata, so the same folder always gives the same shard bytes."""
    member = tarfile.TarInfo(name)
    member.size, member.mode, member.mtime = len(data), 0o444, 0
    tar.addfile(member, io.BytesIO(data))
