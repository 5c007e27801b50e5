"""``dynaray plot``: overlay the learning curves of several runs, to compare presets or seeds.

    dynaray plot RUN_DIR [RUN_DIR ...] [--out PNG]

Two panels: deterministic eval return vs env steps, and vs wall time, one line per run (with the spread over the
eval episodes as a band where known). A run's evaluations come from ``evals.parquet`` (rewritten after every
evaluation); a run without one (made by an older dynaray, which wrote it only at the end) has ``metrics.parquet``
(rewritten every ten reports, less often in a run of days), whose newest eval return per report is used instead.
A directory that is not a run, or that holds neither table, is refused with the missing file named (exit 2); so is
a run with no scored evaluation yet.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

EXIT_BAD_INPUT = 2


class PlotError(ValueError):
    """A directory that is not a run, or a run with nothing to plot."""


@dataclass
class Curve:
    """One run's eval returns (sorted by env steps)."""

    label: str
    env_id: str
    env_steps: list[int] = field(default_factory=list)
    wall_time_s: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float | None] = field(default_factory=list)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def load_curve(path: Path, label: str) -> Curve:
    """The eval curve of run directory ``path``.

    Raises:
        PlotError: ``path`` is not a directory, has no ``config.yaml``, has neither ``evals.parquet`` nor
            ``metrics.parquet``, or holds no scored evaluation.
    """
    import pyarrow.parquet as pq
    import yaml

    if not path.is_dir():
        raise PlotError(f"{str(path)!r} is not a directory")
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise PlotError(f"{str(path)!r} is not a run directory: config.yaml is missing")
    try:
        env_id = str(((yaml.safe_load(config_file.read_text()) or {}).get("env") or {}).get("id", "?"))
    except (yaml.YAMLError, AttributeError) as exc:
        raise PlotError(f"{str(config_file)!r} is not a run's config: {str(exc).splitlines()[0]}") from None
    curve = Curve(label, env_id)
    evals, metrics = path / "evals.parquet", path / "metrics.parquet"
    if evals.is_file():
        rows = pq.read_table(evals).to_pylist()
        points = [(r["env_steps"], r["wall_time_s"], r["return_mean"], r.get("return_std")) for r in rows]
    elif metrics.is_file():
        rows = pq.read_table(metrics).to_pylist()
        first: dict[int, tuple] = {}
        for r in rows:  # a report repeats the newest eval until the next one: keep the first report of each
            if r.get("eval_env_steps") is not None and _finite(r.get("eval_return_mean")):
                point = (r["eval_env_steps"], r["wall_time_s"], r["eval_return_mean"], None)
                first.setdefault(r["eval_env_steps"], point)
        points = list(first.values())
    else:
        raise PlotError(f"{str(path)!r} has no evaluations: evals.parquet is missing (written after each evaluation), "
                        f"and so is metrics.parquet (written while it runs)")
    points = sorted(p for p in points if _finite(p[2]))
    if not points:
        raise PlotError(f"{str(path)!r} has no scored evaluation yet (no policy was evaluated)")
    for steps, wall, mean, std in points:
        curve.env_steps.append(steps)
        curve.wall_time_s.append(wall)
        curve.mean.append(mean)
        curve.std.append(std if _finite(std) else None)
    return curve


def _labels(paths: list[Path]) -> list[str]:
    """Each run's directory name, or the path as given where two runs share a name."""
    names = [p.resolve().name for p in paths]
    return [name if names.count(name) == 1 else str(p) for name, p in zip(names, paths)]


def _time_axis(curves: list[Curve]) -> tuple[float, str]:
    """Divisor and unit for wall time: seconds, minutes or hours, by the longest run."""
    longest = max(max(c.wall_time_s) for c in curves)
    if longest >= 3 * 3600:
        return 3600.0, "h"
    if longest >= 600:
        return 60.0, "min"
    return 1.0, "s"


def plot_runs(curves: list[Curve], out: Path) -> Path:
    """Write the two-panel comparison of ``curves`` to ``out`` (PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = _time_axis(curves)
    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for curve in curves:
        times = [t / scale for t in curve.wall_time_s]
        for ax, xs in ((by_steps, curve.env_steps), (by_time, times)):
            line, = ax.plot(xs, curve.mean, marker="o", markersize=3, label=curve.label)
            band = [(x, m, s) for x, m, s in zip(xs, curve.mean, curve.std) if s is not None]
            if band:
                ax.fill_between([b[0] for b in band], [b[1] - b[2] for b in band], [b[1] + b[2] for b in band],
                                color=line.get_color(), alpha=0.15)
    by_steps.set_xlabel("env steps")
    by_time.set_xlabel(f"wall time ({unit})")
    by_steps.set_ylabel("eval return (deterministic)")
    for ax in (by_steps, by_time):
        ax.grid(alpha=0.3)
    by_steps.legend(fontsize="small")
    envs = sorted({c.env_id for c in curves})
    fig.suptitle(envs[0] if len(envs) == 1 else ", ".join(envs))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.run_dirs]
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        print(f"dynaray: error: --out {args.out!r}: expected a .png file", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        curves = [load_curve(path, label) for path, label in zip(paths, _labels(paths))]
    except PlotError as exc:
        print(f"dynaray: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"dynaray: {len(curves)} run{'s' if len(curves) > 1 else ''} plotted to {plot_runs(curves, out)}")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("plot", help="overlay runs' eval returns vs env steps and vs wall time in one PNG")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories, e.g. runs/debug-seed0 runs/debug-seed1")
    p.add_argument("--out", default="plot.png", help="the PNG to write (default: plot.png)")
    p.set_defaults(func=plot)
