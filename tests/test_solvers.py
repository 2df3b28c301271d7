"""The few-step samplers: their order of accuracy on an exactly solvable problem, and agreement with diffusers.

The toy problem: data x_0 ~ N(mu, s^2) per pixel. Its exact denoiser and the
exact solution of the probability-flow ODE are closed forms: with
v_t^2 = alpha_t^2 s^2 + sigma_t^2, the ODE carries z = (x_t - alpha_t mu) / v_t
unchanged, so x_t1 = alpha_t1 mu + v_t1 z. A solver of order p has a global
error proportional to h^p: doubling the steps divides it by 2^p, which is what
the first tests measure (in float64, on steps evenly spaced in lambda).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aigc_kit.core.registry import create
from aigc_kit.core.timesteps import karras_timesteps, timesteps_for
from aigc_kit.plugins.diffusion.samplers import DDIMSampler
from aigc_kit.plugins.diffusion.schedule import NoiseSchedule, betas_for
from aigc_kit.plugins.diffusion.solvers import DPMSolverPlusPlus, EulerSampler, HeunSampler, UniPC

MU, S2 = 0.3, 0.25


def gaussian_denoiser(schedule: NoiseSchedule, prediction_type: str = "epsilon", shift: float = 0.0):
    """The exact denoiser of x_0 ~ N(MU + shift * label, S2); ``label`` -1 (or none) is the unshifted mean."""

    def denoise(x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        t = t.round().long()
        alpha_bar = schedule.alpha_bar(t, x)
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        mean = torch.full_like(x, MU)
        if label is not None:
            mean = mean + shift * (label.to(x.dtype) + 1).reshape(-1, *[1] * (x.dim() - 1))
        x0 = mean + alpha * S2 * (x - alpha * mean) / (alpha**2 * S2 + sigma**2)
        epsilon = (x - alpha * x0) / sigma
        if prediction_type == "epsilon":
            return epsilon
        if prediction_type == "sample":
            return x0
        return alpha * epsilon - sigma * x0

    return denoise


def exact_flow(schedule: NoiseSchedule, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
    def spread(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = schedule.alpha_bar(t, x)
        return alpha_bar.sqrt(), (alpha_bar * S2 + 1 - alpha_bar).sqrt()

    (a0, v0), (a1, v1) = spread(start), spread(end)
    return a1 * MU + v1 * (x - a0 * MU) / v0


# A fine schedule (100,000 timesteps), so that integer timesteps approximate continuous time well.
FINE = NoiseSchedule(torch.cumprod(1 - betas_for("linear", 100_000, 1e-6, 2e-4), 0))
FINE_LAMBDA = (0.5 * torch.log(FINE.alphas_cumprod / (1 - FINE.alphas_cumprod))).numpy()


def lambda_steps(steps: int, start: int = 99_999, end: int = 10_000) -> list[int]:
    grid = np.linspace(FINE_LAMBDA[start], FINE_LAMBDA[end], steps + 1)
    return [int(np.argmin(np.abs(FINE_LAMBDA - value))) for value in grid]


@pytest.mark.parametrize(("make", "order"), [
    (lambda: EulerSampler(FINE, 2, clip_sample=False), 1),
    (lambda: HeunSampler(FINE, 2, clip_sample=False), 2),
    (lambda: DPMSolverPlusPlus(FINE, 2, solver_order=1, lower_order_final=False, clip_sample=False), 1),
    (lambda: DPMSolverPlusPlus(FINE, 2, solver_order=2, lower_order_final=False, clip_sample=False), 2),
    (lambda: DPMSolverPlusPlus(FINE, 2, solver_order=3, lower_order_final=False, clip_sample=False), 3),
    # UniC raises UniP-p to order p + 1 (Zhao et al., Theorem 3.1)
    (lambda: UniPC(FINE, 2, solver_order=1, lower_order_final=False, clip_sample=False), 2),
    (lambda: UniPC(FINE, 2, solver_order=2, lower_order_final=False, clip_sample=False), 3),
    (lambda: UniPC(FINE, 2, solver_order=3, lower_order_final=False, clip_sample=False), 4),
], ids=["euler", "heun", "dpm++1", "dpm++2", "dpm++3", "unipc1", "unipc2", "unipc3"])
def test_each_sampler_converges_to_the_exact_ode_solution_at_its_order(make, order):
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = []
    for steps in (48, 96):
        sampler = make()
        sequence = lambda_steps(steps)
        sampler.timesteps, sampler.final_timestep = sequence[:-1], sequence[-1]
        result = sampler.sample(gaussian_denoiser(FINE), x.clone())
        errors.append((result - exact_flow(FINE, x, sequence[0], sequence[-1])).abs().max().item())
    observed = math.log2(errors[0] / errors[1])
    assert observed > order - 0.35, (errors, observed)  # pre-asymptotic runs may converge faster, never slower


def test_euler_is_deterministic_ddim_on_the_same_timesteps():
    schedule = NoiseSchedule(torch.cumprod(1 - betas_for("linear", 1000), 0))
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    denoiser = gaussian_denoiser(schedule)
    for steps in (1, 7, 25):
        euler = EulerSampler(schedule, steps).sample(denoiser, x)
        ddim = DDIMSampler(schedule, steps, eta=0.0).sample(denoiser, x)
        assert torch.allclose(euler, ddim, atol=1e-10)


def test_karras_timesteps_are_the_training_timesteps_nearest_to_karras_noise_levels():
    table = torch.cumprod(1 - betas_for("linear", 1000), 0).numpy()
    sigmas = np.sqrt((1 - table) / table)
    timesteps = karras_timesteps(table, 10)
    assert timesteps[0] == 999 and timesteps[-1] == 0 and timesteps == sorted(timesteps, reverse=True)
    # sigma^(1/7) evenly spaced: the middle level sits between its neighbours' levels
    roots = sigmas[timesteps] ** (1 / 7)
    assert np.allclose(np.diff(roots), (roots[-1] - roots[0]) / 9, atol=0.02)
    options = {"num_train_timesteps": 1000, "use_karras_sigmas": True, "beta_schedule": "linear"}
    assert timesteps_for(options, 10) == timesteps
    with pytest.raises(ValueError, match="between 1 and 1000"):
        timesteps_for(options, 1001)


def test_sigma_max_starts_at_the_noisiest_timestep_below_it_for_every_spacing():
    options = {"num_train_timesteps": 1000, "beta_schedule": "cosine", "sigma_max": 80.0}
    table = torch.cumprod(1 - betas_for("cosine", 1000), 0).numpy()
    sigmas = np.sqrt((1 - table) / table)
    top = int(np.nonzero(sigmas <= 80)[0][-1])
    assert sigmas[top + 1] > 80 >= sigmas[top] and top < 999
    for karras in (False, True):
        sampler = create("sampler", "heun", steps=10, beta_schedule="cosine", sigma_max=80.0, use_karras_sigmas=karras)
        assert sampler.timesteps[0] == top and sampler.timesteps == timesteps_for({**options,
                                                                                   "use_karras_sigmas": karras}, 10)
    assert create("sampler", "euler", steps=10, beta_schedule="cosine").timesteps[0] == 999
    with pytest.raises(ValueError, match="no timestep has sigma at most sigma_max"):
        timesteps_for({**options, "sigma_max": 1e-4}, 10)


@pytest.mark.parametrize("name", ["dpm-solver++", "unipc", "euler", "heun"])
def test_each_sampler_is_a_registered_component_with_diffusers_option_names(name):
    sampler = create("sampler", name, steps=10, num_train_timesteps=1000, use_karras_sigmas=True)
    assert sampler.timesteps == karras_timesteps(sampler.schedule.alphas_cumprod.numpy(), 10)
    assert sampler.with_steps(5).timesteps == karras_timesteps(sampler.schedule.alphas_cumprod.numpy(), 5)


# -- against diffusers' schedulers ---------------------------------------------------------------------------------

def _diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers): the "
                                                   "comparison with its schedulers needs it")


def _set_sequence(scheduler, timesteps: list[int], alphas_cumprod: torch.Tensor, final: int = -1) -> None:
    """Give a diffusers multistep scheduler our timesteps, and their sigmas, ending at ``final``'s (-1: 0)."""
    scheduler.set_timesteps(len(timesteps))
    table = alphas_cumprod.double()[torch.tensor(timesteps + ([final] if final >= 0 else []))]
    sigmas = ((1 - table) / table).sqrt()
    scheduler.timesteps = torch.tensor(timesteps, dtype=torch.long)
    ending = [] if final >= 0 else [torch.zeros(1, dtype=torch.float64)]
    scheduler.sigmas = torch.cat([sigmas, *ending]).float()
    scheduler.num_inference_steps = len(timesteps)


