"""Few-step samplers: DPM-Solver++ and UniPC (multistep, data prediction), and Karras et al.'s Euler and Heun.

All four walk the model's own noise schedule (:mod:`.schedule`) in the
notation of the DPM-Solver papers: at timestep t, alpha_t = sqrt(alpha-bar_t),
sigma_t = sqrt(1 - alpha-bar_t), lambda_t = log(alpha_t / sigma_t) (half the
log-SNR), and x_t = alpha_t x_0 + sigma_t epsilon. Each step goes from the
timestep ``timesteps[i]`` to the next one of the sequence, the last to the
clean end (sigma 0). The denoiser's prediction of x_0 (clipped with
``clip_sample``, and guided for a conditional model, as DDIM's) is the "data
prediction" m_i the solvers integrate.

A multistep solver remembers earlier steps' m: it is a stateful stepwise
sampler (:class:`aigc_kit.core.plugin_api.StepwiseSampler`): its ``transition``
also takes ``state`` (tensors shaped like x, zeros before the first step),
``index`` (the step's position) and ``sequence`` (the timesteps and the final
one, as a tensor) and returns the next x and state. Its per-step order (the
warm-up with fewer earlier steps, ``lower_order_final``) is computed from
``index`` and the sequence's length with tensor operations, so that the one
traced transition serves every step of an exported loop and any step count.
Every order's update is computed and the step's order selects one: a few
extra element-wise operations per step, against one network evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .samplers import Denoiser, DiffusionSampler
from .schedule import NoiseSchedule

Conditions = dict[str, torch.Tensor] | None
Guidance = float | torch.Tensor | None


class _Levels:
    """alpha, sigma and lambda at one timestep (a tensor, or an int; -1 is the clean end: alpha 1, sigma 0)."""

    def __init__(self, schedule: NoiseSchedule, timestep: int | torch.Tensor, like: torch.Tensor) -> None:
        alpha_bar = schedule.alpha_bar(timestep, like)
        self.alpha, self.sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        self.lam = torch.log(self.alpha) - torch.log(self.sigma)  # +inf at the clean end


def _finite(value: torch.Tensor) -> torch.Tensor:
    """``value`` where it is finite and nonzero, else 1: for the terms of an order a step does not use.

    Those terms divide by step sizes that are 0 (no earlier step yet) or
    infinite (the step to sigma 0); the order selected never does, but NaN or
    inf in an unused branch would still reach int8 calibration and debuggers.
    """
    # |v| < inf rather than isfinite: also false for NaN, and ONNX's IsInf takes no fp16 before opset 20
    return torch.where((value.abs() < float("inf")) & (value != 0), value, torch.ones_like(value))


def _step_count(sequence: torch.Tensor) -> torch.Tensor:
    """The number of steps of ``sequence`` (its length less the final timestep), as a tensor."""
    return torch.ones_like(sequence).sum() - 1


def _at(sequence: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``sequence[index]``, with an index below 0 read as 0 (the first step has no earlier one)."""
    return sequence[index.clamp(min=0)]


