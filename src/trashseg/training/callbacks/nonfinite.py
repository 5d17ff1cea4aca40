"""Non-finite training losses under 16-mixed, counted without a host sync per step.

With a GradScaler (16-mixed), a step whose loss is NaN or inf has non-finite gradients, and the
scaler skips its optimizer step (and lowers the scale), as it does on any overflow: the weights
stay as they were and the run goes on. A skipped step leaves the weights unchanged, so losses that
stay non-finite over several batches in a row come from the weights themselves (a divergence) and
skipping will not end them: `nonfinite_losses_in_a_row` of them stop the run.

Each step only records its flag on the device; the flags are read every `log_every_n_steps`
batches (when Lightning reads the logged metrics anyway), and reduced over the processes first:
a non-finite loss on any rank makes every rank skip the step (the gradients are summed).

A skipped step keeps the weights, but the forward that overflowed has already moved the buffers
(BatchNorm's running mean and variance, its batch count): one NaN there stays for good, and
validation, checkpoints and the EMA would carry it. `BuffersKeptOnSkip` puts the buffers back
where the scaler skipped the step, whatever made it skip (a NaN loss, or a finite loss whose
gradients overflowed): a skipped step leaves no trace in the model. It decides on the device,
without a host sync, from the scale, which GradScaler lowers on a skipped step and only then.
"""

from __future__ import annotations

import torch
from torch import nn


class NonFiniteStreak:
    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"nonfinite_losses_in_a_row={limit}: give 1 or more (1 stops at the first non-finite loss)")
        self.limit = limit
        self.pending: list[torch.Tensor] = []
        self.current = 0  # non-finite steps in a row up to the last read
        self.longest = 0

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(~torch.isfinite(loss.detach()))

    def read(self, reduce_max=lambda t: t) -> int:
        """Consumes the pending flags; returns the longest run of non-finite steps so far.
        `reduce_max`: the maximum over processes (the strategy's reduce)."""
        if not self.pending:
            return self.longest
        flags = reduce_max(torch.stack(self.pending).to(torch.int32))
        self.pending = []
        for nonfinite in flags.tolist():  # the one host sync, every log_every_n_steps batches
            self.current = self.current + 1 if nonfinite else 0
            self.longest = max(self.longest, self.current)
        return self.longest

    def exceeded(self, reduce_max=lambda t: t) -> bool:
        return self.read(reduce_max) >= self.limit


class BuffersKeptOnSkip:
    """Under a GradScaler: the module's buffers as they were before an optimizer step's first
    forward come back when the scaler skips that step (with gradient accumulation, every forward
    of the skipped step's batches is undone). Buffers are small: one copy per step, per dtype."""

    def __init__(self, module: nn.Module, scaler: torch.amp.GradScaler):
        self.module, self.scaler = module, scaler
        self._saved: list[tuple[list[torch.Tensor], torch.Tensor]] | None = None  # (buffers, flat copy) per dtype
        self._scale: torch.Tensor | None = None
        self.skipped: torch.Tensor | None = None  # the last optimizer step's verdict, on the device

    def before_forward(self) -> None:
        """At each training batch's start; copies only at the first batch of an optimizer step.
        The buffers are listed here, not once: moving or reformatting a module replaces them."""
        if self._saved is None:
            groups: dict[torch.dtype, list[torch.Tensor]] = {}
            for buffer in self.module.buffers():
                groups.setdefault(buffer.dtype, []).append(buffer)
            self._saved = [(buffers, flat(buffers)) for buffers in groups.values()]  # cat copies

    def before_step(self) -> None:
        """After the backward (the scale exists from the first step on), before the scaler steps."""
        # the scale as a device tensor (get_scale() would sync); update() changes it in place
        self._scale = self.scaler._get_scale_async().clone()

    def after_step(self) -> None:
        """Puts the buffers back where the step was skipped (GradScaler lowered its scale)."""
        if self._saved is None or self._scale is None:
            return
        self.skipped = self.scaler._get_scale_async() < self._scale
        for buffers, saved in self._saved:
            kept = torch.where(self.skipped, saved, flat(buffers))
            parts = kept.split([b.numel() for b in buffers])
            torch._foreach_copy_(buffers, [part.view_as(b) for part, b in zip(parts, buffers)])
        self._saved, self._scale = None, None

    def last_step_skipped(self) -> bool:
        """A host sync: read only where a step's outcome decides something on the host (an EMA update)."""
        return self.skipped is not None and bool(self.skipped)


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One 1-D tensor of them all, in one kernel."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])