def _run_diffusers(scheduler, denoiser, noise: torch.Tensor, timesteps, sigma_form: bool, guided=None):
    """diffusers' sampling loop, as its pipelines write it (model input scaling, guidance on the prediction)."""
    x = noise * scheduler.init_noise_sigma if not sigma_form else noise * (scheduler.sigmas[0] ** 2 + 1) ** 0.5
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        batch = torch.full((noise.shape[0],), float(t))
        prediction = denoiser(model_input, batch) if guided is None else guided(model_input, batch)
        x = scheduler.step(prediction, t, x).prev_sample
    return x


SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
"""Ours by default; diffusers' Euler and Heun default to Stable Diffusion's betas instead."""

CASES = [  # (sampler, options, diffusers class and its options)
    ("dpm-solver++", {"solver_order": 1}, "DPMSolverMultistepScheduler", {"solver_order": 1}),
    ("dpm-solver++", {"solver_order": 2}, "DPMSolverMultistepScheduler", {"solver_order": 2}),
    ("dpm-solver++", {"solver_order": 3}, "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("dpm-solver++", {"solver_order": 2, "lower_order_final": False}, "DPMSolverMultistepScheduler",
     {"solver_order": 2, "lower_order_final": False}),
    ("unipc", {"solver_order": 1}, "UniPCMultistepScheduler", {"solver_order": 1}),
    ("unipc", {"solver_order": 2}, "UniPCMultistepScheduler", {"solver_order": 2}),
    ("unipc", {"solver_order": 3}, "UniPCMultistepScheduler", {"solver_order": 3}),
    ("unipc", {"solver_order": 2, "solver_type": "bh1"}, "UniPCMultistepScheduler",
     {"solver_order": 2, "solver_type": "bh1"}),
    ("euler", {}, "EulerDiscreteScheduler", {}),
    ("heun", {}, "HeunDiscreteScheduler", {}),
]


