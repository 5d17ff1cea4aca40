"""Non-finite training losses under 16-mixed, counted without a host sync per step.

With a GradScaler (16-mixed), a step whose loss is NaN or inf has non-finite gradients, and the
scaler skips its optimizer step (and lowers the scale), as it does on any overflow: the weights
stay as they were and the run goes on. A skipped step leaves the weights unchanged, so losses that
stay non-finite over several batches in a row come from the weights themselves (a divergence) and
skipping will not end them: `nonfinite_losses_in_a_row` of them stop the run.

Each step only records its flag on the device; the flags are read every `log_every_n_steps`
batches (when Lightning reads the logged metrics anyway), and reduced over the processes first:
a non-finite loss on any rank makes every rank skip the step (the gradients are summed).
"""

from __future__ import annotations

import torch


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
