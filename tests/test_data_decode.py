"""The decode: the fused, draft-mode pipeline gives the standard recipe's pixels."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from suite.data import decode
from suite.data.decode import load_image
from tests.data_trees import textured


def test_eval_crop_is_torchvisions_resize_and_center_crop(tmp_path):
    from torchvision import transforms

    png, jpg = textured(tmp_path / "t.png"), textured(tmp_path / "t.jpg")
    for size in (32, 64):
        reference = transforms.Compose(
            [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size)]
        )
        expected = np.asarray(reference(Image.open(png).convert("RGB")), dtype=float)
        assert np.abs(load_image(str(png), size) - expected).max() <= 1  # same pixels, up to rounding
        # JPEG: decoded at 1/4 or 1/8 scale (draft mode), resampled from there: the same image, slightly
        # different interpolation.
        assert np.abs(load_image(str(jpg), size) - expected).mean() < 3


def test_train_crop_in_draft_mode_matches_the_full_size_decode(tmp_path, monkeypatch):
    jpg = textured(tmp_path / "t.jpg")
    drafted = [load_image(str(jpg), 32, rng=random.Random(i)) for i in range(8)]
    monkeypatch.setattr(decode, "_draft", lambda image, box, size: (image, box))
    full = [load_image(str(jpg), 32, rng=random.Random(i)) for i in range(8)]
    for a, b in zip(drafted, full, strict=True):
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        assert np.abs(a.astype(float) - b).mean() < 3