@pytest.mark.parametrize(("name", "options", "theirs", "their_options"), CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items()) or 'default'}" for c in CASES])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_sampler_matches_diffusers_scheduler_of_the_same_name(name, options, theirs, their_options,
                                                                  prediction_type):
    diffusers = _diffusers()
    for steps, spacing, karras in ((5, "trailing", False), (12, "leading", False), (20, "linspace", True)):
        ours = create("sampler", name, steps=steps, timestep_spacing=spacing, use_karras_sigmas=karras,
                      prediction_type=prediction_type, clip_sample=False, **options)
        scheduler = getattr(diffusers, theirs)(prediction_type=prediction_type, **SCHEDULE, **their_options)
        if name in ("euler", "heun"):
            scheduler.set_timesteps(timesteps=ours.timesteps)
        elif options.get("solver_type") == "bh1":
            # diffusers' bh1 step to sigma 0 is NaN (B(h) = -h is infinite there, times a zero sum): both end at t = 0
            ours.final_timestep = 0
            _set_sequence(scheduler, ours.timesteps, ours.schedule.alphas_cumprod, final=0)
        else:
            _set_sequence(scheduler, ours.timesteps, ours.schedule.alphas_cumprod)
        noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(steps))
        denoiser = gaussian_denoiser(ours.schedule, prediction_type)
        expected = _run_diffusers(scheduler, denoiser, noise, ours.timesteps, sigma_form=name in ("euler", "heun"))
        actual = ours.sample(denoiser, noise)
        assert (actual - expected).abs().max().item() < 1e-4, (steps, spacing, karras)


