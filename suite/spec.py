"""The run spec: one frozen, validated configuration of one data-parallel training run.

Launchers pass it to workers as a plain dict (`asdict`/`RunSpec.from_dict`), never as globals. `run_id` is
derived from every field, so the same configuration always gets the same id (a re-submitted grid finds it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace

from suite.data import registry as data_backends
from suite.errors import UserError, check, suggest
from suite.models.registry import EPS_PREFIX, STAGE_DEPTHS, check_image_size
from suite.results import check_name
from suite.spec_types import check_field_types
from suite.vocab import (
    AUGMENTS,
    BLOCKS,
    DECODES,
    DEPTH_SCHEDULES,
    GATE_SYNCS,
    LAUNCHERS,
    POSTHOC_OF,
    PRECISIONS,
    PURGE_MATCH,
    SCHEDULES,
    SMALL_IMAGE_MAX_PX,
    VARIANTS,
    ZERO_STAGES,
)


@dataclass(frozen=True)
class RunSpec:
    # model
    arch: str = "resnet50"  # depth: resnet50 | resnet101 | resnet152
    variant: str = "resnet"  # suite/vocab.py VARIANTS: resnet | eps | posthoc | scratch | plain
    # ε of the gate (eps); for scratch and `purge_blocks: match` it names the ε-ResNet parent instead.
    epsilon: float | None = None
    # Epochs trained with the gate off first (see suite/trainer.py: why); null: 1, or 0 for a 1-epoch run.
    eps_warmup_epochs: int | None = None
    lr_reset_on_discard: bool = True  # ε-ResNet's adaptive learning-rate reset
    gate_sync: str = "step"  # suite/vocab.py GATE_SYNCS: step | local
    # ε-ResNet side supervision (Yu et al. 2018, Sec. 3.2); null: on for eps, off otherwise. Any variant may
    # have it, so a plain ResNet can train with exactly ε-ResNet's loss.
    side_head: bool | None = None
    side_loss_weight: float = 0.1
    # posthoc: blocks closest to the identity to remove, or "match": as many as the ε parent discarded
    purge_blocks: int | str = 0
    finetune_epochs: int = 0  # posthoc: epochs of fine-tuning after the purge
    # posthoc: the network it purges, resnet or plain (no shortcuts: blocks that keep their input's shape are
    # ranked by ‖B(x) − x‖ / ‖x‖ and replaced by the identity)
    posthoc_of: str = "resnet"
    # stochdepth: the last block's survival probability (Huang et al. 2016's p_L), and how it changes over
    # training (suite/vocab.py DEPTH_SCHEDULES: constant | restore)
    survival_last: float = 0.5
    depth_schedule: str = "constant"
    block: str = "v1.5"  # suite/vocab.py BLOCKS: v1.5 (post-activation) | preact (pre-activation)
    width: int = 64
    small_stem: bool = False
    zero_init_residual: bool = False  # blocks start as identities (Goyal et al. 2017)
    image_size: int = 224
    # data
    dataset: str = "shapes"  # synthetic | imagefolder | shapes | shards
    data_dir: str | None = None
    # shards: a node-local directory (e.g. /tmp or a local NVMe) the shards are copied to before the first epoch
    stage_dir: str | None = None
    num_classes: int | None = None  # from the data unless given
    loader_workers: int = 2
    # suite/vocab.py AUGMENTS; null: pad_crop for inputs ≤ SMALL_IMAGE_MAX_PX (unless min_crop_scale is given),
    # else random_resized_crop.
    augment: str | None = None
    min_crop_scale: float | None = None  # random_resized_crop's area lower bound; None: the backend's default
    # Share of each class's training images held out as the select split, which every decision reads; the
    # test split (reported) is the dataset's val/ (suite/data/loaders.py).
    select_fraction: float = 0.1
    # schedule and batch
    epochs: int = 1
    steps_per_epoch: int | None = None  # cap (None: the whole training split)
    warmup_steps: int = 5  # untimed steps before the measurement window
    micro_batch: int = 32
    grad_accum: int = 1
    precision: str = "fp32"
    zero_stage: int = 0
    # Speed knobs for GPUs, each recorded in the row (suite/trainer.py). channels_last: NHWC weights and
    # inputs, which cuDNN's tensor-core convolutions prefer (and oneDNN's on CPU, docs/cpu-study.md);
    # cudnn_benchmark: autotune the convolutions (GPU only: a CPU run records false); compile: torch.compile
    # the training model (DeepSpeed's engine.compile).
    # Where JPEGs are decoded and augmented: cpu (loader workers, PIL) or gpu (the device, nvJPEG).
    decode: str = "cpu"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    # On out-of-memory, retry with half the micro-batch and twice the accumulation (the global batch is kept,
    # the step's numerics and speed are not); false: an out-of-memory run is a `failed` row instead.
    oom_retry: bool = True
    # optimizer
    lr: float = 0.1  # for a global batch of 256, scaled linearly (Goyal et al. 2017)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    lr_warmup_epochs: float = 0.0
    step_milestones: tuple[int, ...] = (30, 60, 80)
    step_gamma: float = 0.1
    # identity and targets
    seed: int = 0
    repeat: int = 0
    target_top1: float | None = None
    grid: str = "adhoc"
    nodes: int = 1
    devices_per_node: int = 1
    # How the ranks start is part of a run's identity: the same configuration via Ray and via torchrun/srun
    # are two rows, which is what the launcher-overhead comparison needs.
    launcher: str = "ray"

    def __post_init__(self):
        check_field_types(self)
        check(self.arch in STAGE_DEPTHS, f"arch {self.arch!r} unknown; accepted: {', '.join(STAGE_DEPTHS)}")
        check(self.variant in VARIANTS, f"variant {self.variant!r} unknown; accepted: {', '.join(VARIANTS)}")
        check(self.block in BLOCKS, f"block {self.block!r} unknown; accepted: {', '.join(BLOCKS)}")
        # Defaults that depend on other fields are resolved here, so `{variant: eps}` and
        # `{variant: eps, side_head: true}` are one configuration with one run id.
        if self.side_head is None:
            object.__setattr__(self, "side_head", self.variant == "eps")
        if self.augment is None:
            small = self.image_size <= SMALL_IMAGE_MAX_PX and self.min_crop_scale is None
            object.__setattr__(self, "augment", "pad_crop" if small else "random_resized_crop")
        check(self.augment in AUGMENTS, f"augment {self.augment!r}; accepted: {', '.join(AUGMENTS)}")
        check(
            self.augment == "random_resized_crop" or self.min_crop_scale is None,
            f"min_crop_scale={self.min_crop_scale} applies to augment 'random_resized_crop' only, not"
            f" {self.augment!r}",
        )
        if self.eps_warmup_epochs is None:
            object.__setattr__(self, "eps_warmup_epochs", min(1, self.epochs - 1) if self.epochs >= 1 else 0)
        if isinstance(self.purge_blocks, str):
            check(
                self.purge_blocks == PURGE_MATCH,
                f"purge_blocks {self.purge_blocks!r}; accepted: an integer ≥ 0 or {PURGE_MATCH!r}",
            )
        else:
            check(self.purge_blocks >= 0, f"purge_blocks must be ≥ 0, got {self.purge_blocks}")
            blocks = sum(STAGE_DEPTHS[self.arch])
            check(
                self.purge_blocks <= blocks,
                f"purge_blocks {self.purge_blocks} > {blocks} blocks of {self.arch}",
            )
        check(
            self.variant == "posthoc" or (self.purge_blocks == 0 and self.finetune_epochs == 0),
            "purge_blocks/finetune_epochs apply to variant 'posthoc' only",
        )
        check(
            self.posthoc_of in POSTHOC_OF,
            f"posthoc_of {self.posthoc_of!r}; accepted: {', '.join(POSTHOC_OF)}",
        )
        check(
            self.variant == "posthoc" or self.posthoc_of == "resnet",
            f"posthoc_of {self.posthoc_of!r} given for variant {self.variant!r}; accepted: variant 'posthoc'",
        )
        if self.variant == "eps" or self.has_parent:
            who = "variant 'eps'" if self.variant == "eps" else f"variant {self.variant!r} with a parent"
            check(self.epsilon is not None, f"{who} needs epsilon (a float ≥ 0)")
            check(self.epsilon >= 0, f"epsilon must be ≥ 0, got {self.epsilon}")
        else:
            need = " (scratch and `purge_blocks: match` name their ε parent by it)"
            check(
                self.epsilon is None,
                f"epsilon={self.epsilon} given for variant {self.variant!r}; only variant 'eps' has an ε gate"
                + (need if self.variant == "posthoc" else ""),
            )
        check(
            self.gate_sync in GATE_SYNCS, f"gate_sync {self.gate_sync!r}; accepted: {', '.join(GATE_SYNCS)}"
        )
        check(
            self.gate_sync == "step" or self.variant == "eps" or self.has_parent,
            f"gate_sync {self.gate_sync!r} given for variant {self.variant!r}, which has no ε gate; accepted:"
            " variant 'eps' (or a scratch/matched posthoc child, naming its parent) with gate_sync",
        )
        for name in ("width", "epochs", "micro_batch", "grad_accum", "nodes", "devices_per_node"):
            check(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in (
            "eps_warmup_epochs",
            "warmup_steps",
            "finetune_epochs",
            "loader_workers",
            "seed",
            "repeat",
        ):
            check(getattr(self, name) >= 0, f"{name} must be ≥ 0, got {getattr(self, name)}")
        # The gate acts from epoch eps_warmup_epochs on (suite/trainer.py); a warm-up as long as the run trains a
        # plain ResNet with a side head, which the results would then label ε-ResNet.
        check(
            self.variant != "eps" or self.eps_warmup_epochs < self.epochs,
            f"eps_warmup_epochs={self.eps_warmup_epochs} ≥ epochs={self.epochs}: the ε gate would never act;"
            " accepted: eps_warmup_epochs < epochs",
        )
        check(
            self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch must be ≥ 1 or null"
        )
        check(
            self.depth_schedule in DEPTH_SCHEDULES,
            f"depth_schedule {self.depth_schedule!r}; accepted: {', '.join(DEPTH_SCHEDULES)}",
        )
        check(0 < self.survival_last <= 1, f"survival_last must be in (0, 1], got {self.survival_last}")
        check(
            self.variant == "stochdepth" or (self.survival_last == 0.5 and self.depth_schedule == "constant"),
            f"survival_last/depth_schedule given for variant {self.variant!r}; accepted: variant 'stochdepth'",
        )
        check(
            self.variant != "stochdepth" or self.zero_stage == 0,
            f"variant 'stochdepth' with zero_stage {self.zero_stage}: a dropped branch leaves its parameters"
            " without a gradient in that step, which only the ZeRO-0 path fills with zeros; accepted: zero_stage 0",
        )
        check(
            not (self.compile and self.variant == "stochdepth"),
            "compile: true with variant 'stochdepth': every mini-batch draws another sub-network, which"
            " torch.compile would recompile; accepted: compile: false for stochdepth",
        )
        check(
            self.shortcuts or not self.zero_init_residual,
            "zero_init_residual: true with variant 'plain': a plain block has no shortcut, so a zeroed last BN"
            " makes it output zeros, not its input; accepted: zero_init_residual: false for plain",
        )
        check_image_size(self.image_size, small_stem=self.small_stem)
        check(
            self.dataset in data_backends.NAMES,
            f"dataset {self.dataset!r} unknown; accepted: {', '.join(data_backends.NAMES)}",
        )
        check(
            self.dataset not in ("imagefolder", "shards") or bool(self.data_dir),
            f"dataset {self.dataset!r} needs data_dir ("
            + (
                "a directory with train/ and val/)"
                if self.dataset == "imagefolder"
                else "what `data shard` wrote)"
            ),
        )
        check(
            self.num_classes is None or self.num_classes >= 1,
            f"num_classes must be ≥ 1, got {self.num_classes}",
        )
        check(
            self.precision in PRECISIONS, f"precision {self.precision!r}; accepted: {', '.join(PRECISIONS)}"
        )
        check(
            self.zero_stage in ZERO_STAGES,
            f"zero_stage {self.zero_stage}; accepted: {', '.join(map(str, ZERO_STAGES))}",
        )
        check(self.schedule in SCHEDULES, f"schedule {self.schedule!r}; accepted: {', '.join(SCHEDULES)}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}")
        check(self.lr_warmup_epochs >= 0, f"lr_warmup_epochs must be ≥ 0, got {self.lr_warmup_epochs}")
        check(0 < self.step_gamma <= 1, f"step_gamma must be in (0, 1], got {self.step_gamma}")
        check(self.side_loss_weight >= 0, f"side_loss_weight must be ≥ 0, got {self.side_loss_weight}")
        check(
            self.min_crop_scale is None or 0 < self.min_crop_scale <= 1,
            f"min_crop_scale must be in (0, 1], got {self.min_crop_scale}",
        )
        check(
            0 < self.select_fraction <= 0.5,
            f"select_fraction must be in (0, 0.5], got {self.select_fraction}",
        )
        check(
            self.target_top1 is None or 0 < self.target_top1 <= 1,
            f"target_top1 must be a fraction in (0, 1], got {self.target_top1}",
        )
        check(
            self.stage_dir is None or self.dataset == "shards",
            f"stage_dir applies to dataset 'shards' only, not {self.dataset!r}",
        )
        check(self.decode in DECODES, f"decode {self.decode!r}; accepted: {', '.join(DECODES)}")
        check(
            self.decode == "cpu" or self.dataset != "synthetic",
            "decode: gpu decodes JPEG files, and dataset 'synthetic' has none; accepted: decode: cpu",
        )
        check(
            not self.channels_last or self.zero_stage == 0,
            f"channels_last: true with zero_stage {self.zero_stage}: ZeRO keeps the parameters in one flat"
            " buffer, which NHWC strides cannot live in; accepted: zero_stage 0 with channels_last",
        )
        check(
            not (self.compile and self.variant == "eps"),
            "compile: true with variant 'eps': the ε gate all-reduces its decision inside every training forward"
            " pass, which torch.compile does not trace as one graph; accepted: compile: false for eps (every"
            " other variant may compile)",
        )
        check(self.launcher in LAUNCHERS, f"launcher {self.launcher!r}; accepted: {', '.join(LAUNCHERS)}")
        check_name("grid name", self.grid)

    # ------------------------------------------------------------------------------------------------------
    @property
    def model_arch(self) -> str:
        """The registry name: `eps_resnet50` for the ε variant, else the depth."""
        return EPS_PREFIX + self.arch if self.variant == "eps" else self.arch

    @property
    def has_parent(self) -> bool:
        """scratch and `purge_blocks: match` copy a decision of an ε-ResNet run: their parent."""
        return self.variant == "scratch" or (self.variant == "posthoc" and self.purge_blocks == PURGE_MATCH)

    @property
    def parent(self) -> RunSpec | None:
        """The `eps` run this one copies: the same spec in every other field, ε and repeat included, with
        ε-ResNet's side head and without the post-hoc fields."""
        if not self.has_parent:
            return None
        return replace(self, variant="eps", side_head=True, purge_blocks=0, finetune_epochs=0)

    @property
    def purged_from(self) -> RunSpec | None:
        """The plain run a post-hoc run trains again before it purges: the same spec without the post-hoc
        fields. A grid that has it hands its final checkpoint over instead (`RunContext.trained_by`)."""
        if self.variant != "posthoc":
            return None
        return replace(
            self,
            variant=self.posthoc_of,
            posthoc_of="resnet",
            epsilon=None,
            purge_blocks=0,
            finetune_epochs=0,
        )

    @property
    def shortcuts(self) -> bool:
        """Whether the network trained has shortcuts: all but the plain network and its post-hoc purges."""
        return self.variant != "plain" and not (self.variant == "posthoc" and self.posthoc_of == "plain")

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices_per_node

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def run_id(self) -> str:
        """`<variant>-<arch>-<hash of every field>`: readable, and stable for the same configuration."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return f"{self.variant}-{self.arch}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["step_milestones"] = list(self.step_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "run spec") -> RunSpec:
        """Build from a plain dict; unknown keys are an error with a "did you mean" suggestion."""
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise UserError(f"{where}: unknown key {key!r}; {suggest(key, sorted(known))}")
        d = dict(d)
        if isinstance(d.get("step_milestones"), list):
            d["step_milestones"] = tuple(d["step_milestones"])
        return cls(**d)
