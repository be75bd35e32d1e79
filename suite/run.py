"""One benchmark run of one `RunSpec`: attempts, the out-of-memory retry, pruning and fine-tuning, the status.

Launcher-agnostic: Ray Train, torchrun or srun only decide how the ranks start (see suite/distributed.py);
everything measured and written here is the same for all of them. The engine and epoch loop are
suite/trainer.py; the row is built by suite/row.py. Rank 0 writes it; a run that diverges or fails still
writes its row (suite/results.py makes the write atomic).
"""

from __future__ import annotations

import gc
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.distributed as dist

from suite import measure, numerics
from suite.context import RunContext
from suite.data.config import DataConfig, DatasetInfo, data_config
from suite.data.loaders import build_loaders
from suite.data.preflight import prepare_data
from suite.distributed import Placement, all_reduce_sum, broadcast_object, gather_objects, setup
from suite.errors import UserError
from suite.evaluation import evaluate, measure_deployed, reestimate_batchnorm
from suite.models import (
    block_numbers,
    block_pairs,
    build_model,
    count_flops,
    count_params,
    purge_closest_to_identity,
    rebuild_without,
)
from suite.peaks import device_info
from suite.results import grid_dir, read_run, write_run
from suite.row import Measured, run_row
from suite.spec import RunSpec
from suite.tracking import RunLog, tensorboard_dir
from suite.trainer import Diverged, Trainer, TrainState

# Training batches per rank that BatchNorm's statistics are re-estimated on after a post-hoc purge: about 3 k
# images at micro-batch 32, enough for a stable mean and variance of every channel.
BN_BATCHES = 100
# A post-hoc fine-tune adjusts a trained network: cosine from a tenth of the peak learning rate, no warm-up,
# instead of restarting the training schedule at its peak.
FINETUNE_LR_SCALE = 0.1


def finetune_spec(spec: RunSpec) -> RunSpec:
    """The recipe of the fine-tune after a post-hoc purge: its own short schedule, untimed."""
    return replace(
        spec, warmup_steps=0, lr=spec.lr * FINETUNE_LR_SCALE, lr_warmup_epochs=0.0, schedule="cosine"
    )


class ParentNotOk(RuntimeError):
    """A child (scratch, matched posthoc) whose ε parent has no `ok` row: there is nothing to copy."""


def parent_facts(spec: RunSpec, results_dir: str | Path) -> dict | None:
    """What a child copies from its ε parent's row: the blocks it removed. Rank 0 reads, every rank hears."""
    parent = spec.parent
    if parent is None:
        return None
    row = read_run(results_dir, parent.grid, parent.run_id) if dist.get_rank() == 0 else None
    row = broadcast_object(row and {k: row[k] for k in ("status", "blocks_removed", "error")})
    what = f"its parent {parent.run_id} (eps, ε = {parent.epsilon}, repeat {parent.repeat})"
    if row is None:
        raise ParentNotOk(
            f"{what} has no row in {grid_dir(results_dir, parent.grid)}: a grid runs children after their"
            " parents; outside a grid, run the parent first"
        )
    if row["status"] != "ok":
        reason = (row["error"] or "").splitlines()[0] if row["error"] else ""
        raise ParentNotOk(f"{what} finished {row['status']!r}{': ' + reason if reason else ''}")
    return row


def adopt(trainer: Trainer, path: str, spec: RunSpec) -> TrainState:
    """The finished training of `spec.purged_from` from its final checkpoint: weights, curves, time-to-target.

    Nothing of it is timed again, so the row's throughput columns stay null (the plain run's row has them).
    """
    state = trainer.load(path, restart=False)
    if state is None or state.epoch != spec.epochs:
        got = "no checkpoint" if state is None else f"a checkpoint after epoch {state.epoch}"
        raise RuntimeError(
            f"{path} holds {got} of {spec.purged_from.run_id}; a post-hoc run takes over a finished"
            f" training of {spec.epochs} epochs only"
        )
    return state


