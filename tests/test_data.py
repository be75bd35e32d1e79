"""Data backends: batches, rank shards, epochs, the generated shapes set, and every bad-input case.

Small ImageFolder trees are drawn with PIL in tmp_path; most tests load in-process (workers=0), one crosses a
worker-process boundary. The shapes set's learnability is checked by hand, not here (minutes of training).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import suite.data as data
from suite.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SHAPES_CLASSES,
    DataConfig,
    build_loaders,
    load_image,
    prepare_data,
)
from suite.errors import UserError

SMALL_SHAPES = {"train": 3, "val": 2}


# ---------------------------------------------------------------------------------------------------------------
# Helpers


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


# ---------------------------------------------------------------------------------------------------------------
# Batches


def test_synthetic_batches_shapes_lengths_and_fixed_val():
    cfg = DataConfig(backend="synthetic", image_size=16, synthetic_train_size=64, synthetic_val_size=10)
    info = prepare_data(cfg)
    assert (info.num_classes, info.train_size, info.val_size, info.root) == (10, 64, 10, None)
    ranks = [build_loaders(cfg, info, micro_batch=4, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0].train) == 64 // (4 * 2)
    batches = list(ranks[0].train)
    assert len(batches) == 8
    images, labels = batches[0]
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.max() < 10
    assert all(b[0] is images for b in batches)  # one pre-made batch: no per-step data cost
    # Val: rank r takes r, r+2, …; together every image once, and an image is the same whoever draws it.
    sizes = [sum(len(y) for _, y in loaders.val) for loaders in ranks]
    assert sizes == [5, 5]
    whole = build_loaders(cfg, info, micro_batch=10, rank=0, world_size=1)
    (all_images, all_labels), *_ = list(whole.val)
    first_rank0 = next(iter(ranks[0].val))
    assert torch.equal(first_rank0[0][1], all_images[2]) and first_rank0[1][1] == all_labels[2]
    assert ranks[0].skipped == 0
    ranks[0].set_epoch(3)  # a no-op for synthetic data, but part of the interface


def test_imagefolder_batches_accept_jpeg_png_case_and_modes(tmp_path):
    root = tmp_path / "imnet"
    for split, n in (("train", 3), ("val", 2)):
        for name in ("n01", "n02"):
            for i in range(n):
                write_image(root / split / name / f"x{i}.JPEG", size=(40, 30))
            write_image(root / split / name / "grey.jpg", mode="L", size=(20, 20))
            write_image(root / split / name / "pic.PNG", size=(9, 14))
            (root / split / name / "notes.txt").write_text("not an image")
    cfg = folder_cfg(root, image_size=16)
    info = prepare_data(cfg)
    assert (info.num_classes, info.train_size, info.val_size) == (2, 10, 8)
    assert info.classes == ("n01", "n02") and info.corrupt_files == ()
    loaders = build_loaders(cfg, info, micro_batch=4, rank=0, world_size=1)
    assert len(loaders.train) == 10 // 4
    for images, labels in loaders.train:
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
    assert [len(y) for _, y in loaders.val] == [4, 4]
    assert [len(y) for _, y in loaders.val] == [4, 4]  # re-iterable, like the trainer's per-epoch evaluation


def test_train_shards_of_two_ranks_are_disjoint_and_cover_the_split(tmp_path):
    make_tree(tmp_path, TWO_CLASSES)
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)
    shards = []
    for rank in (0, 1):
        loaders = build_loaders(cfg, info, micro_batch=2, rank=rank, world_size=2)
        assert len(loaders.train) == 16 // (2 * 2)
        values, _ = drain(loaders.train)
        shards.append(values)
    assert len(shards[0]) == len(shards[1]) == 8
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(10, 10 + 3 * 16, 3))


def test_val_shards_count_every_image_exactly_once_with_an_odd_count(tmp_path):
    make_tree(tmp_path, TWO_CLASSES)  # 7 val images, 2 ranks
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)
    assert info.val_size == 7
    seen, labels = [], []
    for rank in (0, 1):
        values, y = drain(build_loaders(cfg, info, micro_batch=3, rank=rank, world_size=2).val)
        assert len(values) == (4 if rank == 0 else 3)  # no padding: shards differ by one
        seen += values
        labels += y
    assert sorted(seen) == list(range(10 + 3 * 16, 10 + 3 * 23, 3))
    assert sorted(labels) == [0, 0, 0, 0, 1, 1, 1]


def test_set_epoch_reshuffles_deterministically(tmp_path):
    make_tree(tmp_path, TWO_CLASSES)
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)

    def order(epoch: int, seed: int = 0) -> list[int]:
        loaders = build_loaders(replace(cfg, seed=seed), info, micro_batch=2, rank=0, world_size=2)
        loaders.set_epoch(epoch)
        return drain(loaders.train)[0]

    assert order(0) == order(0)
    assert order(1) == order(1)
    assert order(0) != order(1)
    assert order(0, seed=1) != order(0)
    # Within one Loaders object, too: the sampler follows set_epoch.
    loaders = build_loaders(cfg, info, micro_batch=2, rank=0, world_size=2)
    loaders.set_epoch(1)
    assert drain(loaders.train)[0] == order(1)


# ---------------------------------------------------------------------------------------------------------------
# The decode: the fused, draft-mode pipeline gives the standard recipe's pixels


def textured(path: Path, size=(320, 240)) -> Path:
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8))
    small.resize(size, Image.Resampling.BICUBIC).save(path, quality=95)
    return path


def test_eval_crop_is_torchvisions_resize_and_center_crop(tmp_path):
    from torchvision import transforms

    png, jpg = textured(tmp_path / "t.png"), textured(tmp_path / "t.jpg")
    for size in (32, 64):
        reference = transforms.Compose(
            [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size)]
        )
        expected = np.asarray(reference(Image.open(png).convert("RGB")), dtype=float)
        assert np.abs(load_image(str(png), size) - expected).max() <= 1  # same pixels, up to rounding
        # JPEG: decoded at 1/4 or 1/8 scale (draft mode), resampled from there: the same image, slightly
        # different interpolation.
        assert np.abs(load_image(str(jpg), size) - expected).mean() < 3


def test_train_crop_in_draft_mode_matches_the_full_size_decode(tmp_path, monkeypatch):
    jpg = textured(tmp_path / "t.jpg")
    drafted = [load_image(str(jpg), 32, rng=random.Random(i)) for i in range(8)]
    monkeypatch.setattr(data, "_draft", lambda image, box, size: (image, box))
    full = [load_image(str(jpg), 32, rng=random.Random(i)) for i in range(8)]
    for a, b in zip(drafted, full, strict=True):
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        assert np.abs(a.astype(float) - b).mean() < 3


# ---------------------------------------------------------------------------------------------------------------
# The shapes set


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_shapes_backend_default_location_sizes_and_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_BENCH_DATA", str(tmp_path))
    cfg = DataConfig(backend="shapes", image_size=32, workers=0)
    info = prepare_data(cfg)
    assert info.root == str(tmp_path / data.SHAPES_DIRNAME)
    assert (info.num_classes, info.train_size, info.val_size) == (10, 2560, 640)
    assert info.classes == SHAPES_CLASSES and info.corrupt_files == ()
    loaders = build_loaders(cfg, info, micro_batch=16, rank=1, world_size=2)
    assert len(loaders.train) == 2560 // 32
    images, labels = next(iter(loaders.train))
    assert images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64
    with Image.open(next((tmp_path / data.SHAPES_DIRNAME / "val" / "star").iterdir())) as image:
        assert (image.format, image.size) == ("JPEG", (64, 64))


def test_shapes_generation_is_deterministic_and_idempotent(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHAPES_PER_CLASS", SMALL_SHAPES)
    one, two = tmp_path / "one", tmp_path / "two"
    info = prepare_data(DataConfig(backend="shapes", data_dir=str(one)))
    prepare_data(DataConfig(backend="shapes", data_dir=str(two)))
    assert digest(one) == digest(two)
    assert (info.train_size, info.val_size) == (30, 20)

    def must_not_run(*args, **kw):
        raise AssertionError("a complete set was generated again")

    monkeypatch.setattr(data, "generate_shapes", must_not_run)
    assert prepare_data(DataConfig(backend="shapes", data_dir=str(one))) == info


def test_shapes_concurrent_callers_share_one_set(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHAPES_PER_CLASS", SMALL_SHAPES)
    cfg = DataConfig(backend="shapes", data_dir=str(tmp_path / "set"))
    results, errors = [], []

    def call():
        try:
            results.append(prepare_data(cfg))
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and len(set(results)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".set.lock", "set"]  # no temporary dirs left


def test_shapes_loser_of_the_rename_race_uses_the_winners_set(tmp_path, monkeypatch):
    # Another host (which the file lock does not reach) publishes its set while this process is generating.
    monkeypatch.setattr(data, "SHAPES_PER_CLASS", SMALL_SHAPES)
    root = tmp_path / "set"
    generate = data.generate_shapes

    def generate_and_lose(dest, **kw):
        generate(dest, **kw)
        generate(root, **kw)

    monkeypatch.setattr(data, "generate_shapes", generate_and_lose)
    info = prepare_data(DataConfig(backend="shapes", data_dir=str(root)))
    assert info.train_size == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == [".set.lock", "set"]


def test_shapes_fills_an_empty_directory_but_never_uses_a_half_written_one(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHAPES_PER_CLASS", SMALL_SHAPES)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_data(DataConfig(backend="shapes", data_dir=str(empty))).train_size == 30
    half = tmp_path / "half"
    write_image(half / "train" / "bar" / "0000.jpg")
    with one_line_error(f"{half} exists but holds no complete shapes set"):
        prepare_data(DataConfig(backend="shapes", data_dir=str(half)))


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line, naming the path, decided before any model is built


def bad_inputs(tmp_path: Path) -> dict[str, tuple[DataConfig, str]]:
    """name → (config, expected message fragment), for every bad-input case of the preflight."""
    f = tmp_path / "afile"
    f.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_val = tmp_path / "no_val"
    make_tree(no_val, {"train": {"a": 1}})
    no_classes = tmp_path / "no_classes"
    (no_classes / "train").mkdir(parents=True)
    (no_classes / "val").mkdir()
    no_images = tmp_path / "no_images"
    make_tree(no_images, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 0}})
    (no_images / "val" / "b" / "readme.txt").write_text("x")
    train_only = tmp_path / "train_only"
    make_tree(train_only, {"train": {"a": 1, "b": 1}, "val": {"a": 1}})
    val_only = tmp_path / "val_only"
    make_tree(val_only, {"train": {"a": 1}, "val": {"a": 1, "c": 1}})
    good = tmp_path / "good"
    make_tree(good, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}})
    missing = tmp_path / "missing"
    cases = [
        ("unknown backend", DataConfig(backend="imagenet"), "data backend 'imagenet' unknown"),
        ("no data_dir", DataConfig(backend="imagefolder"), "the imagefolder backend needs data_dir"),
        ("missing", folder_cfg(missing), f"data directory {missing} does not exist"),
        ("a file", folder_cfg(f), f"data directory {f} is not a directory"),
        ("empty", folder_cfg(empty), f"{empty} has no train/ directory (it is empty)"),
        ("no val split", folder_cfg(no_val), f"{no_val} has no val/ directory"),
        ("no class folders", folder_cfg(no_classes), f"{no_classes / 'train'} holds no class folders"),
        (
            "class without images",
            folder_cfg(no_images),
            f"class folder {no_images / 'val' / 'b'} holds no images",
        ),
        (
            "train-only class",
            folder_cfg(train_only),
            f"class folder {train_only / 'train' / 'b'} has no counterpart",
        ),
        ("val-only class", folder_cfg(val_only), f"class folder {val_only / 'val' / 'c'} has no counterpart"),
        ("num_classes", folder_cfg(good, num_classes=3), f"num_classes=3 but {good} has 2 class folders"),
        ("shapes num_classes", DataConfig(backend="shapes", num_classes=5), "does not fit the shapes set"),
        (
            "shapes dir is a file",
            DataConfig(backend="shapes", data_dir=str(f)),
            f"shapes data_dir {f} is a file",
        ),
    ]
    return {name: (cfg, fragment) for name, cfg, fragment in cases}


BAD_INPUTS = [
    "unknown backend",
    "no data_dir",
    "missing",
    "a file",
    "empty",
    "no val split",
    "no class folders",
    "class without images",
    "train-only class",
    "val-only class",
    "num_classes",
    "shapes num_classes",
    "shapes dir is a file",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_every_bad_input_is_a_one_line_user_error_naming_the_path(tmp_path, case):
    cases = bad_inputs(tmp_path)
    assert sorted(cases) == sorted(BAD_INPUTS)
    cfg, fragment = cases[case]
    with pytest.raises(UserError, match=re.escape(fragment)) as caught:
        prepare_data(cfg)
    assert "\n" not in str(caught.value) and "accepted" in str(caught.value)


def write_corrupt(path: Path, kind: str) -> Path:
    if kind == "garbage":
        path.write_bytes(b"this is not a JPEG at all" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # truncated: a real JPEG cut in half, which opens (header intact) but cannot be decoded
        textured(path, size=(64, 48))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_a_few_corrupt_images_are_listed_and_skipped(tmp_path, kind):
    make_tree(tmp_path, {"train": {"a": 60, "b": 60}, "val": {"a": 10, "b": 10}})
    bad = write_corrupt(tmp_path / "train" / "b" / f"zz_bad.{'jpg' if kind != 'empty' else 'png'}", kind)
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)  # 1 corrupt of 141 checked: under 1 %
    assert info.corrupt_files == (str(bad),)
    assert info.train_size == 120
    loaders = build_loaders(cfg, info, micro_batch=40, rank=0, world_size=1)
    assert sum(len(y) for _, y in loaders.train) == 120 and loaders.skipped == 0


def test_many_corrupt_images_are_an_error(tmp_path):
    make_tree(tmp_path, {"train": {"a": 30, "b": 30}, "val": {"a": 5, "b": 5}})
    write_corrupt(tmp_path / "train" / "a" / "bad1.jpg", "garbage")
    write_corrupt(tmp_path / "val" / "b" / "bad2.jpg", "truncated")
    with one_line_error(f"2 of 72 checked images under {tmp_path} do not decode"):
        prepare_data(folder_cfg(tmp_path))


def test_a_class_with_no_decodable_image_is_an_error(tmp_path):
    make_tree(tmp_path, {"train": {"a": 200, "b": 0}, "val": {"a": 2, "b": 0}})
    for split in ("train", "val"):
        write_corrupt(tmp_path / split / "b" / "only.jpg", "garbage")
    with one_line_error(f"no checked image of class folder {tmp_path / 'train' / 'b'} decodes"):
        prepare_data(folder_cfg(tmp_path))


def test_preflight_decodes_a_bounded_sample_of_large_sets(tmp_path, monkeypatch):
    make_tree(tmp_path, {"train": {"a": 40, "b": 40}, "val": {"a": 10, "b": 10}})
    seen = []
    decodes = data._decodes
    monkeypatch.setattr(data, "_decodes", lambda path: seen.append(path) or decodes(path))
    prepare_data(folder_cfg(tmp_path, verify_limit=20))
    assert len(seen) == 20  # in proportion: 8 + 8 train, 2 + 2 val, evenly spread
    assert len({Path(p).parent for p in seen}) == 4


# Permissions. Root reads mode-000 files (CAP_DAC_OVERRIDE), so as root the test drops those capabilities in a
# forked child: what an ordinary user sees, without needing a second account.

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_dac_capabilities() -> None:
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


def error_as_ordinary_user(cfg: DataConfig) -> str:
    """prepare_data(cfg)'s UserError message ("" if none) as a user without permission overrides sees it."""
    if os.geteuid() != 0:
        try:
            prepare_data(cfg)
        except UserError as e:
            return str(e)
        return ""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running pytest's teardown
        status = 0
        try:
            _drop_dac_capabilities()
            try:
                prepare_data(cfg)
                message = ""
            except UserError as e:
                message = str(e)
            os.write(write, message.encode())
        except BaseException as e:
            os.write(write, f"SKIP cannot drop capabilities: {e}".encode())
            status = 1
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    if message.startswith("SKIP"):
        pytest.skip(message)
    return message


