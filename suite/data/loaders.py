"""A rank's loaders (`build_loaders` → `Loaders`) and the DataLoader plumbing the image backends share:
epoch-tagged sampling, per-batch skip counts across worker processes, and the normalising collate."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from suite.data.config import DataConfig, DatasetInfo
from suite.data.decode import IMAGENET_MEAN, IMAGENET_STD
from suite.data.device_decode import RawCollate
from suite.data.registry import backend
from suite.errors import check


class SkipCounter:
    value = 0


class Loaders:
    """What `build_loaders` returns: this rank's micro-batches of the run's three splits.

    - `train`: what the optimizer sees; `len(train)` is the number of steps per epoch.
    - `select`: held out from the training data; every decision of the run reads it (ε discards, the
      post-hoc ranking, learning-rate restarts, time-to-target).
    - `test`: the reported split (the folder layout's `val/`), which no decision reads.

    All three are re-iterable and yield `(images float32 NCHW, labels int64)`; across ranks, `select` and
    `test` hold every image exactly once. `skipped` counts images this rank dropped at load time because they
    failed to decode or had vanished (DataLoader workers are separate processes, so each batch carries its own
    count here).
    """

    def __init__(self, train, select, test, *, set_epoch: Callable[[int], None] | None = None, skipped=None):
        self.train, self.select, self.test = train, select, test
        self._set_epoch = set_epoch
        self._skipped = SkipCounter() if skipped is None else skipped

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle (and re-draw the augmentation of) the training split deterministically for `epoch`."""
        if self._set_epoch is not None:
            self._set_epoch(epoch)

    @property
    def skipped(self) -> int:
        return self._skipped.value


def select_split(
    samples: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, select): `fraction` of each class's samples held out, drawn with `seed`, order kept.

    Stratified so every class is in both (at least one image each where the class has two); seeded by the
    run's seed, so repeats also vary the held-out images, and every rank draws the same split.
    """
    by_label: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_label.setdefault(label, []).append(i)
    held: set[int] = set()
    for label, indices in sorted(by_label.items()):
        n = min(len(indices) - 1, max(1, round(fraction * len(indices))))
        held.update(random.Random(f"select/{seed}/{label}").sample(indices, n))
    train = [s for i, s in enumerate(samples) if i not in held]
    select = [s for i, s in enumerate(samples) if i in held]
    return train, select


def sharded(n: int, rank: int, world_size: int) -> list[int]:
    """Evaluation keys of rank `rank`: r, r+W, r+2W, …, so every image is counted exactly once across ranks,
    with no padding (the DistributedSampler would repeat images to even out the shards and bias accuracy)."""
    return list(range(rank, n, world_size))


def build_loaders(
    cfg: DataConfig, info: DatasetInfo, *, micro_batch: int, rank: int, world_size: int
) -> Loaders:
    """This rank's loaders for the data `prepare_data` checked (`info`), built from `info` alone: no directory
    is listed and no file checked again."""
    check(micro_batch >= 1, f"micro_batch must be ≥ 1, got {micro_batch}")
    check(world_size >= 1 and 0 <= rank < world_size, f"rank {rank} of world size {world_size} is invalid")
    check(
        info.backend == cfg.backend,
        f"DatasetInfo is for backend {info.backend!r}, config asks for {cfg.backend!r}",
    )
    return backend(cfg.backend).loaders(cfg, info, micro_batch=micro_batch, rank=rank, world_size=world_size)


def data_loader(
    dataset: Dataset, sampler, micro_batch: int, cfg: DataConfig, *, drop_last: bool
) -> DataLoader:
    """The DataLoader settings every image backend uses (`sampler` yields the dataset's keys)."""
    workers = cfg.workers
    return DataLoader(
        dataset,
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=RawCollate(cfg.image_size) if cfg.decode == "gpu" else collate,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        # Workers stay up between epochs (and evaluations): re-forking them costs seconds per epoch.
        persistent_workers=workers > 0,
        # At least four batches in flight per rank to absorb decode-time jitter, two per worker when there are
        # many (torch's default), which bounds the shared memory held by large batches.
        prefetch_factor=max(2, math.ceil(4 / workers)) if workers > 0 else None,
    )


class EpochTagged(Sampler):
    """Yields `(index, epoch)`: the epoch reaches the dataset even inside persistent worker processes, so an
    image's augmentation is a function of (seed, epoch, index), whatever the number of workers."""

    def __init__(self, inner: DistributedSampler):
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.inner.epoch
        return ((i, epoch) for i in self.inner)


class Counted:
    """A DataLoader whose batches carry the number of images dropped: yields plain `(images, labels)` and adds
    the drops to this rank's counter."""

    def __init__(self, loader: DataLoader, counter: SkipCounter):
        self.loader, self.counter = loader, counter

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels, dropped in self.loader:
            self.counter.value += dropped
            if len(labels):
                yield images, labels


_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the decodable images (uint8 HWC) into one normalised float32 NCHW batch; count the rest (`None`).

    ToTensor + Normalize, done once per batch: (x/255 − mean)/std as one scale and one shift per channel.
    """
    kept = [item for item in items if item is not None]
    dropped = len(items) - len(kept)
    if not kept:
        return torch.empty(0, 3, 0, 0), torch.empty(0, dtype=torch.int64), dropped
    stacked = torch.from_numpy(np.stack([image for image, _ in kept]))
    images = torch.empty(stacked.shape[0], 3, *stacked.shape[1:3], dtype=torch.float32)
    images.copy_(stacked.permute(0, 3, 1, 2))
    images.mul_(1 / (255 * _STD)).sub_(_MEAN / _STD)
    return images, torch.tensor([label for _, label in kept], dtype=torch.int64), dropped
