"""``aigc-kit bench``: exported models under onnxruntime against every PyTorch path a user could pick instead.

Given a run directory, the run's sampling graph (a GAN's generator, a diffusion
model's whole sampler) is exported at each precision and timed with
onnxruntime, beside PyTorch eager in fp32, eager under bf16 autocast (and fp16
autocast on CUDA) and ``torch.compile`` (whose warm-up is reported on its
own), on the CPU or on a CUDA device. Given an ONNX file, only onnxruntime is
timed (there is no PyTorch model to compare with).

Each path: warm-up calls, then timed repetitions; the median, the 25th-75th
percentile spread and images per second. Work is counted with PyTorch's FLOP
counter on the eager model and set against the machine's measured fp32
matrix-multiply rate at the same thread count.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Timing:
    """One path at one batch size."""

    path: str
    batch_size: int
    median_ms: float
    p25_ms: float
    p75_ms: float
    images_per_second: float
    gflops: float | None = None
    """Achieved GFLOP/s (the eager model's FLOPs over this path's median time)."""
    peak_fraction: float | None = None
    warmup_seconds: float | None = None
    """For torch.compile: the first call, which compiles."""


@dataclass
class BenchReport:
    model: str
    threads: int
    repeats: int
    matmul_peak_gflops: float | None
    flops_per_image: float | None
    timings: list[Timing] = field(default_factory=list)
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    auto_precision: dict[str, str] | None = None
    """What ``train.precision: auto`` picks on the benchmark's device, and why (run directories only)."""
    device: str = "cpu"
    """Where the PyTorch paths ran."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fastest(self, batch_size: int, prefix: str) -> Timing | None:
        rows = [t for t in self.timings if t.batch_size == batch_size and t.path.startswith(prefix)]
        return min(rows, key=lambda t: t.median_ms, default=None)

    def row(self, batch_size: int, path: str) -> Timing | None:
        return next((t for t in self.timings if t.batch_size == batch_size and t.path == path), None)


def measure(call: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds per call over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    for _ in range(repeats):
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return times


def measure_interleaved(calls: dict[str, Callable[[], Any]], repeats: int,
                        warmup: int = 2, pause: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, timed in turn: one call of each per round, ``repeats`` rounds.

    On a shared machine the speed available drifts over seconds (another tenant takes a core);
    timing the paths in turn makes each one see the same drift, so their ratios hold even when
    the absolute times move. ``pause`` seconds, untimed, before each call let the previous path's
    threads go idle: onnxruntime's keep spinning for a while after a run, and would take the cores
    from the path timed after it.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(repeats):
        for label, call in calls.items():
            if pause:
                time.sleep(pause)
            begin = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - begin)
    return times


def _timing(path: str, batch: int, times: list[float], flops: float | None, peak: float | None,
            warmup_seconds: float | None = None) -> Timing:
    median = statistics.median(times)
    quartiles = np.percentile(times, [25, 75])
    gflops = flops * batch / median / 1e9 if flops else None
    return Timing(path, batch, median * 1e3, float(quartiles[0]) * 1e3, float(quartiles[1]) * 1e3,
                  batch / median, gflops, gflops / peak if gflops and peak else None, warmup_seconds)


def matmul_peak(threads: int, size: int = 1024, repeats: int = 10, device: str = "cpu") -> float:
    """The device's fp32 matrix-multiply rate (GFLOP/s), with ``threads`` threads on a CPU: the best of ``repeats``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
        best = min(measure(synchronised(lambda: a @ b, device), repeats, warmup=3))
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def synchronised(call: Callable[[], Any], device: str) -> Callable[[], Any]:
    """``call``, waiting for a CUDA device to finish it (its kernels run asynchronously), so that it can be timed."""
    if not device.startswith("cuda"):
        return call
    import torch

    def waited() -> Any:
        result = call()
        torch.cuda.synchronize(device)
        return result

    return waited


