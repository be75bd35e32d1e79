"""The result contract: the run table and the curve table, declared once, with units in column names.

Every client (the report, DuckDB, Polars, a reviewer's notebook) reads these columns; `results/README.md`
is generated from this module (`resnet-bench schema --markdown`) and a test keeps the two equal.
Counts are exact int64, never rounded; fractions (`top1`, `data_wait_frac`, `mfu`) are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from suite.data import registry as data_backends
from suite.vocab import (
    ARCHS,
    BLOCK_DOCS,
    BLOCKS,
    DECODES,
    GATE_SYNC_DOCS,
    GATE_SYNCS,
    LAUNCHERS,
    PRECISIONS,
    STATUSES,
    VARIANT_DOCS,
    VARIANTS,
    ZERO_STAGES,
    one_of,
)

SCHEMA_VERSION = 7


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = True


def _ts() -> pa.DataType:
    return pa.timestamp("us", tz="UTC")


RUN_COLUMNS: tuple[tuple[str, tuple[Column, ...]], ...] = (
    (
        "identity",
        (
            Column("run_id", pa.string(), "stable id derived from the run spec (same spec → same id)", False),
            Column("grid", pa.string(), "grid name (the results sub-directory)", False),
            Column("schema_version", pa.int32(), "version of this schema", False),
            Column("seed", pa.int64(), "random seed of the run", False),
            Column("repeat", pa.int32(), "repeat index of the same configuration", False),
            Column("launcher", pa.string(), f"how the ranks were started: {one_of(LAUNCHERS)}", False),
            Column("attempts", pa.int32(), "earlier attempts of this run_id that this row replaced", False),
            Column("spec_json", pa.string(), "the full run spec as JSON, to re-run or recompute", False),
        ),
    ),
    (
        "model",
        (
            Column("arch", pa.string(), f"depth: {one_of(ARCHS)}", False),
            Column(
                "variant",
                pa.string(),
                one_of(VARIANTS, VARIANT_DOCS),
                False,
            ),
            Column("block", pa.string(), f"residual block: {one_of(BLOCKS, BLOCK_DOCS)}"),
            Column(
                "epsilon",
                pa.float64(),
                "ε of the strict-identity gate (eps); for scratch and matched posthoc, the ε of the parent",
            ),
            Column(
                "side_head",
                pa.bool_(),
                "trained with ε-ResNet's side supervision (side_loss_weight × the side head's loss)",
                False,
            ),
            Column(
                "lr_reset_on_discard",
                pa.bool_(),
                "eps: the learning rate restarts when the discard count rises (false for other variants)",
                False,
            ),
            Column(
                "gate_sync",
                pa.string(),
                f"eps: how the ranks took each gate decision in training: {one_of(GATE_SYNCS, GATE_SYNC_DOCS)};"
                " null for other variants",
            ),
            Column(
                "parent_run_id",
                pa.string(),
                "scratch and matched posthoc: run_id of the eps run whose discards this run copies",
            ),
            Column(
                "purged_from_run_id",
                pa.string(),
                "posthoc: run_id of the grid's plain run of the same training whose final checkpoint this run"
                " purged instead of training its own (its throughput columns are then null); null: trained here",
            ),
            Column("width", pa.int32(), "base width (64 in the papers)", False),
            Column("image_size_px", pa.int32(), "training/eval input side in pixels", False),
            Column("num_classes", pa.int32(), "classifier outputs", False),
            Column("dataset", pa.string(), f"data backend: {one_of(data_backends.NAMES)}", False),
        ),
    ),
    (
        "parameters and blocks",
        (
            Column(
                "params_total",
                pa.int64(),
                "parameters of the deployable network before pruning (ε: without the training-only side head)",
            ),
            Column("params_train", pa.int64(), "parameters trained (ε: params_total plus the side head)"),
            Column("params_active", pa.int64(), "parameters of the deployed network, after pruning/purging"),
            Column("blocks_total", pa.int32(), "residual blocks of the architecture"),
            Column(
                "blocks_discarded",
                pa.int32(),
                "blocks removed (ε: gated off on every select batch; posthoc: k; scratch: its parent's)",
            ),
            Column(
                "blocks_discarded_per_stage", pa.list_(pa.int32()), "blocks removed in each of the 4 stages"
            ),
            Column(
                "blocks_removed",
                pa.list_(pa.int32()),
                "indices of the removed blocks, from 0, counted over the unpruned network stage by stage",
            ),
            Column(
                "flops_per_image", pa.int64(), "forward FLOPs per image of the active network (2 per MAC)"
            ),
            Column(
                "flops_per_image_unpruned",
                pa.int64(),
                "forward FLOPs per image of the network trained, before any pruning",
            ),
        ),
    ),
    (
        "cluster",
        (
            Column("nodes", pa.int32(), "nodes the run spanned", False),
            Column("devices_per_node", pa.int32(), "ranks (devices) per node", False),
            Column("world_size", pa.int32(), "data-parallel ranks", False),
            Column("world_size_changed", pa.bool_(), "true if a restart resumed with a different world size"),
            Column("device_name", pa.string(), "GPU or CPU model of rank 0"),
            Column(
                "math_isa",
                pa.string(),
                "the math kernels' instruction set on rank 0 (CPU: ATen's and oneDNN's ISA and convolution "
                "kernel; GPU: compute capability and cuDNN)",
            ),
            Column("threads_per_rank", pa.int32(), "intra-op threads of rank 0 (they set the sum order)"),
            Column(
                "deterministic",
                pa.bool_(),
                "true if every step gives the same bits on a rerun (CPU: yes; GPU: only with deterministic "
                "algorithms, since cuDNN's backward uses atomics)",
            ),
            Column(
                "device_peak_flops_per_s", pa.float64(), "peak FLOP/s of one device at the run's precision"
            ),
            Column("device_peak_source", pa.string(), "datasheet | measured matmul"),
            Column("peak_memory_bytes", pa.int64(), "peak device memory (CPU: peak RSS) of rank 0"),
        ),
    ),
    (
        "batch and precision",
        (
            Column("micro_batch", pa.int32(), "samples per rank per forward pass (after any OOM halving)"),
            Column("grad_accum", pa.int32(), "micro-batches accumulated per optimizer step"),
            Column("global_batch", pa.int32(), "micro_batch × grad_accum × world_size"),
            Column("precision", pa.string(), one_of(PRECISIONS), False),
            Column(
                "zero_stage", pa.int32(), f"DeepSpeed ZeRO stage ({ZERO_STAGES[0]}–{ZERO_STAGES[-1]})", False
            ),
            Column("loader_workers", pa.int32(), "data-loader worker processes per rank"),
            # The speed knobs: every run of this suite fills them; rows composed elsewhere may leave them null.
            Column("decode", pa.string(), f"where JPEGs were decoded and augmented: {one_of(DECODES)}"),
            Column("channels_last", pa.bool_(), "weights and inputs in NHWC memory layout"),
            Column(
                "cudnn_benchmark",
                pa.bool_(),
                "cuDNN autotuned its convolutions (the spec asked for it and the run was on a GPU)",
            ),
            Column("compile", pa.bool_(), "the training model ran under torch.compile"),
        ),
    ),
    (
        "timing",
        (
            Column("epochs", pa.int32(), "training epochs completed"),
            Column("warmup_steps", pa.int32(), "untimed steps at the start"),
            Column("timed_steps", pa.int64(), "steps inside the timed window (per rank)"),
            Column("step_ms_p50", pa.float64(), "median step time, ms (pooled over ranks)"),
            Column("step_ms_p90", pa.float64(), "90th-percentile step time, ms"),
            Column("images_per_s", pa.float64(), "training images/s over all ranks in the timed window"),
            Column(
                "images_per_s_compute",
                pa.float64(),
                "images/s counting compute time only (data wait removed)",
            ),
            Column(
                "data_wait_frac",
                pa.float64(),
                "share of the timed window spent waiting for data (worst rank)",
            ),
            Column(
                "mfu",
                pa.float64(),
                "3 × forward FLOPs of the network trained in the timed window (flops_per_image_unpruned) × "
                "images/s ÷ (world_size × device peak)",
            ),
            Column("train_time_s", pa.float64(), "wall time of training and evaluation, s"),
            Column("images_skipped", pa.int64(), "images skipped because they failed to decode"),
        ),
    ),
    (
        "accuracy",
        (
            Column(
                "top1",
                pa.float64(),
                "top-1 (fraction) of the deployed network (after pruning) on the test split",
            ),
            Column("top5", pa.float64(), "top-5 (fraction) of the deployed network on the test split"),
            Column("test_images", pa.int64(), "images of the test split top1/top5 were measured on"),
            Column("top1_select", pa.float64(), "top-1 of the deployed network on the select split"),
            Column("select_images", pa.int64(), "images of the select split (top1_select, the curves)"),
            Column(
                "top1_gated",
                pa.float64(),
                "top-1 on the test split of the network as trained, before pruning (ε: gates live; posthoc: "
                "before the purge; resnet: = top1)",
            ),
            Column(
                "prune_logit_max_abs_diff",
                pa.float64(),
                "largest |logit| difference between the trained network (eval mode) and the deployed one over "
                "the test split (0 for resnet; ε: 0 when no gate disagrees with the pruning)",
            ),
            Column(
                "blocks_gate_mismatch",
                pa.int32(),
                "ε: blocks whose gate contradicted the pruning on some test batch (a kept block gated off or "
                "a removed block gated on); null for other variants",
            ),
            Column("target_top1", pa.float64(), "top-1 target for time-to-target"),
            Column(
                "time_to_target_s",
                pa.float64(),
                "seconds until select top-1 first reached the target (null: never)",
            ),
        ),
    ),
    (
        "outcome",
        (
            Column("status", pa.string(), one_of(STATUSES), False),
            Column("error", pa.string(), "error text for diverged/failed runs"),
            Column("restarts", pa.int32(), "worker restarts from a checkpoint during the run", False),
            Column(
                "oom_retries", pa.int32(), "out-of-memory retries (micro-batch halved, accumulation doubled)"
            ),
        ),
    ),
    (
        "provenance",
        (
            Column("suite_version", pa.string(), "resnet-bench version (`resnet-bench --version`)"),
            Column("torch_version", pa.string(), "torch version"),
            Column("deepspeed_version", pa.string(), "DeepSpeed version"),
            Column("ray_version", pa.string(), "Ray version (null outside Ray)"),
            Column("python_version", pa.string(), "Python version"),
            Column("cuda_version", pa.string(), "CUDA runtime torch was built with (null on CPU)"),
            Column("cudnn_version", pa.string(), "cuDNN version, as torch reports it (null on CPU)"),
            Column("nccl_version", pa.string(), "NCCL version, major.minor.patch (null on CPU)"),
            Column("gpu_driver", pa.string(), "NVIDIA driver version of rank 0's node (null on CPU)"),
            Column("cpu_model", pa.string(), "CPU model of rank 0's node (/proc/cpuinfo)"),
            Column("git_sha", pa.string(), "commit of the suite that ran (null outside a git checkout)"),
            Column("hosts", pa.list_(pa.string()), "host names of the ranks"),
            Column("slurm_job_id", pa.string(), "Slurm job id (null outside Slurm)"),
            Column("started_at", _ts(), "run start, UTC", False),
            Column("ended_at", _ts(), "run end, UTC", False),
        ),
    ),
)

CURVE_COLUMNS: tuple[Column, ...] = (
    Column("run_id", pa.string(), "the run this epoch belongs to", False),
    Column("grid", pa.string(), "grid name", False),
    Column("schema_version", pa.int32(), "version of this schema", False),
    Column("epoch", pa.int32(), "epoch index, from 0", False),
    Column("loss", pa.float64(), "mean training loss of the epoch (main head)"),
    Column("top1_select", pa.float64(), "top-1 on the select split after the epoch (fraction)"),
    Column("top5_select", pa.float64(), "top-5 on the select split after the epoch (fraction)"),
    Column("lr", pa.float64(), "learning rate at the end of the epoch"),
    Column(
        "blocks_active",
        pa.int32(),
        "blocks of the network trained in the epoch, less the ε blocks gated off on every select batch",
    ),
    Column("epsilon", pa.float64(), "ε in force during the epoch (null: gate disabled, ε warm-up)"),
    Column("images_per_s", pa.float64(), "training images/s over all ranks during the epoch"),
    Column("elapsed_s", pa.float64(), "seconds since the run started, at the end of the epoch", False),
    Column(
        "active_depth_expected",
        pa.float64(),
        "stochdepth: blocks expected to run per training step in the epoch (the sum of the survival"
        " probabilities, averaged over its steps); null for other variants",
    ),
    Column(
        "active_depth_measured",
        pa.float64(),
        "stochdepth: blocks that ran per training step in the epoch (drawn, counted); null for other variants",
    ),
    Column(
        "block_branch_max_abs",
        pa.list_(pa.float64()),
        "per block in network order (purged blocks absent): max |F| of its residual branch over the select"
        " split after the epoch, before the gate (÷ ε: how near the gate is to switching it off); plain"
        " networks: of B(x) − x, null where the block changes the shape",
    ),
    Column(
        "block_branch_rel_norm",
        pa.list_(pa.float64()),
        "per block in network order: ‖F‖ / ‖x‖ over the select split after the epoch, F the residual branch"
        " and x the block's input (plain networks: ‖B(x) − x‖ / ‖x‖, null where the block changes the shape)",
    ),
)


def _schema(columns, kind: str) -> pa.Schema:
    fields = [pa.field(c.name, c.type, nullable=c.nullable, metadata={"doc": c.doc}) for c in columns]
    return pa.schema(fields, metadata={"resnet_bench_schema_version": str(SCHEMA_VERSION), "table": kind})


RUN_SCHEMA = _schema([c for _, cols in RUN_COLUMNS for c in cols], "runs")
CURVE_SCHEMA = _schema(CURVE_COLUMNS, "curves")
