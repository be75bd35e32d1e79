"""The dataset manifest: an image folder listed once per dataset, not once per run.

Listing ImageNet's 1.33 M files on a parallel file system takes minutes, and every run used to do it again.
The first preflight of a folder (or `resnet-bench data index DIR`) writes what it found: the class list, every
file with its size, and the sample decode's findings. Later preflights read it and list nothing.

It is keyed by the folder's path and a fingerprint that needs no listing: the inode and mtime of `train/`,
`val/` and every class folder in them. Adding, removing or renaming a file changes its folder's mtime (POSIX
directory semantics), so a changed tree no longer matches, and the run says so and lists it again. A file
rewritten in place under the same name is not seen; the loaders skip and count one that no longer decodes.

Where it lives: `<root>/.resnet-bench-manifest.json` when the folder is writable (everyone who reads the data
shares it), else `$RESNET_BENCH_CACHE/manifests/` (default `~/.cache/resnet-bench/manifests/`), named by a hash
of the root's path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from suite.data.config import SPLITS

MANIFEST_NAME = ".resnet-bench-manifest.json"
MANIFEST_VERSION = 1
# Errors that mean "this place is not writable", after which the next place is tried.
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Manifest:
    root: str
    fingerprint: str
    classes: tuple[str, ...]
    files: dict[str, list[list[str]]]  # split -> per label, the sorted file names in <split>/<class>/
    sizes: dict[str, list[list[int]]]  # the same shape: each file's size in bytes
    verify_limit: int  # the sample decode's budget (DataConfig.verify_limit) the findings are for
    corrupt_files: tuple[str, ...]  # absolute paths the sample decode found undecodable

    @property
    def bytes_total(self) -> int:
        return sum(size for split in SPLITS for group in self.sizes[split] for size in group)

    def to_json(self) -> dict:
        return {
            "version": MANIFEST_VERSION,
            "root": self.root,
            "fingerprint": self.fingerprint,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "classes": list(self.classes),
            "files": self.files,
            "sizes": self.sizes,
            "findings": {"verify_limit": self.verify_limit, "corrupt_files": list(self.corrupt_files)},
        }

    @classmethod
    def from_json(cls, d: dict) -> Manifest:
        findings = d["findings"]
        return cls(
            root=d["root"],
            fingerprint=d["fingerprint"],
            classes=tuple(d["classes"]),
            files={split: d["files"][split] for split in SPLITS},
            sizes={split: d["sizes"][split] for split in SPLITS},
            verify_limit=int(findings["verify_limit"]),
            corrupt_files=tuple(findings["corrupt_files"]),
        )


def stamp(root: Path, rel: str) -> tuple[int, int]:
    """A folder's inode and mtime; OSError when it is gone."""
    st = os.stat(root / rel)
    return st.st_ino, st.st_mtime_ns


def fingerprint(
    root: Path, classes: tuple[str, ...], stamps: dict[str, tuple[int, int]] | None = None
) -> str:
    """A digest of the stamp of each split folder and each class folder in it: a few thousand `stat` calls
    for ImageNet, no listing. `stamps` (by relative path) are ones taken before each folder was listed: a file
    added while the listing runs then makes the manifest stale instead of silently incomplete."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for rel in (split, *(f"{split}/{name}" for name in classes)):
            ino, mtime = stamps[rel] if stamps is not None else stamp(root, rel)
            digest.update(f"{rel}\0{ino}\0{mtime}\n".encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("RESNET_BENCH_CACHE") or os.path.join("~", ".cache", "resnet-bench")
    return Path(os.path.abspath(os.path.expanduser(base))) / "manifests"


def places(root: Path) -> list[Path]:
    """Where the manifest of `root` may be, in the order they are read and tried for writing."""
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return [root / MANIFEST_NAME, cache_dir() / f"{root.name}-{key}.json"]


def load(root: Path) -> tuple[Manifest | None, str | None]:
    """The manifest of `root` if one matches the tree as it is now; else None and why (None: there was none)."""
    for path in places(root):
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            return None, f"{path} is unreadable ({e})"
        try:
            manifest = Manifest.from_json(raw) if raw.get("version") == MANIFEST_VERSION else None
        except (KeyError, TypeError, ValueError, AttributeError):
            manifest = None
        if manifest is None or not _well_formed(manifest):
            return None, f"{path} is not a version-{MANIFEST_VERSION} manifest of this suite"
        if manifest.root != str(root):
            return None, f"{path} describes {manifest.root}, not {root}"
        try:
            current = fingerprint(root, manifest.classes)
        except OSError as e:
            return None, f"the tree changed since {path} was written ({e.filename or root} is gone)"
        if current != manifest.fingerprint:
            return None, f"the tree changed since {path} was written (a split or class folder's mtime moved)"
        return manifest, None
    return None, None


def save(manifest: Manifest) -> Path:
    """Write `manifest` atomically to the first writable place; returns where it went."""
    text = json.dumps(manifest.to_json(), separators=(",", ":"))
    last = None
    for path in places(Path(manifest.root)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, path)  # readers see the old manifest or the new one, never half of one
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return path
        except OSError as e:
            if e.errno not in UNWRITABLE:
                raise
            last = e
    raise OSError(last.errno, f"no writable place for the manifest of {manifest.root}: {last.strerror}")


def _well_formed(m: Manifest) -> bool:
    """Names are plain folder and file names: a manifest cannot point a run outside its root."""
    names = [*m.classes, *(n for split in SPLITS for group in m.files[split] for n in group)]
    shapes_match = all(
        len(m.files[split]) == len(m.classes) == len(m.sizes[split])
        and all(len(a) == len(b) for a, b in zip(m.files[split], m.sizes[split], strict=True))
        for split in SPLITS
    )
    return shapes_match and all(
        isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\0" not in n for n in names
    )