def bench(source: str | Path, registry: Any = None, *, batch_sizes: tuple[int, ...] = (1, 16, 64),
          threads: int | None = None, repeats: int = 10, precisions: tuple[str, ...] = ("fp32", "fp16", "int8"),
          compile: bool = True, progress: Callable[[str], None] = lambda line: None,
          providers: str | None = None, device: str = "cpu") -> BenchReport:
    """Time ``source`` (a run directory, a checkpoint folder or an ONNX file) at each batch size.

    ``device``: where the PyTorch paths run (``cpu``, ``cuda``, ``cuda:N``); ``providers``: onnxruntime's
    (default: ``cuda`` with a CUDA device, else ``cpu``).
    """
    source = Path(source)
    providers = providers or ("cuda" if device.startswith("cuda") else "cpu")
    if source.suffix == ".onnx":
        return _bench_onnx_file(source, batch_sizes, threads, repeats, progress, providers)
    import torch

    from aigc_kit.core.device import select_device

    device = str(select_device(device))  # a missing GPU is a user error
    previous = torch.get_num_threads()
    try:
        return _bench_run(source, registry, batch_sizes, threads, repeats, precisions, compile, progress,
                          providers, device)
    finally:
        torch.set_num_threads(previous)  # the caller's arithmetic (and its bit-exact results) is left as it was


def _ort_generator(path: Path, threads: int | None, providers: str = "cpu") -> Any:
    from .runtime import OnnxGenerator

    return OnnxGenerator(path, providers=providers, threads=threads)


def _bench_onnx_file(path: Path, batch_sizes: tuple[int, ...], threads: int | None, repeats: int,
                     progress: Callable[[str], None], providers: str) -> BenchReport:
    import os

    generator = _ort_generator(path, threads, providers)
    report = BenchReport(str(path), threads or os.cpu_count() or 1, repeats, None, None)
    precision = generator.metadata.get("precision", "fp32")
    for batch in batch_sizes:
        feeds = generator.feeds(batch, np.random.default_rng(0))
        times = measure(lambda f=feeds: generator.session.run(None, f), repeats)
        report.timings.append(_timing(f"onnxruntime {precision} on {generator.provider}", batch, times, None, None))
        progress(f"batch {batch}: {report.timings[-1].path} {report.timings[-1].median_ms:.2f} ms")
    return report


def _bench_run(source: Path, registry: Any, batch_sizes: tuple[int, ...], threads: int | None, repeats: int,
               precisions: tuple[str, ...], compile: bool, progress: Callable[[str], None], providers: str = "cpu",
               device: str = "cpu") -> BenchReport:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from aigc_kit.core.errors import UserError, ValidationFailed
    from aigc_kit.core.trained import export, load_trained

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    trained = load_trained(source, registry)
    network, sampler = trained.network.float().eval().to(device), trained.components.sampler
    noise_shape = tuple(trained.components.model.noise_shape)

    def sample(noise: torch.Tensor, net: Any = network) -> torch.Tensor:
        return sampler.sample(net, noise)

    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            sample(sampler.noise(1, noise_shape, device=device))
        flops = float(counter.get_total_flops())
    peak = matmul_peak(threads, device=device)
    from aigc_kit.core.device import resolve_precision

    auto = resolve_precision("auto", torch.device(device))
    report = BenchReport(str(source), threads, repeats, peak, flops, auto_precision=auto.as_dict(), device=device)
    progress(f"{flops / 1e9:.3f} GFLOP per image; fp32 matmul peak {peak:.1f} GFLOP/s on {device}"
             f"{f' with {threads} threads' if device == 'cpu' else ''}; precision auto picks {auto.describe()}")

    with tempfile.TemporaryDirectory(prefix="aigc-kit-bench-") as folder:
        sessions = {}
        rewrites = ["keep", "subpixel"]
        for precision in precisions:
            for rewrite in list(rewrites):
                if rewrite not in rewrites:
                    continue
                label = precision if rewrite == "keep" else f"{precision} subpixel"
                path = Path(folder) / f"{precision}-{rewrite}.onnx"
                try:
                    exported = export(source, registry, out=path,
                                      options={"precision": precision, "transposed_conv": rewrite})
                except UserError as exc:
                    progress(f"{label}: not exported ({exc})")
                    continue
                except ValidationFailed as exc:  # reported, not timed: a model that is wrong is not a candidate
                    report.exports[label] = {"failed": str(exc)}
                    progress(f"{label}: failed validation ({exc})")
                    continue
                if rewrite == "subpixel" and not exported.get("subpixel_rewrites"):
                    continue  # nothing to rewrite: the same graph as the plain export
                if rewrite == "keep" and "subpixel" in rewrites and not _has_transposed_convs(path):
                    rewrites.remove("subpixel")  # nothing to rewrite at any precision: skip those exports
                report.exports[label] = {key: exported.get(key) for key in
                                         ("what", "bytes", "max_abs_error", "mean_abs_error", "export_seconds")}
                sessions[label] = _ort_generator(path, threads, providers)
        compiled = None
        for batch in batch_sizes:
            noise = sampler.noise(batch, noise_shape, generator=torch.Generator().manual_seed(0), device=device)
            paths: dict[str, Callable[[], Any]] = {}
            for precision, generator in sessions.items():
                feeds = generator.feeds(batch, np.random.default_rng(0))
                paths[f"onnxruntime {precision}"] = lambda f=feeds, g=generator: g.session.run(None, f)

            def autocast(dtype: torch.dtype, n: torch.Tensor = noise) -> torch.Tensor:
                with torch.autocast(torch.device(device).type, dtype=dtype):
                    return sample(n)

            paths["torch eager fp32"] = synchronised(lambda n=noise: sample(n), device)
            paths["torch eager bf16 autocast"] = synchronised(lambda: autocast(torch.bfloat16), device)
            if device != "cpu":
                paths["torch eager fp16 autocast"] = synchronised(lambda: autocast(torch.float16), device)
            warmups: dict[str, float] = {}
            if compile:
                if compiled is None:
                    compiled = torch.compile(network)
                paths["torch.compile fp32"] = synchronised(lambda n=noise, c=compiled: sample(n, c), device)
                started = time.perf_counter()
                with torch.no_grad():
                    paths["torch.compile fp32"]()  # compiles (again, with a dynamic batch, at the second batch size)
                warmups["torch.compile fp32"] = time.perf_counter() - started
            with torch.no_grad():
                times = measure_interleaved(paths, repeats)
            for label, seconds in times.items():
                report.timings.append(_timing(label, batch, seconds, flops, peak, warmups.get(label)))
                progress(f"batch {batch}: {label} {report.timings[-1].median_ms:.2f} ms")
    return report


