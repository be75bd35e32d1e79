"""The data backends: each name maps to one module, and every module has the same signature (`Backend`).

Adding a backend is one module providing `Backend`'s three members plus one line in `BACKENDS`. The names are
declared here only: `suite/spec.py` validates `dataset` against `NAMES`, and the preflight against the same.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

from suite.errors import check

if TYPE_CHECKING:
    from suite.data.config import DataConfig, DatasetInfo
    from suite.data.loaders import Loaders

# Module paths, imported on first use rather than here: `suite/spec.py` reads `NAMES` at import time, and the
# backends pull in PIL, the DataLoader and (for shapes) the generator, which a spec or grid check never needs.
BACKENDS = {
    "synthetic": "suite.data.synthetic",
    "imagefolder": "suite.data.imagefolder",
    "shapes": "suite.data.shapes",
    "shards": "suite.data.shards",
}
NAMES = tuple(BACKENDS)


class Backend(Protocol):
    """What a backend module provides."""

    # RandomResizedCrop's lower bound when the run spec says `min_crop_scale: null`.
    MIN_CROP_SCALE: float

    def preflight(self, cfg: DataConfig) -> DatasetInfo:
        """Check the backend's data for `cfg` (one-line `UserError`s) and describe it, index included."""
        ...

    def loaders(
        self, cfg: DataConfig, info: DatasetInfo, *, micro_batch: int, rank: int, world_size: int
    ) -> Loaders:
        """This rank's loaders, from `info` alone (no directory listing)."""
        ...


def backend(name: str) -> Backend:
    """The module of backend `name`; an unknown name is a `UserError` listing the accepted ones."""
    check(name in BACKENDS, f"data backend {name!r} unknown; accepted: {', '.join(NAMES)}")
    return importlib.import_module(BACKENDS[name])


def default_min_crop_scale(name: str) -> float:
    """The RandomResizedCrop lower bound suited to backend `name` (the run spec's `min_crop_scale: null`)."""
    return backend(name).MIN_CROP_SCALE
