"""Data backends behind one signature: synthetic tensors, the ImageNet folder layout, and a generated shapes set.

`prepare_data` is the preflight: it decides every "your data is wrong" case as a one-line `UserError` before a
model is built. `build_loaders` then gives each rank its micro-batches: a disjoint, reshuffled-per-epoch shard
of the training split and a disjoint shard of the validation split that, summed over ranks, counts every image
exactly once.

The image pipeline is the standard ImageNet recipe (Goyal et al. 2017, "Accurate, Large Minibatch SGD";
torchvision's `references/classification/presets.py`): RandomResizedCrop + horizontal flip for training,
Resize(size·256/224) + CenterCrop for evaluation, ImageNet mean/std normalisation. It is computed in one fused
step per image: the crop box is drawn from the header's size alone, the JPEG is decoded at the largest DCT
reduction that still leaves the box at least as large as the output (`Image.draft`), and the box is resized
straight to the output. Same distribution of images, a fraction of the decode work.

Nothing here imports Ray or Slurm (../shared/DESIGN.md: `suite/` owns the science only).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from suite.errors import UserError, check

BACKENDS = ("synthetic", "imagefolder", "shapes")
SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared lower-cased: ImageNet's files are *.JPEG

# ImageNet channel statistics, as used by torchvision's pretrained models and reference scripts.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Evaluation resizes the shorter side to size·256/224, then centre-crops `size` (the 256 → 224 convention of
# Krizhevsky et al. 2012, kept by torchvision's references for every input size).
EVAL_RESIZE_RATIO = 256 / 224
# RandomResizedCrop's aspect-ratio range and ImageNet's area range lower bound (Szegedy et al. 2015, "Going
# deeper with convolutions"; torchvision's defaults).
CROP_RATIO = (3 / 4, 4 / 3)
IMAGENET_MIN_CROP_SCALE = 0.08
# The shapes set holds one object per 64-px frame, often half its width: an 8 % crop would usually cut it away
# and leave the label unlearnable. Measured on a draft of the generator with a width-8 ResNet-50 at 32 px (SGD
# lr 0.02, momentum 0.9, batch 32, cosine over 20 epochs): val top-1 after 12 epochs 44 % with scale 0.35, 57 %
# with 0.5 (chance 10 %). On shapes-v2 itself, 12 epochs (~2 min on 2 CPU cores) reach 58 %.
SHAPES_MIN_CROP_SCALE = 0.5

# Preflight tolerance: a few undecodable files (a bad sector, one interrupted download) are skipped; more than
# this fraction of the checked files means the copy is broken, not unlucky.
MAX_CORRUPT_FRACTION = 0.01

_LAYOUT = (
    "accepted: a directory holding train/<class>/*.jpg|*.jpeg|*.png and val/<class>/*.jpg|*.jpeg|*.png "
    "with the same class folders in both"
)


def default_min_crop_scale(backend: str) -> float:
    """The RandomResizedCrop lower bound suited to a backend (the run spec's `min_crop_scale: null`)."""
    return SHAPES_MIN_CROP_SCALE if backend == "shapes" else IMAGENET_MIN_CROP_SCALE


@dataclass(frozen=True)
class DataConfig:
    backend: str = "shapes"
    # imagefolder: root holding train/<class>/*.JPEG and val/<class>/*.JPEG; shapes: where the generated set
    # lives (None: `$RESNET_BENCH_DATA/shapes-v2`, else `~/.cache/resnet-bench/shapes-v2`).
    data_dir: str | None = None
    image_size: int = 32
    # synthetic: default 10; shapes: fixed by the generator; imagefolder: from the folders (must match if given)
    num_classes: int | None = None
    synthetic_train_size: int = 1024  # samples per epoch for the synthetic backend
    synthetic_val_size: int = 256
    workers: int = 2  # DataLoader worker processes per rank (0 = in-process)
    min_crop_scale: float = IMAGENET_MIN_CROP_SCALE  # RandomResizedCrop scale lower bound
    seed: int = 0
    # About this many images are decoded by the preflight (all of them in smaller sets), in proportion over
    # every class of both splits: listing ImageNet takes seconds, decoding all 1.33 M files would take an hour
    # per rank. A bad file outside the sample is skipped at load time and counted in `Loaders.skipped`.
    verify_limit: int = 4096


@dataclass(frozen=True)
class DatasetInfo:
    backend: str
    root: str | None
    num_classes: int
    train_size: int
    val_size: int
    corrupt_files: tuple[str, ...]  # files found undecodable in the preflight (skipped)
    classes: tuple[str, ...] = ()  # class folder names in label order (empty for synthetic)


# ---------------------------------------------------------------------------------------------------------------
# Preflight


def prepare_data(cfg: DataConfig) -> DatasetInfo:
    """Check the data of `cfg` (generating the shapes set if missing) and describe it.

    Called by the driver and again by every rank: idempotent, and safe when several processes call it at once
    (the only write is the shapes set, published by an atomic rename). Raises `UserError` for an unknown
    backend, a missing, empty or unreadable data directory, a broken ImageFolder layout, a `num_classes`
    mismatch and too many corrupt images; a few corrupt images are listed in `corrupt_files` and skipped.
    """
    _check_config(cfg)
    if cfg.backend == "synthetic":
        return DatasetInfo(
            backend="synthetic",
            root=None,
            num_classes=cfg.num_classes or 10,
            train_size=cfg.synthetic_train_size,
            val_size=cfg.synthetic_val_size,
            corrupt_files=(),
        )
    if cfg.backend == "shapes":
        check(
            cfg.num_classes in (None, len(SHAPES_CLASSES)),
            f"num_classes={cfg.num_classes} does not fit the shapes set, which has {len(SHAPES_CLASSES)} "
            f"classes; accepted: null or {len(SHAPES_CLASSES)}",
        )
        root = ensure_shapes(shapes_root(cfg))
    else:
        check(
            cfg.data_dir is not None,
            f"the imagefolder backend needs data_dir; {_LAYOUT}",
        )
        root = Path(os.path.abspath(os.path.expanduser(cfg.data_dir)))
    return _preflight_folder(root, cfg)


def _check_config(cfg: DataConfig) -> None:
    check(cfg.backend in BACKENDS, f"data backend {cfg.backend!r} unknown; accepted: {', '.join(BACKENDS)}")
    check(
        isinstance(cfg.image_size, int) and cfg.image_size >= 1,
        f"image_size must be an integer ≥ 1, got {cfg.image_size!r}",
    )
    check(
        cfg.num_classes is None or (isinstance(cfg.num_classes, int) and cfg.num_classes >= 1),
        f"num_classes must be null or an integer ≥ 1, got {cfg.num_classes!r}",
    )
    check(cfg.workers >= 0, f"workers must be ≥ 0, got {cfg.workers}")
    check(0 < cfg.min_crop_scale <= 1, f"min_crop_scale must be in (0, 1], got {cfg.min_crop_scale}")
    check(cfg.verify_limit >= 1, f"verify_limit must be ≥ 1, got {cfg.verify_limit}")
    for name in ("synthetic_train_size", "synthetic_val_size"):
        check(getattr(cfg, name) >= 1, f"{name} must be ≥ 1, got {getattr(cfg, name)}")


def _preflight_folder(root: Path, cfg: DataConfig) -> DatasetInfo:
    classes, samples = scan_image_folder(root)
    check(
        cfg.num_classes is None or cfg.num_classes == len(classes),
        f"num_classes={cfg.num_classes} but {root} has {len(classes)} class folders; accepted: null or "
        f"{len(classes)}",
    )
    corrupt = _find_corrupt(root, classes, samples, cfg.verify_limit)
    bad = set(corrupt)
    sizes = {split: sum(path not in bad for path, _ in samples[split]) for split in SPLITS}
    return DatasetInfo(
        backend=cfg.backend,
        root=str(root),
        num_classes=len(classes),
        train_size=sizes["train"],
        val_size=sizes["val"],
        corrupt_files=corrupt,
        classes=classes,
    )


def scan_image_folder(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
    """List an ImageNet-layout folder: class names (sorted, as torchvision's ImageFolder) and, per split, the
    sorted (path, label) pairs. Raises `UserError` for every layout problem, naming the path."""
    check(os.path.lexists(root), f"data directory {root} does not exist; {_LAYOUT}")
    check(os.path.isdir(root), f"data directory {root} is not a directory; {_LAYOUT}")
    top = {e.name: e for e in _entries(root)}
    splits = {}
    for split in SPLITS:
        path = root / split
        check(
            split in top and top[split].is_dir(),
            f"{root} has no {split}/ directory" + ("" if top else " (it is empty)") + f"; {_LAYOUT}",
        )
        splits[split] = {e.name: path / e.name for e in _entries(path) if e.is_dir()}
        check(bool(splits[split]), f"{path} holds no class folders; {_LAYOUT}")
    train, val = set(splits["train"]), set(splits["val"])
    for only, here, there in ((train - val, "train", "val"), (val - train, "val", "train")):
        if only:
            raise UserError(
                f"class folder {root / here / min(only)} has no counterpart in {root / there}; {_LAYOUT}"
            )
    classes = tuple(sorted(train))
    samples = {}
    for split in SPLITS:
        samples[split] = []
        for label, name in enumerate(classes):
            folder = splits[split][name]
            # Plain strings and DirEntry types (no stat per file): ImageNet's train split is 1.28 M files.
            images = [os.path.join(folder, e.name) for e in _entries(folder) if _is_image(e)]
            check(bool(images), f"class folder {folder} holds no images; {_LAYOUT}")
            samples[split].extend((path, label) for path in images)
    return classes, samples


def _entries(path: Path) -> list[os.DirEntry]:
    """The visible entries of a directory, sorted by name; an unreadable directory is a `UserError`."""
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except PermissionError:
        raise UserError(
            f"cannot list {path}: permission denied; accepted: directories this user can read and enter"
        ) from None


def _is_image(entry: os.DirEntry) -> bool:
    return os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file()


def _find_corrupt(
    root: Path, classes: tuple[str, ...], samples: dict[str, list[tuple[str, int]]], limit: int
) -> tuple[str, ...]:
    """Decode a spread-out sample of every class of both splits; return the undecodable files, or raise when
    there are too many of them (the copy is broken) or when a class has no decodable image."""
    groups: dict[tuple[str, int], list[str]] = {}
    for split in SPLITS:
        for path, label in samples[split]:
            groups.setdefault((split, label), []).append(path)
    total = sum(len(paths) for paths in groups.values())
    checked, corrupt = 0, []
    for paths in groups.values():
        # Each class and split in proportion to its size (everything when the set is within the limit), and
        # at least two, so a single bad file never condemns a whole class.
        picked = _spread(paths, max(2, math.ceil(limit * len(paths) / total)))
        bad = [p for p in picked if not _decodes(p)]
        if len(bad) == len(picked):
            raise UserError(
                f"no checked image of class folder {os.path.dirname(bad[0])} decodes (e.g. {bad[0]}); "
                "accepted: JPEG or PNG images"
            )
        checked += len(picked)
        corrupt += bad
    if len(corrupt) > MAX_CORRUPT_FRACTION * checked:
        raise UserError(
            f"{len(corrupt)} of {checked} checked images under {root} do not decode (e.g. {corrupt[0]}); "
            f"accepted: at most {MAX_CORRUPT_FRACTION:.0%} corrupt images, which are skipped"
        )
    return tuple(sorted(corrupt))


def _spread(items: list[str], k: int) -> list[str]:
    """`k` items evenly spaced over `items` (all of them when there are no more than `k`)."""
    if len(items) <= k:
        return items
    return [items[i * len(items) // k] for i in range(k)]


def _decodes(path: str) -> bool:
    """Whether `path` decodes completely (at the smallest JPEG reduction: the full entropy decode, which is
    where truncation and corruption show, at a fraction of the cost). Unreadable files are a `UserError`."""
    try:
        with open(path, "rb") as f, Image.open(f) as image:
            image.draft("RGB", (1, 1))
            image.load()
        return True
    except PermissionError:  # before the decode errors: it is an OSError too
        raise UserError(
            f"cannot read {path}: permission denied; accepted: files this user can read"
        ) from None
    except _DECODE_ERRORS:
        return False


# What PIL raises for a file it cannot decode: unidentified or truncated data (OSError), broken headers
# (SyntaxError, ValueError, EOFError), absurd sizes (DecompressionBombError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# ---------------------------------------------------------------------------------------------------------------
# Loaders


class Loaders:
    """What `build_loaders` returns: this rank's training and validation micro-batches.

    `train` and `val` are re-iterable and yield `(images float32 NCHW, labels int64)`; `len(train)` is the
    number of steps per epoch. `skipped` counts images this rank dropped at load time because they failed to
    decode (DataLoader workers are separate processes, so each batch carries its own count here).
    """

    def __init__(self, train, val, *, set_epoch: Callable[[int], None] | None = None, skipped=None):
        self.train, self.val = train, val
        self._set_epoch = set_epoch
        self._skipped = _Counter() if skipped is None else skipped

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle (and re-draw the augmentation of) the training split deterministically for `epoch`."""
        if self._set_epoch is not None:
            self._set_epoch(epoch)

    @property
    def skipped(self) -> int:
        return self._skipped.value


class _Counter:
    value = 0


def build_loaders(
    cfg: DataConfig, info: DatasetInfo, *, micro_batch: int, rank: int, world_size: int
) -> Loaders:
    """This rank's loaders for the data `prepare_data` checked (`info`)."""
    check(micro_batch >= 1, f"micro_batch must be ≥ 1, got {micro_batch}")
    check(world_size >= 1 and 0 <= rank < world_size, f"rank {rank} of world size {world_size} is invalid")
    check(
        info.backend == cfg.backend,
        f"DatasetInfo is for backend {info.backend!r}, config asks for {cfg.backend!r}",
    )
    if cfg.backend == "synthetic":
        return _synthetic_loaders(cfg, info, micro_batch, rank, world_size)
    return _folder_loaders(cfg, info, micro_batch, rank, world_size)


# Synthetic: pure throughput, no per-step data cost.


def _synthetic_loaders(cfg: DataConfig, info: DatasetInfo, micro_batch: int, rank: int, world_size: int):
    generator = torch.Generator().manual_seed(cfg.seed)
    images = torch.randn(micro_batch, 3, cfg.image_size, cfg.image_size, generator=generator)
    labels = torch.randint(0, info.num_classes, (micro_batch,), generator=generator)
    if torch.cuda.is_available():  # pinned once, so the trainer's non_blocking copies are asynchronous
        images, labels = images.pin_memory(), labels.pin_memory()
    steps = info.train_size // (micro_batch * world_size)
    val_indices = range(rank, info.val_size, world_size)
    val = _SyntheticVal(val_indices, micro_batch, cfg.image_size, info.num_classes, cfg.seed)
    return Loaders(_RepeatedBatch(images, labels, steps), val)


class _RepeatedBatch:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int):
        self.images, self.labels, self.steps = images, labels, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.images, self.labels


class _SyntheticVal:
    """A fixed labelled set, each image generated from (seed, index) on demand: no memory held between
    evaluations, and the same image whichever rank draws it."""

    def __init__(self, indices: range, micro_batch: int, image_size: int, num_classes: int, seed: int):
        self.indices, self.micro_batch = indices, micro_batch
        self.image_size, self.num_classes, self.seed = image_size, num_classes, seed

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.micro_batch)

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        label = int(torch.randint(0, self.num_classes, (), generator=generator))
        return torch.randn(3, self.image_size, self.image_size, generator=generator), label

    def __iter__(self):
        for start in range(0, len(self.indices), self.micro_batch):
            items = [self._item(i) for i in self.indices[start : start + self.micro_batch]]
            yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


# Image folders (imagefolder and shapes).


def _folder_loaders(cfg: DataConfig, info: DatasetInfo, micro_batch: int, rank: int, world_size: int):
    root = Path(info.root)
    _, samples = scan_image_folder(root)
    bad = set(info.corrupt_files)
    for split, expected in (("train", info.train_size), ("val", info.val_size)):
        samples[split] = [s for s in samples[split] if s[0] not in bad]
        # Every rank must index the same list: a file added or removed since the preflight would silently
        # give ranks different shards (and DistributedSampler different lengths, which hangs a collective).
        check(
            len(samples[split]) == expected,
            f"{root / split} changed since the preflight ({len(samples[split])} images, expected {expected}); "
            "accepted: data that stays unchanged while a run is being prepared",
        )
    train_set = FolderDataset(
        samples["train"],
        image_size=cfg.image_size,
        train=True,
        min_crop_scale=cfg.min_crop_scale,
        seed=cfg.seed,
    )
    val_set = FolderDataset(samples["val"], image_size=cfg.image_size, train=False)
    # DistributedSampler semantics (torchvision's references): each rank a disjoint shard, reshuffled by
    # set_epoch from a seed shared by all ranks; drop_last so every rank runs the same number of steps.
    sampler = _EpochTagged(
        DistributedSampler(
            train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    )
    # Validation: rank r takes r, r+W, r+2W, …: every image exactly once across ranks, with no padding (the
    # DistributedSampler would repeat images to even out the shards and bias the accuracy).
    val_keys = [(i, 0) for i in range(rank, len(val_set), world_size)]
    counter = _Counter()
    train = _Counted(_loader(train_set, sampler, micro_batch, cfg, drop_last=True), counter)
    val = _Counted(_loader(val_set, val_keys, micro_batch, cfg, drop_last=False), counter)
    return Loaders(train, val, set_epoch=sampler.set_epoch, skipped=counter)


def _loader(dataset: Dataset, sampler, micro_batch: int, cfg: DataConfig, *, drop_last: bool) -> DataLoader:
    workers = cfg.workers
    return DataLoader(
        dataset,
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_collate,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        # Workers stay up between epochs (and evaluations): re-forking them costs seconds per epoch.
        persistent_workers=workers > 0,
        # At least four batches in flight per rank to absorb decode-time jitter, two per worker when there are
        # many (torch's default), which bounds the shared memory held by large batches.
        prefetch_factor=max(2, math.ceil(4 / workers)) if workers > 0 else None,
    )


class _EpochTagged(Sampler):
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


class _Counted:
    """A DataLoader whose batches carry the number of images dropped: yields plain `(images, labels)` and adds
    the drops to this rank's counter."""

    def __init__(self, loader: DataLoader, counter: _Counter):
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


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the decodable images (uint8 HWC) into one normalised float32 NCHW batch; count the rest.

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


class FolderDataset(Dataset):
    """(path, label) pairs decoded with the standard recipe; an undecodable file gives `None` (skipped and
    counted by the collate function) instead of killing the run hours in."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        *,
        image_size: int,
        train: bool,
        min_crop_scale: float = IMAGENET_MIN_CROP_SCALE,
        seed: int = 0,
    ):
        self.samples, self.image_size, self.train = samples, image_size, train
        self.min_crop_scale, self.seed = min_crop_scale, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path, label = self.samples[index]
        rng = random.Random(f"{self.seed}/{epoch}/{index}") if self.train else None
        try:
            return load_image(path, self.image_size, rng=rng, min_crop_scale=self.min_crop_scale), label
        except _DECODE_ERRORS:
            return None


def load_image(
    path: str, size: int, *, rng: random.Random | None = None, min_crop_scale: float = IMAGENET_MIN_CROP_SCALE
) -> np.ndarray:
    """Decode `path` to a `size`×`size` uint8 RGB array (HWC): with `rng`, the training crop
    (RandomResizedCrop + flip); without, the evaluation crop (Resize(size·256/224) + CenterCrop(size))."""
    with Image.open(path) as image:
        width, height = image.size
        if rng is None:
            box = eval_box(width, height, size)
        else:
            box = random_resized_box(width, height, rng, scale=(min_crop_scale, 1.0))
        image, box = _draft(image, box, size)
        if image.mode != "RGB":
            image = image.convert("RGB")
        out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng is not None and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out)


Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels of the full-size image


def _draft(image: Image.Image, box: Box, size: int) -> tuple[Image.Image, Box]:
    """Ask the JPEG decoder for the largest power-of-two reduction (libjpeg offers 1/2, 1/4, 1/8) under which
    `box` still spans at least `size` pixels on its shorter side, so the final resize only ever shrinks, as
    it would from the full-size decode. Returns the image and `box` in the reduced image's pixels."""
    shorter = min(box[2] - box[0], box[3] - box[1])
    reduction = 1
    while reduction < 8 and shorter / (2 * reduction) >= size:
        reduction *= 2
    if reduction == 1:
        return image, box
    width, height = image.size
    # PIL picks the largest reduction r in {8, 4, 2, 1} with r ≤ min(W // w, H // h); asking for W // reduction
    # makes that exactly `reduction`. Non-JPEG images ignore the request (returns None).
    drafted = image.draft("RGB", (width // reduction, height // reduction))
    if drafted is None:
        return image, box
    scale = width / drafted[1][2]  # the reduction PIL applied
    return image, (box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale)


def eval_box(width: int, height: int, size: int) -> Box:
    """Resize(round(size·256/224)) then CenterCrop(size), as one box in the original image.

    The integer roundings are torchvision's (`Resize` truncates the longer side, `CenterCrop` rounds the
    offsets), so resizing this box to `size` gives the pixels torchvision's two steps give."""
    short, long = sorted((width, height))
    resized_short = round(size * EVAL_RESIZE_RATIO)
    resized_long = int(resized_short * long / short)
    new_w, new_h = (resized_short, resized_long) if width <= height else (resized_long, resized_short)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def random_resized_box(width: int, height: int, rng: random.Random, *, scale: tuple[float, float]) -> Box:
    """torchvision's `RandomResizedCrop.get_params` (same algorithm, our RNG): ten tries at a crop of area
    scale·W·H and log-uniform aspect ratio in [3/4, 4/3], then the central crop of the clamped ratio."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return (left, top, left + w, top + h)
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


# ---------------------------------------------------------------------------------------------------------------
# The shapes set: small, learnable, no download.

# The generator's version is in the directory name: a changed generator gets a new directory, so a cached set
# from an older one is never mistaken for it (v1, an early draft, stayed near chance for this model and budget).
SHAPES_DIRNAME = "shapes-v2"
SHAPES_CLASSES = ("bar", "circle", "crescent", "cross", "ell", "frame", "ring", "square", "star", "triangle")
SHAPES_IMAGE_SIZE = 64
SHAPES_PER_CLASS = {"train": 256, "val": 64}
SHAPES_SEED = 2024  # fixed: every run, on every machine, sees the same images
_MARKER = "COMPLETE.json"


def shapes_root(cfg: DataConfig) -> Path:
    """Where the shapes set lives: `data_dir`, else `$RESNET_BENCH_DATA/shapes-v2`, else the user cache."""
    if cfg.data_dir is not None:
        return Path(os.path.abspath(os.path.expanduser(cfg.data_dir)))
    base = os.environ.get("RESNET_BENCH_DATA") or os.path.join("~", ".cache", "resnet-bench")
    return Path(os.path.abspath(os.path.expanduser(base))) / SHAPES_DIRNAME


def ensure_shapes(root: Path) -> Path:
    """Generate the shapes set at `root` unless a complete one is there; return `root`.

    Safe for concurrent callers: a file lock beside `root` keeps processes on one host from generating it
    twice, and the set is written into a temporary directory beside `root` and renamed into place only once
    complete (rename is atomic), so a half-written set is never seen; a process that loses the rename (the lock
    does not reach it, e.g. another host on a network file system) uses the winner's set.
    """
    if _is_complete(root):
        return root
    try:
        _check_shapes_target(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f".{root.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _is_complete(root):
                _check_shapes_target(root)
                _generate_and_publish(root)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(
            f"cannot write the shapes set at {root}: {e.strerror}; accepted: a data_dir or $RESNET_BENCH_DATA "
            "on a writable file system with ~15 MB free"
        ) from None
    return root


def _is_complete(root: Path) -> bool:
    return (root / _MARKER).is_file()


def _check_shapes_target(root: Path) -> None:
    check(not os.path.isfile(root), f"shapes data_dir {root} is a file; accepted: a directory (or none yet)")
    check(
        not os.path.isdir(root) or not os.listdir(root),
        f"{root} exists but holds no complete shapes set (no {_MARKER}); accepted: an empty or missing "
        "directory, where it is generated, or a complete set",
    )


def _generate_and_publish(root: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate_shapes(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must stay readable by others
        try:
            os.rename(tmp, root)  # atomic; also replaces an empty directory
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _is_complete(root):
                raise
            # Another process published first: use theirs (the same images, by construction).
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_shapes(dest: Path, *, per_class: dict[str, int] | None = None, seed: int = SHAPES_SEED) -> None:
    """Write the shapes set as an ImageFolder of JPEGs under `dest`, the completion marker last.

    Each image is a function of (seed, split, class, index) only, so the set is the same on every machine and
    for every process that generates it.
    """
    per_class = per_class or SHAPES_PER_CLASS
    for s, split in enumerate(SPLITS):
        for c, name in enumerate(SHAPES_CLASSES):
            folder = dest / split / name
            folder.mkdir(parents=True)
            for i in range(per_class[split]):
                rng = np.random.default_rng((seed, s, c, i))
                draw_shape(name, rng).save(folder / f"{i:04d}.jpg", quality=90)
    marker = {"version": SHAPES_DIRNAME, "seed": seed, "classes": SHAPES_CLASSES, "per_class": per_class}
    (dest / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")


_SUPERSAMPLE = 4  # draw masks at 4× and shrink: anti-aliased edges, like a photographed object's


def draw_shape(name: str, rng: np.random.Generator, size: int = SHAPES_IMAGE_SIZE) -> Image.Image:
    """One image of class `name`: the shape in a random colour, size, position and rotation over a noisy
    background of a contrasting colour."""
    # Large and near the middle (at most half the free room off-centre), so the training crops (scale ≥ 0.5)
    # mostly keep the object: with small objects anywhere in the frame, the same model and budget stayed near
    # chance for half its epochs (see SHAPES_MIN_CROP_SCALE).
    radius = rng.uniform(0.3, 0.45) * size
    centre = size / 2 + rng.uniform(-1, 1, 2) * (size / 2 - radius) / 2
    angle = rng.uniform(0, 2 * math.pi)
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    _SHAPE_DRAWERS[name](ImageDraw.Draw(mask), _Frame(centre * _SUPERSAMPLE, radius * _SUPERSAMPLE, angle))
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255
    background, foreground = _contrasting_colours(rng)
    noise = rng.normal(0, rng.uniform(2, 8), (size, size, 3))
    pixels = background * (1 - alpha) + foreground * alpha + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        background, foreground = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if np.linalg.norm(background - foreground) > 150:
            return background, foreground


@dataclass(frozen=True)
class _Frame:
    """A shape's placement: centre, scale (radius) and rotation; maps unit coordinates to pixels."""

    centre: np.ndarray
    radius: float
    angle: float

    def points(self, unit: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        cx, cy = self.centre
        return [(cx + self.radius * (x * c - y * s), cy + self.radius * (x * s + y * c)) for x, y in unit]

    def disc(
        self, draw: ImageDraw.ImageDraw, r: float, fill: int, offset: tuple[float, float] = (0, 0)
    ) -> None:
        (x, y), rr = self.points([offset])[0], r * self.radius
        draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=fill)

    def polygon(self, draw: ImageDraw.ImageDraw, unit: list[tuple[float, float]], fill: int = 255) -> None:
        draw.polygon(self.points(unit), fill=fill)


def _rect(half_w: float, half_h: float) -> list[tuple[float, float]]:
    return [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]


def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [
        (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(draw, f: _Frame) -> None:
    outer, inner = _regular(5), _regular(5, 0.4, -math.pi / 2 + math.pi / 5)
    f.polygon(draw, [p for pair in zip(outer, inner, strict=True) for p in pair])


def _ring(draw, f: _Frame) -> None:
    f.disc(draw, 1.0, 255)
    f.disc(draw, 0.6, 0)


def _frame(draw, f: _Frame) -> None:
    f.polygon(draw, _rect(0.8, 0.8))
    f.polygon(draw, _rect(0.45, 0.45), 0)


def _crescent(draw, f: _Frame) -> None:
    f.disc(draw, 1.0, 255)
    f.disc(draw, 0.85, 0, offset=(0.5, 0))


def _cross(draw, f: _Frame) -> None:
    f.polygon(draw, _rect(1.0, 0.27))
    f.polygon(draw, _rect(0.27, 1.0))


def _ell(draw, f: _Frame) -> None:
    t = 0.55  # arm thickness, in units of the radius
    f.polygon(draw, [(-1, -1), (-1 + t, -1), (-1 + t, 1 - t), (1, 1 - t), (1, 1), (-1, 1)])


_SHAPE_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, _Frame], None]] = {
    "bar": lambda d, f: f.polygon(d, _rect(1.0, 0.25)),
    "circle": lambda d, f: f.disc(d, 0.9, 255),
    "crescent": _crescent,
    "cross": _cross,
    "ell": _ell,
    "frame": _frame,
    "ring": _ring,
    "square": lambda d, f: f.polygon(d, _rect(0.75, 0.75)),
    "star": _star,
    "triangle": lambda d, f: f.polygon(d, _regular(3)),
}
