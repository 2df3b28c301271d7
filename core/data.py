"""Batches in an order that depends only on the seed, the epoch and the position, so a run can resume exactly.

Each epoch's order is a permutation drawn from ``(seed, epoch)`` alone. The
stream's position (the epoch, and how many samples of its permutation all
processes together have used) goes into every checkpoint; a resumed run skips
those samples without loading them, and continues with the same batches an
uninterrupted run would have seen, with any number of processes.

A dataset's own randomness (augmentations) must come from the sample's index,
as the built-in datasets' does, for a resumed run to see the same samples.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from .device import SEED_STRIDE
from .errors import UserError
from .plugin_api import SAMPLE_KEY


def epoch_permutation(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: the same in every process and every run with this seed."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * SEED_STRIDE + epoch))


class EpochSampler(Sampler[int]):
    """This process's indices of one epoch's permutation, from ``skip`` samples in.

    With ``world_size`` processes, process ``rank`` takes every ``world_size``-th
    index of what remains, so the processes together consume the permutation in
    order, ``world_size * batch_size`` samples per step.
    """

    def __init__(self, size: int, seed: int, epoch: int, skip: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1) -> None:
        remaining = epoch_permutation(size, seed, epoch)[skip:]
        per_step = world_size * batch_size
        usable = len(remaining) // per_step * per_step  # drop the last partial step, as drop_last does
        self.indices = remaining[:usable][rank::world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class StreamSampler(Sampler[int]):
    """This process's indices epoch after epoch, from ``consumed`` samples into epoch ``epoch`` on, without end.

    Each epoch is what :class:`EpochSampler` gives for it, so batches never
    straddle two epochs and :class:`BatchStream`'s position stays exact. One
    DataLoader over this sampler serves the whole run: its worker processes
    start once, not once per epoch.
    """

    def __init__(self, size: int, seed: int, epoch: int, consumed: int, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1) -> None:
        self.size, self.seed, self.epoch, self.consumed = size, seed, epoch, consumed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.epoch, self.consumed
        while True:
            if skip + self.world_size * self.batch_size <= self.size:
                yield from EpochSampler(self.size, self.seed, epoch, skip, self.rank, self.world_size,
                                        self.batch_size)
            epoch, skip = epoch + 1, 0


def collate(samples: Any) -> Any:
    """Stack samples into a batch; a dataset's ``__getitems__`` may already return a stacked tensor (or a
    mapping of them)."""
    if isinstance(samples, torch.Tensor) or (isinstance(samples, Mapping) and all(
            isinstance(value, torch.Tensor) for value in samples.values())):
        return samples
    return torch.utils.data.default_collate(samples)


@dataclass
class Batch:
    """One batch: the samples, and the conditions they come with (``{"label": LongTensor}``, or empty)."""

    samples: torch.Tensor
    conditions: dict[str, torch.Tensor] = field(default_factory=dict)


class BatchStream:
    """Endless batches on ``device``, epoch after epoch, that know their position.

    ``position()`` is ``{"epoch": e, "consumed": n}``: ``n`` samples of epoch
    ``e``'s permutation have been used by all processes together. A stream
    built with that position continues exactly where the other left off.
    A dataset yields sample tensors, or mappings ``{"sample": ..., NAME: ...}``
    whose other keys are exactly the ``conditions`` its info declares; anything
    else (a bare tuple, an undeclared key) is a user error naming ``dataset_name``,
    never silently dropped.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int, device: torch.device, *, workers: int = 0,
                 rank: int = 0, world_size: int = 1, position: dict[str, int] | None = None,
                 pin_memory: bool = False, channels_last: bool = False, conditions: Collection[str] = (),
                 dataset_name: str = "the dataset") -> None:
        self.dataset, self.batch_size, self.seed, self.device = dataset, batch_size, seed, device
        self.workers, self.rank, self.world_size, self.pin_memory = workers, rank, world_size, pin_memory
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.conditions, self.dataset_name = frozenset(conditions), dataset_name
        position = position or {"epoch": 0, "consumed": 0}
        self.epoch, self.consumed = int(position["epoch"]), int(position["consumed"])
        self._iterator: Iterator[Any] | None = None

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def close(self) -> None:
        """Stop the loader's worker processes (a later ``next`` starts new ones where the stream is)."""
        self._iterator = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        per_step = self.batch_size * self.world_size
        if self.consumed + per_step > len(self.dataset):  # this epoch's permutation is used up
            self.epoch, self.consumed = self.epoch + 1, 0
        if self._iterator is None:  # once per stream: the loader's sampler runs on through the epochs
            self._iterator = iter(self._loader())
        batch = self._checked(next(self._iterator))
        self.consumed += per_step
        samples = batch.samples.to(self.device, non_blocking=self.pin_memory)  # pinned: the copy overlaps compute
        if samples.dim() == 4:
            samples = samples.contiguous(memory_format=self.memory_format)
        conditions = {name: value.to(self.device, non_blocking=self.pin_memory)
                      for name, value in batch.conditions.items()}
        return Batch(samples, conditions)

    def _checked(self, batch: Any) -> Batch:
        """The collated batch as samples and conditions, refusing what the dataset's info does not declare."""
        declared = ", ".join(sorted(self.conditions)) or "none"
        if isinstance(batch, torch.Tensor):
            if self.conditions:
                raise UserError(f"dataset {self.dataset_name!r} declares the conditions {declared}, but its items "
                                "are bare samples", field="data.name",
                                hint="yield {'sample': tensor, NAME: value} for each declared condition")
            return Batch(batch)
        if isinstance(batch, Mapping) and SAMPLE_KEY in batch:
            given = set(batch) - {SAMPLE_KEY}
            if given != self.conditions:
                raise UserError(f"dataset {self.dataset_name!r} yields the conditions "
                                f"{', '.join(sorted(given)) or 'none'}, but its info declares {declared}",
                                field="data.name",
                                hint="declare each in DatasetInfo(conditions=...), and yield exactly those")
            return Batch(batch[SAMPLE_KEY], {name: torch.as_tensor(batch[name]) for name in sorted(given)})
        raise UserError(f"dataset {self.dataset_name!r} yields {type(batch).__name__} items; expected a sample "
                        "tensor, or a mapping {'sample': tensor, ...} of the conditions its info declares",
                        field="data.name", hint="for (image, label) pairs, yield {'sample': image, 'label': label} "
                                                "and declare DatasetInfo(conditions={'label': Condition(...)})")

    def _loader(self) -> DataLoader:
        sampler = StreamSampler(len(self.dataset), self.seed, self.epoch, self.consumed, self.rank, self.world_size,
                                self.batch_size)
        # Samples draw their randomness from their index, so worker seeds do not change what a step sees.
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.seed * SEED_STRIDE + self.epoch + 1),
            collate_fn=collate,
        )
