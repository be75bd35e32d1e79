"""The dataset manifest: an image folder is listed once per dataset; later preflights read the manifest, and a
changed tree is noticed without listing it (suite/data/manifest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from suite.data import imagefolder, manifest, preflight
from suite.data.manifest import MANIFEST_NAME
from suite.data.preflight import prepare_data
from tests.data_trees import as_ordinary_user, folder_cfg, make_tree, write_image

REPO = Path(__file__).resolve().parent.parent
COUNTS = {"train": {"a": 6, "b": 5}, "val": {"a": 3, "b": 2}}


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "data"
    make_tree(root, COUNTS)
    return root


@pytest.fixture
def no_listing_or_decode(monkeypatch):
    """Turn any listing under a tree, or any sample decode, into a test failure: what a manifest saves."""

    def arm(root: Path):
        scandir = os.scandir

        def guarded(path="."):
            assert not os.path.abspath(path).startswith(str(root)), f"listed {path}"
            return scandir(path)

        monkeypatch.setattr(os, "scandir", guarded)
        monkeypatch.setattr(preflight, "_decodes", lambda path: pytest.fail(f"decoded {path}"))

    return arm


def test_the_first_preflight_writes_the_manifest_and_the_next_one_lists_nothing(tree, no_listing_or_decode):
    first = prepare_data(folder_cfg(tree))
    written = json.loads((tree / MANIFEST_NAME).read_text())
    assert written["classes"] == ["a", "b"] and written["root"] == str(tree)
    for split in ("train", "val"):
        names = [sorted(os.listdir(tree / split / c)) for c in ("a", "b")]
        assert written["files"][split] == names
        sizes = [
            [(tree / split / c / n).stat().st_size for n in group]
            for c, group in zip("ab", names, strict=True)
        ]
        assert written["sizes"][split] == sizes
    assert written["findings"] == {"verify_limit": 4096, "corrupt_files": []}

    no_listing_or_decode(tree)
    assert prepare_data(folder_cfg(tree)).to_dict() == first.to_dict()


@pytest.mark.parametrize("change", ["add", "remove", "rename", "new class"])
def test_a_changed_tree_is_listed_again_and_the_run_says_so(tree, capsys, change):
    before = prepare_data(folder_cfg(tree))
    if change == "add":
        write_image(tree / "train" / "a" / "new.png", 200)
    elif change == "remove":
        (tree / "val" / "b" / os.listdir(tree / "val" / "b")[0]).unlink()
    elif change == "rename":
        os.rename(tree / "train" / "b" / "000.png", tree / "train" / "b" / "zzz.png")
    else:
        write_image(tree / "train" / "c" / "0.png", 90)
        write_image(tree / "val" / "c" / "0.png", 91)
    capsys.readouterr()
    after = prepare_data(folder_cfg(tree))
    assert f"listing {tree} again: the tree changed since" in capsys.readouterr().out
    delta = {"add": (1, 0, 2), "remove": (0, -1, 2), "rename": (0, 0, 2), "new class": (1, 1, 3)}[change]
    assert (after.train_size - before.train_size, after.val_size - before.val_size) == delta[:2]
    assert after.num_classes == delta[2]
    if change == "rename":
        assert "zzz.png" in after.files[0][1] and "000.png" not in after.files[0][1]
    capsys.readouterr()
    prepare_data(folder_cfg(tree))  # the rewritten manifest is current again
    assert "again" not in capsys.readouterr().out


def test_another_sample_size_decodes_again_without_listing(tree, monkeypatch):
    prepare_data(folder_cfg(tree))
    seen = []
    decodes = preflight._decodes
    monkeypatch.setattr(preflight, "_decodes", lambda path: seen.append(path) or decodes(path))
    monkeypatch.setattr(imagefolder, "list_dir", lambda *a, **k: pytest.fail("listed the tree"))
    prepare_data(folder_cfg(tree, verify_limit=4))
    assert 4 <= len(seen) <= 8  # at least 2 per class and split
    assert json.loads((tree / MANIFEST_NAME).read_text())["findings"]["verify_limit"] == 4


def test_a_manifest_that_points_outside_its_root_is_not_used(tree, capsys):
    prepare_data(folder_cfg(tree))
    path = tree / MANIFEST_NAME
    forged = json.loads(path.read_text())
    forged["files"]["train"][0][0] = "../../../etc/passwd"
    path.write_text(json.dumps(forged))
    info = prepare_data(folder_cfg(tree))
    assert f"{path} is not a version-1 manifest of this suite" in capsys.readouterr().out
    assert all(".." not in name for groups in info.files for names in groups for name in names)
    assert json.loads(path.read_text())["files"]["train"][0][0] == "000.png"  # rewritten from the listing


def test_a_read_only_tree_keeps_its_manifest_in_the_cache(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(cache))
    tree.chmod(0o555)
    try:
        found = as_ordinary_user(lambda: manifest.save(imagefolder.index_folder(tree, 100)))
    finally:
        tree.chmod(0o755)
    assert not (tree / MANIFEST_NAME).exists()
    (written,) = (cache / "manifests").iterdir()
    assert str(written) == found and written.name.startswith("data-")
    loaded, why = manifest.load(tree)
    assert why is None and loaded.classes == ("a", "b") and loaded.root == str(tree)


def test_data_index_writes_the_manifest_and_bad_input_writes_nothing(tree, tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "resnet_bench", "data", "index", *args],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    proc = cli(str(tree))
    assert proc.returncode == 0, proc.stderr
    assert f"indexed {tree}: 2 classes, 11 train + 5 val images" in proc.stdout
    assert f"manifest {tree / MANIFEST_NAME}" in proc.stdout
    assert manifest.load(tree)[1] is None and manifest.load(tree)[0] is not None

    empty = tmp_path / "empty"
    empty.mkdir()
    for args, culprit in (
        ((str(empty),), f"{empty} has no train/ directory"),
        ((str(tree), "--verify-limit", "0"), "--verify-limit must be ≥ 1"),
    ):
        (tree / MANIFEST_NAME).unlink(missing_ok=True)
        proc = cli(*args)
        assert proc.returncode == 2 and culprit in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (empty / MANIFEST_NAME).exists() and not (tree / MANIFEST_NAME).exists()
