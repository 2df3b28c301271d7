"""Run exported models with onnxruntime alone: NumPy, onnxruntime and Pillow, no PyTorch.

    from aigc_kit.exporters.runtime import OnnxGenerator

    generator = OnnxGenerator("model.onnx", providers="auto")
    print(generator.provider)              # the execution provider that actually runs
    images = generator.generate(16, seed=0)  # uint8, (16, height, width, channels)

Everything the runtime needs (input shapes, value range, the sampler's default
timesteps) is read from the model's metadata, written at export. Noise is drawn
with NumPy's generator, so a seed gives the same images on every machine with
this runtime (not the same as PyTorch's sampling, which draws with torch).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aigc_kit.core.errors import UserError
from aigc_kit.core.guidance import check_guidance
from aigc_kit.core.timesteps import timesteps_for

from .metadata import check_graph
from .metadata import parse as read_metadata
from .pixels import to_pixels
from .providers import (
    CONV_ALGO_SEARCHES,
    CPU,
    CUDA,
    OPENVINO,
    OPTIMIZATION_LEVELS,
    TENSORRT,
    choose_providers,
    first_line,
    import_onnxruntime,
    tensorrt_options,
)


class OnnxGenerator:
    """An exported generator or diffusion sampler, ready to generate images.

    ``providers``: ``auto``, ``cpu``, ``cuda``, ``tensorrt``, ``openvino`` or provider names.
    ``threads``: onnxruntime's intra-op threads (default: its own choice).
    ``graph_optimization``: disable, basic, extended or all.
    ``cudnn_conv_algo_search``: EXHAUSTIVE (best kernels, slow first run),
    HEURISTIC or DEFAULT (CUDA only). ``device_id``: the GPU (CUDA and TensorRT).
    TensorRT (see :func:`tensorrt_options`): ``tensorrt_cache`` is where its
    engines are kept (default: ``MODEL.onnx.trt-cache/`` beside the model),
    ``tensorrt_fp16`` lets it run fp32 layers in fp16 (always on for an fp16
    export), ``batch_size`` the largest batch its engine must take.
    After construction, :attr:`provider` is the provider onnxruntime actually
    runs: a session asked for CUDA silently falls back to the CPU when CUDA
    cannot start, so the runtime checks and warns.
    """

    def __init__(self, path: str | Path, providers: str | Sequence[str] = "auto", *, threads: int | None = None,
                 graph_optimization: str = "all", cudnn_conv_algo_search: str = "EXHAUSTIVE", device_id: int = 0,
                 tensorrt_cache: str | Path | None = None, tensorrt_fp16: bool = False,
                 batch_size: int | None = None) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError("no such model file", file=str(self.path))
        if graph_optimization not in OPTIMIZATION_LEVELS:
            raise UserError("unknown graph optimization level", field="graph_optimization",
                            expected=", ".join(OPTIMIZATION_LEVELS), given=graph_optimization)
        if cudnn_conv_algo_search not in CONV_ALGO_SEARCHES:
            raise UserError("unknown cuDNN convolution algorithm search", field="cudnn_conv_algo_search",
                            expected=", ".join(CONV_ALGO_SEARCHES), given=cudnn_conv_algo_search)
        self.requested = choose_providers(providers, ort.get_available_providers())
        if providers == "auto" and OPENVINO in self.requested and _graph_kind(ort, self.path) == "sampler":
            # OpenVINO's provider cannot compile a sampler's Loop, and ran the unrolled sampler 1.7 times
            # slower than the CPU provider (docs/benchmarks.md): `auto` leaves diffusion samplers to the others
            self.requested = [name for name in self.requested if name != OPENVINO]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        if threads is not None:
            options.intra_op_num_threads = threads
        if device_id < 0:
            raise UserError("a GPU's number is 0 or more", field="device_id", given=device_id)
        gpu = {"device_id": str(device_id)} if device_id else {}
        provider_options = {CUDA: {**gpu, "cudnn_conv_algo_search": cudnn_conv_algo_search},
                            OPENVINO: {"num_of_threads": str(threads)} if threads else {}}
        if TENSORRT in self.requested:
            trt = tensorrt_options(self.path, _read_metadata_only(ort, self.path), cache=tensorrt_cache,
                                   fp16=tensorrt_fp16, batch_size=batch_size)
            try:
                Path(trt["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create TensorRT's engine cache: {exc.strerror}",
                                file=trt["trt_engine_cache_path"], hint="name a writable folder (--trt-cache DIR)") \
                    from None
            provider_options[TENSORRT] = {**gpu, **trt}
        self.fallback: str | None = None
        candidates = self.requested
        while True:
            try:
                self.session = ort.InferenceSession(str(self.path), options, providers=candidates,
                                                    provider_options=[provider_options.get(name, {})
                                                                      for name in candidates])
                break
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
                reason = first_line(exc)
                if providers != "auto" or len(candidates) < 2 or candidates[0] == CPU:
                    hint = "try providers='cpu' (--providers cpu)" if candidates[0] != CPU else None
                    raise UserError(f"onnxruntime cannot load the model with {candidates[0]}: {reason}",
                                    file=str(self.path), hint=hint) from None
                # `auto` means the best provider that can run this model: a provider that cannot
                # (OpenVINO's cannot compile a Loop with a body, for one) hands over to the next
                self.fallback = f"{candidates[0]} cannot run this model ({reason}); trying {candidates[1]}"
                warnings.warn(self.fallback, RuntimeWarning, stacklevel=2)
                candidates = candidates[1:]
        self.providers = list(self.session.get_providers())
        self.provider = self.providers[0]
        if self.provider != candidates[0]:
            self.fallback = (f"asked for {candidates[0]}, but onnxruntime runs {self.provider} "
                             "(check the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu needs)")
            warnings.warn(self.fallback, RuntimeWarning, stacklevel=2)
        self.metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        check_graph(self.metadata, _described(self.session.get_inputs()), _described(self.session.get_outputs()),
                    self.path)
        graph = self.metadata["graph"]
        if graph not in ("generator", "sampler"):
            raise UserError(
                f"this model is a {graph} graph; only generator and sampler graphs turn noise into images",
                file=str(self.path), hint="export with --what sampler",
            )
        self.prior = self.metadata.get("prior") or {"kind": "normal"}  # exports before priors were recorded
        if self.prior["kind"] not in PRIORS:
            raise UserError(f"this model takes noise from a {self.prior['kind']!r} prior, which this runtime cannot "
                            "draw", file=str(self.path), expected=", ".join(PRIORS),
                            hint="draw the noise yourself and run the model with onnxruntime")
        self.output = self.metadata["outputs"][0]
        if len(self.output["shape"]) != 4:
            raise UserError(f"this model's samples are not images (output shape {self.output['shape']})",
                            file=str(self.path), hint="run it with onnxruntime directly")

    def default_steps(self) -> int | None:
        """The sampler's step count from the export, or None for a generator."""
        timesteps = self._input("timesteps")
        if timesteps:
            return len(timesteps["default"])
        return (self.metadata.get("sampling") or {}).get("steps")

    @property
    def sampler(self) -> str | None:
        """The name of the sampler the file holds (None for a generator, or a file exported outside a run)."""
        return self.metadata.get("sampler") if self.metadata.get("graph") == "sampler" else None

    def check_sampler(self, name: str) -> None:
        """A :class:`UserError` unless the file holds the sampler ``name``: an export holds one sampler."""
        held = self.sampler
        if held is None:
            what = "a generator" if self.metadata.get("graph") != "sampler" else "a sampler it does not name"
            raise UserError(f"this file holds {what}, so there is no sampler to choose", field="--sampler",
                            file=str(self.path), given=name, hint="drop --sampler")
        if name != held:
            raise UserError(f"this file holds the {held} sampler; each export holds one", field="--sampler",
                            file=str(self.path), given=name,
                            hint=f"export the run with --sampler {name} (aigc-kit export RUN_DIR --sampler {name} "
                                 "--out OTHER.onnx), or drop --sampler")

    @property
    def classes(self) -> list[str]:
        """The class names a conditional model's ``label`` input takes, in index order; empty if it takes none."""
        label = self._input("label")
        return list(label.get("classes") or []) if label else []

    @property
    def guidance_scale(self) -> float | None:
        """The default classifier-free guidance of a conditional diffusion sampler; None if it takes none."""
        guidance = self._input("guidance_scale")
        return float(guidance["default"]) if guidance else None

    def generate(self, n: int, seed: int = 0, *, batch_size: int = 16, steps: int | None = None,
                 timesteps: Sequence[int] | None = None, labels: Labels = None,
                 guidance: float | None = None) -> np.ndarray:
        """``n`` images as uint8, ``(n, height, width, channels)``, from NumPy noise seeded by ``seed``.

        For a diffusion sampler, ``steps`` picks another step count (the export's
        spacing), or ``timesteps`` gives the decreasing sequence itself. For a
        conditional model, ``labels`` are the classes to draw (see
        :meth:`labels`; default: random ones) and ``guidance`` the guidance scale
        of a diffusion sampler (default: the export's). The noise depends on the
        seed alone, so that one seed with other labels draws "the same" images of
        other classes.
        """
        return np.concatenate(list(self.batches(n, seed, batch_size=batch_size, steps=steps, timesteps=timesteps,
                                                labels=labels, guidance=guidance)))

    def batches(self, n: int, seed: int = 0, *, batch_size: int = 16, steps: int | None = None,
                timesteps: Sequence[int] | None = None, labels: Labels = None,
                guidance: float | None = None) -> Iterator[np.ndarray]:
        """The images of :meth:`generate`, one batch at a time (so that any number fits in memory)."""
        if n < 1:
            raise UserError("the number of images must be at least 1", field="n", given=n)
        if seed < 0:
            raise UserError("the seed must be 0 or more", field="seed", given=seed)
        if batch_size < 1:
            raise UserError("the batch size must be at least 1", field="batch_size", given=batch_size)
        sequence = self._timesteps(steps, timesteps)
        chosen = self.labels(labels, n, np.random.default_rng([seed, 1]))
        self._check_guidance(guidance)
        rng = np.random.default_rng(seed)
        for start in range(0, n, batch_size):
            batch = min(batch_size, n - start)
            feeds = self.feeds(batch, rng, sequence, None if chosen is None else chosen[start:start + batch],
                               guidance)
            output = self.session.run([self.output["name"]], feeds)[0]
            if self.output["dtype"] != "uint8":
                output = to_pixels(output, tuple(self.output["value_range"]))
            yield output

    def labels(self, labels: Labels, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """``n`` class indices for ``labels``: one class (a name or an index) for all, one per image, or None for
        random ones; None for a model without classes (which refuses labels)."""
        classes = self.classes
        if not classes:
            if labels is not None:
                raise UserError("this model takes no class labels (it was trained without them)", field="label",
                                file=str(self.path), hint="drop --label")
            return None
        if labels is None:
            return rng.integers(0, len(classes), n, dtype=np.int64)
        several = not isinstance(labels, str | int | np.integer)
        chosen = [self._class_index(label) for label in (labels if several else [labels])]
        if several and len(chosen) != n:
            raise UserError(f"{len(chosen)} labels for {n} images", field="label", hint="give one, or one per image")
        return np.asarray(chosen if several else chosen * n, dtype=np.int64)

    def _class_index(self, label: str | int) -> int:
        classes = self.classes
        if isinstance(label, str) and label in classes:
            return classes.index(label)
        try:
            index = int(label)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < len(classes):
            shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} classes)" if len(classes) > 20 else "")
            raise UserError("no such class", field="label", given=label,
                            expected=f"a class name or index 0 to {len(classes) - 1}: {shown}", file=str(self.path))
        return index

    def _check_guidance(self, guidance: float | None) -> None:
        check_guidance(guidance, self.guidance_scale is not None, field="guidance", file=str(self.path))

    def _timesteps(self, steps: int | None, timesteps: Sequence[int] | None) -> list[int] | None:
        if steps is None and timesteps is None:
            return None
        if self._input("timesteps") is None:
            if self.metadata.get("graph") == "sampler":
                raise UserError(
                    f"this sampler's {self.default_steps()} steps were fixed at export (an unrolled graph)",
                    field="steps", file=str(self.path),
                    hint="export again with --steps N, or with --sampler-graph loop to choose steps at run time",
                )
            raise UserError("this model is not a diffusion sampler, so it has no steps to choose", field="steps",
                            file=str(self.path))
        if timesteps is not None:
            return [int(t) for t in timesteps]
        options = self.metadata["sampler_options"]
        try:
            return timesteps_for(options, steps)
        except KeyError:
            raise UserError("the model's metadata does not say how its timesteps are spaced", file=str(self.path),
                            hint="pass the timesteps themselves") from None
        except ValueError as exc:
            raise UserError(str(exc), field="steps", given=steps) from None

    def feeds(self, batch: int, rng: np.random.Generator, timesteps: list[int] | None = None,
              labels: np.ndarray | None = None, guidance: float | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs for ``batch`` images: noise from ``rng`` as the model's prior says (``timesteps``,
        ``labels`` and ``guidance`` if given; random labels from ``rng`` for a conditional model if not)."""
        feeds: dict[str, np.ndarray] = {}
        steps = len(timesteps) if timesteps is not None else self.default_steps()
        for spec in self.metadata["inputs"]:
            name = spec["name"]
            if name == "timesteps":
                if timesteps is not None:
                    feeds[name] = np.asarray(timesteps, dtype=np.int64)
                continue
            if name == "guidance_scale":
                if guidance is not None:
                    feeds[name] = np.asarray(guidance, dtype=np.float32)
                continue
            if name == "label":
                feeds[name] = labels if labels is not None else self.labels(None, batch, rng)
                continue
            shape = [batch if dim == "batch" else steps if dim == "steps" else int(dim) for dim in spec["shape"]]
            prior = self.prior if name in ("z", "noise") else {"kind": "normal"}
            feeds[name] = draw_noise(prior, shape, rng)
        return feeds

    def _input(self, name: str) -> dict[str, Any] | None:
        return next((spec for spec in self.metadata["inputs"] if spec["name"] == name), None)


PRIORS = ("normal", "sphere")
Labels = str | int | Sequence[str | int] | None
"""A class name or index for every image, one per image, or None (random classes)."""


def draw_noise(prior: dict[str, Any], shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Noise of ``shape`` (batch first) from ``prior`` (see :class:`.metadata.Prior`), as float32."""
    z = rng.standard_normal(shape, dtype=np.float32)
    truncation = prior.get("truncation")
    if prior["kind"] == "normal" and truncation is not None:
        outside = np.abs(z) > truncation
        while outside.any():
            z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
            outside = np.abs(z) > truncation
    if prior["kind"] == "sphere":
        flat = z.reshape(z.shape[0], -1)
        radius = prior.get("radius") or math.sqrt(flat.shape[1])
        z = (flat * (radius / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12))).reshape(z.shape)
    return z.astype(np.float32, copy=False)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(uint8)": "uint8"}


def _described(values: Any) -> dict[str, tuple[str, int]]:
    """onnxruntime's inputs or outputs as ``name -> (dtype, rank)``, to check the metadata against."""
    return {value.name: (_ORT_TYPES.get(value.type, value.type), len(value.shape)) for value in values}


def _metadata_map(ort: Any, path: Path) -> dict[str, str]:
    """The model file's ``metadata_props``, read through a CPU session that skips every optimization."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=[CPU], provider_options=[{}])
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the real session that follows
        return {}
    return dict(session.get_modelmeta().custom_metadata_map)


def _graph_kind(ort: Any, path: Path) -> str | None:
    """The ``aigc_kit.graph`` of the model file."""
    return _metadata_map(ort, path).get("aigc_kit.graph")


def _read_metadata_only(ort: Any, path: Path) -> dict[str, Any]:
    properties = _metadata_map(ort, path)
    return read_metadata(properties, path) if properties else {}
