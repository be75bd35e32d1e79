"""The imagefolder backend: the ImageNet layout, `<root>/{train,val}/<class>/*.jpg|*.jpeg|*.png`.

The preflight lists the tree once (`scan_image_folder`) and puts the index in `DatasetInfo`; every rank loads
from that index. `list_dir` is the package's one directory-listing function, so listings are easy to count.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from torch.utils.data import Dataset, DistributedSampler

from suite.data.config import SPLITS, DataConfig, DatasetInfo
from suite.data.decode import DECODE_ERRORS, IMAGENET_MIN_CROP_SCALE, load_image
from suite.data.loaders import Counted, EpochTagged, Loaders, SkipCounter, data_loader, select_split, sharded
from suite.data.preflight import find_corrupt
from suite.errors import UserError, check

MIN_CROP_SCALE = IMAGENET_MIN_CROP_SCALE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared lower-cased: ImageNet's files are *.JPEG

LAYOUT = (
    "accepted: a directory holding train/<class>/*.jpg|*.jpeg|*.png and val/<class>/*.jpg|*.jpeg|*.png "
    "with the same class folders in both"
)


def preflight(cfg: DataConfig) -> DatasetInfo:
    check(cfg.data_dir is not None, f"the imagefolder backend needs data_dir; {LAYOUT}")
    return preflight_folder(Path(os.path.abspath(os.path.expanduser(cfg.data_dir))), cfg)


def preflight_folder(root: Path, cfg: DataConfig) -> DatasetInfo:
    """Scan the folder at `root`, decode a sample of it, describe it: index included, corrupt files out."""
    classes, files = scan_image_folder(root)
    check(
        cfg.num_classes is None or cfg.num_classes == len(classes),
        f"num_classes={cfg.num_classes} but {root} has {len(classes)} class folders; accepted: null or "
        f"{len(classes)}",
    )
    paths = {
        split: [
            [os.path.join(root, split, name, file) for file in names]
            for name, names in zip(classes, files[split], strict=True)
        ]
        for split in SPLITS
    }
    corrupt = find_corrupt(root, [group for split in SPLITS for group in paths[split]], cfg.verify_limit)
    bad = set(corrupt)
    index = tuple(
        tuple(
            tuple(file for file, path in zip(names, group, strict=True) if path not in bad)
            for names, group in zip(files[split], paths[split], strict=True)
        )
        for split in SPLITS
    )
    train, val = (sum(len(names) for names in groups) for groups in index)
    return DatasetInfo(
        backend=cfg.backend,
        root=str(root),
        num_classes=len(classes),
        train_size=train,
        val_size=val,
        corrupt_files=corrupt,
        classes=classes,
        files=index,
    )


def scan_image_folder(root: Path) -> tuple[tuple[str, ...], dict[str, list[list[str]]]]:
    """List an ImageNet-layout folder: class names (sorted, as torchvision's ImageFolder) and, per split and
    label, the sorted image file names. Raises `UserError` for every layout problem, naming the path."""
    check(os.path.lexists(root), f"data directory {root} does not exist; {LAYOUT}")
    check(os.path.isdir(root), f"data directory {root} is not a directory; {LAYOUT}")
    top = {e.name: e for e in list_dir(root)}
    splits = {}
    for split in SPLITS:
        path = root / split
        check(
            split in top and top[split].is_dir(),
            f"{root} has no {split}/ directory" + ("" if top else " (it is empty)") + f"; {LAYOUT}",
        )
        splits[split] = {e.name: path / e.name for e in list_dir(path) if e.is_dir()}
        check(bool(splits[split]), f"{path} holds no class folders; {LAYOUT}")
    train, val = set(splits["train"]), set(splits["val"])
    for only, here, there in ((train - val, "train", "val"), (val - train, "val", "train")):
        if only:
            raise UserError(
                f"class folder {root / here / min(only)} has no counterpart in {root / there}; {LAYOUT}"
            )
    classes = tuple(sorted(train))
    files = {}
    for split in SPLITS:
        files[split] = []
        for name in classes:
            folder = splits[split][name]
            # Plain strings and DirEntry types (no stat per file): ImageNet's train split is 1.28 M files.
            images = [e.name for e in list_dir(folder) if _is_image(e)]
            check(bool(images), f"class folder {folder} holds no images; {LAYOUT}")
            files[split].append(images)
    return classes, files


def list_dir(path: Path, *, hidden: bool = False) -> list[os.DirEntry]:
    """The entries of a directory (the visible ones unless `hidden`), sorted by name; an unreadable directory
    is a `UserError`."""
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if hidden or not e.name.startswith(".")), key=lambda e: e.name)
    except PermissionError:
        raise UserError(
            f"cannot list {path}: permission denied; accepted: directories this user can read and enter"
        ) from None


def _is_image(entry: os.DirEntry) -> bool:
    return os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file()


def loaders(cfg: DataConfig, info: DatasetInfo, *, micro_batch: int, rank: int, world_size: int) -> Loaders:
    """This rank's loaders over `info`'s index. Every rank indexes the same list (the preflight's), so shards
    are disjoint and every rank runs the same number of steps; a file that broke or vanished since the
    preflight is skipped at load time and counted. The select split is cut from the train folder
    (`select_split`); the test split is the val folder, whole."""
    train_samples, select_samples = select_split(info.samples("train"), cfg.select_fraction, cfg.seed)
    train_set = FolderDataset(
        info.root,
        train_samples,
        image_size=cfg.image_size,
        train=True,
        augment=cfg.augment,
        min_crop_scale=cfg.min_crop_scale,
        seed=cfg.seed,
    )
    # DistributedSampler semantics (torchvision's references): each rank a disjoint shard, reshuffled by
    # set_epoch from a seed shared by all ranks; drop_last so every rank runs the same number of steps.
    sampler = EpochTagged(
        DistributedSampler(
            train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    )
    counter = SkipCounter()
    train = Counted(data_loader(train_set, sampler, micro_batch, cfg, drop_last=True), counter)
    held_out = []
    for samples in (select_samples, info.samples("val")):
        dataset = FolderDataset(
            info.root, samples, image_size=cfg.image_size, train=False, augment=cfg.augment
        )
        keys = [(i, 0) for i in sharded(len(dataset), rank, world_size)]
        held_out.append(Counted(data_loader(dataset, keys, micro_batch, cfg, drop_last=False), counter))
    return Loaders(train, *held_out, set_epoch=sampler.set_epoch, skipped=counter)


class FolderDataset(Dataset):
    """(path relative to `root`, label) pairs decoded with the standard recipe; an undecodable or vanished
    file gives `None` (skipped and counted by the collate function) instead of killing the run hours in."""

    def __init__(
        self,
        root: str,
        samples: list[tuple[str, int]],
        *,
        image_size: int,
        train: bool,
        augment: str = "random_resized_crop",
        min_crop_scale: float = IMAGENET_MIN_CROP_SCALE,
        seed: int = 0,
    ):
        self.root, self.samples, self.image_size, self.train = root, samples, image_size, train
        self.augment, self.min_crop_scale, self.seed = augment, min_crop_scale, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path, label = self.samples[index]
        rng = random.Random(f"{self.seed}/{epoch}/{index}") if self.train else None
        try:
            return (
                load_image(
                    os.path.join(self.root, path),
                    self.image_size,
                    rng=rng,
                    augment=self.augment,
                    min_crop_scale=self.min_crop_scale,
                ),
                label,
            )
        except DECODE_ERRORS:
            return None
