"""Diffusion as plugins: the ``unet`` denoiser, the ``diffusion`` loss (DDPM objective), and the samplers:
``ddim`` and ``ddpm``, and the few-step ``dpm-solver++``, ``unipc``, ``euler`` and ``heun``.

The noise schedule and prediction type are options of the model
(``model.schedule``): the model hands them to the loss and the sampler of a
run (``ModelBundle.shared_options``), so the three cannot disagree. The
samplers also work on their own with any ``denoiser(x_t, t)``::

    from aigc_kit.core.registry import create
    sampler = create("sampler", "ddim", steps=50, eta=0.0, beta_schedule="linear",
                     num_train_timesteps=1000, prediction_type="epsilon")
    images = sampler.sample(denoiser, sampler.noise(16, (3, 32, 32)))
"""

from __future__ import annotations

from aigc_kit.core.plugin_api import (
    ComponentSpec,
    Context,
    ModelBundle,
    OptimizerSettings,
    hookimpl,
    square_image_size,
)

from .options import (
    DdimOptions,
    DdpmOptions,
    DiffusionLossOptions,
    DpmSolverOptions,
    EulerOptions,
    FewStepOptions,
    HeunOptions,
    SamplerOptions,
    ScheduleOptions,
    UnetOptions,
    UniPCOptions,
)


def _schedule(options: ScheduleOptions):
    from .schedule import NoiseSchedule

    return NoiseSchedule.from_options(options)


def build_unet(options: UnetOptions, context: Context) -> ModelBundle:
    from aigc_kit.plugins.common import model_conditions

    from .unet import UNet

    channels, resolution = square_image_size(options, context.data_shape, "unet")
    levels = len(options.channel_multipliers)
    if resolution >> (levels - 1) < 4:
        from aigc_kit.core.errors import UserError

        raise UserError(f"{levels} levels halve {resolution} pixels below 4", field="model.channel_multipliers",
                        hint="use fewer levels for this resolution")
    taken = model_conditions(options.conditional, context.conditions, "unet")
    denoiser = UNet(channels, resolution, options.width, options.channel_multipliers, options.blocks_per_level,
                    options.attention_resolutions, options.attention_heads, options.dropout, options.norm_groups,
                    classes=taken["label"].count if taken else 0, class_dropout=options.class_dropout,
                    scale_shift=options.time_embedding_norm == "scale_shift")
    return ModelBundle(
        networks={"denoiser": denoiser},
        sampling_network="denoiser",
        noise_shape=(channels, resolution, resolution),
        shared_options=options.schedule.model_dump(),
        conditions=taken,
    )


def build_diffusion_loss(options: DiffusionLossOptions):
    from .loss import DiffusionLoss

    # DDPM's optimizer: Adam, learning rate 2e-4 (CIFAR-10), default betas.
    return DiffusionLoss(_schedule(options), options.min_snr_gamma, OptimizerSettings("adam", lr=2e-4))


def build_ddim(options: DdimOptions):
    from .samplers import DDIMSampler

    return DDIMSampler(_schedule(options), options.steps, options.eta, options.set_alpha_to_one,
                       **_sampling(options))


def build_ddpm(options: DdpmOptions):
    from .samplers import DDPMSampler

    return DDPMSampler(_schedule(options), options.steps, options.variance_type, **_sampling(options))


def build_dpm_solver(options: DpmSolverOptions):
    from .solvers import DPMSolverPlusPlus

    return DPMSolverPlusPlus(_schedule(options), options.steps, options.solver_order, options.lower_order_final,
                             **_sampling(options))


def build_unipc(options: UniPCOptions):
    from .solvers import UniPC

    return UniPC(_schedule(options), options.steps, options.solver_order, options.lower_order_final,
                 options.solver_type, **_sampling(options))


def build_euler(options: EulerOptions):
    from .solvers import EulerSampler

    return EulerSampler(_schedule(options), options.steps, **_sampling(options))


def build_heun(options: HeunOptions):
    from .solvers import HeunSampler

    return HeunSampler(_schedule(options), options.steps, **_sampling(options))


def _sampling(options: SamplerOptions) -> dict:
    return {"timestep_spacing": options.timestep_spacing, "steps_offset": options.steps_offset,
            "clip_sample": options.clip_sample, "clip_sample_range": options.clip_sample_range,
            "guidance_scale": options.guidance_scale,
            **({"use_karras_sigmas": options.use_karras_sigmas, "sigma_max": options.sigma_max}
               if isinstance(options, FewStepOptions) else {})}


@hookimpl
def aigc_register_models():
    return [
        ComponentSpec(
            "unet",
            build_unet,
            "Time-conditioned UNet denoiser (residual blocks with GroupNorm and SiLU, self-attention, skip connections) "
            "and its noise schedule.",
            UnetOptions,
        )
    ]


@hookimpl
def aigc_register_losses():
    return [
        ComponentSpec(
            "diffusion",
            build_diffusion_loss,
            "The DDPM objective: predict the noise, v or the clean sample at a random timestep; optional Min-SNR weighting.",
            DiffusionLossOptions,
        )
    ]


@hookimpl
def aigc_register_samplers():
    return [
        ComponentSpec(
            "ddim",
            build_ddim,
            "DDIM (Song et al. 2020, eq. 12): few-step sampling, deterministic at eta 0; also inverts samples to noise.",
            DdimOptions,
        ),
        ComponentSpec(
            "ddpm",
            build_ddpm,
            "DDPM ancestral sampling (Ho et al. 2020) over every training timestep or a strided subset.",
            DdpmOptions,
        ),
        ComponentSpec(
            "dpm-solver++",
            build_dpm_solver,
            "DPM-Solver++ multistep (Lu et al. 2022), orders 1-3: DDIM-50 quality in 10-20 steps.",
            DpmSolverOptions,
        ),
        ComponentSpec(
            "unipc",
            build_unipc,
            "UniPC multistep predictor-corrector (Zhao et al. 2023), orders 1-3: strong at 5-10 steps.",
            UniPCOptions,
        ),
        ComponentSpec(
            "euler",
            build_euler,
            "Karras et al. 2022's Euler step on the probability-flow ODE (deterministic DDIM in another form).",
            EulerOptions,
        ),
        ComponentSpec(
            "heun",
            build_heun,
            "Karras et al. 2022's Heun sampler: second order, two network evaluations per step.",
            HeunOptions,
        ),
    ]
