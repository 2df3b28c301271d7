"""Every sampler on one trained UNet: FID (and class agreement, for a conditional run) against network evaluations.

Samples a finished run (``--run``) with DDIM, DPM-Solver++ 2M and 3M, UniPC-2
and -3, Euler and Heun at about 5, 10, 20 and 50 network evaluations each (Heun
also at 25 and 35: its S steps cost 2 S - 1; DPM-Solver++ 2M, UniPC and Heun
also on Karras noise levels, and from sigma 80 down), and with DDPM at 1000, all from the same
noise (and labels), through ``aigc_kit.core.evaluation.evaluate_run`` with the
project's own ``fid`` metric (the built-in shapes features) and, for a
conditional run, ``class-agreement``. Prints one row per sampler and budget with
its ratio to DDIM at 50 evaluations, and the issue's two targets.

    python benchmarks/sampler_quality.py --run runs/ddim-shapes [--samples 1000] [--threads 2] [--no-ddpm]
        [--only "sigma_max"]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

BUDGETS = (5, 10, 20, 50)
HEUN_EXTRA = (25, 35)


def configurations(budgets: tuple[int, ...], ddpm: bool) -> list[tuple[str, int, dict]]:
    """(label, network evaluations, sampler request) for each sampler and budget."""
    rows = []
    for budget in budgets:
        rows += [
            ("DDIM", budget, {"name": "ddim", "steps": budget, "eta": 0.0}),
            ("DPM-Solver++ 2M", budget, {"name": "dpm-solver++", "steps": budget, "solver_order": 2}),
            ("DPM-Solver++ 3M", budget, {"name": "dpm-solver++", "steps": budget, "solver_order": 3}),
            ("UniPC-2 (bh2)", budget, {"name": "unipc", "steps": budget, "solver_order": 2}),
            ("UniPC-3 (bh2)", budget, {"name": "unipc", "steps": budget, "solver_order": 3}),
            ("Euler", budget, {"name": "euler", "steps": budget}),
            ("DPM-Solver++ 2M, Karras", budget, {"name": "dpm-solver++", "steps": budget, "use_karras_sigmas": True}),
            ("DPM-Solver++ 2M, Karras, sigma_max 80", budget,
             {"name": "dpm-solver++", "steps": budget, "use_karras_sigmas": True, "sigma_max": 80.0}),
            ("UniPC-2, Karras, sigma_max 80", budget,
             {"name": "unipc", "steps": budget, "use_karras_sigmas": True, "sigma_max": 80.0}),
            ("DPM-Solver++ 3M, Karras, sigma_max 80", budget,
             {"name": "dpm-solver++", "steps": budget, "solver_order": 3, "use_karras_sigmas": True,
              "sigma_max": 80.0}),
            ("UniPC-3, Karras, sigma_max 80", budget,
             {"name": "unipc", "steps": budget, "solver_order": 3, "use_karras_sigmas": True, "sigma_max": 80.0}),
        ]
    for budget in sorted({*budgets, *HEUN_EXTRA}):
        steps = (budget + 1) // 2
        rows.append(("Heun", 2 * steps - 1, {"name": "heun", "steps": steps}))
        rows.append(("Heun, Karras", 2 * steps - 1, {"name": "heun", "steps": steps, "use_karras_sigmas": True}))
        rows.append(("Heun, sigma_max 80", 2 * steps - 1, {"name": "heun", "steps": steps, "sigma_max": 80.0}))
        rows.append(("Heun, Karras, sigma_max 80", 2 * steps - 1,
                     {"name": "heun", "steps": steps, "use_karras_sigmas": True, "sigma_max": 80.0}))
    if ddpm:
        rows.append(("DDPM", 1000, {"name": "ddpm", "steps": None}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="A finished diffusion run directory.")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--no-ddpm", action="store_true", help="Skip DDPM at 1000 steps (two thirds of the time).")
    parser.add_argument("--only", help="Only the samplers whose label contains one of these ('|' between them), "
                                       "and DDIM at 50, the reference.")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)

    from aigc_kit.core.evaluation import evaluate_run
    from aigc_kit.core.registry import default_registry
    from aigc_kit.core.trained import load_trained

    registry = default_registry()
    conditional = bool(load_trained(arguments.run, registry).components.model.conditions)
    metrics = [("fid", {"real_samples": 5000})] + ([("class-agreement", {})] if conditional else [])
    budgets = tuple(int(part) for part in arguments.budgets.split(","))
    rows = []
    chosen = [(label, evaluations, request) for label, evaluations, request in configurations(budgets, not arguments.no_ddpm)
              if not arguments.only or any(part in label for part in arguments.only.split("|"))
              or (label == "DDIM" and evaluations == 50)]
    if not any(label == "DDIM" and evaluations == 50 for label, evaluations, _ in chosen):  # the reference, always
        chosen.append(("DDIM", 50, {"name": "ddim", "steps": 50, "eta": 0.0}))
    for label, evaluations, request in chosen:
        started = time.perf_counter()
        report = evaluate_run(arguments.run, registry, metrics, arguments.samples, seed=0, sampler=request)
        values = report["values"]
        row = {"sampler": label, "evaluations": evaluations, "fid": values["fid/fid"],
               "agreement": values.get("class-agreement/agreement"), "seconds": time.perf_counter() - started,
               "request": request}
        rows.append(row)
        shown = f"  agreement {row['agreement']:.4f}" if row["agreement"] is not None else ""
        print(f"{label:<18} {evaluations:>5} evaluations  FID {row['fid']:8.3f}{shown}  ({row['seconds']:.0f} s)",
              flush=True)

    reference = next((row["fid"] for row in rows if row["sampler"] == "DDIM" and row["evaluations"] == 50), None)
    print()
    print("| sampler | network evaluations | FID | / DDIM 50 |" + (" class agreement |" if conditional else "")
          + " seconds |")
    print("|---|---:|---:|---:|" + ("---:|" if conditional else "") + "---:|")
    for row in sorted(rows, key=lambda row: (row["sampler"], row["evaluations"])):
        ratio = f"{row['fid'] / reference:.2f}" if reference else ""
        agreement = f" {row['agreement']:.4f} |" if conditional else ""
        print(f"| {row['sampler']} | {row['evaluations']} | {row['fid']:.3f} | {ratio} |{agreement} "
              f"{row['seconds']:.0f} |")
    if reference:
        few = [row for row in rows if row["evaluations"] == 10 and row["sampler"].startswith(("DPM", "UniPC"))]
        best = min(few, key=lambda row: row["fid"]) if few else None
        heun = [row for row in rows if row["sampler"].startswith("Heun") and 19 <= row["evaluations"] <= 35]
        print()
        if best:
            print(f"target: DPM-Solver++ or UniPC at 10 evaluations within 5% of DDIM at 50: best {best['sampler']} "
                  f"{best['fid']:.3f} = {best['fid'] / reference:.3f} x DDIM 50 -> "
                  f"{'met' if best['fid'] <= 1.05 * reference else 'not met'}")
        if heun:
            good = min(heun, key=lambda row: row["fid"])
            print(f"target: Heun at 20-35 evaluations at least as good as DDIM at 50: best {good['sampler']}, "
                  f"{good['evaluations']} "
                  f"evaluations {good['fid']:.3f} = {good['fid'] / reference:.3f} x -> "
                  f"{'met' if good['fid'] <= reference else 'not met'}")
    if arguments.json:
        arguments.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
