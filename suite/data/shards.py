"""The shards backend: `dataset: shards`, `data_dir: DEST` trains on what `resnet-bench data shard` wrote.

A small reader (suite/data/tar_stream.py) rather than the webdataset library: a data-parallel run needs every
rank to take the same number of steps, and every select and test image counted exactly once across ranks.
webdataset splits whole shards by node and worker and leaves both to the user (uneven shards give uneven
ranks); the rules below are short enough to own.

- Shards go to (rank, loader worker) slots round-robin: slot r·K + w of W·K takes shards i ≡ slot (mod W·K).
  Nothing overlaps, and no listing is needed: the index names every shard.
- Training: the shard order is reshuffled every epoch (seeded by the run's seed and the epoch), each slot
  streams its shards through a seeded shuffle buffer, and every slot yields the same number of micro-batches
  per epoch, the most that the slot with the fewest samples can fill in any epoch's order. The few samples
  beyond that are left out of that epoch, other ones every epoch.
- Select and test: every slot yields all of its shards' samples, the last batch short: summed over ranks,
  each image once.
- A sample's augmentation is a function of (seed, epoch, split, key), whatever the slot that decodes it.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import multiprocessing
import os
import random
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from suite.data import tar_stream
from suite.data.config import DataConfig, DatasetInfo
from suite.data.decode import DECODE_ERRORS, IMAGENET_MIN_CROP_SCALE, load_image
from suite.data.device_decode import RawCollate, raw_item
from suite.data.loaders import Counted, Loaders, SkipCounter, collate
from suite.data.shard_writer import INDEX_NAME, INDEX_VERSION, SHARD_SPLITS
from suite.errors import UserError, check

MIN_CROP_SCALE = IMAGENET_MIN_CROP_SCALE
# Samples held per slot for shuffling (the writer already mixed the classes across shards): 512 ImageNet
# JPEGs are about 56 MB per loader worker.
SHUFFLE_BUFFER = 512
ACCEPTED = "accepted: a directory written by `resnet-bench data shard SRC DEST`"


def preflight(cfg: DataConfig) -> DatasetInfo:
    """Read DEST/index.json and check every shard it names is there at its size (no listing); decode the
    first image of each split."""
    check(cfg.data_dir is not None, f"the shards backend needs data_dir; {ACCEPTED}")
    root = Path(os.path.abspath(os.path.expanduser(cfg.data_dir)))
    path = root / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{root} holds no {INDEX_NAME}; {ACCEPTED}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}; {ACCEPTED}") from None
    check(
        isinstance(index, dict) and index.get("version") == INDEX_VERSION,
        f"{path} is not a version-{INDEX_VERSION} shard index; {ACCEPTED}",
    )
    classes = tuple(index["classes"])
    check(
        cfg.num_classes is None or cfg.num_classes == len(classes),
        f"num_classes={cfg.num_classes} but the shards in {root} have {len(classes)} classes; accepted: null"
        f" or {len(classes)}",
    )
    check(
        math.isclose(cfg.select_fraction, index["select_fraction"]),
        f"select_fraction {cfg.select_fraction} but the shards in {root} hold out {index['select_fraction']}"
        f" (fixed when they were written: data shard --select-fraction); accepted: {index['select_fraction']}",
    )
    shards = {}
    for split in SHARD_SPLITS:
        entries = index["splits"][split]
        check(bool(entries), f"{path} lists no {split} shard; {ACCEPTED}")
        for entry in entries:
            shard = root / entry["name"]
            check(
                os.path.basename(entry["name"]) == entry["name"],
                f"{path} names {entry['name']!r}; {ACCEPTED}",
            )
            try:
                size = shard.stat().st_size
            except OSError:
                raise UserError(f"shard {shard} listed in {path} is missing; {ACCEPTED}") from None
            check(
                size == entry["bytes"],
                f"shard {shard} is {size} bytes, its index says {entry['bytes']}; {ACCEPTED}",
            )
        _check_first_image(root, entries[0]["name"])
        shards[split] = tuple((e["name"], int(e["samples"])) for e in entries)
    count = {split: sum(n for _, n in shards[split]) for split in SHARD_SPLITS}
    return DatasetInfo(
        backend=cfg.backend,
        root=str(root),
        num_classes=len(classes),
        train_size=count["train"]
        + count["select"],  # the training images, select split included (as folders)
        val_size=count["val"],
        corrupt_files=tuple(index.get("corrupt_files", ())),
        classes=classes,
        shards=tuple(shards.items()),
    )


def _check_first_image(root: Path, name: str) -> None:
    try:
        _, data, _ = next(read_samples(str(root), [name]))
        load_image(io.BytesIO(data), 8)
    except (StopIteration, tarfile.TarError, *DECODE_ERRORS) as e:
        raise UserError(f"the first image of shard {root / name} does not decode ({e}); {ACCEPTED}") from None


def read_samples(root: str, names: list[str]) -> Iterator[tuple[str, bytes, int]]:
    """(key, image bytes, label) of every sample of the shards `names`, in order, streamed."""
    for name in names:
        for key, image, label in tar_stream.samples(os.path.join(root, name)):
            yield key, image, int(label)


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of `size` items: each output drawn at random from the buffer, which the stream refills."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """This rank's micro-batches of one split, collated (images, labels, dropped), from its slots' shards."""

    def __init__(self, root, split, shards, cfg: DataConfig, *, micro_batch, rank, world_size):
        self.root, self.split, self.shards, self.cfg = root, split, list(shards), cfg
        self.micro, self.rank, self.world = micro_batch, rank, world_size
        self.workers = max(1, cfg.workers)
        self.train = split == "train"
        self.slots = world_size * self.workers
        # Shared memory read by the loader's worker processes at each epoch's start (they outlive epochs).
        self.epoch = multiprocessing.Value("i", 0)
        if self.train:
            check(
                len(self.shards) >= self.slots,
                f"the {split} split has {len(self.shards)} shards for {world_size} ranks × {self.workers} loader"
                " workers; accepted: at least one shard per worker (data shard --shard-size smaller)",
            )
            fewest = sorted(n for _, n in self.shards)[: len(self.shards) // self.slots]
            self.batches_per_slot = sum(fewest) // micro_batch
            check(
                self.batches_per_slot >= 1, f"the {split} shards hold fewer than one micro-batch per worker"
            )

    def _order(self, epoch: int) -> list[tuple[str, int]]:
        order = list(self.shards)
        if self.train:
            random.Random(f"{self.cfg.seed}/shards/{epoch}").shuffle(order)
        return order

    def _slot_shards(self, epoch: int, worker: int) -> list[tuple[str, int]]:
        return self._order(epoch)[self.rank * self.workers + worker :: self.slots]

    def __len__(self) -> int:
        if self.train:
            return self.batches_per_slot * self.workers
        return sum(
            math.ceil(sum(n for _, n in self._slot_shards(0, w)) / self.micro) for w in range(self.workers)
        )

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        epoch = self.epoch.value
        names = [name for name, _ in self._slot_shards(epoch, worker)]
        items = read_samples(self.root, names)
        if self.train:
            items = shuffled(
                items, SHUFFLE_BUFFER, random.Random(f"{self.cfg.seed}/{epoch}/slot{self.rank}.{worker}")
            )
        batch, yielded = [], 0
        collated = RawCollate(self.cfg.image_size) if self.cfg.decode == "gpu" else collate
        for key, data, label in items:
            batch.append(self._decode(key, data, label, epoch))
            if len(batch) == self.micro:
                yield collated(batch)
                batch, yielded = [], yielded + 1
                if self.train and yielded == self.batches_per_slot:
                    return
        if batch and not self.train:
            yield collated(batch)

    def _decode(self, key: str, data: bytes, label: int, epoch: int):
        rng = random.Random(f"{self.cfg.seed}/{epoch}/{self.split}:{key}") if self.train else None
        decode = raw_item if self.cfg.decode == "gpu" else load_image
        try:
            image = decode(
                io.BytesIO(data) if decode is load_image else data,
                self.cfg.image_size,
                rng=rng,
                augment=self.cfg.augment,
                min_crop_scale=self.cfg.min_crop_scale,
            )
        except DECODE_ERRORS:
            return None  # skipped and counted, as a broken file of a folder
        return image, label


def stage(info: DatasetInfo, stage_dir: str) -> str:
    """Copy every shard `info` lists into `stage_dir` (node-local storage) unless a copy of the right size is
    there; returns it. The ranks of one node copy once: the first takes a lock beside the copies, the others
    wait and find them. Each copy is written under a temporary name and renamed, so a killed copy is redone.
    Every shard is staged, not only this rank's: the training shards change hands every epoch."""
    dest = Path(os.path.abspath(os.path.expanduser(stage_dir)))
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with open(dest / ".stage.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for _, shards in info.shards:
                for name, _ in shards:
                    source, copy = Path(info.root, name), dest / name
                    if not copy.is_file() or copy.stat().st_size != source.stat().st_size:
                        tmp = dest / f".{name}.{os.getpid()}.tmp"
                        shutil.copyfile(source, tmp)
                        os.replace(tmp, copy)
    except OSError as e:
        raise UserError(
            f"cannot stage the shards of {info.root} in {dest}: {e.strerror}; accepted: a writable"
            " stage_dir with room for every shard"
        ) from None
    return str(dest)


def _batches(batch):
    return batch  # the streams collate their own batches


def loaders(cfg: DataConfig, info: DatasetInfo, *, micro_batch: int, rank: int, world_size: int) -> Loaders:
    """This rank's loaders over the shards `info` lists (train, select, val as the test split)."""
    counter = SkipCounter()
    root = stage(info, cfg.stage_dir) if cfg.stage_dir else info.root
    streams = {
        split: ShardStream(
            root,
            split,
            info.shards_of(split),
            cfg,
            micro_batch=micro_batch,
            rank=rank,
            world_size=world_size,
        )
        for split in SHARD_SPLITS
    }
    made = [Counted(_loader(streams[split], cfg), counter) for split in SHARD_SPLITS]

    def set_epoch(epoch: int) -> None:
        streams["train"].epoch.value = epoch

    return Loaders(*made, set_epoch=set_epoch, skipped=counter)


def _loader(stream: ShardStream, cfg: DataConfig) -> DataLoader:
    workers = cfg.workers
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        collate_fn=_batches,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=max(2, math.ceil(4 / workers)) if workers > 0 else None,
    )
