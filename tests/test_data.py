"""Data backends: batches, rank shards, epochs, the index shared through `DatasetInfo`, the registry, and
load-time failures.

Most tests load in-process (workers=0), one crosses a worker-process boundary. The preflight's bad-input cases,
the decode and the shapes set have their own files (test_data_preflight.py, test_data_decode.py,
test_data_shapes.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from suite.data.config import DataConfig
from suite.data.loaders import build_loaders
from suite.data.preflight import prepare_data
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