def _attempt(
    spec: RunSpec,
    placement: Placement,
    context: RunContext,
    info: DatasetInfo,
    micro: int,
    accum: int,
    parent: dict | None,
) -> Measured:
    """One training attempt at a given micro-batch: train, prune or purge (and fine-tune), measure."""
    run_start = time.perf_counter()
    torch.manual_seed(spec.seed)
    loaders = build_loaders(
        data_config(spec), info, micro_batch=micro, rank=placement.rank, world_size=placement.world_size
    )
    # scratch: the parent's pruned architecture, freshly initialised (the seed decides the weights).
    inherited = tuple(parent["blocks_removed"]) if spec.variant == "scratch" else ()
    shape = {
        "width": spec.width,
        "num_classes": info.num_classes,
        "small_stem": spec.small_stem,
        "block": spec.block,
        "shortcuts": spec.shortcuts,
        "stochastic_depth": spec.variant == "stochdepth",
    }
    model = build_model(
        arch=spec.model_arch,
        epsilon=spec.epsilon if spec.variant == "eps" else None,
        zero_init_residual=spec.zero_init_residual,
        side_head=spec.side_head,
        removed=inherited,
        **shape,
    )
    # The side head is a training device (Yu et al. 2018, Sec. 3.2) and never deployed: it counts in
    # params_train only. A scratch network's total is the unpruned network it was cut from.
    params_train = count_params(model)
    params_total = (
        count_params(build_model(arch=spec.arch, side_head=False, **shape))
        if inherited
        else params_train - (count_params(model.side) if hasattr(model, "side") else 0)
    )
    flops_unpruned = count_flops(model, spec.image_size)
    trainer = Trainer(
        spec,
        model,
        loaders,
        placement,
        micro_batch=micro,
        grad_accum=accum,
        epochs=spec.epochs,
        context=context,
    )
    state = TrainState(world_size=placement.world_size)
    world_size_changed = False
    resumed = trainer.load(context.resume_from) if context.resume_from else None
    purged_from = None
    if resumed is None and context.trained_by:
        # The same training already ran as the plain point of the grid: purge its network, not a second copy.
        resumed = adopt(trainer, context.trained_by, spec)
        purged_from = spec.purged_from.run_id
    if resumed is not None:
        world_size_changed = resumed.world_size != placement.world_size
        state = resumed
        state.world_size = placement.world_size
        run_start = time.perf_counter() - state.elapsed_s  # curves' elapsed_s continues across restarts
    result = trainer.train_epochs(state, 0, run_start)
    summary = trainer.meter.summary()
    model = trainer.model
    selected = result  # the trained network on the select split, after the last epoch
    active = model
    removed: list[tuple[int, int]] = block_pairs(model.arch.layers, inherited)
    if spec.variant == "eps":
        # The discard rule: a block goes when its gate was off on every select batch of every rank, in eval
        # mode (the mode of deployment): removing such a block changes no logit on the select split; a kept
        # block that some batch gates off still can (results/README.md, "Splits and pruning").
        removed = result.always_off
        active = rebuild_without(model, removed)
    elif spec.variant == "posthoc":
        k = len(parent["blocks_removed"]) if parent else spec.purge_blocks
        purge = purge_closest_to_identity(model, loaders.select, k)
        removed, active = purge.removed, purge.model
        # The blocks after a purged one now see other inputs: their BatchNorm statistics are measured again
        # on training batches before anything is evaluated or fine-tuned.
        reestimate_batchnorm(active, loaders.train, placement, trainer.dtype, BN_BATCHES)
        if spec.finetune_epochs:
            tuner = Trainer(
                finetune_spec(spec),
                active,
                loaders,
                placement,
                micro_batch=micro,
                grad_accum=accum,
                epochs=spec.finetune_epochs,
                context=replace(context, checkpoint_dir=None, on_epoch=context.on_epoch),
            )
            tuner.train_epochs(state, spec.epochs, run_start)
            active = tuner.model
    if active is model and hasattr(model, "side"):
        active = rebuild_without(model, [])  # a plain network's side head is never deployed either
    if active is not model:  # the deployed network on the select split
        selected = evaluate(active, loaders.select, placement, trainer.dtype)
    test = measure_deployed(
        model, active, loaders.test, placement, trainer.dtype, [] if inherited else removed
    )
    flops_active = count_flops(active, spec.image_size)
    timing = measure.combine_ranks(gather_objects(summary))
    device = device_info(spec.precision, placement.device)
    return Measured(
        num_classes=info.num_classes,
        params_total=params_total,
        params_train=params_train,
        params_active=count_params(active),
        blocks_total=sum(model.arch.layers),
        blocks_discarded_per_stage=[
            n - len(k) for n, k in zip(active.arch.layers, active.arch.kept_blocks(), strict=True)
        ],
        removed=removed,
        blocks_removed=block_numbers(model.arch.layers, removed),
        flops_per_image=flops_active,
        flops_per_image_unpruned=flops_unpruned,
        world_size=placement.world_size,
        world_size_changed=world_size_changed,
        device=device,
        math_isa=numerics.math_isa(placement.device),
        threads_per_rank=torch.get_num_threads(),
        deterministic=numerics.deterministic(placement.device),
        peak_memory_bytes=measure.peak_memory_bytes(placement.device),
        micro_batch=micro,
        grad_accum=accum,
        epochs=state.epoch,
        timing=timing,
        # The timed window trained the unpruned network (an ε net computes every branch, gated or not), so its
        # FLOPs are the ones per image there; the side head's few FLOPs are left out (count_flops).
        mfu=measure.mfu(
            flops_unpruned, timing["images_per_s"], device.peak_flops_per_s * placement.world_size
        ),
        # Files the preflight found corrupt (dropped from every rank's list: counted once) plus the ones each
        # rank failed to decode at load time.
        images_skipped=len(info.corrupt_files)
        + int(all_reduce_sum([float(loaders.skipped)], placement.device)[0]),
        top1=test.top1,
        top5=test.top5,
        top1_select=selected.top1,
        top1_gated=test.top1_trained,
        test_images=test.images,
        select_images=selected.images,
        prune_logit_max_abs_diff=test.logit_max_abs_diff,
        blocks_gate_mismatch=len(test.gate_mismatch) if spec.variant == "eps" else None,
        time_to_target_s=state.time_to_target_s,
        restarts=state.restarts,
        purged_from=purged_from,
        curves=state.curves,
    )


