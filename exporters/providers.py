"""Which onnxruntime to import and which execution providers to ask it for: CUDA, TensorRT, OpenVINO, the CPU.

This module does not import torch (nor onnxruntime, until asked).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata as distributions
from pathlib import Path
from typing import Any

from aigc_kit.core.errors import UserError

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
PROVIDER_NAMES = {"tensorrt": TENSORRT, "cuda": CUDA, "openvino": OPENVINO, "cpu": CPU}
AUTO_ORDER = (CUDA, OPENVINO, CPU)
"""``auto``: TensorRT is left out. It builds an engine for minutes on first use and runs fp16 only when told;
it is asked for by name (``tensorrt``), with CUDA behind it for the operators it lacks."""
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a :class:`UserError` saying how to install exactly one distribution of it."""
    installed = [name for name in RUNTIME_DISTRIBUTIONS if _installed(name)]
    if len(installed) > 1:
        raise UserError(
            f"several onnxruntime distributions are installed ({', '.join(installed)}); they provide the same "
            "`onnxruntime` module and "
            "overwrite each other's files",
            hint=f"pip uninstall -y {' '.join(installed)}, then pip install 'aigc-kit[cpu]' "
            "(or 'aigc-kit[gpu]' on a machine with CUDA, 'aigc-kit[openvino]' for OpenVINO)",
        )
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "onnxruntime is not installed",
            hint="pip install 'aigc-kit[cpu]' (or 'aigc-kit[gpu]' on a machine with CUDA)",
        ) from None
    return onnxruntime


def choose_providers(requested: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """The providers to ask onnxruntime for, best first.

    ``auto``: CUDA, then OpenVINO, then CPU, of those this onnxruntime has
    (:class:`OnnxGenerator` leaves OpenVINO out for diffusion samplers).
    ``tensorrt``/``cuda``/``openvino``/``cpu`` (or full provider names, comma-separated or a
    list): those, each of which must be available, with CPU appended as the
    fallback onnxruntime needs for operators the others lack (and CUDA behind
    TensorRT, as onnxruntime advises).
    """
    if isinstance(requested, str):
        if requested == "auto":
            return [name for name in AUTO_ORDER if name in available]
        requested = [part.strip() for part in requested.split(",") if part.strip()]
    chosen = [PROVIDER_NAMES.get(name.lower(), name) for name in requested]
    missing = [name for name in chosen if name not in available]
    if missing or not chosen:
        raise UserError(
            f"this onnxruntime has no {', '.join(missing) or 'provider named'}",
            field="providers", expected="auto, or some of: " + ", ".join(available), given=",".join(requested),
            hint="for CUDA and TensorRT install 'aigc-kit[gpu]' (onnxruntime-gpu) on a machine with CUDA",
        )
    if TENSORRT in chosen and CUDA in available and CUDA not in chosen:
        chosen.insert(chosen.index(TENSORRT) + 1, CUDA)
    return chosen + ([CPU] if CPU not in chosen and CPU in available else [])


def tensorrt_options(path: Path, metadata: dict[str, Any], *, cache: str | Path | None = None, fp16: bool = False,
                     batch_size: int | None = None) -> dict[str, str]:
    """onnxruntime's TensorRT options for an exported model: an engine cache, fp16, and shape profiles.

    The engine (minutes to build) is cached in ``cache`` (default
    ``MODEL.onnx.trt-cache/`` beside the model) and rebuilt only when the
    model or the profiles change. The profiles span the batch sizes the export
    was validated at (and ``batch_size``, if larger), tuned for the largest; a
    sampler's step count is the export's. fp16 is on for an fp16 export, and
    otherwise only when asked for (it changes the numbers the export was
    validated with).
    """
    folder = Path(cache) if cache is not None else path.with_name(path.name + ".trt-cache")
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(folder),
               "trt_fp16_enable": "True" if fp16 or metadata.get("precision") == "fp16" else "False"}
    validated = list((metadata.get("validation") or {}).get("batch_sizes") or [1])
    smallest, largest = min(validated), max([*validated, batch_size or 0])
    steps = len((metadata.get("sampling") or {}).get("timesteps") or []) or (metadata.get("sampling") or {}).get(
        "steps", 1)
    shapes: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for spec in metadata.get("inputs", []):
        if "batch" not in spec["shape"] and "steps" not in spec["shape"]:
            continue
        for profile, batch in (("min", smallest), ("opt", largest), ("max", largest)):
            dims = [batch if dim == "batch" else steps if dim == "steps" else int(dim) for dim in spec["shape"]]
            shapes[profile].append(f"{spec['name']}:{'x'.join(str(dim) for dim in dims)}")
    for profile, entries in shapes.items():
        if entries:
            options[f"trt_profile_{profile}_shapes"] = ",".join(entries)
    return options


def first_line(exc: Exception) -> str:
    """The first line of an onnxruntime error that says what went wrong (its messages run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if "does not support" in line or "not implemented" in line.lower()]
    return (telling or lines or [type(exc).__name__])[0][:300]


def _installed(distribution: str) -> bool:
    try:
        distributions.distribution(distribution)
    except distributions.PackageNotFoundError:
        return False
    return True