def _has_transposed_convs(path: Path) -> bool:
    """Whether the ONNX file has a ``ConvTranspose`` anywhere, a ``Loop`` body included."""
    import onnx

    def nodes(graph: Any) -> Any:
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    yield from nodes(subgraph)

    return any(node.op_type == "ConvTranspose" for node in nodes(onnx.load_model(str(path)).graph))


def format_report(report: BenchReport) -> str:
    """The report as a table, with each path's speed relative to eager fp32 at the same batch size."""
    where = f"{report.threads} threads" if report.device == "cpu" else report.device
    lines = [f"{report.model}: {where}, {report.repeats}+ timed calls per row"]
    if report.matmul_peak_gflops:
        lines.append(f"  {report.flops_per_image / 1e9:.3f} GFLOP per image; "
                     f"fp32 matmul peak {report.matmul_peak_gflops:.1f} GFLOP/s")
    auto_path = None
    if report.auto_precision:
        auto = report.auto_precision
        auto_path = f"torch eager {auto['precision']} autocast" if auto["precision"] != "fp32" else "torch eager fp32"
        lines.append(f"  train.precision auto picks {auto['precision']} on {report.device} ({auto['reason']}): "
                     f"the row marked *")
    for precision, exported in report.exports.items():
        if "failed" in exported:
            lines.append(f"  {precision} export: failed validation, not timed: {exported['failed']}")
            continue
        lines.append(f"  {precision} export: {exported['bytes']:,} bytes, max abs error vs PyTorch "
                     f"{exported['max_abs_error']:.2g} (mean {exported['mean_abs_error']:.2g})")
    header = (f"  {'batch':>5}  {'path':<28} {'median ms':>10} {'p25-p75 ms':>16} {'images/s':>9} {'GFLOP/s':>8} "
              f"{'of peak':>7} {'vs eager':>8}")
    lines.append(header)
    for timing in report.timings:
        eager = report.row(timing.batch_size, "torch eager fp32")
        ratio = f"{eager.median_ms / timing.median_ms:.2f}x" if eager else ""
        gflops = f"{timing.gflops:.1f}" if timing.gflops else ""
        share = f"{timing.peak_fraction:.0%}" if timing.peak_fraction else ""
        spread = f"{timing.p25_ms:.2f}-{timing.p75_ms:.2f}"
        warm = f"  (first call {timing.warmup_seconds:.1f} s)" if timing.warmup_seconds else ""
        label = f"{timing.path}{' *' if timing.path == auto_path else ''}"
        lines.append(f"  {timing.batch_size:>5}  {label:<28} {timing.median_ms:>10.2f} {spread:>16} "
                     f"{timing.images_per_second:>9.1f} {gflops:>8} {share:>7} {ratio:>8}{warm}")
    return "\n".join(lines)
