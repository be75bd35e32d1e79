"""The engine and the epoch loop: a DeepSpeed engine around one model, trained and evaluated epoch by epoch.

The measurement protocol (suite/measure.py) times the steps; the run around it (attempts, the OOM retry,
pruning and fine-tuning) is suite/run.py, and its row is built by suite/row.py.
"""

from __future__ import annotations

import itertools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
import torch.nn.functional as F

from suite import faults, measure
from suite.checkpoint import weights_only_engine
from suite.context import RunContext
from suite.data.loaders import Loaders
from suite.distributed import Placement, all_reduce_sum
from suite.evaluation import EvalResult, evaluate
from suite.models import ResNet, split_outputs
from suite.models.stochastic import survival_probabilities
from suite.optim import Schedule, param_groups
from suite.spec import RunSpec


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def deepspeed_config(spec: RunSpec, micro_batch: int, grad_accum: int, world_size: int) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "zero_optimization": {"stage": spec.zero_stage},
        # SGD is not one of DeepSpeed's own optimizers; ZeRO ≥ 1 refuses it without this flag.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        # DeepSpeed clips the gradient norm at 1.0 unless told otherwise (runtime/constants.py); the ResNet
        # recipe (He et al. 2016) and ε-ResNet's (Yu et al. 2018) do not clip, and the norm costs a pass over
        # every gradient each step.
        "gradient_clipping": 0.0,
    }
    if spec.precision == "bf16":
        # BatchNorm's running statistics must follow the bf16 weights, else batch_norm sees mixed dtypes
        # (../shared/TOOLCHAIN.md).
        cfg["bf16"] = {"enabled": True}
        cfg["data_types"] = {"buffer_dtype": "bf16"}
    elif spec.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return cfg


@dataclass
class TrainState:
    """What carries over between epochs and across a checkpoint/restart."""

    epoch: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    max_discarded: int = 0
    restart_step: int = 0
    time_to_target_s: float | None = None
    curves: list[dict] = field(default_factory=list)
    world_size: int = 0
    restarts: int = 0  # times this run resumed from a checkpoint (any launcher)


