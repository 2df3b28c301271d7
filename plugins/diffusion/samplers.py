"""The DDIM and DDPM samplers, and DDIM inversion.

Both turn noise x_T into a sample with any ``denoiser(x_t, t)``: a callable
taking a batch and a 1-D tensor of integer timesteps (one per sample) and
returning the prediction its schedule's ``prediction_type`` names. Each step
goes from a timestep t to the previous timestep p *of the sequence being
sampled*, never to a fixed stride below t.

A class-conditional denoiser takes ``label=`` too (-1: no class). With a
``guidance_scale`` w other than 1, each step is classifier-free guided (Ho &
Salimans 2022): pred = pred(no class) + w (pred(class) - pred(no class)), both
from one batched call. Guidance is applied to the raw prediction, which holds
for every prediction type: epsilon, v and x_0 are each linear in the other two
given x_t, so guiding one guides them all alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from aigc_kit.core.timesteps import sequence

from .schedule import NoiseSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DiffusionSampler:
    """What DDIM and DDPM share: the prior noise, the timestep sequence, the denoiser call and the loop.

    A subclass defines :meth:`transition`, one step from x_t to x_p. Timesteps
    there may be ints or 0-dim integer tensors, so that the ONNX exporter can
    trace one transition and run it in a loop over a timestep sequence given at
    run time (:class:`aigc_kit.core.plugin_api.StepwiseSampler`).
    """

    uses_step_noise = False
    """Whether :meth:`transition` takes fresh noise at every step."""
    prior: ClassVar[dict[str, str]] = {"kind": "normal"}
    """x_T ~ N(0, I), as an export's metadata records it."""

    def __init__(self, schedule: NoiseSchedule, steps: int, timestep_spacing: str = "trailing",
                 steps_offset: int = 0, clip_sample: bool = True, clip_sample_range: float = 1.0,
                 guidance_scale: float = 1.0, use_karras_sigmas: bool = False,
                 sigma_max: float | None = None) -> None:
        self.schedule = schedule
        self.guidance_scale = guidance_scale
        self.timestep_spacing, self.steps_offset = timestep_spacing, steps_offset
        self.use_karras_sigmas, self.sigma_max = use_karras_sigmas, sigma_max
        self.timesteps = self.sequence(steps)
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.final_timestep = -1
        """Where the last step lands: -1 is the clean end of the process (alpha-bar 1)."""

    def with_steps(self, steps: int) -> DiffusionSampler:
        """The same sampler over ``steps`` timesteps of the same spacing."""
        other = copy.copy(self)
        other.timesteps = self.sequence(steps)
        return other

    def sequence(self, steps: int) -> list[int]:
        """The timesteps of ``steps`` steps: the spacing's, or the training timesteps nearest to Karras et al.'s
        noise levels with ``use_karras_sigmas``; with ``sigma_max``, from the noisiest timestep whose sigma is at
        most that on (:func:`aigc_kit.core.timesteps.sequence`, shared with the runtime)."""
        return sequence(self.schedule.alphas_cumprod.numpy(), steps, self.timestep_spacing, self.steps_offset,
                        self.use_karras_sigmas, self.sigma_max)

    def noise(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
        """x_T ~ N(0, I): ``n`` samples of ``shape``."""
        noise = torch.randn(n, *shape, generator=generator)
        return noise.to(device) if device is not None else noise

    def previous(self, index: int) -> int:
        """The timestep after ``timesteps[index]`` in the sequence, or :attr:`final_timestep` after the last."""
        if index + 1 < len(self.timesteps):
            return self.timesteps[index + 1]
        return self.final_timestep

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, noise: torch.Tensor, generator: torch.Generator | None = None,
               step_noise: torch.Tensor | None = None, conditions: dict[str, torch.Tensor] | None = None,
               guidance_scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """Run the steps from x_T = ``noise`` to the sample (for ``conditions``, guided by ``guidance_scale``,
        default the sampler's own).

        Samplers that add fresh noise at each step draw it from ``generator``, or
        take it from ``step_noise`` (shape ``(steps, *noise.shape)``) when given.
        """
        x = noise.to(torch.promote_types(noise.dtype, torch.float32))  # float64 stays, half precision rises
        for index, timestep in enumerate(self.timesteps):
            z = self.step_noise(x, index, generator, step_noise) if self.uses_step_noise else None
            x = self.transition(denoiser, x, timestep, self.previous(index), z, conditions, guidance_scale)
        return x

    def transition(self, denoiser: Denoiser, x_t: torch.Tensor, timestep: int | torch.Tensor,
                   previous: int | torch.Tensor, noise: torch.Tensor | None = None,
                   conditions: dict[str, torch.Tensor] | None = None,
                   guidance_scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """One step from x_t at ``timestep`` to x_p at ``previous``; ``noise`` is the step's fresh noise."""
        raise NotImplementedError

    def predict(self, denoiser: Denoiser, x_t: torch.Tensor, timestep: int | torch.Tensor,
                conditions: dict[str, torch.Tensor] | None = None,
                guidance_scale: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's x_0 and epsilon at ``x_t``, in ``x_t``'s dtype (guided, for conditions; see the module).

        With ``clip_sample``, x_0 is clipped and epsilon recomputed from it, so that
        x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) epsilon still holds: pairing a clipped
        x_0 with the unclipped epsilon shifts every DDIM step off its trajectory,
        and the more steps, the further (measured in docs/diffusion.md).
        """
        timesteps = torch.as_tensor(timestep, dtype=torch.long, device=x_t.device).reshape(1).expand(x_t.shape[0])
        prediction = self.guided(denoiser, x_t, timesteps, conditions, guidance_scale).to(x_t.dtype)
        x0, epsilon = self.schedule.to_x0_and_epsilon(prediction, x_t, timestep)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
            epsilon = self.schedule.to_x0_and_epsilon(x0, x_t, timestep, prediction_type="sample")[1]
        return x0, epsilon

    def guided(self, denoiser: Denoiser, x_t: torch.Tensor, timesteps: torch.Tensor,
               conditions: dict[str, torch.Tensor] | None, guidance_scale: float | torch.Tensor | None
               ) -> torch.Tensor:
        """The denoiser's prediction, classifier-free guided when there is a label and w is not 1.

        pred = pred(no class) + w (pred(class) - pred(no class)), Ho & Salimans 2022 eq. 6 (their w + 1 is
        our w), the two from one batched call. A tensor ``guidance_scale`` (a traced graph input) always
        takes the batched call, since its value is only known at run time.
        """
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        if not conditions:
            return denoiser(x_t, timesteps)
        label = conditions["label"]
        if not isinstance(scale, torch.Tensor) and scale == 1:
            return denoiser(x_t, timesteps, label=label)
        if not isinstance(scale, torch.Tensor) and scale == 0:  # the unconditional prediction alone
            return denoiser(x_t, timesteps, label=torch.full_like(label, -1))
        both = denoiser(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]),
                        label=torch.cat([torch.full_like(label, -1), label]))
        n = x_t.shape[0]
        unconditional, conditional = both[:n], both[n:]  # not chunk(2), which fixes a traced batch size
        return unconditional + scale * (conditional - unconditional)

    def step_noise(self, like: torch.Tensor, index: int, generator: torch.Generator | None,
                   step_noise: torch.Tensor | None) -> torch.Tensor:
        """The fresh noise z of step ``index``: given, or drawn on the CPU (the same on every device)."""
        if step_noise is not None:
            return step_noise[index].to(like)
        return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


class DDIMSampler(DiffusionSampler):
    """DDIM (Song et al. 2020): deterministic with ``eta`` 0, DDPM-like with ``eta`` 1."""

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0, set_alpha_to_one: bool = True,
                 **kwargs) -> None:
        super().__init__(schedule, steps, **kwargs)
        self.eta = eta
        # The DDIM paper's last step lands on alpha-bar 1; without it, on alpha-bar_0 (as some pipelines do).
        self.final_timestep = -1 if set_alpha_to_one else 0

    @property
    def uses_step_noise(self) -> bool:
        return self.eta > 0

    def transition(self, denoiser: Denoiser, x_t: torch.Tensor, timestep: int | torch.Tensor,
                   previous: int | torch.Tensor, noise: torch.Tensor | None = None,
                   conditions: dict[str, torch.Tensor] | None = None,
                   guidance_scale: float | torch.Tensor | None = None) -> torch.Tensor:
        x0, epsilon = self.predict(denoiser, x_t, timestep, conditions, guidance_scale)
        return self.step(x0, epsilon, timestep, previous, x_t, noise)

    def step(self, x0: torch.Tensor, epsilon: torch.Tensor, timestep: int | torch.Tensor,
             previous: int | torch.Tensor, x_t: torch.Tensor,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_p from x_t, DDIM eq. 12:

        x_p = sqrt(a_p) x0 + sqrt(1 - a_p - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - a_p) / (1 - a_t)) sqrt(1 - a_t / a_p)   (eq. 16).
        """
        alpha_bar = self.schedule.alpha_bar(timestep, x_t)
        alpha_bar_previous = self.schedule.alpha_bar(previous, x_t)
        sigma = self.eta * ((1 - alpha_bar_previous) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_previous)).sqrt()
        direction = (1 - alpha_bar_previous - sigma**2).clamp(min=0).sqrt() * epsilon
        x_previous = alpha_bar_previous.sqrt() * x0 + direction
        if noise is not None:
            x_previous = x_previous + sigma * noise
        return x_previous

    @torch.no_grad()
    def invert(self, denoiser: Denoiser, sample: torch.Tensor, timesteps: Sequence[int] | None = None) -> torch.Tensor:
        """DDIM inversion: the x_T from which sampling with ``eta`` 0 returns ``sample``.

        Runs the deterministic update backwards (the ODE of DDIM section 4.3),
        from the clean end up the same timestep sequence, evaluating the
        denoiser at the current point and the next timestep.
        """
        timesteps = list(reversed(timesteps if timesteps is not None else self.timesteps))
        x = sample.float()
        current = self.final_timestep
        for timestep in timesteps:
            if timestep == current:
                continue
            epsilon = self.predict(denoiser, x, timestep)[1]
            alpha_bar_current = self.schedule.alpha_bar(current, x)
            x0 = (x - (1 - alpha_bar_current).sqrt() * epsilon) / alpha_bar_current.sqrt()
            alpha_bar = self.schedule.alpha_bar(timestep, x)
            x = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * epsilon
            current = timestep
        return x


class DDPMSampler(DiffusionSampler):
    """Ancestral sampling (DDPM, Ho et al. 2020), over every training timestep or a strided subset.

    For a subset t_1 > ... > t_S, each step uses the betas of that subset,
    beta'_t = 1 - a_t / a_p, so its posterior is the exact q(x_p | x_t, x_0)
    of the process restricted to the subset (DDPM eq. 6 and 7 with beta').
    """

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, variance_type: str = "fixed_small",
                 **kwargs) -> None:
        super().__init__(schedule, steps or schedule.num_train_timesteps, **kwargs)
        self.variance_type = variance_type

    uses_step_noise = True

    def transition(self, denoiser: Denoiser, x_t: torch.Tensor, timestep: int | torch.Tensor,
                   previous: int | torch.Tensor, noise: torch.Tensor | None = None,
                   conditions: dict[str, torch.Tensor] | None = None,
                   guidance_scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """An ancestral step; the last one (to the clean end) returns the posterior mean, x_0, and ignores ``noise``."""
        x0, _ = self.predict(denoiser, x_t, timestep, conditions, guidance_scale)
        mean, variance = self.posterior(x0, x_t, timestep, previous)
        if noise is None:
            return mean
        # Written as arithmetic rather than an if, so that it also holds for a traced tensor timestep.
        landed = torch.as_tensor(previous, device=x_t.device) < 0
        return mean + torch.where(landed, torch.zeros_like(variance), variance.sqrt()) * noise

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, timestep: int | torch.Tensor,
                  previous: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and variance of q(x_p | x_t, x_0) (DDPM eq. 7), with beta' = 1 - a_t / a_p."""
        alpha_bar = self.schedule.alpha_bar(timestep, x_t)
        alpha_bar_previous = self.schedule.alpha_bar(previous, x_t)
        beta = 1 - alpha_bar / alpha_bar_previous
        mean = (alpha_bar_previous.sqrt() * beta / (1 - alpha_bar)) * x0 \
            + ((1 - beta).sqrt() * (1 - alpha_bar_previous) / (1 - alpha_bar)) * x_t
        variance = beta if self.variance_type == "fixed_large" else beta * (1 - alpha_bar_previous) / (1 - alpha_bar)
        return mean, variance
