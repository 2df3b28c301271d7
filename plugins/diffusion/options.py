"""The options of the diffusion components (no torch here: ``aigc-kit plugins`` lists them cheaply)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from aigc_kit.core.plugin_api import Options

BetaSchedule = Literal["linear", "scaled_linear", "cosine"]
PredictionType = Literal["epsilon", "v_prediction", "sample"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]


class ScheduleOptions(Options):
    """The noise schedule and what the denoiser predicts: set once, in the model's section of a run config."""

    beta_schedule: BetaSchedule = Field(
        "linear",
        description="linear: betas evenly spaced; scaled_linear: their square roots evenly spaced; "
        "cosine: alpha-bar follows a squared cosine (Nichol & Dhariwal 2021, betas capped at 0.999).",
    )
    num_train_timesteps: int = Field(1000, ge=2, le=100_000, description="Diffusion steps T of the forward process.")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="The first beta (linear and scaled_linear).")
    beta_end: float = Field(0.02, gt=0, lt=1, description="The last beta (linear and scaled_linear).")
    prediction_type: PredictionType = Field(
        "epsilon",
        description="What the denoiser predicts: the noise (epsilon), v = sqrt(a) eps - sqrt(1 - a) x0 "
        "(v_prediction), or the clean sample (sample).",
    )

    @model_validator(mode="after")
    def _increasing(self) -> ScheduleOptions:
        if self.beta_start > self.beta_end:
            raise ValueError(f"beta_start ({self.beta_start}) must not exceed beta_end ({self.beta_end})")
        return self


class UnetOptions(Options):
    """Options of the ``unet`` model; resolution and channels default to the data's."""

    resolution: int | None = Field(None, description="Image side: 16, 32, 64 or 128 (default: the data's).")
    channels: int | None = Field(None, description="Image channels, 1 or 3 (default: the data's).")
    width: int = Field(64, gt=0, le=1024, description="Channels of the first level; level i has width * "
                                                      "channel_multipliers[i].")
    channel_multipliers: tuple[int, ...] = Field(
        (1, 2, 2), min_length=1, description="One multiplier per level; each level after the first halves the resolution."
    )
    blocks_per_level: int = Field(2, ge=1, description="Residual blocks per level on the way down (one more on the way up).")
    attention_resolutions: tuple[int, ...] = Field(
        (8,), description="Resolutions (feature-map sides) at which self-attention follows each residual block."
    )
    attention_heads: int = Field(1, ge=1, description="Heads of each self-attention layer.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the residual blocks.")
    time_embedding_norm: Literal["scale_shift", "add"] = Field(
        "scale_shift", description="How a residual block takes the time (and class) embedding: scale_shift, a "
        "scale and a shift per channel after its second GroupNorm (Dhariwal & Nichol 2021; diffusers' "
        "resnet_time_scale_shift='scale_shift'); add, a shift before that GroupNorm (the DDPM paper's; diffusers' "
        "'default'), which a GroupNorm of one channel per group removes (docs/diffusion.md).")
    norm_groups: int = Field(32, ge=1, validate_default=True,
                             description="GroupNorm groups; every level's channels must divide by it.")
    conditional: bool | Literal["auto"] = Field(
        "auto", description="Condition on the data's class labels: auto (when the data has labels), true or false. "
        "A class embedding is added to the time embedding.")
    class_dropout: float = Field(0.1, ge=0, lt=1, description="Conditional only: the share of training labels "
                                 "replaced by 'no class', so that the network also learns the unconditional "
                                 "prediction classifier-free guidance needs (Ho & Salimans 2022: 0.1-0.2).")
    schedule: ScheduleOptions = Field(
        default_factory=ScheduleOptions,
        description="The noise schedule and prediction type, shared with the loss and the sampler.",
    )

    @field_validator("norm_groups")
    @classmethod
    def _divides_every_level(cls, groups: int, info: ValidationInfo) -> int:
        # checked for the default too (validate_default): width 8 with the default 32 groups cannot build
        width, heads = info.data.get("width"), info.data.get("attention_heads")
        multipliers = info.data.get("channel_multipliers") or ()
        if any(multiplier > 64 for multiplier in multipliers) or len(multipliers) > 8:
            raise ValueError("at most 8 levels (channel_multipliers), each with a multiplier of at most 64")
        for multiplier in multipliers:
            channels = width * multiplier if width else None
            if channels is not None and (multiplier < 1 or channels % groups or (heads and channels % heads)):
                raise ValueError(f"every level's channels (width x multiplier, here {channels}) must be positive "
                                 f"and divide by norm_groups ({groups}) and attention_heads ({heads}); set "
                                 "model.norm_groups, model.width or model.channel_multipliers to fit")
        return groups


class DiffusionLossOptions(ScheduleOptions):
    """Options of the ``diffusion`` loss: the schedule (given by the model in a run) and Min-SNR weighting."""

    min_snr_gamma: float | None = Field(
        None, gt=0, description="Weight each timestep's loss by min(SNR, gamma) (Hang et al. 2023; 5 is usual); off by default."
    )


