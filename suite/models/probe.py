"""Where identities form: how close each block is to the identity, measured on an evaluation pass.

Per block, in network order (suite/models/resnet.py `full_blocks`; a purged block has none), over every
image of the pass:
- `block_branch_max_abs`: max |F|, the quantity the ε gate compares with ε (its ratio to ε says how near the
  block is to being gated off);
- `block_branch_rel_norm`: ‖F‖ / ‖x‖, the branch's size relative to the block's input.

F is the residual branch before the gate and the addition (`branch_end`). A plain block (no shortcut) has
no branch: there F is B(x) − x, what the block adds to its input, defined where the block keeps its input's
shape and null at a stage's first block.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from suite.models.resnet import ResNet, branch_end


class BlockProbe:
    """Forward hooks that accumulate each block's max |F|, ‖F‖² and ‖x‖² while a model evaluates."""

    def __init__(self, model: nn.Module):
        # Any module evaluates; only a ResNet has blocks to measure (tests evaluate stand-in models too).
        blocks = model.full_blocks() if isinstance(model, ResNet) else []
        self.blocks = [block for _, _, block in blocks]
        self.plain = isinstance(model, ResNet) and not model.arch.shortcuts
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        n = len(self.blocks)
        self.max_abs = torch.zeros(n, dtype=torch.float64, device=device)
        self.squares = torch.zeros(2, n, dtype=torch.float64, device=device)  # ‖F‖², ‖x‖²
        self.defined = [True] * n
        self._handles: list = []

    def _add(self, i: int, f: Tensor | None, x: Tensor | None) -> None:
        if f is not None:
            low, high = torch.aminmax(f.detach())
            self.max_abs[i] = torch.maximum(self.max_abs[i], torch.maximum(high, -low).double())
            self.squares[0, i] += f.detach().double().pow(2).sum()
        if x is not None:
            self.squares[1, i] += x.detach().double().pow(2).sum()

    def __enter__(self) -> BlockProbe:
        for i, block in enumerate(self.blocks):
            if self.plain:
                self._handles.append(block.register_forward_hook(self._plain_hook(i)))
            else:
                self._handles.append(
                    block.register_forward_pre_hook(lambda m, a, i=i: self._add(i, None, a[0]))
                )
                self._handles.append(
                    branch_end(block).register_forward_hook(lambda m, a, out, i=i: self._add(i, out, None))
                )
        return self

    def _plain_hook(self, i: int):
        def hook(module: nn.Module, args, out: Tensor) -> None:
            x = args[0]
            if out.shape != x.shape:
                self.defined[i] = False
                return
            self._add(i, out - x, x)

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def results(self) -> tuple[list[float | None], list[float | None]]:
        """(max |F|, ‖F‖ / ‖x‖) per block, over every rank's images (collectives when distributed)."""
        max_abs, squares = self.max_abs.clone(), self.squares.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(max_abs, op=dist.ReduceOp.MAX)
            dist.all_reduce(squares, op=dist.ReduceOp.SUM)
        rel = (squares[0] / squares[1].clamp_min(1e-300)).sqrt().tolist()
        return (
            [v if ok else None for v, ok in zip(max_abs.tolist(), self.defined, strict=True)],
            [v if ok else None for v, ok in zip(rel, self.defined, strict=True)],
        )
