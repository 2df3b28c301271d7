"""``aigc-kit report RUN_DIR``: one self-contained HTML page about a run, with its figures beside it.

The page holds the loss curves of each phase, the metric curves, the sample grids
over time, the resolved config and the environment the run trained in. Every
picture is embedded (base64), so the page can be mailed or archived alone; the
figures are also written as PNG files in ``RUN_DIR/report/``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from . import safe_yaml
from .errors import UserError
from .files import write_text
from .rundir import check_output_file

MAX_GRIDS = 12
STYLE = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}"
         "img{max-width:100%;image-rendering:pixelated}figure{display:inline-block;margin:0 1em 1em 0;"
         "text-align:center}figure img{width:256px}pre{background:#f5f5f5;padding:1em;overflow:auto}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
         "th{background:#f0f0f0}")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` (default ``RUN_DIR/report/report.html``) and its PNG figures; return the page's path."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError("not a run directory (no config.yaml)", file=str(run_dir), hint="pass runs/NAME")
    try:
        config = safe_yaml.read(config_path) or {}
    except UserError as error:  # a report of what can be read is still worth having
        warnings.warn(f"the run's config cannot be read ({error}); the report shows the rest", stacklevel=2)
        config = {"unreadable": str(error)}
    if not isinstance(config, dict):
        config = {"unreadable": f"{config_path}: expected a mapping, found {type(config).__name__}"}
    records = _records(run_dir / "metrics.jsonl")
    page = Path(out) if out is not None else run_dir / "report" / "report.html"
    check_output_file(page, "--out")
    folder = page.parent
    folder.mkdir(parents=True, exist_ok=True)

    metric_names = [metric.get("name") for metric in config.get("train", {}).get("eval", {}).get("metrics", [])]
    training = [record for record in records if "steps_per_second" in record]
    evaluations = [record for record in records if "steps_per_second" not in record]
    figures: list[tuple[str, Path]] = []
    losses = _plot_groups(training, _phase_groups(training), folder / "losses.png")
    if losses:
        figures.append(("Losses per phase", losses))
    speed = _plot_groups(training, {"steps per second": ["steps_per_second"]}, folder / "speed.png")
    if speed:
        figures.append(("Steps per second", speed))
    metric_groups = {name: sorted({key for record in evaluations for key in record if key.startswith(f"{name}/")})
                     for name in metric_names}
    metrics = _plot_groups(evaluations, {k: v for k, v in metric_groups.items() if v}, folder / "metrics.png")
    if metrics:
        figures.append(("Metrics", metrics))

    environment_path = run_dir / "environment.json"
    environment = None
    if environment_path.is_file():
        try:
            environment = json.loads(environment_path.read_text(encoding="utf-8", errors="replace"))
        except json.JSONDecodeError as exc:
            warnings.warn(f"{environment_path} is not JSON ({exc}); the report shows the rest", stacklevel=2)
            environment = {"unreadable": f"{environment_path}: {exc}"}
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    write_text(page, _html(run_dir, config, environment, figures, _spread(grids, MAX_GRIDS), evaluations))
    return page


def _records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records: JSON objects with an integer step (a line cut short by a crash, or anything
    else, is left out with a warning: the rest is still worth showing)."""
    if not path.is_file():
        return []
    records, skipped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
        elif line.strip():
            skipped += 1
    if skipped:
        warnings.warn(f"{skipped} line(s) of {path} are not metrics records (a JSON object with an integer step); "
                      "the report leaves them out", stacklevel=3)
    return records


def _phase_groups(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Logged keys by their prefix (a loss phase: ``discriminator/loss`` -> ``discriminator``)."""
    groups: dict[str, list[str]] = {}
    for key in sorted({key for record in records for key in record if "/" in key}):
        groups.setdefault(key.split("/")[0], []).append(key)
    return groups


def _plot_groups(records: list[dict[str, Any]], groups: dict[str, list[str]], path: Path) -> Path | None:
    """One panel per group, one line per key against the step; None when there is nothing to plot."""
    if not records or not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for axis, (group, keys) in zip(axes.flat, groups.items(), strict=False):
        for key in keys:
            points = [(record["step"], record[key]) for record in records
                      if isinstance(record.get(key), int | float) and math.isfinite(record[key])]
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(steps, values, label=_plain(key.removeprefix(f"{group}/")),
                          marker="." if len(points) < 30 else None)
        axis.set_title(_plain(group))
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if len(keys) > 1:
            axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(groups):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plain(text: str) -> str:
    """``text`` as matplotlib should print it: literally (a ``$`` would start mathematical notation)."""
    return text.replace("$", r"\$")


def _spread(items: list[Path], count: int) -> list[Path]:
    """At most ``count`` of ``items``, evenly spaced, the first and last included."""
    if len(items) <= count:
        return items
    return [items[round(index * (len(items) - 1) / (count - 1))] for index in range(count)]


def _embedded(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html(run_dir: Path, config: dict[str, Any], environment: dict[str, Any] | None,
          figures: list[tuple[str, Path]], grids: list[Path], evaluations: list[dict[str, Any]]) -> str:
    escape = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>aigc-kit run report: {escape(run_dir.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Run <code>{escape(run_dir.name)}</code></h1>",
        f"<p>{escape(_summary(config))}</p>",
    ]
    if figures:
        parts.append("<h2>Curves</h2>")
        parts += [f'<h3>{escape(title)}</h3><img id="{path.stem}" alt="{escape(title)}" src="{_embedded(path)}">'
                  for title, path in figures]
    else:
        parts.append("<p>No training logs yet (metrics.jsonl is empty or missing).</p>")
    if evaluations:
        keys = sorted({key for record in evaluations for key in record if key != "step"})
        parts.append("<h2>Evaluations</h2><table><tr><th>step</th>"
                     + "".join(f"<th>{escape(key)}</th>" for key in keys) + "</tr>")
        for record in evaluations:
            cells = "".join(f"<td>{record[key]:.4g}</td>" if isinstance(record.get(key), int | float) else "<td></td>"
                            for key in keys)
            parts.append(f"<tr><td>{record['step']}</td>{cells}</tr>")  # an int: _records keeps no other
        parts.append("</table>")
    parts.append("<h2>Samples over training</h2>")
    if grids:
        parts += [f'<figure><img class="grid" alt="{escape(path.stem)}" src="{_embedded(path)}">'
                  f"<figcaption>{escape(path.stem)}</figcaption></figure>" for path in grids]
    else:
        parts.append("<p>No sample grids yet.</p>")
    parts.append("<h2>Environment</h2>")
    parts.append(f"<pre>{escape(json.dumps(environment, indent=2))}</pre>" if environment is not None
                 else "<p>Not recorded (runs record environment.json when they start).</p>")
    parts += ["<h2>Config</h2>", f"<pre>{escape(yaml.safe_dump(config, sort_keys=False))}</pre>",
              "</body></html>"]
    return "\n".join(parts) + "\n"


def _summary(config: dict[str, Any]) -> str:
    def name(section: str) -> str:
        return str((config.get(section) or {}).get("name", "?"))

    steps = (config.get("train") or {}).get("steps", "?")
    return (f"data {name('data')}, model {name('model')}, loss {name('loss')}, sampler {name('sampler')}; "
            f"{steps} steps")
