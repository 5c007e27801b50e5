"""``dynaray bench VERB``: every benchmark, one module each, on one harness (:mod:`system.bench.harness`).

The benches that run roles through Ray build them with the wiring's sub-graph factories (``system/wiring.py``) from
the system config given as ``dynaray train`` takes it (``[PRESET ...] [key=value ...]``), so they measure the roles a
run has. docs/benchmarks.md holds the measured results and the commands behind them.
"""

from __future__ import annotations

import argparse
import importlib

VERBS: dict[str, str] = {
    "replay": "system.bench.replay",
    "rollout": "system.bench.rollout",
    "sac": "system.bench.sac",
    "imagination": "system.bench.imagination",
    "components": "system.bench.components",
    "planner": "system.bench.planner",
    "cold-replay": "system.bench.cold_replay",
    "sac-to-target": "system.bench.sac_to_target",
    "time-to-target": "system.bench.time_to_target",
    "gateway": "system.bench.gateway",
    "checkpoint": "system.bench.checkpoint",
    "soak": "system.bench.soak",
    "device": "system.bench.device",
    "offline": "system.bench.offline",
    "locomotion": "system.bench.locomotion",
}
"""``dynaray bench`` verb -> the module that defines it (``HELP``, ``DESCRIPTION``, ``add_arguments``, ``run``)."""


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``dynaray bench`` and one sub-verb per entry of :data:`VERBS` to the CLI's verbs."""
    bench = verbs.add_parser("bench", help="measure a component's throughput and latency, or a run's sample "
                             "efficiency")
    components = bench.add_subparsers(dest="component", required=True)
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)
        parser = components.add_parser(verb, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