def test_unreadable_file_and_directory_are_user_errors(tmp_path):
    make_tree(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    locked_file = tmp_path / "train" / "a" / "001.png"
    locked_file.chmod(0)
    try:
        if os.geteuid() == 0:
            prepare_data(folder_cfg(tmp_path))  # root itself can read it: no error for a root user
        message = error_as_ordinary_user(folder_cfg(tmp_path))
        assert f"cannot read {locked_file}: permission denied" in message and "\n" not in message
    finally:
        locked_file.chmod(0o644)
    locked_dir = tmp_path / "val" / "b"
    locked_dir.chmod(0)
    try:
        message = error_as_ordinary_user(folder_cfg(tmp_path))
        assert f"cannot list {locked_dir}: permission denied" in message
    finally:
        locked_dir.chmod(0o755)


# ---------------------------------------------------------------------------------------------------------------
# Load-time failures: skipped and counted, across worker processes too


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_that_breaks_after_the_preflight_is_skipped_and_counted(tmp_path, workers):
    make_tree(tmp_path, TWO_CLASSES)
    cfg = folder_cfg(tmp_path, workers=workers)
    info = prepare_data(cfg)
    write_corrupt(tmp_path / "val" / "b" / "000.png", "garbage")
    write_corrupt(tmp_path / "train" / "a" / "003.png", "truncated")
    loaders = build_loaders(cfg, info, micro_batch=4, rank=0, world_size=1)
    assert sum(len(y) for _, y in loaders.val) == 6
    assert loaders.skipped == 1
    assert sum(len(y) for _, y in loaders.train) == 15
    assert loaders.skipped == 2
    assert sum(len(y) for _, y in loaders.val) == 6  # again: the count accumulates on this rank
    assert loaders.skipped == 3


def test_data_changed_since_the_preflight_is_a_user_error(tmp_path):
    make_tree(tmp_path, TWO_CLASSES)
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)
    write_image(tmp_path / "train" / "a" / "new.png")
    with one_line_error(f"{tmp_path / 'train'} changed since the preflight"):
        build_loaders(cfg, info, micro_batch=2, rank=0, world_size=1)
