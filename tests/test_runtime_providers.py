"""How the runtime configures GPU providers, checked on the CPU with the available providers patched.

A patched onnxruntime reports CUDA and TensorRT and records what each session is asked for, then runs
the model on the CPU provider so that the rest of the runtime works as it would.
"""

from __future__ import annotations

import json

import onnxruntime
import pytest
from click.testing import CliRunner

from aigc_kit.cli import cli
from aigc_kit.core.run import run
from aigc_kit.core.trained import export
from aigc_kit.exporters.runtime import OnnxGenerator, tensorrt_options
from aigc_kit.testing import isolated_registry

from .conftest import tiny_config, tiny_unet_config

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    registry = isolated_registry()
    folder = tmp_path_factory.mktemp("providers")
    (folder / "gan.yaml").write_text(json.dumps(tiny_config()))
    run(folder / "gan.yaml", registry, output=folder / "gan")
    export(folder / "gan", registry, out=folder / "gan.onnx",
           options={"export_batch_size": 3, "validate_batch_sizes": [1, 8]})
    export(folder / "gan", registry, out=folder / "gan-fp16.onnx", options={"precision": "fp16"})
    (folder / "unet.yaml").write_text(json.dumps(tiny_unet_config(sampler={"name": "ddim", "steps": 3, "eta": 1.0})))
    run(folder / "unet.yaml", registry, output=folder / "unet")
    export(folder / "unet", registry, out=folder / "sampler.onnx")
    return folder


@pytest.fixture
def gpu_onnxruntime(monkeypatch):
    """onnxruntime as onnxruntime-gpu on a machine with a GPU: the sessions' requests, answered on the CPU."""
    real_session = onnxruntime.InferenceSession
    asked = []

    def session(path, options, providers, provider_options):
        asked.append(dict(zip(providers, provider_options, strict=True)))
        created = real_session(path, options, providers=[CPU])
        created.get_providers = lambda: list(providers)
        return created

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    return asked


@pytest.mark.slow
def test_tensorrt_is_asked_for_with_an_engine_cache_beside_the_model_and_profiles_over_the_validated_batches(
        exports, gpu_onnxruntime):
    generator = OnnxGenerator(exports / "gan.onnx", providers="tensorrt", device_id=1)
    options = gpu_onnxruntime[-1]
    assert list(options) == [TENSORRT, CUDA, CPU] and generator.provider == TENSORRT
    trt = options[TENSORRT]
    assert trt["device_id"] == "1" and options[CUDA]["device_id"] == "1"
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(exports / "gan.onnx.trt-cache")
    assert (exports / "gan.onnx.trt-cache").is_dir()
    assert trt["trt_fp16_enable"] == "False"  # an fp32 export stays in the numbers it was validated with
    assert (trt["trt_profile_min_shapes"], trt["trt_profile_opt_shapes"], trt["trt_profile_max_shapes"]) == (
        "z:1x8", "z:8x8", "z:8x8")  # validated at batch sizes 1, 3 and 8; latent size 8
    assert generator.generate(2).shape == (2, 16, 16, 3)


def test_a_larger_batch_widens_the_profile_and_fp16_is_on_for_an_fp16_export_or_when_asked(exports,
                                                                                             gpu_onnxruntime, tmp_path):
    OnnxGenerator(exports / "gan-fp16.onnx", providers="tensorrt", batch_size=32, tensorrt_cache=tmp_path / "engines")
    trt = gpu_onnxruntime[-1][TENSORRT]
    assert trt["trt_fp16_enable"] == "True" and trt["trt_engine_cache_path"] == str(tmp_path / "engines")
    assert trt["trt_profile_max_shapes"] == "z:32x8"
    OnnxGenerator(exports / "gan.onnx", providers="tensorrt", tensorrt_fp16=True)
    assert gpu_onnxruntime[-1][TENSORRT]["trt_fp16_enable"] == "True"


def test_a_samplers_profiles_cover_its_step_noise_at_the_exports_step_count():
    metadata = {"validation": {"batch_sizes": [1, 2]}, "sampling": {"steps": 3, "timesteps": [999, 666, 333]},
                "inputs": [{"name": "noise", "shape": ["batch", 3, 16, 16]},
                           {"name": "step_noise", "shape": ["steps", "batch", 3, 16, 16]},
                           {"name": "timesteps", "shape": ["steps"]}]}
    options = tensorrt_options(__import__("pathlib").Path("m.onnx"), metadata)
    assert options["trt_profile_min_shapes"] == "noise:1x3x16x16,step_noise:3x1x3x16x16,timesteps:3"
    assert options["trt_profile_max_shapes"] == "noise:2x3x16x16,step_noise:3x2x3x16x16,timesteps:3"


def test_auto_takes_cuda_not_tensorrt_and_passes_the_device(exports, gpu_onnxruntime):
    generator = OnnxGenerator(exports / "sampler.onnx", device_id=2)
    assert generator.provider == CUDA and list(gpu_onnxruntime[-1]) == [CUDA, CPU]
    assert gpu_onnxruntime[-1][CUDA]["device_id"] == "2"


def test_generate_passes_the_gpu_options_through(exports, gpu_onnxruntime, tmp_path):
    result = CliRunner().invoke(cli, ["generate", str(exports / "gan.onnx"), "-n", "2", "--out",
                                      str(tmp_path / "g.png"), "--providers", "tensorrt", "--device-id", "1", "--trt-cache",
                                      str(tmp_path / "cache"), "--trt-fp16", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "on TensorrtExecutionProvider" in result.output
    trt = gpu_onnxruntime[-1][TENSORRT]
    assert (trt["device_id"], trt["trt_engine_cache_path"], trt["trt_fp16_enable"]) == ("1", str(tmp_path / "cache"),
                                                                                         "True")


def test_an_unwritable_engine_cache_is_a_user_error_naming_it(exports, gpu_onnxruntime, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, ["generate", str(exports / "gan.onnx"), "--out", str(tmp_path / "g.png"),
                                      "--providers", "tensorrt", "--trt-cache", str(blocker / "cache")])
    assert result.exit_code == 2 and "cannot create TensorRT's engine cache" in result.output
    assert "--trt-cache" in result.output and "Traceback" not in result.output
