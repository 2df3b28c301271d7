"""The guidance scale a user asks for, checked the same way for a run, an export and the torch-free runtime."""

from __future__ import annotations

import math

from .errors import UserError

GUIDANCE_RANGE = (0.0, 100.0)


def check_guidance(guidance: float | None, guided: bool, field: str = "--guidance", file: str | None = None) -> None:
    """Refuse a guidance scale for a model that takes none (``guided`` false), and one outside 0 to 100."""
    if guidance is None:
        return
    if not guided:
        raise UserError("this model takes no guidance scale (only a class-conditional diffusion sampler does)",
                        field=field, given=guidance, file=file, hint="drop --guidance")
    low, high = GUIDANCE_RANGE
    if not (math.isfinite(guidance) and low <= guidance <= high):
        raise UserError(f"the guidance scale is from {low:g} to {high:g}", field=field, given=guidance, file=file,
                        hint="1 is plain conditional sampling, 0 unconditional; 2 to 5 is common")