@pytest.mark.parametrize("schedule", [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012)])
def test_karras_timesteps_are_diffusers_rounded_karras_timesteps(schedule):
    diffusers = _diffusers()
    name, start, end = schedule
    options = {"num_train_timesteps": 1000, "use_karras_sigmas": True, "beta_schedule": name, "beta_start": start,
               "beta_end": end}
    for steps in (5, 10, 20, 30):
        scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule=name, beta_start=start, beta_end=end,
                                                         use_karras_sigmas=True)
        scheduler.set_timesteps(steps)
        assert timesteps_for(options, steps) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("name", ["dpm-solver++", "unipc"])
def test_clipping_matches_diffusers_thresholding_at_sample_max_value_1(name):
    """diffusers' dynamic thresholding with sample_max_value 1 clips x_0 to [-1, 1], as clip_sample does."""
    diffusers = _diffusers()
    theirs = {"dpm-solver++": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}[name]
    ours = create("sampler", name, steps=8, clip_sample=True)
    scheduler = getattr(diffusers, theirs)(thresholding=True, sample_max_value=1.0, **SCHEDULE)
    _set_sequence(scheduler, ours.timesteps, ours.schedule.alphas_cumprod)
    noise = 3 * torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))  # so that x_0 leaves [-1, 1]
    denoiser = gaussian_denoiser(ours.schedule)
    expected = _run_diffusers(scheduler, denoiser, noise, ours.timesteps, sigma_form=False)
    unclipped = create("sampler", name, steps=8, clip_sample=False).sample(denoiser, noise)
    assert (unclipped - expected).abs().max() > 1e-2  # clipping matters here
    assert (ours.sample(denoiser, noise) - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["dpm-solver++", "unipc", "euler", "heun"])
def test_guided_sampling_matches_diffusers_with_the_pipelines_guidance(name):
    diffusers = _diffusers()
    theirs = {"dpm-solver++": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler",
              "euler": "EulerDiscreteScheduler", "heun": "HeunDiscreteScheduler"}[name]
    ours = create("sampler", name, steps=10, clip_sample=False)
    scheduler = getattr(diffusers, theirs)(**SCHEDULE)
    if name in ("euler", "heun"):
        scheduler.set_timesteps(timesteps=ours.timesteps)
    else:
        _set_sequence(scheduler, ours.timesteps, ours.schedule.alphas_cumprod)
    denoiser = gaussian_denoiser(ours.schedule, shift=0.4)
    label = torch.tensor([0, 2, 1])

    def guided(x, t):  # the pipelines' classifier-free guidance, w = 3
        unconditional, conditional = denoiser(x, t, torch.full_like(label, -1)), denoiser(x, t, label)
        return unconditional + 3.0 * (conditional - unconditional)

    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    expected = _run_diffusers(scheduler, denoiser, noise, ours.timesteps, sigma_form=name in ("euler", "heun"),
                              guided=guided)
    actual = ours.sample(denoiser, noise, conditions={"label": label}, guidance_scale=3.0)
    assert (actual - expected).abs().max().item() < 1e-4


# -- one graph per sampler ---------------------------------------------------------------------------------------

def _tiny_guided_unet(classes: int = 3):
    from aigc_kit.plugins.diffusion.unet import UNet

    torch.manual_seed(0)
    unet = UNet(3, 8, width=8, channel_multipliers=(1, 2), blocks_per_level=1, attention_resolutions=(),
                attention_heads=1, dropout=0.0, norm_groups=4, classes=classes)
    torch.nn.init.normal_(unet.output[-1].weight, std=0.3)  # not the zero start: the network's output must count
    return unet.eval()


