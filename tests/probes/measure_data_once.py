"""Directory listings, sample decodes and time to the first step of one 2-rank run, counted by the probe.

    python tests/probes/measure_data_once.py CHECKOUT DATA_ROOT OUT.json [--cli MODULE] [--files N] [--repeats K]

Runs, from CHECKOUT's code, one 2-rank torchrun `run-one` and one 2-rank Ray grid point on an imagefolder tree
at DATA_ROOT (made with N images if absent), with tests/probes/sitecustomize.py recording every listing of the
tree and every image opened, per process. Time to first step: from the process start (torchrun) or from the
driver's last preflight decode (Ray: the point's start) to the first image a rank's loader opens. BENCHMARKS.md
has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml
from PIL import Image

PROBE = Path(__file__).resolve().parent
SPEC = {
    "arch": "resnet50", "width": 4, "small_stem": True, "image_size": 16, "dataset": "imagefolder",
    "micro_batch": 8, "epochs": 1, "steps_per_epoch": 2, "warmup_steps": 1, "loader_workers": 0,
}  # fmt: skip


def make_tree(root: Path, files: int, classes: int = 100) -> None:
    per_class = files // classes
    n_val = per_class // 10
    for c in range(classes):
        for split, n in (("train", per_class - n_val), ("val", n_val)):
            d = root / split / f"c{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (24, 20), (c * 2, i % 256, 77)).save(d / f"{i:04d}.jpg", quality=90)


def parse(log: Path, root: Path) -> list[tuple[int, float, str, str]]:
    out = []
    for line in log.read_text().splitlines():
        pid, t, kind, path = line.split(" ", 3)
        out.append((int(pid), float(t), kind, path))
    return out


def summary(ev, root: Path, start: float | None) -> dict:
    listings = Counter(pid for pid, _, k, p in ev if k == "list" and p == str(root / "train"))
    checks = Counter(pid for pid, _, k, _ in ev if k == "check")
    loads = [t for _, t, k, _ in ev if k == "load"]
    if (
        start is None
    ):  # Ray: the point starts once the driver (the first process to list) has checked the data
        driver = min(ev, key=lambda e: e[1])[0]
        start = max(t for pid, t, k, _ in ev if k == "check" and pid == driver)
    return {
        "listings": sum(listings.values()),
        "listing_processes": len(listings),
        "sample_decodes": sum(checks.values()),
        "decoding_processes": len(checks),
        "start_to_first_step_s": round(min(loads) - start, 2),
    }


def torchrun_point(a, root: Path, env: dict, work: Path) -> dict:
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({**SPEC, "data_dir": str(root), "grid": "t"}))
    log = work / "torchrun.log"
    start = time.time()
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         "--master_port=29533", "-m", a.cli, "run-one", str(config), "--results", str(work / "r1")],
        cwd=a.checkout, env={**env, "RB_PROBE_LOG": str(log)}, check=True, timeout=900,
    )  # fmt: skip
    return summary(parse(log, root), root, start)


def ray_point(a, root: Path, env: dict, work: Path) -> dict:
    grid = work / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "g", "cluster": {"nodes": 1, "devices_per_node": 2, "cpus_per_worker": 0.5},
        "defaults": {**SPEC, "data_dir": str(root)}, "points": [{"arch": "resnet50"}],
    }))  # fmt: skip
    log = work / "ray.log"
    subprocess.run(
        [sys.executable, "-m", a.cli, "run", str(grid), "--results", str(work / "r2")],
        cwd=a.checkout,
        env={**env, "RB_PROBE_LOG": str(log)},
        check=True,
        timeout=900,
    )
    return summary(parse(log, root), root, None)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkout", type=Path)
    ap.add_argument("root", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--cli", default="resnet_bench")
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    root = a.root.resolve()
    if not (root / "train").is_dir():
        make_tree(root, a.files)
    files = sum(1 for _ in root.rglob("*.jpg"))
    work = Path(tempfile.mkdtemp(prefix="rb-once-"))
    env = {**os.environ, "PYTHONPATH": f"{PROBE}{os.pathsep}{a.checkout}", "RB_PROBE_ROOT": str(root)}
    report = {"files": files, "checkout": str(a.checkout)}

    report["torchrun"], report["ray"] = [], []
    for i in range(a.repeats):
        run = work / str(i)
        run.mkdir()
        report["torchrun"].append(torchrun_point(a, root, env, run))
        report["ray"].append(ray_point(a, root, env, run))
    a.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
