"""The run unit on real DeepSpeed engines (CPU, gloo), 1 and 2 ranks, launched as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from suite.distributed import free_port
from suite.results import read_curves, read_runs

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

SMALL = {
    "arch": "resnet50",
    "width": 4,
    "small_stem": True,
    "image_size": 16,
    "dataset": "synthetic",
    "micro_batch": 8,
    "epochs": 2,
    "warmup_steps": 1,
    "loader_workers": 0,
    "lr": 0.4,
    "grid": "t",
}


def write_config(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**SMALL, **overrides}))
    return path


def run_one(tmp_path: Path, config: Path, *extra: str, ranks: int = 1, env: dict | None = None, timeout=300):
    """`resnet-bench run-one` (1 rank) or `torchrun --nproc_per_node N -m resnet_bench run-one` (N ranks)."""
    if ranks == 1:
        cmd = [sys.executable, "-m", "resnet_bench", "run-one", str(config)]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", "-m", "resnet_bench", "run-one", str(config),
        ]  # fmt: skip
    cmd += ["--results", str(tmp_path / "results"), *extra]
    return subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def only_row(tmp_path: Path) -> dict:
    rows = read_runs(tmp_path / "results", "t").to_pylist()
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize(
    "ranks, gate_sync, block",
    [(1, "step", "v1.5"), (2, "step", "v1.5"), (2, "local", "v1.5"), (1, "step", "preact")],
)
def test_eps_resnet_trains_and_writes_rows(tmp_path, ranks, gate_sync, block):
    config = write_config(
        tmp_path, variant="eps", epsilon=0.5, dataset="shapes", width=8, image_size=32, micro_batch=16,
        epochs=2, steps_per_epoch=25, eps_warmup_epochs=1, zero_init_residual=True, gate_sync=gate_sync,
        block=block,
    )  # fmt: skip
    proc = run_one(tmp_path, config, ranks=ranks)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert row["status"] == "ok" and row["error"] is None
    assert row["world_size"] == ranks and row["launcher"] == ("torchrun" if ranks == 2 else "local")
    assert row["gate_sync"] == gate_sync and row["block"] == block
    assert row["global_batch"] == 16 * ranks
    assert row["timed_steps"] > 0 and row["images_per_s"] > 0 and 0 <= row["data_wait_frac"] <= 1
    assert row["params_active"] <= row["params_total"] and row["blocks_total"] == 16
    assert row["blocks_discarded"] == sum(row["blocks_discarded_per_stage"])
    assert row["mfu"] > 0 and row["device_peak_flops_per_s"] > 0
    assert row["mfu"] == pytest.approx(mfu_of(row, row["flops_per_image_unpruned"]), rel=1e-9)
    curves = read_curves(tmp_path / "results", "t").to_pylist()
    assert [c["epoch"] for c in curves] == [0, 1]
    assert curves[1]["loss"] < curves[0]["loss"]  # it learns
    assert curves[0]["epsilon"] is None and curves[1]["epsilon"] == 0.5  # ε warm-up, then the gate
    for c in curves:  # where identities form: one value per block, in network order
        assert len(c["block_branch_max_abs"]) == len(c["block_branch_rel_norm"]) == 16
        assert all(v >= 0 for v in c["block_branch_max_abs"] + c["block_branch_rel_norm"])
    # A block discarded at the end was gated off on every select batch: its max |F| was within ε there.
    for b in row["blocks_removed"]:
        assert curves[-1]["block_branch_max_abs"][b] <= 0.5
    assert 0 <= row["top1"] <= 1 and 0 <= row["top1_select"] <= 1 and 0 <= row["top1_gated"] <= 1
    # The deployed network is measured on the whole test split (shapes: 2,100 images in val/).
    assert row["test_images"] == 2100
    assert row["params_train"] > row["params_total"]  # the side head is trained, never deployed
    assert row["blocks_gate_mismatch"] >= 0
    if row["blocks_gate_mismatch"] == 0:  # exact pruning: the deployed logits are the gated network's
        assert row["prune_logit_max_abs_diff"] <= 1e-5 and row["top1"] == row["top1_gated"]
    assert row["math_isa"].startswith("ATen ") and row["deterministic"] is True
    # An independent client reads the files with the declared schema.
    files = str(tmp_path / "results" / "t" / "runs" / "*.parquet")
    got = duckdb.sql(f"SELECT run_id, status, params_total FROM read_parquet('{files}')").fetchall()
    assert got == [(row["run_id"], "ok", row["params_total"])]
    assert "global batch" in proc.stdout and proc.stdout.count("global batch") == 1  # printed once, by rank 0


def test_a_plain_network_trains_and_its_curves_say_how_far_each_block_is_from_the_identity(tmp_path):
    config = write_config(tmp_path, variant="plain", block="preact")
    proc = run_one(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert row["status"] == "ok" and row["variant"] == "plain" and row["block"] == "preact"
    assert row["params_active"] == row["params_total"] and row["gate_sync"] is None
    curves = read_curves(tmp_path / "results", "t").to_pylist()
    for c in curves:
        rel = c["block_branch_rel_norm"]
        assert [i for i, v in enumerate(rel) if v is None] == [0, 3, 7, 13]  # the stage-first blocks
        assert all(v > 0 for v in rel if v is not None)


@pytest.mark.parametrize("schedule", ["constant", "restore"])
def test_stochastic_depth_trains_and_records_the_expected_and_the_measured_active_depth(tmp_path, schedule):
    config = write_config(tmp_path, variant="stochdepth", depth_schedule=schedule, steps_per_epoch=30)
    proc = run_one(tmp_path, config, ranks=2 if schedule == "restore" else 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert row["status"] == "ok" and row["variant"] == "stochdepth"
    curves = read_curves(tmp_path / "results", "t").to_pylist()
    expected = [c["active_depth_expected"] for c in curves]
    measured = [c["active_depth_measured"] for c in curves]
    # Huang's linear decay to p_L = 0.5 over 16 blocks: 16 − 0.5 · (1 + … + 16) / 16 = 11.75 blocks a step.
    if schedule == "constant":
        assert expected == pytest.approx([11.75, 11.75])
    else:  # restore: p_L climbs from 0.5 to 1 over the 60 steps, so each epoch expects more than the last
        assert 11.75 < expected[0] < expected[1] < 16
    for e, m in zip(expected, measured, strict=True):
        assert abs(m - e) < 1.5  # 30 draws of each block: the mean's sd is about 0.3 blocks


def test_a_plain_network_purged_post_hoc_and_fine_tuned(tmp_path):
    config = write_config(tmp_path, variant="posthoc", posthoc_of="plain", purge_blocks=4, finetune_epochs=1)
    proc = run_one(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert row["status"] == "ok" and row["blocks_discarded"] == 4
    first_of_stage = {0, 3, 7, 13}
    assert not first_of_stage & set(row["blocks_removed"])  # only blocks that keep their input's shape
    assert row["params_active"] < row["params_total"]


def test_an_imagefolder_run_reports_top1_on_exactly_the_images_of_val(tmp_path):
    from tests.data_trees import make_tree

    make_tree(tmp_path / "data", {"train": {"a": 12, "b": 12}, "val": {"a": 3, "b": 4}})
    config = write_config(
        tmp_path, variant="eps", epsilon=0.5, dataset="imagefolder", data_dir=str(tmp_path / "data"),
        micro_batch=4, epochs=2, eps_warmup_epochs=1,
    )  # fmt: skip
    proc = run_one(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert row["test_images"] == 7  # val/ whole, every image once; the select split came out of train/
    assert round(row["top1"] * 7) == pytest.approx(row["top1"] * 7, abs=1e-9)
    assert round(row["top1_gated"] * 7) == pytest.approx(row["top1_gated"] * 7, abs=1e-9)
    assert row["blocks_gate_mismatch"] is not None and row["prune_logit_max_abs_diff"] >= 0


def mfu_of(row: dict, flops: int) -> float:
    return 3 * flops * row["images_per_s"] / (row["world_size"] * row["device_peak_flops_per_s"])


def test_posthoc_purge_and_finetune_rows_count_the_network_that_ran(tmp_path):
    config = write_config(tmp_path, variant="posthoc", purge_blocks=3, finetune_epochs=1, epochs=1)
    proc = run_one(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert (row["blocks_total"], row["blocks_discarded"]) == (16, 3)
    assert row["params_train"] == row["params_total"] > row["params_active"]  # no side head to train
    # The timed window trained the full network: MFU counts its FLOPs, not the purged network's.
    assert row["flops_per_image"] < row["flops_per_image_unpruned"]
    assert row["mfu"] == pytest.approx(mfu_of(row, row["flops_per_image_unpruned"]), rel=1e-9)
    # The purge changes the function (lossy by design); there is no ε gate to disagree with it.
    assert row["prune_logit_max_abs_diff"] > 0 and row["blocks_gate_mismatch"] is None
    curves = read_curves(tmp_path / "results", "t").to_pylist()
    assert [(c["epoch"], c["blocks_active"]) for c in curves] == [
        (0, 16),
        (1, 13),
    ]  # the fine-tune: 13 blocks


def test_forced_nan_is_a_diverged_row(tmp_path):
    proc = run_one(tmp_path, write_config(tmp_path), env={"RESNET_BENCH_FAULTS": "nan_at_step=2"})
    assert proc.returncode == 1
    row = only_row(tmp_path)
    assert row["status"] == "diverged" and "NaN" in row["error"]


def test_simulated_oom_retries_with_half_the_micro_batch(tmp_path):
    proc = run_one(
        tmp_path, write_config(tmp_path, micro_batch=16), env={"RESNET_BENCH_FAULTS": "oom_above_micro=8"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert (row["status"], row["oom_retries"], row["micro_batch"], row["grad_accum"]) == ("ok", 1, 8, 2)
    assert row["global_batch"] == 16


def test_a_failure_is_a_failed_row(tmp_path):
    proc = run_one(tmp_path, write_config(tmp_path), env={"RESNET_BENCH_FAULTS": "raise_at_step=3"})
    assert proc.returncode == 1
    row = only_row(tmp_path)
    assert row["status"] == "failed" and "injected failure at step 3" in row["error"]


# ZeRO-2 with bf16 too: its optimizer state pickles DeepSpeed classes that the weights-only resume must
# allow (suite/checkpoint.py), and it is the mixed-precision path a GPU run takes.
@pytest.mark.parametrize("setting", [{"zero_stage": 0}, {"zero_stage": 2, "precision": "bf16"}], ids=str)
def test_killed_run_resumes_from_its_checkpoint(tmp_path, setting):
    config = write_config(tmp_path, epochs=3, steps_per_epoch=4, **setting)
    ckpt = tmp_path / "ckpt"
    flag = tmp_path / "killed-once"
    # Step 6 is in the second epoch: the first epoch's checkpoint exists by then.
    proc = run_one(tmp_path, config, "--checkpoint-dir", str(ckpt),
                   env={"RESNET_BENCH_FAULTS": f"kill_at_step=6:once={flag}"})  # fmt: skip
    assert proc.returncode != 0 and flag.exists()
    assert read_runs(tmp_path / "results", "t").num_rows == 0  # SIGKILL: no row, and no partial file
    assert (ckpt / "latest").read_text().strip() == "epoch0001"
    proc = run_one(tmp_path, config, "--checkpoint-dir", str(ckpt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = only_row(tmp_path)
    assert (row["status"], row["restarts"], row["epochs"]) == ("ok", 1, 3)
    assert [c["epoch"] for c in read_curves(tmp_path / "results", "t").to_pylist()] == [0, 1, 2]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"dataset": "imagefolder", "data_dir": "/nonexistent/imagenet"}, "/nonexistent/imagenet"),
        ({"archh": "resnet50"}, "unknown key 'archh'; did you mean 'arch'?"),
        ({"variant": "eps"}, "variant 'eps' needs epsilon"),
        ({"zero_stage": 3}, "zero_stage 3; accepted: 0, 1, 2"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, overrides, fragment):
    proc = run_one(tmp_path, write_config(tmp_path, **overrides), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not (tmp_path / "results").exists()


def test_results_dir_that_is_a_file(tmp_path):
    (tmp_path / "results").write_text("not a directory")
    proc = run_one(tmp_path, write_config(tmp_path), timeout=120)
    assert proc.returncode == 2 and "is a file" in proc.stderr


EXACTLY_ONCE = """
import os, sys, torch, torch.distributed as dist
from suite.data.config import DataConfig
from suite.data.loaders import build_loaders
from suite.data.preflight import prepare_data
from suite.distributed import setup, shutdown
from suite.evaluation import evaluate
placement = setup()
cfg = DataConfig(backend="imagefolder", data_dir=sys.argv[1], image_size=16, workers=0)
info = prepare_data(cfg)
loaders = build_loaders(cfg, info, micro_batch=2, rank=placement.rank, world_size=placement.world_size)
class AlwaysZero(torch.nn.Module):
    def forward(self, x):
        return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)
result = evaluate(AlwaysZero(), loaders.test, placement, torch.float32)
if placement.rank == 0:
    print("TOP1", repr(result.top1))
shutdown()  # as every entry point does: gloo can abort a rank at interpreter exit otherwise
"""


def test_two_rank_evaluation_counts_each_image_once(tmp_path):
    from PIL import Image

    # 7 validation images (3 of class a, 4 of class b): 7 does not divide by 2 ranks.
    for split, counts in (("train", (2, 2)), ("val", (3, 4))):
        for cls, n in zip(("a", "b"), counts, strict=True):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), (40 * i, 100, 30)).save(d / f"{i}.jpg")
    script = tmp_path / "once.py"
    script.write_text(EXACTLY_ONCE)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", str(script), str(tmp_path / "data")],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    top1 = float(proc.stdout.split("TOP1")[1].split()[0])
    assert top1 == 3 / 7  # a model that always says "a" is right on exactly the 3 a-images, counted once