@pytest.mark.parametrize(("name", "options", "layout"), [
    ("dpm-solver++", {"solver_order": 3, "use_karras_sigmas": True}, "loop"), ("unipc", {"solver_order": 2}, "loop"), ("euler", {}, "loop"),
    ("heun", {"sigma_max": 80.0}, "loop"), ("unipc", {"solver_order": 3}, "unrolled"), ("heun", {}, "unrolled"),
], ids=["dpm++3-karras-loop", "unipc2-loop", "euler-loop", "heun-sigma-max-loop", "unipc3-unrolled", "heun-unrolled"])
@pytest.mark.slow
def test_each_sampler_exports_as_one_graph_that_matches_pytorch_at_run_time_steps_and_guidance(tmp_path, name,
                                                                                               options, layout):
    from aigc_kit.core.plugin_api import Condition, ExportRequest
    from aigc_kit.exporters.runtime import OnnxGenerator

    sampler = create("sampler", name, steps=5, guidance_scale=2.0, clip_sample=False, **options)
    exporter = create("exporter", "onnx", validate_batch_sizes=[3], sampler_graph=layout)
    path = tmp_path / f"{name}.onnx"
    recorded = {"num_train_timesteps": 1000, "timestep_spacing": "trailing", **options}  # what a run records
    report = exporter.export(ExportRequest(_tiny_guided_unet(), sampler, (3, 8, 8), (3, 8, 8), (-1.0, 1.0), str(path),
                                           metadata={"aigc_kit.sampler_options": json.dumps(recorded)},
                                           conditions={"label": Condition(classes=("a", "b", "c"))}))
    # Each check passed the exporter's fp32 sampler tolerance, |onnx - torch| <= 1e-3 + 1e-3 |torch| (else it raises):
    # batch sizes, another step count (a loop), guidance 0 and 4. Unclipped, this network's samples reach |x| ~ 20.
    checks = report["checks"]
    assert report["sampler_graph"] == layout and all(check["passed"] for check in checks)
    assert {check.get("guidance_scale") for check in checks} >= {0.0, 2.0, 4.0}
    assert any(check.get("steps") == 3 for check in checks) == (layout == "loop")
    assert report["reference_evaluator"]["passed"]  # onnx's reference evaluator on one step, state included
    model = OnnxGenerator(path)
    noise = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    if layout == "loop":  # a step count chosen at run time: the state and the order follow the sequence given
        other = sampler.with_steps(8)
        expected = other.sample(_tiny_guided_unet(), torch.from_numpy(noise), conditions={"label": torch.tensor([0, 2])},
                                guidance_scale=3.0).numpy()
        actual = exporter.load(path)(noise, label=np.array([0, 2]), guidance_scale=np.float32(3.0),
                                     timesteps=np.array(other.timesteps))
        assert np.allclose(actual, expected, atol=1e-3, rtol=1e-3)
        # the runtime computes another step count's timesteps as the sampler does (Karras levels too)
        assert model._timesteps(8, None) == other.timesteps
    assert model.generate(2, seed=0, labels=[0, 2]).shape == (2, 8, 8, 3)


@pytest.mark.slow
def test_a_multistep_loop_stores_the_weights_once_and_carries_its_state(tmp_path):
    import onnx

    from aigc_kit.core.plugin_api import ExportRequest

    sampler = create("sampler", "unipc", steps=4, solver_order=3, clip_sample=False)
    path = tmp_path / "unipc.onnx"
    create("exporter", "onnx", validate_batch_sizes=[1]).export(
        ExportRequest(_tiny_guided_unet(classes=0), sampler, (3, 8, 8), (3, 8, 8), (-1.0, 1.0), str(path)))
    model = onnx.load_model(str(path))
    loop = next(node for node in model.graph.node if node.op_type == "Loop")
    assert len(loop.input) == 3 + sampler.carried and len(loop.output) == 1 + sampler.carried  # x and 4 states
    body = loop.attribute[0].g
    weights = sum(tensor.ByteSize() for tensor in body.initializer)
    parameters = sum(p.numel() for p in _tiny_guided_unet(classes=0).parameters()) * 4
    assert parameters <= weights < 1.5 * parameters and not model.graph.initializer[0].dims[1:]


# -- choosing the sampler of a trained run ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    from aigc_kit.core.run import run
    from aigc_kit.testing import isolated_registry

    from .conftest import tiny_unet_config

    folder = tmp_path_factory.mktemp("unet")
    config = tiny_unet_config(sampler={"name": "ddim", "steps": 3, "eta": 0.5, "guidance_scale": 1.0,
                                       "clip_sample": False})
    (folder / "run.yaml").write_text(json.dumps(config))
    run(folder / "run.yaml", isolated_registry(), output=folder / "run")
    return folder / "run"