class SamplerOptions(ScheduleOptions):
    """What the diffusion samplers share: the schedule (given by the model in a run), the timesteps, clipping."""

    timestep_spacing: TimestepSpacing = Field(
        "trailing",
        description="How the steps are spread over the training timesteps: leading (the DDIM paper's), "
        "trailing (starts at the noisiest timestep; best with few steps) or linspace.",
    )
    steps_offset: int = Field(0, ge=0, description="Added to every timestep of the leading spacing.")
    clip_sample: bool = Field(
        True,
        description="Clip each step's predicted x_0 to [-clip_sample_range, clip_sample_range] (images lie in [-1, 1]) "
        "and recompute epsilon from it; keeps an epsilon denoiser's large x_0 errors at the noisiest steps in check.",
    )
    clip_sample_range: float = Field(1.0, gt=0, description="The clipping range of the predicted x_0.")
    guidance_scale: float = Field(
        1.0, ge=0, le=100, description="Classifier-free guidance w for a class-conditional model: pred(no class) + "
        "w (pred(class) - pred(no class)); 1 is plain conditional sampling, 0 unconditional, more trades diversity "
        "for fidelity to the class. Exports take it as an input, this value its default.",
    )

    @field_validator("steps", check_fields=False)
    @classmethod
    def _at_most_the_training_timesteps(cls, steps: int | None, info: ValidationInfo) -> int | None:
        total = info.data.get("num_train_timesteps")
        if steps is not None and total is not None and steps > total:
            raise ValueError(f"expected at most num_train_timesteps ({total}) steps")
        return steps

    @model_validator(mode="after")
    def _offset_fits(self) -> SamplerOptions:
        steps = getattr(self, "steps", None) or self.num_train_timesteps
        if self.timestep_spacing == "leading" and \
                (steps - 1) * (self.num_train_timesteps // steps) + self.steps_offset >= self.num_train_timesteps:
            raise ValueError("steps_offset pushes the leading timesteps past num_train_timesteps - 1")
        return self


class DdimOptions(SamplerOptions):
    """Options of the ``ddim`` sampler."""

    steps: int = Field(50, ge=1, description="Denoising steps (network evaluations) per sample.")
    eta: float = Field(0.0, ge=0, le=1, description="Noise of each step: 0 deterministic (DDIM), 1 as much as DDPM.")
    set_alpha_to_one: bool = Field(
        True, description="The last step lands on alpha-bar 1 (a clean sample), as in the DDIM paper; else on alpha-bar_0."
    )


class DdpmOptions(SamplerOptions):
    """Options of the ``ddpm`` sampler."""

    steps: int | None = Field(
        None, ge=1, description="Ancestral steps: every training timestep (default), or a subset with its variances recomputed."
    )
    variance_type: Literal["fixed_small", "fixed_large"] = Field(
        "fixed_small", description="The step's variance: the posterior's (fixed_small) or beta (fixed_large), as in DDPM."
    )


class FewStepOptions(SamplerOptions):
    """What the few-step samplers share: the step count and Karras et al.'s noise levels."""

    steps: int = Field(20, ge=1, description="Steps per sample (network evaluations, twice that less one for heun).")
    use_karras_sigmas: bool = Field(
        False, description="Visit the training timesteps nearest to Karras et al. 2022's noise levels (evenly spaced "
        "in sigma^(1/7)) instead of timestep_spacing's; duplicates are dropped, so many steps may give fewer.")
    sigma_max: float | None = Field(
        None, gt=0, description="Start at the noisiest timestep whose sigma = sqrt((1 - alpha-bar) / alpha-bar) is "
        "at most this (Karras et al. 2022 use 80), from noise drawn as at the last timestep. The cosine schedule "
        "ends near sigma 20,000, which makes Heun's first step useless (docs/diffusion.md). Default: no limit.")


class MultistepOptions(FewStepOptions):
    """What DPM-Solver++ and UniPC share: the order and the last steps' order."""

    solver_order: int = Field(2, ge=1, le=3, description="How many earlier steps' predictions each step uses (its "
                              "order): 2 is the usual for guided sampling, 3 for unguided.")
    lower_order_final: bool = Field(True, description="Lower the order of the last steps (DPM-Solver++: second "
                                    "order on the last but one when fewer than 15 steps; UniPC: no more than the "
                                    "steps left); steadier with 10 steps or fewer.")


class DpmSolverOptions(MultistepOptions):
    """Options of the ``dpm-solver++`` sampler."""


class UniPCOptions(MultistepOptions):
    """Options of the ``unipc`` sampler."""

    solver_type: Literal["bh1", "bh2"] = Field(
        "bh2", description="UniPC's B(h): bh2 = e^-h - 1 (the better one with few steps for guided sampling), "
        "bh1 = -h.")


class EulerOptions(FewStepOptions):
    """Options of the ``euler`` sampler."""


class HeunOptions(FewStepOptions):
    """Options of the ``heun`` sampler."""

    steps: int = Field(10, ge=1, description="Steps per sample; each but the last evaluates the network twice.")
