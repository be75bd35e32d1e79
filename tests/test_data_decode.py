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


def test_pad_crop_is_the_cifar_recipe(tmp_path):
    png = textured(tmp_path / "t.png")
    whole = np.asarray(Image.open(png).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=int)
    # Evaluation: the whole image resized (no centre crop, which would zoom in by 256/224).
    assert np.abs(load_image(str(png), 32, augment="pad_crop") - whole).max() <= 1
    shifts = set()
    for i in range(40):
        out = load_image(str(png), 32, rng=random.Random(i), augment="pad_crop").astype(int)
        assert out.shape == (32, 32, 3)
        # Every training view is the resized image (or its mirror) shifted by at most 4 px, zeros outside,
        # which is torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip.
        found = [
            (dy, dx, flip)
            for flip in (False, True)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if np.array_equal(out, shifted(whole[:, ::-1] if flip else whole, dy, dx))
        ]
        assert len(found) >= 1, i
        shifts.add(found[0])
    assert len(shifts) > 10 and any(f for *_, f in shifts) and not all(f for *_, f in shifts)


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = image[ys, xs]
    return out


def test_small_inputs_get_pad_crop_unless_the_spec_says_otherwise():
    import pytest

    from suite.errors import UserError
    from suite.spec import RunSpec

    assert RunSpec(image_size=16, small_stem=True).augment == "pad_crop"
    assert RunSpec(image_size=64, small_stem=True).augment == "pad_crop"
    assert RunSpec(image_size=96).augment == "random_resized_crop"
    assert RunSpec(image_size=32, min_crop_scale=0.5).augment == "random_resized_crop"
    assert RunSpec(image_size=32, augment="random_resized_crop").augment == "random_resized_crop"
    with pytest.raises(UserError, match=r"min_crop_scale=0\.5 applies to augment 'random_resized_crop' only"):
        RunSpec(image_size=32, augment="pad_crop", min_crop_scale=0.5)
    with pytest.raises(UserError, match="augment 'cutout'; accepted: random_resized_crop, pad_crop"):
        RunSpec(augment="cutout")


def test_pad_crop_cuts_the_zero_padded_image():
    # The earlier runs padded with np.pad and sliced; the shift into zeros must give their pixels, draw for
    # draw, so that their rows and today's train on the same batches.
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for size in (4, 8, 12, 16, 32, 64):
        view, pad = pixels[:size, :size], max(1, size // 8)
        padded = np.pad(view, ((pad, pad), (pad, pad), (0, 0)))
        for seed in range(60):
            rng = random.Random(seed)
            left, top = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
            expected = padded[top : top + size, left : left + size]
            assert np.array_equal(decode.pad_crop(view, random.Random(seed)), expected), (size, seed)
