"""Feature extractors and the on-disk cache of the real data's features.

An extractor maps images (N, C, H, W) in [-1, 1] to features (N, D):

* ``shapes``: the built-in classifier of :mod:`.classifier` (for the ``shapes`` dataset);
* a path to a TorchScript file (``.pt``, ``.pth``, ``.ts``) or an ONNX file (``.onnx``) the
  user points to, taking (N, 3, input_size, input_size) in ``input_range``. This is how a
  user with the Inception network of the usual FID implementations uses it; nothing is
  downloaded. A TorchScript file is code: load only files you trust.

The real data's features are computed once per dataset, extractor and sample count and
cached under ``$AIGC_KIT_CACHE`` (default ``~/.cache/aigc-kit``), keyed by a hash of the
dataset's size, shape and a sample of its items, the extractor's weights and the count.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aigc_kit.core.errors import UserError
from aigc_kit.core.files import replacing
from aigc_kit.core.plugin_api import sample_of

CACHE_ENV = "AIGC_KIT_CACHE"


class Extractor:
    """A feature extractor with a fingerprint of what it computes."""

    def __init__(self, name: str, fingerprint: str, run: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name, self.fingerprint, self._run = name, fingerprint, run

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return torch.cat([self._run(images[start:start + batch_size].float().cpu()).float()
                          for start in range(0, images.shape[0], batch_size)])


def load_extractor(spec: str, input_size: int | None = None,
                   input_range: tuple[float, float] = (-1.0, 1.0), field: str = "extractor") -> Extractor:
    """The extractor ``spec`` names: ``shapes`` or a TorchScript/ONNX file (``field``: the option that named it)."""
    noun, output = ("feature extractor", "(N, D) features") if field == "extractor" else (field, "(N, K) class scores")
    if spec == "shapes":
        from .classifier import FEATURE_DIVISOR, WEIGHTS, load_classifier

        network = load_classifier()
        return Extractor("shapes", f"shapes-classifier-{_file_hash(WEIGHTS)}-{FEATURE_DIVISOR}", network.features)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"no such {noun}", field=field, given=spec,
                        hint="'shapes' (built in), or a TorchScript (.pt) or ONNX (.onnx) file mapping "
                             f"(N, 3, H, W) images to {output}")
    adapt = _adapter(input_size, input_range)
    fingerprint = f"{path.suffix.lstrip('.')}-{_file_hash(path)}-{input_size}-{input_range[0]}-{input_range[1]}"
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError:
            raise UserError(f"an ONNX {noun} needs onnxruntime", field=field, given=spec,
                            hint="pip install 'aigc-kit[cpu]'") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run_onnx(images: torch.Tensor) -> torch.Tensor:
            output = session.run(None, {input_name: adapt(images).numpy()})[0]
            return torch.from_numpy(output).flatten(1)

        return Extractor(path.name, fingerprint, run_onnx)
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - TorchScript raises RuntimeError for anything it cannot read
        raise UserError(f"cannot load the {noun} as TorchScript: {str(exc).splitlines()[0]}",
                        field=field, given=spec, hint="save it with torch.jit.save, or export it to ONNX") from None
    return Extractor(path.name, fingerprint, lambda images: module(adapt(images)).flatten(1))


def _adapter(input_size: int | None, input_range: tuple[float, float]) -> Callable[[torch.Tensor], torch.Tensor]:
    low, high = input_range

    def adapt(images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if input_size is not None and images.shape[-1] != input_size:
            images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False)
        return ((images + 1) / 2 * (high - low) + low).contiguous()

    return adapt


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aigc-kit"
    return Path(root) / "real-features"


def dataset_fingerprint(dataset: Any) -> str:
    """Size, item shape and the bytes (and labels) of up to 16 evenly spaced items: cheap, and it changes with
    the data."""
    size = len(dataset)
    digest = hashlib.sha256(str(size).encode())
    for index in sorted({size * part // 16 for part in range(16)}):
        item = dataset[index]
        sample = torch.as_tensor(sample_of(item)).float().contiguous()
        digest.update(str(tuple(sample.shape)).encode())
        digest.update(sample.numpy().tobytes())
        if isinstance(item, Mapping) and "label" in item:  # the labelled and unlabelled data differ in the cache
            digest.update(f"label {int(item['label'])}".encode())
    return digest.hexdigest()[:16]


def real_features(data: Any, extractor: Extractor, count: int, batch_size: int = 500,
                  progress: Callable[[str], None] | None = None) -> torch.Tensor:
    """Features of the first ``count`` items of the dataset (all if fewer), from the cache when it has them."""
    return real_features_and_labels(data, extractor, count, batch_size, progress)[0]


def real_features_and_labels(data: Any, extractor: Extractor, count: int, batch_size: int = 500,
                             progress: Callable[[str], None] | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`real_features`, and the items' class labels (None when the items carry none), cached together."""
    from safetensors.torch import save_file

    dataset = data.dataset
    count = min(count, len(dataset))
    key = {"dataset": dataset_fingerprint(dataset), "extractor": extractor.fingerprint, "count": count}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir() / f"{name}.safetensors"
    if path.is_file():
        cached = _cached(path, count)
        if cached is not None:
            return cached
    if progress is not None:
        progress(f"computing the features of {count:,} real samples with {extractor.name} (cached at {path})")
    features, labels = [], []
    for start in range(0, count, batch_size):
        items = [dataset[index] for index in range(start, min(start + batch_size, count))]
        features.append(extractor(torch.stack([torch.as_tensor(sample_of(item)) for item in items])))
        labels.extend(int(item["label"]) for item in items if isinstance(item, Mapping) and "label" in item)
    tensors = {"features": torch.cat(features).contiguous()}
    if len(labels) == count:
        tensors["labels"] = torch.tensor(labels, dtype=torch.int64)
    with replacing(path) as partial:  # a reader never sees half a file, and no partial one outlives a stop
        save_file(tensors, partial, metadata={k: str(v) for k, v in key.items()})
    return tensors["features"], tensors.get("labels")


def _cached(path: Path, count: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The features and labels cached in ``path``, or None (with a warning) when the file is damaged: they are
    computed again."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
        features, labels = tensors["features"], tensors.get("labels")
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    else:
        if features.dim() == 2 and len(features) == count and features.is_floating_point() and \
                bool(torch.isfinite(features).all()) and (labels is None or labels.shape == (count,)):
            return features, labels
        problem = f"features of shape {tuple(features.shape)} where {count} rows were expected"
    warnings.warn(f"the cached real-data features in {path} are damaged ({problem}); computing them again",
                  RuntimeWarning, stacklevel=3)
    return None
