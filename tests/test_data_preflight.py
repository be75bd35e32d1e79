"""The preflight's bad input: one line, naming the path, decided before any model is built; corrupt files;
permissions."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from suite.data import preflight
from suite.data.config import DataConfig
from suite.data.loaders import build_loaders
from suite.data.manifest import MANIFEST_NAME
from suite.data.preflight import prepare_data
from suite.errors import UserError
from tests.data_trees import as_ordinary_user, folder_cfg, make_tree, one_line_error, write_corrupt

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


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_a_few_corrupt_images_are_listed_and_skipped(tmp_path, kind):
    make_tree(tmp_path, {"train": {"a": 60, "b": 60}, "val": {"a": 10, "b": 10}})
    bad = write_corrupt(tmp_path / "train" / "b" / f"zz_bad.{'jpg' if kind != 'empty' else 'png'}", kind)
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)  # 1 corrupt of 141 checked: under 1 %
    assert info.corrupt_files == (str(bad),)
    assert info.train_size == 120
    loaders = build_loaders(cfg, info, micro_batch=1, rank=0, world_size=1)
    assert sum(len(y) for split in (loaders.train, loaders.select) for _, y in split) == 120
    assert loaders.skipped == 0


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
    decodes = preflight._decodes
    monkeypatch.setattr(preflight, "_decodes", lambda path: seen.append(path) or decodes(path))
    prepare_data(folder_cfg(tmp_path, verify_limit=20))
    assert len(seen) == 20  # in proportion: 8 + 8 train, 2 + 2 val, evenly spread
    assert len({Path(p).parent for p in seen}) == 4


def error_as_ordinary_user(cfg: DataConfig) -> str:
    """prepare_data(cfg)'s UserError message ("" if none) as a user without permission overrides sees it."""

    def attempt() -> str:
        try:
            prepare_data(cfg)
        except UserError as e:
            return str(e)
        return ""

    return as_ordinary_user(attempt)


def test_unreadable_file_and_directory_are_user_errors(tmp_path):
    make_tree(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    locked_file = tmp_path / "train" / "a" / "001.png"
    locked_file.chmod(0)
    try:
        if os.geteuid() == 0:
            prepare_data(folder_cfg(tmp_path))  # root itself can read it: no error for a root user
            # Its manifest would spare the next preflight the listing and the decode that find the lock.
            (tmp_path / MANIFEST_NAME).unlink()
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
