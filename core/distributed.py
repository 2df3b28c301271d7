"""Data-parallel training over torch.distributed, for runs started by ``torchrun`` (or ``aigc-kit run --nproc N``).

Every process holds the same networks and optimizers. Each phase's gradients
are averaged over the processes after its backward pass, in one flattened
all-reduce (DistributedDataParallel's arithmetic, without its module
wrapper, which cannot follow networks that are trained in one phase and
frozen in the next). Each process reads its own share of every batch
(:mod:`aigc_kit.core.data`); only process 0 reads and writes the run
directory (a resumed run's checkpoint is read there and sent to the others),
so nodes need no shared filesystem. Backends: NCCL on CUDA, gloo on the CPU;
host-side decisions (stop signals, finite checks, logged values) travel over a
gloo group on the CPU, so they never wait for a GPU stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class ProcessPlace:
    """This process's place in the job: one process (the default) or ``world_size`` of them."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Process 0 writes the run directory."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The CUDA device of this process (``LOCAL_RANK``), or ``device`` unchanged on a CPU."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


_host_group: Any = None
"""A gloo group over the same processes when the default group is NCCL (None: the default group is gloo)."""

T = TypeVar("T")
_USER_ERROR_FIELDS = ("message", "file", "field", "expected", "given", "hint")


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def from_environment(device: torch.device, timeout: float = 7200.0) -> ProcessPlace:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ...), if any.

    ``timeout`` (seconds) bounds every wait for the other processes, NCCL's
    watchdog included: process 0 evaluates and writes sample pictures while the
    others wait, so it must exceed the longest evaluation.
    """
    global _host_group
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessPlace()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        _host_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout)) if backend == "nccl" else None
    return ProcessPlace(rank=rank, world_size=world_size, local_rank=local_rank)


def from_process_zero(read: Callable[[], T], place: ProcessPlace) -> T:
    """``read()`` in process 0, its result sent to every process; a :class:`UserError` it raises is raised in all."""
    from .errors import UserError

    if not place.enabled:
        return read()
    message: list[Any] = [None]
    failure: BaseException | None = None
    if place.is_main:
        try:
            message[0] = ("value", read())
        except UserError as error:
            message[0] = ("error", {name: getattr(error, name) for name in _USER_ERROR_FIELDS})
        except Exception as exc:  # noqa: BLE001 - told to the others (which would wait forever), then raised here
            failure = exc
            message[0] = ("failure", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(message, src=0, group=_host_group)
    if failure is not None:
        raise failure
    kind, payload = message[0]
    if kind == "error":
        raise UserError(**payload)
    if kind == "failure":
        raise RuntimeError(f"process 0 failed: {payload}")
    return payload


def shutdown(place: ProcessPlace) -> None:
    """Wait for every process (process 0 may still be writing), then leave the process group cleanly."""
    global _host_group
    if place.enabled and dist.is_initialized():
        dist.barrier(group=_host_group)
        dist.destroy_process_group()
        _host_group = None


def average_gradients(parameters: list[nn.Parameter], world_size: int) -> None:
    """Replace each gradient by its mean over the processes, in one all-reduce for all of them.

    A parameter without a gradient in some process (a branch its batch did not
    take) counts as a zero gradient there, so that every process all-reduces a
    buffer of the same size; a parameter no process has a gradient for keeps
    none. Which ones have gradients is host knowledge, agreed over the host
    group, so that nothing waits for the device.
    """
    if not parameters:
        return
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32)
    dist.all_reduce(present, group=_host_group)
    used = [p for p, count in zip(parameters, present.tolist(), strict=True) if count > 0]
    if not used:
        return
    gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in used]
    flat = torch._utils._flatten_dense_tensors(gradients)
    dist.all_reduce(flat)
    flat /= world_size
    for parameter, mean in zip(used, torch._utils._unflatten_dense_tensors(flat, gradients), strict=True):
        if parameter.grad is None:
            parameter.grad = mean.clone()
        else:
            parameter.grad.copy_(mean)


def broadcast_state(modules: list[nn.Module]) -> None:
    """Make every process's parameters and buffers process 0's."""
    for module in modules:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """The mean of each logged value over the processes (every process must call this)."""
    if not values:
        return values
    keys = sorted(values)
    stacked = torch.tensor([values[key] for key in keys], dtype=torch.float64)
    dist.all_reduce(stacked, group=_host_group)
    return {key: float(value) / dist.get_world_size() for key, value in zip(keys, stacked.tolist(), strict=True)}


def all_agree(flag: bool) -> bool:
    """True when ``flag`` is true in every process, so that all take the same branch."""
    value = torch.tensor([1 if flag else 0])
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=_host_group)
    return bool(value.item())


def largest_of_each(numbers: list[int]) -> list[int]:
    """Each of ``numbers``' largest value over the processes, in one exchange."""
    value = torch.tensor(numbers)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_host_group)
    return [int(number) for number in value.tolist()]


def smallest(number: int) -> int:
    """The smallest ``number`` over the processes."""
    value = torch.tensor([number])
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=_host_group)
    return int(value.item())


def gather(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (small Python objects: RNG states)."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value, group=_host_group)
    return gathered


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch across the processes, on any backend.

    torch's own ``SyncBatchNorm`` (used on CUDA, see :func:`convert_batchnorm`)
    needs NCCL; this one works over gloo too. The per-channel statistics are
    all-reduced with autograd (torch's functional collectives), so gradients
    flow through them as in one big batch. The variance is computed in two
    passes (the mean first, then the squared deviations from it), which stays
    exact for activations far from zero, where E[x^2] - E[x]^2 loses every
    digit in fp32.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed import _functional_collectives as collectives

        mean, variance, total = batch_statistics(x, lambda t: collectives.all_reduce(t, "sum", dist.group.WORLD))
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum None: a cumulative average, as BatchNorm does
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean), momentum)
                unbiased = variance.detach() * total / (total - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var), momentum)
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        normalised = (x.float() - mean.reshape(shape)) * torch.rsqrt(variance.reshape(shape) + self.eps)
        if self.affine:
            normalised = normalised * self.weight.reshape(shape) + self.bias.reshape(shape)
        return normalised.to(x.dtype)


def batch_statistics(x: torch.Tensor, all_reduce: Callable[[torch.Tensor], torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of ``x`` over every process, and the count, in fp32, in two passes.

    ``all_reduce`` sums a tensor over the processes (with autograd).
    """
    dims = [0, *range(2, x.dim())]
    channels = x.shape[1]
    shape = [1, channels] + [1] * (x.dim() - 2)
    values = x.float()
    count = torch.tensor([float(x.numel() // channels)], device=x.device)
    sums = all_reduce(torch.cat([values.sum(dims), count]))
    total = sums[-1]
    mean = sums[:channels] / total
    variance = all_reduce((values - mean.reshape(shape)).square().sum(dims)) / total
    return mean, variance, total


def convert_batchnorm(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a synchronised one with the same state.

    On CUDA, torch's ``SyncBatchNorm`` (NCCL's fused kernels); elsewhere :class:`SyncBatchNorm`.
    """
    if device is not None and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        tensors = [*module.parameters(), *module.buffers()]
        return synced.to(tensors[0].device) if tensors else synced
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
