"""Resuming from a DeepSpeed checkpoint without unpickling arbitrary objects.

DeepSpeed 0.19.8's `TorchCheckpointEngine.load` calls `torch.load(..., weights_only=False)`
(runtime/checkpoint_engine/torch_checkpoint_engine.py): a checkpoint directory handed to a resume (run-one
`--checkpoint-dir`, a Ray checkpoint under results/<grid>/.checkpoints) could run code. What this suite saves
is tensors, numbers, strings and dicts, which torch's restricted unpickler reads; the few DeepSpeed classes a
ZeRO optimizer state names are allowed by name.
"""

from __future__ import annotations

import contextlib
import importlib

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

# DeepSpeed's own plain classes that its ZeRO and mixed-precision optimizer states pickle: an enum, a
# dataclass of two ints and the loss scaler's state (found with torch.serialization.
# get_unsafe_globals_in_checkpoint on this suite's checkpoints at every ZeRO stage and precision).
SAFE_DEEPSPEED_GLOBALS = (
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
)


def _safe_globals() -> list:
    allowed = []
    for module, name in SAFE_DEEPSPEED_GLOBALS:
        # A DeepSpeed without one of them pickles nothing of it either.
        with contextlib.suppress(ImportError, AttributeError):
            allowed.append(getattr(importlib.import_module(module), name))
    return allowed


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def weights_only_engine(engine):
    """Swap `engine`'s checkpoint engine for one that loads with `weights_only=True`; returns `engine`."""
    current = engine.checkpoint_engine
    if type(current) is TorchCheckpointEngine:
        safe = WeightsOnlyCheckpointEngine.__new__(WeightsOnlyCheckpointEngine)
        safe.__dict__.update(current.__dict__)  # same settings (serialisation format, name)
        engine.checkpoint_engine = safe
    elif type(current) is not WeightsOnlyCheckpointEngine:
        raise RuntimeError(
            f"DeepSpeed checkpoint engine {type(current).__name__} cannot be restricted to weights-only"
            " loading; accepted: the default TorchCheckpointEngine"
        )
    return engine