def test_another_sampler_keeps_the_options_it_shares_with_the_runs_and_drops_the_others():
    from aigc_kit.core.trained import switched_sampler
    from aigc_kit.testing import isolated_registry

    current = {"name": "ddim", "steps": 50, "eta": 0.5, "clip_sample": False, "timestep_spacing": "linspace"}
    registry = isolated_registry()
    assert switched_sampler(current, {"name": "unipc", "solver_order": 3}, registry) == {
        "name": "unipc", "clip_sample": False, "timestep_spacing": "linspace", "solver_order": 3}
    assert switched_sampler(current, {"steps": 10}, registry) == {**current, "steps": 10}


@pytest.mark.slow
def test_export_and_eval_take_another_sampler_and_generate_says_which_one_a_file_holds(unet_run, tmp_path):
    from click.testing import CliRunner

    from aigc_kit.cli import cli
    from aigc_kit.exporters.runtime import OnnxGenerator

    path = tmp_path / "unipc.onnx"
    exported = CliRunner().invoke(cli, ["export", str(unet_run), "--out", str(path), "--sampler", "unipc",
                                        "--steps", "4", "--sampler-option", "solver_order=3"])
    assert exported.exit_code == 0, exported.output
    model = OnnxGenerator(path)
    assert model.sampler == "unipc" and model.default_steps() == 4
    assert model.metadata["sampler_options"]["solver_order"] == 3
    assert model.metadata["sampler_options"]["clip_sample"] is False and "eta" not in model.metadata["sampler_options"]
    wrong = CliRunner().invoke(cli, ["generate", str(path), "-n", "2", "--out", str(tmp_path / "a.png"),
                                     "--sampler", "ddim"])
    assert wrong.exit_code == 2 and "holds the unipc sampler" in wrong.output and "--sampler ddim" in wrong.output
    assert "Traceback" not in wrong.output and not (tmp_path / "a.png").exists()
    right = CliRunner().invoke(cli, ["generate", str(path), "-n", "2", "--out", str(tmp_path / "b.png"),
                                     "--sampler", "unipc", "--steps", "6"])
    assert right.exit_code == 0, right.output
    bad = CliRunner().invoke(cli, ["export", str(unet_run), "--out", str(tmp_path / "c.onnx"), "--sampler", "unipc",
                                   "--sampler-option", "solver_order=7"])
    assert bad.exit_code == 2 and "sampler.solver_order" in bad.output and "config.yaml" not in bad.output
    assert not (tmp_path / "c.onnx").exists()
    onnx_eval = CliRunner().invoke(cli, ["eval", str(path), "--metric", "fid", "-n", "8", "--sampler", "heun"])
    assert onnx_eval.exit_code == 2 and "export the run again with --sampler" in onnx_eval.output
    report_path = tmp_path / "eval.json"
    evaluated = CliRunner().invoke(cli, ["eval", str(unet_run), "--metric", "fid", "-n", "8", "--sampler", "heun",
                                         "--sampler-option", "steps=2", "--option", "fid.real_samples=16",
                                         "--out", str(report_path)])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(report_path.read_text())
    assert report["sampler"]["name"] == "heun" and report["sampler"]["steps"] == 2


def test_a_denoising_sampler_for_a_generator_is_a_user_error_naming_the_sampler(tmp_path):
    from click.testing import CliRunner

    from aigc_kit.cli import cli

    from .conftest import tiny_config

    config = tiny_config(sampler={"name": "dpm-solver++"})  # a DCGAN: its noise is a latent, not an image
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "run.yaml")])
    assert result.exit_code == 2 and "sampler.name" in result.output and "a generator's latent" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("options", [
    {"num_train_timesteps": 10**9, "use_karras_sigmas": True},  # would allocate gigabytes
    {"num_train_timesteps": "many", "use_karras_sigmas": True},
    {"num_train_timesteps": 1000, "beta_start": [1], "sigma_max": 80},
    {"num_train_timesteps": 1000, "beta_schedule": "cosine", "sigma_max": "high"},
])
def test_timesteps_from_a_files_metadata_are_checked_before_any_schedule_is_built(options):
    with pytest.raises(ValueError):
        timesteps_for(options, 10)
