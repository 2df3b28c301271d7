"""What the training loop keeps between its logs, without waiting for the device: running means of the logged
values, and the finite checks of losses and gradients."""

from __future__ import annotations

from typing import Any

import torch


class FiniteWatch:
    """Whether losses and gradients stayed finite, kept as flags on the device until :meth:`read`.

    Reading a flag makes the host wait for the device, so the loop reads them
    all at once at its next log, evaluation, sample or checkpoint: a
    non-finite value stops the run there (``train.nonfinite: stop``), before
    anything of the steps since is written.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.pending: list[tuple[int, str, str, torch.Tensor]] = []  # (step, phase, what, not finite)
        self.scaler_skips: list[torch.Tensor] = []

    def loss(self, step: int, phase: str, loss: torch.Tensor) -> None:
        if self.mode == "stop":
            self.pending.append((step, phase, "loss", ~torch.isfinite(loss.detach())))

    def gradients(self, step: int, phase: str, finite: torch.Tensor) -> None:
        if self.mode == "stop":
            self.pending.append((step, phase, "gradient", ~finite))

    def skipped_by_scaler(self, finite: torch.Tensor) -> None:
        """An fp16 update: the scaler skipped it if its gradients overflowed."""
        self.scaler_skips.append(~finite)

    def read(self) -> tuple[list[tuple[int, str, str]], int, int]:
        """What was checked since the last read as (step, phase, what), the index of the first non-finite one
        (their count when all were finite), and how many updates the scalers skipped."""
        pending, skips = self.pending, self.scaler_skips
        self.pending, self.scaler_skips = [], []
        skipped = int(torch.stack(skips).sum()) if skips else 0
        checked = [item[:3] for item in pending]
        if not pending:
            return checked, 0, skipped
        bad = torch.stack([flag for *_, flag in pending]).cpu().nonzero()
        return checked, int(bad[0]) if len(bad) else len(checked), skipped


class Averages:
    """Running means of the logged values, per ``phase/name``, since the last :meth:`pop`.

    Tensor values are summed where they are (on the device): nothing is read
    back to the host until :meth:`pop` or :meth:`state`.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, phase: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            name = f"{phase}/{key}"
            value = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def state(self) -> dict[str, dict[str, float]]:
        """The window so far (saved in checkpoints, so a resumed run logs the same averages)."""
        return {"sums": {k: float(v) for k, v in self.sums.items()},
                "counts": {k: float(v) for k, v in self.counts.items()}}

    def load(self, state: dict[str, dict[str, float]]) -> None:
        self.sums = dict(state.get("sums", {}))
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}

    def pop(self) -> dict[str, float]:
        means = {name: float(total) / self.counts[name] for name, total in self.sums.items()}
        self.sums.clear()
        self.counts.clear()
        return means
