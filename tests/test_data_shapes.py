"""The shapes set: generated once, deterministically, safely under concurrent callers. Its learnability is
checked by hand, not here (minutes of training)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import torch
from PIL import Image

from suite.data import shapes
from suite.data.config import DataConfig
from suite.data.loaders import build_loaders
from suite.data.manifest import MANIFEST_NAME
from suite.data.preflight import prepare_data
from suite.data.shapes import SHAPES_CLASSES
from tests.data_trees import one_line_error, write_image

SMALL_SHAPES = {"train": 3, "val": 2}


# ---------------------------------------------------------------------------------------------------------------
# The shapes set


def digest(root: Path) -> dict[str, str]:
    """The generated set's files (not the manifest the preflight writes beside them, which names its path)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def test_shapes_backend_default_location_sizes_and_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_BENCH_DATA", str(tmp_path))
    cfg = DataConfig(backend="shapes", image_size=32, workers=0)
    info = prepare_data(cfg)
    assert info.root == str(tmp_path / shapes.SHAPES_DIRNAME)
    # val/ is the test split: ≥ 2,000 images, so one run's 95 % interval is within ±2 pp at 70 % top-1.
    assert (info.num_classes, info.train_size, info.val_size) == (10, 2560, 2100)
    assert info.classes == SHAPES_CLASSES and info.corrupt_files == ()
    loaders = build_loaders(cfg, info, micro_batch=16, rank=1, world_size=2)
    assert len(loaders.train) == (2560 - 260) // 32  # 26 images per class held out for select
    assert sum(len(y) for _, y in loaders.select) == 130 and sum(len(y) for _, y in loaders.test) == 1050
    images, labels = next(iter(loaders.train))
    assert images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64
    with Image.open(next((tmp_path / shapes.SHAPES_DIRNAME / "val" / "star").iterdir())) as image:
        assert (image.format, image.size) == ("JPEG", (64, 64))


def test_shapes_generation_is_deterministic_and_idempotent(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "SHAPES_PER_CLASS", SMALL_SHAPES)
    one, two = tmp_path / "one", tmp_path / "two"
    info = prepare_data(DataConfig(backend="shapes", data_dir=str(one)))
    prepare_data(DataConfig(backend="shapes", data_dir=str(two)))
    assert digest(one) == digest(two)
    assert (info.train_size, info.val_size) == (30, 20)

    def must_not_run(*args, **kw):
        raise AssertionError("a complete set was generated again")

    monkeypatch.setattr(shapes, "generate_shapes", must_not_run)
    assert prepare_data(DataConfig(backend="shapes", data_dir=str(one))) == info


def test_shapes_concurrent_callers_share_one_set(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "SHAPES_PER_CLASS", SMALL_SHAPES)
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
    monkeypatch.setattr(shapes, "SHAPES_PER_CLASS", SMALL_SHAPES)
    root = tmp_path / "set"
    generate = shapes.generate_shapes

    def generate_and_lose(dest, **kw):
        generate(dest, **kw)
        generate(root, **kw)

    monkeypatch.setattr(shapes, "generate_shapes", generate_and_lose)
    info = prepare_data(DataConfig(backend="shapes", data_dir=str(root)))
    assert info.train_size == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == [".set.lock", "set"]


def test_shapes_fills_an_empty_directory_but_never_uses_a_half_written_one(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "SHAPES_PER_CLASS", SMALL_SHAPES)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_data(DataConfig(backend="shapes", data_dir=str(empty))).train_size == 30
    half = tmp_path / "half"
    write_image(half / "train" / "bar" / "0000.jpg")
    with one_line_error(f"{half} exists but holds no complete shapes set"):
        prepare_data(DataConfig(backend="shapes", data_dir=str(half)))
