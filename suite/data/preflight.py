"""The preflight: every "your data is wrong" case decided as a one-line `UserError` before a model is built.

Run once per run, by the driver; the `DatasetInfo` it returns goes to the ranks, which neither list nor decode
the data to check it again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image

from suite.data.config import DataConfig, DatasetInfo
from suite.data.decode import DECODE_ERRORS
from suite.data.registry import backend
from suite.errors import UserError, check

# A few undecodable files (a bad sector, one interrupted download) are skipped; more than this fraction of the
# checked files means the copy is broken, not unlucky.
MAX_CORRUPT_FRACTION = 0.01


def prepare_data(cfg: DataConfig) -> DatasetInfo:
    """Check the data of `cfg` (generating the shapes set if missing) and describe it, index included.

    Idempotent, and safe when several processes call it at once (the only write is the shapes set, published
    by an atomic rename). Raises `UserError` for an unknown backend, a missing, empty or unreadable data
    directory, a broken ImageFolder layout, a `num_classes` mismatch and too many corrupt images; a few
    corrupt images are listed in `corrupt_files` and left out of the index.
    """
    check_config(cfg)
    return backend(cfg.backend).preflight(cfg)


def check_config(cfg: DataConfig) -> None:
    """The checks that need no data: the backend's name and every numeric field's range."""
    backend(cfg.backend)
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
    check(
        0 < cfg.select_fraction <= 0.5,
        f"select_fraction must be in (0, 0.5], got {cfg.select_fraction}",
    )
    check(cfg.verify_limit >= 1, f"verify_limit must be ≥ 1, got {cfg.verify_limit}")
    for name in ("synthetic_train_size", "synthetic_val_size"):
        check(getattr(cfg, name) >= 1, f"{name} must be ≥ 1, got {getattr(cfg, name)}")


def find_corrupt(root: Path, groups: list[list[str]], limit: int) -> tuple[str, ...]:
    """Decode a spread-out sample of each group (one per class and split) of image paths; return the
    undecodable files, sorted, or raise when there are too many of them (the copy is broken) or when a group
    has no decodable image."""
    total = sum(len(paths) for paths in groups)
    checked, corrupt = 0, []
    for paths in groups:
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
    except DECODE_ERRORS:
        return False
