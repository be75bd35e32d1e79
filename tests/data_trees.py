"""Small image trees for the data tests: drawn with PIL in tmp_path, each image a solid colour whose red value
tells which file a batch item came from."""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from suite.data.config import DataConfig
from suite.data.decode import IMAGENET_MEAN, IMAGENET_STD
from suite.errors import UserError


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> Path:
    """A solid image whose red channel is `value` (PNG keeps it exact; JPEG nearly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, 77)
    Image.new(mode, size, colour).save(path)
    return path


def make_tree(
    root: Path, counts: dict[str, dict[str, int]], ext: str = ".png", start: int = 10
) -> list[Path]:
    """train/<class>/*, val/<class>/* with `counts[split][class]` solid images of distinct red values."""
    paths, value = [], start
    for split, classes in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                paths.append(write_image(root / split / name / f"{i:03d}{ext}", value))
                value += 3
    return paths


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(
        **{"backend": "imagefolder", "data_dir": str(root), "image_size": 8, "workers": 0, **kw}
    )


def red_values(images: torch.Tensor) -> list[int]:
    """Undo the normalisation and read each (solid) image's red value: which file it came from."""
    red = images[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return [round(float(v) * 255) for v in red.mean(dim=(1, 2))]


def drain(batches) -> tuple[list[int], list[int]]:
    values, labels = [], []
    for images, y in batches:
        values += red_values(images)
        labels += y.tolist()
    return values, labels


def one_line_error(match: str):
    return pytest.raises(UserError, match=re.escape(match))


TWO_CLASSES = {"train": {"a": 8, "b": 8}, "val": {"a": 4, "b": 3}}


def textured(path: Path, size=(320, 240)) -> Path:
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8))
    small.resize(size, Image.Resampling.BICUBIC).save(path, quality=95)
    return path


def write_corrupt(path: Path, kind: str) -> Path:
    if kind == "garbage":
        path.write_bytes(b"this is not a JPEG at all" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # truncated: a real JPEG cut in half, which opens (header intact) but cannot be decoded
        textured(path, size=(64, 48))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


# Permissions. Root reads mode-000 files (CAP_DAC_OVERRIDE), so as root the test drops those capabilities in a
# forked child: what an ordinary user sees, without needing a second account.

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def drop_dac_capabilities() -> None:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    libc = ctypes.CDLL(None, use_errno=True)
    header, caps = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), caps) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    keep = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    caps[0].effective &= keep
    caps[0].permitted &= keep
    if libc.capset(ctypes.byref(header), caps) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def as_ordinary_user(fn) -> str:
    """`str(fn())` as a user without root's permission overrides: in a forked child that drops them when
    this is root (skipped where they cannot be dropped). An exception in `fn` fails the calling test."""
    if os.geteuid() != 0:
        return str(fn())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running pytest's teardown
        status = 0
        try:
            try:
                drop_dac_capabilities()
            except OSError as e:
                os.write(write, f"SKIP cannot drop capabilities: {e}".encode())
                raise
            os.write(write, f"OK {fn()}".encode())
        except BaseException as e:
            os.write(write, f"ERROR {type(e).__name__}: {e}".encode())
            status = 1
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    if out.startswith("SKIP"):
        pytest.skip(out.split("ERROR")[0])
    assert out.startswith("OK "), out
    return out[3:]