def prepare_data_once(cfg: DataConfig) -> DatasetInfo:
    """Rank 0 checks the data and every rank receives its description (the process group must exist).

    One directory listing and one sample decode per run instead of one per rank: on a parallel file system,
    listing ImageNet's 1.33 M files costs minutes. Every rank also indexes the very same file list, which a
    listing per rank cannot promise. A failure on rank 0 (a `UserError` for bad data) is raised on every rank.
    """
    payload = None
    if dist.get_rank() == 0:
        try:
            payload = ("ok", prepare_data(cfg).to_dict())
        except UserError as e:
            payload = ("user", str(e))
        except Exception as e:  # the other ranks wait in the broadcast: they must hear of it too
            payload = ("error", f"{type(e).__name__} on rank 0 while checking the data: {e}")
    kind, value = broadcast_object(payload)
    if kind == "user":
        raise UserError(value)
    if kind == "error":
        raise RuntimeError(value)
    return DatasetInfo.from_dict(value)


def run(
    spec: RunSpec,
    results_dir: str | Path,
    context: RunContext | None = None,
    *,
    info: DatasetInfo | None = None,
) -> dict:
    """Run `spec` on the current process group (creating one if needed); every rank returns the row.

    `info` is the data as the driver checked it (suite/data); without it rank 0 checks the data here
    (`prepare_data_once`). Out-of-memory retries with half the micro-batch and twice the accumulation (global
    batch kept); NaN loss gives `status = "diverged"`; any other exception `status = "failed"` with its text.
    Rank 0 writes.
    """
    context = context or RunContext()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    placement = setup()
    if spec.decode == "gpu" and placement.device.type != "cuda":
        raise UserError(
            f"decode: gpu decodes JPEGs on the GPU (torchvision.io.decode_jpeg), and this run's device is"
            f" {placement.device.type}: there is no GPU here; accepted: decode: cpu"
        )
    hosts = sorted(set(gather_objects(socket.gethostname())))
    measured, oom_retries, status, error = None, 0, "ok", None
    micro, accum = spec.micro_batch, spec.grad_accum
    log = None
    if placement.rank == 0 and context.write:
        log = RunLog(tensorboard_dir(results_dir, spec.grid, spec.run_id))
        context = replace(context, on_epoch=_also(log.epoch, context.on_epoch))
    try:
        parent = parent_facts(spec, results_dir)
        info = info or prepare_data_once(data_config(spec))
        while measured is None:
            try:
                measured = _attempt(spec, placement, context, info, micro, accum, parent)
            except torch.OutOfMemoryError:
                # Half the micro-batch, twice the accumulation: the global batch (and so the science) is kept.
                if micro == 1 or not spec.oom_retry:
                    raise
                micro, accum, oom_retries = micro // 2, accum * 2, oom_retries + 1
                gc.collect()
                if placement.device.type == "cuda":
                    torch.cuda.empty_cache()
                if placement.rank == 0:
                    print(
                        f"[resnet-bench] out of memory: retrying with micro-batch {micro} × {accum}",
                        flush=True,
                    )
    except Diverged as e:
        status, error = "diverged", str(e)
    except ParentNotOk as e:  # the grid goes on; a re-submitted grid retries it once the parent is ok
        status, error = "failed", str(e)
    except Exception as e:  # a failure is a row, never a lost result
        status, error = "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
    row = run_row(
        spec,
        status=status,
        error=error,
        started=started,
        ended=datetime.now(UTC),
        restarts=context.restarts,
        provenance_extra=context.provenance,
        hosts=hosts,
        device=placement.device,
        oom_retries=oom_retries,
        train_time_s=time.perf_counter() - t0,
        measured=measured,
    )
    curves = measured.curves if measured else []
    if placement.rank == 0 and context.write:
        write_run(results_dir, row, curves)
    if log is not None:
        log.final(row, step=len(curves))
        log.close()
    row["curves"] = curves
    return row


def _also(first: Callable[[dict], None], then: Callable[[dict, Path | None], None] | None):
    """An epoch hook that calls `first(point)`, then the launcher's own hook."""

    def on_epoch(point: dict, path: Path | None) -> None:
        first(point)
        if then is not None:
            then(point, path)

    return on_epoch
