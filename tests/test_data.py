"""Data backends: batches, rank shards, epochs, the index shared through `DatasetInfo`, the registry, and
load-time failures.

Most tests load in-process (workers=0), one crosses a worker-process boundary. The preflight's bad-input
cases, the decode and the shapes set have their own files (test_data_preflight.py, test_data_decode.py,
test_data_shapes.py).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from launchers.grid import load_grid
from suite.data import imagefolder, shapes
from suite.data.config import DataConfig, DatasetInfo, data_config
from suite.data.loaders import build_loaders
from suite.data.preflight import prepare_data
from suite.data.registry import NAMES, backend, default_min_crop_scale
from suite.errors import UserError
from suite.spec import RunSpec
from tests.data_trees import TWO_CLASSES, drain, folder_cfg, make_tree, write_corrupt, write_image

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
    sizes = [sum(len(y) for _, y in loaders.test) for loaders in ranks]
    assert sizes == [5, 5]
    whole = build_loaders(cfg, info, micro_batch=10, rank=0, world_size=1)
    (all_images, all_labels), *_ = list(whole.test)
    first_rank0 = next(iter(ranks[0].test))
    assert torch.equal(first_rank0[0][1], all_images[2]) and first_rank0[1][1] == all_labels[2]
    # Select: its own stream, cut to select_fraction of the training size, every image once across ranks.
    assert [sum(len(y) for _, y in loaders.select) for loaders in ranks] == [3, 3]  # round(0.1 × 64) = 6
    (select_images, _), *_ = list(build_loaders(cfg, info, micro_batch=10, rank=0, world_size=1).select)
    assert not any(torch.equal(a, b) for a in select_images for b in all_images)
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
    assert len(loaders.train) == 8 // 4  # 1 image per class held out for the select split
    for images, labels in loaders.train:
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
    assert [len(y) for _, y in loaders.test] == [4, 4]
    assert [len(y) for _, y in loaders.test] == [4, 4]  # re-iterable, like the trainer's per-epoch evaluation


def test_train_shards_of_two_ranks_are_disjoint_and_cover_the_split(tmp_path):
    make_tree(tmp_path, TWO_CLASSES)  # 8 + 8 train images: 1 + 1 held out for select, 14 trained on
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)
    shards, selects = [], []
    for rank in (0, 1):
        loaders = build_loaders(cfg, info, micro_batch=2, rank=rank, world_size=2)
        assert len(loaders.train) == 7 // 2  # 7 images per rank, the last half batch dropped
        loaders = build_loaders(cfg, info, micro_batch=1, rank=rank, world_size=2)
        values, _ = drain(loaders.train)
        shards.append(values)
        selects += drain(loaders.select)[0]
    assert len(shards[0]) == len(shards[1]) == 7
    assert not set(shards[0]) & set(shards[1])
    assert len(selects) == 2 and not set(selects) & set(shards[0] + shards[1])
    assert sorted(shards[0] + shards[1] + selects) == list(range(10, 10 + 3 * 16, 3))


def test_select_split_is_stratified_seeded_and_held_out_from_train(tmp_path):
    counts = {"train": {"a": 30, "b": 20, "c": 1}, "val": {"a": 2, "b": 2, "c": 2}}
    make_tree(tmp_path, counts)
    info = prepare_data(folder_cfg(tmp_path))
    first = {"a": range(10, 100, 3), "b": range(100, 160, 3), "c": [160]}

    def split(seed: int, fraction: float = 0.2):
        loaders = build_loaders(
            folder_cfg(tmp_path, seed=seed, select_fraction=fraction),
            info,
            micro_batch=1,
            rank=0,
            world_size=1,
        )
        return drain(loaders.train)[0], drain(loaders.select)

    train, (held, labels) = split(seed=0)
    # 20 % of each class (at least one, never a whole class): 6 of a, 4 of b, none of the one-image class c.
    assert sorted(labels) == [0] * 6 + [1] * 4
    assert sum(v in first["a"] for v in held) == 6 and 160 in train
    assert not set(train) & set(held) and len(train) + len(held) == 51
    assert split(seed=0)[1][0] == held  # the same split every time (and so on every rank)
    assert set(split(seed=1)[1][0]) != set(held)  # repeats with another seed hold out other images
    assert len(split(seed=0, fraction=0.5)[1][0]) == 15 + 10


def test_test_shards_count_every_image_of_val_exactly_once_with_an_odd_count(tmp_path):
    make_tree(tmp_path, TWO_CLASSES)  # 7 val images, 2 ranks
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)
    assert info.val_size == 7
    seen, labels = [], []
    for rank in (0, 1):
        values, y = drain(build_loaders(cfg, info, micro_batch=3, rank=rank, world_size=2).test)
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
# Load-time failures: skipped and counted, across worker processes too


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_that_breaks_after_the_preflight_is_skipped_and_counted(tmp_path, workers):
    make_tree(tmp_path, TWO_CLASSES)
    cfg = folder_cfg(tmp_path, workers=workers)
    info = prepare_data(cfg)
    write_corrupt(tmp_path / "val" / "b" / "000.png", "garbage")
    write_corrupt(tmp_path / "train" / "a" / "003.png", "truncated")
    loaders = build_loaders(cfg, info, micro_batch=1, rank=0, world_size=1)
    assert sum(len(y) for _, y in loaders.test) == 6
    assert loaders.skipped == 1
    # The broken train image is in the train or the select split (seeded): together they lose exactly it.
    assert sum(len(y) for split in (loaders.train, loaders.select) for _, y in split) == 15
    assert loaders.skipped == 2
    assert sum(len(y) for _, y in loaders.test) == 6  # again: the count accumulates on this rank
    assert loaders.skipped == 3


def test_a_file_that_vanished_after_the_preflight_is_skipped_and_counted(tmp_path):
    make_tree(tmp_path, TWO_CLASSES)
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)
    (tmp_path / "val" / "a" / "001.png").unlink()
    loaders = build_loaders(cfg, info, micro_batch=1, rank=0, world_size=1)
    assert sum(len(y) for _, y in loaders.test) == 6 and loaders.skipped == 1
    assert sum(len(y) for split in (loaders.train, loaders.select) for _, y in split) == 16
    assert loaders.skipped == 1


# ---------------------------------------------------------------------------------------------------------------
# The index: checked once, shared as a plain dict, never re-listed by a rank


def batches_of(cfg: DataConfig, info, epoch: int, rank: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loaders = build_loaders(cfg, info, micro_batch=3, rank=rank, world_size=2)
    loaders.set_epoch(epoch)
    return list(loaders.train) + list(loaders.test)


def test_dataset_info_round_trips_through_json_to_the_same_batches(tmp_path):
    make_tree(tmp_path, {"train": {"a": 60, "b": 60}, "val": {"a": 10, "b": 10}})
    write_corrupt(
        tmp_path / "train" / "b" / "zz_bad.png", "garbage"
    )  # 1 of 141: listed, left out of the index
    cfg = folder_cfg(tmp_path)
    info = prepare_data(cfg)
    assert len(info.corrupt_files) == 1 and (info.train_size, info.val_size) == (120, 20)
    d = json.loads(json.dumps(info.to_dict()))
    assert str(tmp_path) not in json.dumps(d["files"])  # names, not absolute paths
    again = DatasetInfo.from_dict(d)
    assert again == info and hash(again) == hash(info)
    for epoch, rank in ((0, 0), (1, 1)):
        for (x, y), (x2, y2) in zip(
            batches_of(cfg, info, epoch, rank), batches_of(cfg, again, epoch, rank), strict=True
        ):
            assert torch.equal(x, x2) and torch.equal(y, y2)
    synthetic = prepare_data(DataConfig(backend="synthetic"))
    assert DatasetInfo.from_dict(json.loads(json.dumps(synthetic.to_dict()))) == synthetic


def test_samples_are_paths_relative_to_the_root_in_label_order(tmp_path):
    make_tree(tmp_path, {"train": {"a": 2, "b": 1}, "val": {"a": 1, "b": 1}})
    info = prepare_data(folder_cfg(tmp_path))
    assert info.samples("train") == [("train/a/000.png", 0), ("train/a/001.png", 0), ("train/b/000.png", 1)]
    assert info.samples("val") == [("val/a/000.png", 0), ("val/b/000.png", 1)]


@pytest.mark.parametrize("backend", ["imagefolder", "shapes"])
def test_build_loaders_lists_no_directory(tmp_path, monkeypatch, backend):
    monkeypatch.setattr(shapes, "SHAPES_PER_CLASS", {"train": 3, "val": 2})
    if backend == "imagefolder":
        make_tree(tmp_path, TWO_CLASSES)
        cfg = folder_cfg(tmp_path)
    else:
        cfg = DataConfig(backend="shapes", data_dir=str(tmp_path / "shapes"), image_size=8, workers=0)
    listings = []
    list_dir = imagefolder.list_dir
    monkeypatch.setattr(
        imagefolder, "list_dir", lambda path, **kw: listings.append(path) or list_dir(path, **kw)
    )
    info = prepare_data(cfg)
    assert listings  # the preflight lists the tree (through the counted function)
    listings.clear()
    for rank in (0, 1):
        loaders = build_loaders(cfg, info, micro_batch=2, rank=rank, world_size=2)
        loaders.set_epoch(1)
        assert list(loaders.train) and list(loaders.test)
    assert listings == []


# ---------------------------------------------------------------------------------------------------------------
# The registry: the backend names are declared once, and each name is one module with the one signature


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_backend_has_the_signature_and_is_accepted_by_specs_and_grids(tmp_path, name):
    module = backend(name)
    assert callable(module.preflight) and callable(module.loaders) and 0 < module.MIN_CROP_SCALE <= 1
    assert default_min_crop_scale(name) == module.MIN_CROP_SCALE
    assert RunSpec(dataset=name, data_dir="/data").dataset == name
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "name: t\ndefaults: {width: 8, small_stem: true, image_size: 32}\n"
        f"points: [{{dataset: {name}, data_dir: /data}}]\n"
    )
    assert [s.dataset for s in load_grid(grid).specs] == [name]


def test_spec_grid_and_preflight_refuse_an_unregistered_name_listing_exactly_the_registry(tmp_path):
    accepted = f"accepted: {', '.join(NAMES)}"
    assert accepted == "accepted: synthetic, imagefolder, shapes, shards"  # the order users have always seen
    with pytest.raises(UserError, match=accepted):
        RunSpec(dataset="cifar")
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: t\npoints: [{dataset: cifar}]\n")
    with pytest.raises(UserError, match=accepted):
        load_grid(grid)
    with pytest.raises(UserError, match=accepted):
        prepare_data(DataConfig(backend="cifar"))


def test_data_config_takes_each_backends_own_crop_bound():
    assert data_config(RunSpec(dataset="shapes")).min_crop_scale == shapes.MIN_CROP_SCALE == 0.5
    assert data_config(RunSpec(dataset="imagefolder", data_dir="/d")).min_crop_scale == 0.08
    assert data_config(RunSpec(dataset="shapes", min_crop_scale=0.3)).min_crop_scale == 0.3
    cfg = data_config(RunSpec(dataset="synthetic", image_size=64, loader_workers=0, seed=3))
    assert (cfg.backend, cfg.image_size, cfg.workers, cfg.seed) == ("synthetic", 64, 0, 3)


# ---------------------------------------------------------------------------------------------------------------
# Decoded-view cache: a fixed view is decoded once per run, and the batches are the ones a fresh decode gives


def noisy_tree(root, per_class: int = 6) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.jpg", quality=90)


@pytest.mark.parametrize("augment", ["pad_crop", "random_resized_crop"])
def test_fixed_views_are_decoded_once_and_give_the_uncached_batches(tmp_path, monkeypatch, augment):
    noisy_tree(tmp_path)
    cfg = folder_cfg(tmp_path, image_size=12, augment=augment)
    info = prepare_data(cfg)
    decoded = []
    real = imagefolder.decode_view
    monkeypatch.setattr(
        imagefolder, "decode_view", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k)
    )

    def three_epochs(cfg):
        loaders = build_loaders(cfg, info, micro_batch=4, rank=0, world_size=1)
        out = []
        for epoch in range(3):
            loaders.set_epoch(epoch)
            out += [batch for split in (loaders.train, loaders.select, loaders.test) for batch in split]
        return out

    cached = three_epochs(cfg)
    fresh = three_epochs(replace(cfg, view_cache_bytes=0))
    assert len(cached) == len(fresh) > 0
    for (x, y), (x0, y0) in zip(cached, fresh, strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0)
    # pad_crop's training view is fixed (the epochs differ by shift and flip only): every image decoded once.
    # random_resized_crop draws its crop each epoch: only the evaluation views (select, test) are kept.
    select_images, train_images, val_images = 2, 10, 12
    once = select_images + val_images + (train_images if augment == "pad_crop" else 0)
    assert len(decoded) == once and len(set(decoded)) == once, len(decoded)
