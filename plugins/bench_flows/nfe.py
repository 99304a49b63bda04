"""NFE bookkeeping for training (flows-math.md section 2.3: "NFE is logged for training").

Every call of a dynamics network is counted by a forward pre-hook. In a training step, the calls made
while ``loss`` runs are the forward NFE. The backward NFE are the calls of the adjoint method's
backward solve (eq. 2.2.9), counted until the dynamics parameters' gradients arrive (a gradient hook
on each network's first parameter); with direct backprop there is no backward solve and every taped
evaluation is back-propagated once, so backward NFE = forward NFE. Running totals (steps, forward,
backward) live in the ``train_nfe`` buffer, so they are saved with the checkpoint.
"""
from __future__ import annotations

import torch
from torch import nn


class NFEBookkeeping(nn.Module):
    def _init_nfe(self, adjoint: bool) -> None:
        self.register_buffer("train_nfe", torch.zeros(3, dtype=torch.float64))  # steps, forward, backward
        self._calls = 0
        self._mark = 0
        self._hooks_ready = False
        self._adjoint_counting = adjoint

    def nets(self) -> list[nn.Module]:
        raise NotImplementedError  # abstract: the modules whose forward calls count as NFE

    def _count(self, *_) -> None:
        self._calls += 1

    def _grad_arrived(self, grad: torch.Tensor) -> torch.Tensor:
        self.train_nfe[2] += self._calls - self._mark
        self._mark = self._calls
        return grad

    def _ensure_hooks(self) -> None:
        if self._hooks_ready:
            return
        for net in self.nets():
            net.register_forward_pre_hook(self._count)
            first = next((p for p in net.parameters() if p.requires_grad), None)
            if first is not None and self._adjoint_counting:
                first.register_hook(self._grad_arrived)
        self._hooks_ready = True

    def _record_step(self, start: int) -> None:
        """Call at the end of ``loss`` with the call count taken at its start."""
        forward = self._calls - start
        with torch.no_grad():
            self.train_nfe[0] += 1
            self.train_nfe[1] += forward
            if not self._adjoint_counting:
                self.train_nfe[2] += forward
        self._mark = self._calls

    def nfe_stats(self) -> dict[str, float]:
        steps, fwd, bwd = (float(v) for v in self.train_nfe)
        out = {"num_params": float(sum(p.numel() for p in self.parameters())), "train_steps_counted": steps}
        if steps:
            out.update({"train_nfe_forward": fwd / steps, "train_nfe_backward": bwd / steps})
        return out