class MultistepSampler(DiffusionSampler):
    """A stepwise sampler that carries ``carried`` tensors shaped like x from one step to the next."""

    carried = 0

    def __init__(self, schedule: NoiseSchedule, steps: int, solver_order: int = 2, lower_order_final: bool = True,
                 **kwargs) -> None:
        super().__init__(schedule, steps, **kwargs)
        self.solver_order = solver_order
        self.lower_order_final = lower_order_final

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, noise: torch.Tensor, generator: torch.Generator | None = None,
               step_noise: torch.Tensor | None = None, conditions: Conditions = None,
               guidance_scale: Guidance = None) -> torch.Tensor:
        x = noise.to(torch.promote_types(noise.dtype, torch.float32))  # float64 stays, half precision rises
        sequence = torch.tensor([*self.timesteps, self.final_timestep], dtype=torch.long)
        state = tuple(torch.zeros_like(x) for _ in range(self.carried))
        for index, timestep in enumerate(self.timesteps):
            x, state = self.transition(denoiser, x, timestep, self.previous(index), None, conditions, guidance_scale,
                                       state=state, index=torch.tensor(index), sequence=sequence)
        return x

    def order(self, index: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """The order of step ``index``: at most one more than the earlier steps; with ``lower_order_final`` no
        more than the steps left; 1 on the step to sigma 0."""
        count = _step_count(sequence)
        order = torch.clamp(index + 1, max=self.solver_order)
        if self.lower_order_final:
            order = torch.minimum(order, count - index)
        return torch.where(_lands_clean(index, sequence), torch.ones_like(order), order)


def _lands_clean(index: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """Whether step ``index`` is the last and lands on the clean end (sigma 0, an infinite step in lambda)."""
    return (index == _step_count(sequence) - 1) & (sequence[-1] < 0)


class DPMSolverPlusPlus(MultistepSampler):
    """DPM-Solver++ multistep (Lu et al. 2022, arXiv:2211.01095), orders 1 to 3, in data prediction.

    With h = lambda_t - lambda_s0 and the data predictions m0, m1, m2 of this
    step and the two before (at s0 > s1 > s2), r0 = (lambda_s0 - lambda_s1) / h:

    - order 1 (DPM-Solver++ 1, which is DDIM): x_t = sigma_t / sigma_s0 x - alpha_t (e^-h - 1) m0;
    - order 2 (Algorithm 2, "2M"): the same with m0 + (m0 - m1) / (2 r0) in place of m0;
    - order 3 ("3M", the third-order multistep of DPM-Solver's Taylor expansion in data prediction):
      D1 and D2 are the first and second divided differences of m over lambda, and
      x_t = sigma_t / sigma_s0 x - alpha_t (e^-h - 1) m0 + alpha_t ((e^-h - 1) / h + 1) D1
      - alpha_t ((e^-h - 1 + h) / h^2 - 1/2) D2.

    The warm-up uses lower orders until there are enough earlier steps; the
    step to sigma 0 is first order (its h is infinite), and with
    ``lower_order_final`` and fewer than 15 steps the one before it is at
    most second order, diffusers' rule, so that results carry over.
    """

    @property
    def carried(self) -> int:  # m of the earlier steps
        return self.solver_order - 1

    def transition(self, denoiser: Denoiser, x_t: torch.Tensor, timestep: int | torch.Tensor,
                   previous: int | torch.Tensor, noise: torch.Tensor | None = None, conditions: Conditions = None,
                   guidance_scale: Guidance = None, *, state: Sequence[torch.Tensor] = (),
                   index: torch.Tensor, sequence: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        m0, _ = self.predict(denoiser, x_t, timestep, conditions, guidance_scale)
        t, s0 = _Levels(self.schedule, previous, x_t), _Levels(self.schedule, timestep, x_t)
        decay = torch.exp(s0.lam - t.lam)  # e^-h: 0 on the step to sigma 0, where h is infinite
        first = (t.sigma / s0.sigma) * x_t - t.alpha * (decay - 1.0) * m0
        if self.solver_order == 1:
            return first, ()
        h = _finite(t.lam - s0.lam)
        s1 = _Levels(self.schedule, _at(sequence, index - 1), x_t)
        r0 = _finite((s0.lam - s1.lam) / h)
        m1 = state[0]
        d1_0 = (m0 - m1) / r0
        second = first - 0.5 * t.alpha * (decay - 1.0) * d1_0
        order = self.order(index, sequence)
        if self.solver_order == 2:
            return torch.where(order == 1, first, second), (m0,)
        s2 = _Levels(self.schedule, _at(sequence, index - 2), x_t)
        r1 = _finite((s1.lam - s2.lam) / h)
        m2 = state[1]
        d1_1 = (m1 - m2) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        third = (first + t.alpha * ((decay - 1.0) / h + 1.0) * d1
                 - t.alpha * ((decay - 1.0 + h) / h**2 - 0.5) * d2)
        x_next = torch.where(order == 1, first, torch.where(order == 2, second, third))
        return x_next, (m0, m1)

    def order(self, index: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """Warm-up orders, order 1 on the last step and, with ``lower_order_final`` and fewer than 15 steps,
        at most 2 on the one before (diffusers' rule, so that its results carry over)."""
        count = _step_count(sequence)
        order = torch.clamp(index + 1, max=self.solver_order)
        if self.lower_order_final:
            second_last = (index == count - 2) & (count < 15)
            order = torch.where(second_last, torch.clamp(order, max=2), order)
        return torch.where(_lands_clean(index, sequence), torch.ones_like(order), order)


def _solve(matrix: list[list[torch.Tensor]], right: list[torch.Tensor]) -> list[torch.Tensor]:
    """The solution of a 1x1 to 3x3 linear system of 0-dim tensors, by Cramer's rule (traceable, no linalg op)."""

    def det(m: list[list[torch.Tensor]]) -> torch.Tensor:
        if len(m) == 1:
            return m[0][0]
        if len(m) == 2:
            return m[0][0] * m[1][1] - m[0][1] * m[1][0]
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))

    whole = _finite(det(matrix))
    solution = []
    for column in range(len(matrix)):
        replaced = [[right[row] if j == column else matrix[row][j] for j in range(len(matrix))]
                    for row in range(len(matrix))]
        solution.append(det(replaced) / whole)
    return solution


class UniPC(MultistepSampler):
    """UniPC multistep (Zhao et al. 2023, arXiv:2302.04867): a UniP predictor and a UniC corrector, data prediction.

    At each step the network's data prediction m_i at x_i first corrects x_i
    (UniC, Algorithm 2: the update that produced x_i from x_{i-1}, redone with m_i
    as one more point; free, as m_i is needed anyway), then UniP of order p
    (Algorithm 3) predicts x_{i+1} from m_i and the p - 1 earlier m. With
    r_k = (lambda_{s_k} - lambda_s0) / h and D_k = (m_k - m0) / r_k:

        x_t = sigma_t / sigma_s0 x - alpha_t (e^-h - 1) m0 - alpha_t B(h) sum_k rho_k D_k

    with B(h) = e^-h - 1 (``bh2``) or -h (``bh1``), and the rho solving
    R rho = b, R[j][k] = r_k^j and b_j = j! phi_{j+1}(-h) h / B(h) (their eq. 8
    and Theorem 3.1; rho = 1/2 for order 2 of the predictor and order 1 of
    the corrector). The corrector of step i has the order of step i - 1's
    predictor. Orders as DPM-Solver++'s: warm-up; with ``lower_order_final``,
    no more than the steps left; the step to sigma 0 is first order.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int, solver_order: int = 2, lower_order_final: bool = True,
                 solver_type: str = "bh2", **kwargs) -> None:
        super().__init__(schedule, steps, solver_order, lower_order_final, **kwargs)
        self.solver_type = solver_type

    @property
    def carried(self) -> int:  # the last x, and m of the solver_order earlier steps
        return self.solver_order + 1

    def transition(self, denoiser: Denoiser, x_t: torch.Tensor, timestep: int | torch.Tensor,
                   previous: int | torch.Tensor, noise: torch.Tensor | None = None, conditions: Conditions = None,
                   guidance_scale: Guidance = None, *, state: Sequence[torch.Tensor] = (),
                   index: torch.Tensor, sequence: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        m = self.predict(denoiser, x_t, timestep, conditions, guidance_scale)[0]
        last, history = state[0], list(state[1:])  # x_{i-1}; m_{i-1}, m_{i-2}, ...
        corrected = self._update(x=last, m0=history[0], earlier=history[1:], start=index - 1, sequence=sequence,
                                 order=self.order(index - 1, sequence), new=m, like=x_t)
        x_t = torch.where(index > 0, corrected, x_t)
        x_next = self._update(x=x_t, m0=m, earlier=history, start=index, sequence=sequence,
                              order=self.order(index, sequence), new=None, like=x_t)
        return x_next, (x_t, m, *history[:-1])

    def _update(self, x: torch.Tensor, m0: torch.Tensor, earlier: Sequence[torch.Tensor], start: torch.Tensor,
                sequence: torch.Tensor, order: torch.Tensor, new: torch.Tensor | None,
                like: torch.Tensor) -> torch.Tensor:
        """UniP from ``sequence[start]`` to the next timestep (``new`` None), or UniC with the new point ``new``.

        ``earlier`` are the data predictions before ``m0``, latest first; every order up to the solver's is
        computed and ``order`` selects one.
        """
        s0 = _Levels(self.schedule, _at(sequence, start), like)
        t = _Levels(self.schedule, sequence[start.clamp(min=0) + 1], like)
        h_true = t.lam - s0.lam
        phi_1 = torch.expm1(-h_true)  # e^-h - 1: -1 on the step to sigma 0
        h = _finite(h_true)
        b_of_h = phi_1 if self.solver_type == "bh2" else -h  # B(h); finite on the step to sigma 0 too
        base = (t.sigma / s0.sigma) * x - t.alpha * phi_1 * m0
        ratios, differences = [], []
        for k, m in enumerate(earlier[:self.solver_order - 1], start=1):
            sk = _Levels(self.schedule, _at(sequence, start - k), like)
            ratio = _finite((sk.lam - s0.lam) / h)
            ratios.append(ratio)
            differences.append((m - m0) / ratio)
        b = self._b(h, torch.expm1(-h) if self.solver_type == "bh2" else -h)
        candidates = {}
        for p in range(1, self.solver_order + 1):
            if new is None:  # UniP-p: p - 1 earlier points
                if p == 1:
                    residual = torch.zeros_like(x)
                elif p == 2:
                    residual = 0.5 * differences[0]
                else:
                    rows = [[ratio**j for ratio in ratios[:p - 1]] for j in range(p - 1)]
                    rho = _solve(rows, b[:p - 1])
                    residual = sum(r * d for r, d in zip(rho, differences[:p - 1], strict=True))
            else:  # UniC-p: p - 1 earlier points and the new one (ratio 1)
                new_difference = new - m0
                if p == 1:
                    residual = 0.5 * new_difference
                else:
                    points = [*ratios[:p - 1], torch.ones_like(h)]
                    rows = [[point**j for point in points] for j in range(p)]
                    rho = _solve(rows, b[:p])
                    residual = sum(r * d for r, d in zip(rho[:-1], differences[:p - 1], strict=True)) \
                        + rho[-1] * new_difference
            candidates[p] = base - t.alpha * b_of_h * residual
        result = candidates[self.solver_order]
        for p in range(self.solver_order - 1, 0, -1):
            result = torch.where(order == p, candidates[p], result)
        return result

    @staticmethod
    def _b(h: torch.Tensor, b_of_h: torch.Tensor) -> list[torch.Tensor]:
        """b_j = j! phi_{j+1}(-h)-style terms over B(h), j = 1..3, from the recursion phi_{k+1} = (phi_k - 1/k!) / hh.

        With hh = -h: h phi_1 = e^hh - 1, and each next term divides the last by hh and subtracts 1 / k!
        (diffusers' ``h_phi_k``, in the same order, so that rounding agrees).
        """
        hh = -h
        term = torch.expm1(hh) / hh - 1.0
        factorial, values = 1.0, []
        for j in range(1, 4):
            values.append(term * factorial / b_of_h)
            factorial *= j + 1
            term = term / hh - 1.0 / factorial
        return values


class EulerSampler(DiffusionSampler):
    """Karras et al. 2022's Euler step (their Algorithm 1 with first order and no churn) on the probability-flow ODE.

    In their variance-exploding form, x~ = x / alpha_t has noise level
    sigma~_t = sigma_t / alpha_t, and dx~/dsigma~ = (x~ - D(x~, sigma~)) / sigma~
    with D the denoiser's data prediction. One step from sigma~ to sigma~':
    x~' = x~ + (sigma~' - sigma~) (x~ - D) / sigma~. Since x~ = D + sigma~ eps
    (eps the noise D implies), x~' = D + sigma~' eps, and x' = alpha' x~' =
    alpha' D + sigma' eps: written so, nothing is divided by alpha_t, which is
    5e-5 at the cosine schedule's last timestep (x~ there is 20,000 times x,
    and float32 would lose three digits). This is deterministic DDIM on the
    same timesteps, which a test checks.
    """

    def transition(self, denoiser: Denoiser, x_t: torch.Tensor, timestep: int | torch.Tensor,
                   previous: int | torch.Tensor, noise: torch.Tensor | None = None, conditions: Conditions = None,
                   guidance_scale: Guidance = None) -> torch.Tensor:
        t = _Levels(self.schedule, previous, x_t)
        data, epsilon = self.predict(denoiser, x_t, timestep, conditions, guidance_scale)
        return t.alpha * data + t.sigma * epsilon


class HeunSampler(DiffusionSampler):
    """Karras et al. 2022's Heun sampler (Algorithm 1, deterministic: no churn): second order, two evaluations a step.

    The Euler step to sigma~' (see :class:`EulerSampler`), x~e = D + sigma~' eps,
    then the slope at its end, eps2 (the noise the denoiser implies at x~e),
    and the step again with the mean of the two slopes:
    x~' = x~ + (sigma~' - sigma~) (eps + eps2) / 2 = D + sigma~' (eps + eps2) / 2
    + sigma~ (eps - eps2) / 2, so x' = alpha' D + sigma' (eps + eps2) / 2 +
    alpha' sigma~ (eps - eps2) / 2 (no division by alpha_t; see Euler). The last
    term is the trapezoid's correction: it grows with sigma~ / sigma~', which
    is why ``sigma_max`` matters for schedules that end at a huge sigma~. The
    step to sigma 0 stays Euler (the slope there is undefined), so S steps
    cost 2 S - 1 evaluations; a traced transition evaluates the network on that
    step too and discards it (tensor operations cannot skip it), so an
    exported graph costs 2 S.
    """

    def transition(self, denoiser: Denoiser, x_t: torch.Tensor, timestep: int | torch.Tensor,
                   previous: int | torch.Tensor, noise: torch.Tensor | None = None, conditions: Conditions = None,
                   guidance_scale: Guidance = None) -> torch.Tensor:
        s, t = _Levels(self.schedule, timestep, x_t), _Levels(self.schedule, previous, x_t)
        data, epsilon = self.predict(denoiser, x_t, timestep, conditions, guidance_scale)
        euler = t.alpha * data + t.sigma * epsilon
        if isinstance(previous, int) and previous < 0:  # eager, the step to sigma 0: Euler, no second evaluation
            return euler
        # At the clean end the second slope is undefined (its timestep is -1): torch.where keeps Euler's result.
        second = self.predict(denoiser, euler, previous, conditions, guidance_scale)[1]
        level = s.sigma / s.alpha
        heun = t.alpha * data + t.sigma * 0.5 * (epsilon + second) + t.alpha * level * 0.5 * (epsilon - second)
        landed = torch.as_tensor(previous, device=x_t.device) < 0
        return torch.where(landed, euler, heun)