class Trainer:
    """A DeepSpeed engine around one model, and the epoch loop with the measurement protocol."""

    def __init__(
        self,
        spec: RunSpec,
        model: ResNet,
        loaders: Loaders,
        placement: Placement,
        *,
        micro_batch: int,
        grad_accum: int,
        epochs: int,
        context: RunContext,
    ):
        self.spec, self.loaders, self.placement, self.context = spec, loaders, placement, context
        self.micro_batch = micro_batch
        self.steps_per_epoch = len(loaders.train)
        if spec.steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, spec.steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training split gives no full micro-batch of {micro_batch} per rank")
        opt_steps_per_epoch = max(self.steps_per_epoch // grad_accum, 1)
        global_batch = micro_batch * grad_accum * placement.world_size
        self.schedule = Schedule(
            total_steps=opt_steps_per_epoch * epochs,
            warmup_steps=round(spec.lr_warmup_epochs * opt_steps_per_epoch),
            kind=spec.schedule,
            steps_per_epoch=opt_steps_per_epoch,
            milestones=spec.step_milestones,
            gamma=spec.step_gamma,
        )
        lr = spec.lr * global_batch / 256  # linear scaling rule (Goyal et al. 2017)
        optimizer = torch.optim.SGD(
            param_groups(model, spec.weight_decay), lr=lr, momentum=spec.momentum, nesterov=spec.nesterov
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        if placement.device.type == "cuda":
            torch.backends.cudnn.benchmark = spec.cudnn_benchmark
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        self.engine, _, _, _ = deepspeed.initialize(
            model=model.to(placement.device),
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(spec, micro_batch, grad_accum, placement.world_size),
        )
        # Stochastic depth leaves a dropped branch without gradients; the all-reduce fills them with zeros
        # (DeepSpeed's engine), so weight decay and momentum act on every parameter at 1 rank as at N.
        if placement.world_size == 1 and spec.zero_stage == 0 and spec.variant != "stochdepth":
            # A one-rank all-reduce averages each gradient with itself: DeepSpeed flattens, reduces and copies
            # back every gradient anyway (1.5 % of a CPU step, measured); it skips this itself without a
            # process group, which this run always has.
            self.engine.enable_backward_allreduce = False
        if spec.channels_last:
            # After initialize: DeepSpeed broadcasts each parameter as a byte view, which NHWC strides refuse.
            # `.to` swaps each Parameter's data in place, so the optimizer keeps the same parameters.
            self.engine.module.to(memory_format=torch.channels_last)
        if spec.compile:
            # nn.Module.compile in place: every later call of the module, training and evaluation alike, runs
            # compiled, and its parameters, state dict and checkpoints stay the module's own.
            self.engine.compile()
        self.model: ResNet = self.engine.module
        self.model.set_gate_sync(spec.gate_sync)
        self.dtype = next(self.model.parameters()).dtype
        self.epochs = epochs
        self.meter = measure.ThroughputMeter(
            warmup_steps=spec.warmup_steps, synchronize=measure.device_synchronizer(placement.device)
        )
        if placement.rank == 0:
            print(
                f"[resnet-bench] {spec.run_id}: global batch {global_batch} = micro {micro_batch} × accumulation"
                f" {grad_accum} × world {placement.world_size}; {self.steps_per_epoch} steps/epoch",
                flush=True,
            )

    # -----------------------------------------------------------------------------------------------------
    def save(self, state: TrainState) -> Path | None:
        """Checkpoint with DeepSpeed's own format; only the newest epoch is kept (resume needs no more)."""
        if not self.context.checkpoint_dir:
            return None
        root = Path(self.context.checkpoint_dir)
        tag = f"epoch{state.epoch:04d}"
        self.engine.save_checkpoint(str(root), tag=tag, client_state={"train_state": vars(state)})
        for old in root.glob("epoch*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
        return root

    def load(self, path: str, *, restart: bool = True) -> TrainState | None:
        """The state saved in `path`: a resume of this run (`restart`), or another run's training taken over."""
        loaded, client = weights_only_engine(self.engine).load_checkpoint(path)
        if loaded is None:
            return None
        state = TrainState(**client["train_state"])
        state.restarts = state.restarts + 1 if restart else 0
        self.schedule.restart_step = state.restart_step
        return state

    def set_epsilon_for(self, epoch: int) -> float | None:
        """ε for this epoch; None (gate disabled) during the ε warm-up.

        Why the warm-up: at initialisation many branches are small, and with a zero-initialised last BN
        exactly 0, so a gate active from step 0 would switch them off before they learn anything; a
        switched-off branch gets no gradient and can never come back.
        """
        if self.spec.variant != "eps":
            return None
        eps = None if epoch < self.spec.eps_warmup_epochs else float(self.spec.epsilon)
        self.model.set_epsilon(eps)
        return eps

    def set_survival_for(self, step: int) -> float:
        """Stochastic depth: every block's survival probability for training step `step` (the schedule runs
        to the last step, where `restore` reaches 1); returns the expected number of blocks run."""
        progress = (step + 1) / (self.steps_per_epoch * self.epochs)
        blocks = sum(self.model.arch.layers)  # stochastic depth never trains a pruned network
        p = survival_probabilities(blocks, self.spec.survival_last, self.spec.depth_schedule, progress)
        self.model.set_survival(p)
        return sum(p)

    def train_epochs(self, state: TrainState, first_epoch: int, run_start: float) -> EvalResult:
        spec, engine, meter = self.spec, self.engine, self.meter
        result = None
        for epoch in range(first_epoch, first_epoch + self.epochs):
            if epoch < state.epoch:
                continue  # resumed past it
            eps = self.set_epsilon_for(epoch)
            agree_gates = eps is not None and spec.gate_sync == "local"
            depth = self.model.depth_draw
            if depth is not None:
                depth.reseed(spec.seed * 1_000_003 + epoch)  # the same draws on every rank, and on a resume
                depth.take_count()
                expected_sum = 0.0
                # constant: the same probabilities all epoch, set once; restore: they change every step.
                per_step = self.set_survival_for(state.step)
                redraw = spec.depth_schedule == "restore"
            self.loaders.set_epoch(epoch)
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.placement.device)
            nonfinite = torch.zeros((), dtype=torch.bool, device=self.placement.device)
            epoch_start, samples = time.perf_counter(), 0
            meter.resume()
            for images, labels in itertools.islice(self.loaders.train, self.steps_per_epoch):
                meter.data_ready()
                poison = (
                    faults.at_step(state.step, rank=self.placement.rank, micro_batch=self.micro_batch)
                    if faults.active()
                    else None
                )
                if depth is not None:
                    expected_sum += self.set_survival_for(state.step) if redraw else per_step
                images = images.to(
                    self.placement.device, self.dtype, non_blocking=True, memory_format=self.memory_format
                )
                labels = labels.to(self.placement.device, non_blocking=True)
                logits, side = split_outputs(engine(images))
                if agree_gates:
                    self.model.agree_gates()
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=spec.label_smoothing)
                if poison == "nan":
                    loss = loss * float("nan")
                total = loss
                if side is not None:
                    side_loss = F.cross_entropy(side.float(), labels, label_smoothing=spec.label_smoothing)
                    total = loss + spec.side_loss_weight * side_loss
                engine.backward(total)
                engine.step()
                # Accumulated on the device and read once per epoch: no host sync inside the step.
                loss_sum += loss.detach()
                nonfinite |= ~torch.isfinite(loss.detach())
                meter.step_done(samples=len(labels))
                samples += len(labels)
                state.step += 1
                if self.context.on_progress and state.step % self.context.progress_every == 0:
                    elapsed = time.perf_counter() - epoch_start
                    self.context.on_progress(
                        {
                            "epoch": epoch,
                            "step": state.step,
                            "images_per_s": samples * self.placement.world_size / max(elapsed, 1e-9),
                        }
                    )
            meter.pause()
            epoch_time = time.perf_counter() - epoch_start
            loss_total, bad, n = all_reduce_sum(
                [float(loss_sum), float(nonfinite), float(self.steps_per_epoch)], self.placement.device
            )
            if bad:
                raise Diverged(f"training loss became NaN/inf in epoch {epoch} (step ≤ {state.step})")
            # The select split, never the test split: it decides the discards, the restarts and time-to-target.
            result = evaluate(self.model, self.loaders.select, self.placement, self.dtype)
            discarded = len(result.always_off)
            if spec.variant == "eps" and spec.lr_reset_on_discard and discarded > state.max_discarded:
                self.schedule.restart(engine.global_steps)
            state.max_discarded = max(state.max_discarded, discarded)
            state.restart_step = self.schedule.restart_step
            state.elapsed_s = time.perf_counter() - run_start
            if (
                spec.target_top1 is not None
                and state.time_to_target_s is None
                and result.top1 >= spec.target_top1
            ):
                state.time_to_target_s = state.elapsed_s
            point = {
                "epoch": epoch,
                "loss": loss_total / max(n, 1),
                "top1_select": result.top1,
                "top5_select": result.top5,
                "lr": float(engine.get_lr()[0]),
                # Blocks of the network being trained (a post-hoc fine-tune trains the purged one), less the
                # ε blocks gated off on every select batch.
                "blocks_active": sum(map(len, self.model.arch.kept_blocks())) - discarded,
                "epsilon": eps,
                "images_per_s": samples * self.placement.world_size / max(epoch_time, 1e-9),
                "elapsed_s": state.elapsed_s,
                "block_branch_max_abs": result.block_branch_max_abs,
                "block_branch_rel_norm": result.block_branch_rel_norm,
                "active_depth_expected": None,
                "active_depth_measured": None,
            }
            if depth is not None:
                ran, passes = depth.take_count()
                point["active_depth_expected"] = expected_sum / self.steps_per_epoch
                point["active_depth_measured"] = ran / max(passes, 1)
            state.curves.append(point)
            state.epoch = epoch + 1
            path = self.save(state)
            if self.context.on_epoch:
                self.context.on_epoch(point, path)
        if result is None:  # every epoch was already done before a restart
            result = evaluate(self.model, self.loaders.select, self.placement, self.dtype)
        return result
