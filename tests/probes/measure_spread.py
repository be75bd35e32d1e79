"""The numerical spread (rounding alone) beside the spread over seeds, on the default grid's configurations.

    python tests/probes/measure_spread.py OUT_DIR [--archs resnet50] [--seeds 0 1 2] [--settings seeds threads2 avx2]

Each configuration of grids/default.yaml (for the given depths) runs as one 2-rank torchrun `run-one`:
- with every seed in --seeds, one intra-op thread per rank: the seed spread;
- with seed 0 and a perturbed reduction order: 2 threads per rank (another split of each sum), and the
  AVX2 kernels instead of the machine's widest (`ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA`).
Same seed, same data, same code: what changes between the seed-0 rows is how the sums are rounded.
Rows land in OUT_DIR/results/<grid>, one grid per setting; OUT_DIR/spread.json gathers them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]
PERTURBED = {
    # Passive waits: two ranks of two spinning OpenMP threads on two cores collapsed a run over fivefold here.
    "threads2": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
KEEP = ("arch", "variant", "seed", "top1", "top1_select", "top1_gated", "test_images", "blocks_discarded",
        "blocks_gate_mismatch", "prune_logit_max_abs_diff", "math_isa", "threads_per_rank", "train_time_s")  # fmt: skip


def run(out: Path, grid: str, point: dict, env: dict) -> None:
    config = out / "configs" / f"{grid}-{point['variant']}-{point['arch']}-{point['seed']}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({**point, "grid": grid}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           "--master_port=29731", "-m", "resnet_bench", "run-one", str(config), "--results", str(out / "results")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, text=True,
                          capture_output=True, timeout=1800)  # fmt: skip
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--archs", nargs="+", default=["resnet50"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--only", nargs="+", choices=sorted(PERTURBED), help="perturbed settings only, no seeds"
    )
    args = parser.parse_args()
    grid = yaml.safe_load((REPO / "grids" / "default.yaml").read_text())
    base = dict(grid["defaults"])
    points = [
        {**base, "arch": arch, "variant": variant, **({"epsilon": 0.5} if variant == "eps" else {})}
        for arch in args.archs
        for variant in args.variants or grid["axes"]["variant"]
    ]
    for point in points:
        for seed in args.seeds if "seeds" in args.settings else []:
            run(args.out, "spread-seeds", {**point, "seed": seed}, {})
        for name, env in PERTURBED.items():
            if name in args.settings:
                run(args.out, f"spread-{name}", {**point, "seed": 0}, env)
    rows = []
    for path in sorted((args.out / "results").glob("*/runs/*.parquet")):
        row = pq.read_table(path).to_pylist()[0]
        rows.append({"grid": path.parts[-3], **{k: row.get(k) for k in KEEP}})
    (args.out / "spread.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
