"""The system config: one frozen dataclass per component, YAML presets merged in order, ``key=value`` overrides.

Usage::

    config = load_config(["debug"], ["policy.batch_size=64", "seed=3"])
    config.policy        # PolicyConfig: the only section the policy learner receives

The dataclasses hold every default (``load_config([]) == SystemConfig()``); a preset (``system/presets/NAME.yaml``)
only overlays the keys it names. Each field declares its constraint once, as ``metadata`` (see "field checks"
below), and :func:`_build` checks every field of every section when a config is loaded; cross-field rules are the
dataclasses' ``__post_init__``. Every error is one line naming the key, the value and what is allowed
(``ConfigError``: ``section.key=value: expected ...``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import types
import typing
from collections import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from actors.config import EvalConfig, GatewayConfig, ImaginationConfig, RolloutConfig
from actors.envs import EnvConfig
from learners.config import PolicyConfig, WorldModelConfig
from replay.config import ReplayConfig
from system.offline import OfflineConfig, offline_problem

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A config key, value or preset that is not allowed."""


@dataclass(frozen=True)
class RunConfig:
    total_env_steps: int = field(default=10_000, metadata={"check": ">= 1"})
    """Stop after this many real env steps (all rollout workers together)."""
    max_wall_s: float | None = field(default=None, metadata={"check": "> 0"})
    """Stop handing out env steps once the run has lasted this many wall seconds, then end as at the env-step budget
    (a last eval at the steps reached); null: no wall-clock limit."""
    target_return: float | None = 950.0
    """Stop early once an evaluation's mean return reaches this; null to always use the whole budget."""
    runs_dir: str = "runs"
    """Where run directories are made (runs_dir/<name>/)."""
    upload_to: str = ""
    """A pyarrow filesystem URI (s3://bucket/runs, gs://..., hdfs://..., file:///shared/runs) the finished run
    directory is copied to as <upload_to>/<name>/ (replay data too); empty: keep it only under runs_dir."""
    report_interval_s: float = field(default=2.0, metadata={"check": "> 0"})
    """Seconds between progress reports and metrics-table rows."""
    progress: bool = True
    """Show the live progress line."""
    metrics: bool = True
    """Export every role's metrics to Prometheus through ray.util.metrics (docs/architecture.md, Metrics)."""
    torch_threads: int = field(default=1, metadata={"check": ">= 1"})
    """torch intra-op threads per actor (keep 1 when actors share a few cores)."""
    startup_timeout_s: float = field(default=180.0, metadata={"check": "> 0"})
    """How long every role may take to start before the run stops with an error."""
    checkpoint_every_s: float = field(default=300.0, metadata={"check": ">= 0", "note": "0: only at the end"})
    """Seconds between whole-system checkpoints into runs/<name>/checkpoint/ (one is also written when the run
    ends or is interrupted); `dynaray train --resume RUN_DIR` continues from the newest (docs/durability.md)."""
    init_from: str = ""
    """An offline run (``dynaray train offline ...``) this online run continues from (``--init RUN_DIR``, the
    ``offline_to_online`` preset): its learners' checkpointed states (policy and world model: networks, optimizers,
    counters) and its dataset in ``real`` beside the new env steps (docs/offline.md); empty: start fresh."""
    keep_checkpoints: int = field(default=0, metadata={"check": ">= 0", "note": "0: off"})
    """Keep the policy of the newest this many checkpoints (periodic and final) in runs/<name>/checkpoints/<env steps,
    10 digits>/ (actor.pt and meta.json; an offline run's are keyed by policy updates), the oldest deleted; 0: keep
    none. `dynaray eval` evaluates and ranks them (docs/durability.md)."""
    store_max_restarts: int = field(default=10, metadata={"check": ">= -1", "note": "-1: no limit"})
    """How often Ray restarts the weights store when its process dies (a restarted store is empty until the
    learners publish again, within a few seconds)."""
    control_max_restarts: int = field(default=10, metadata={"check": ">= -1", "note": "-1: no limit"})
    """How often Ray restarts the control actor (``dynaray scale``, ``dynaray status``) when its process dies."""
    restart_limit: int = field(default=5, metadata={"check": ">= 1"})
    """A role restarted this many times within ``run.restart_window_s`` keeps dying: the run writes a checkpoint
    and stops with one line naming the role and its last error."""
    restart_window_s: float = field(default=600.0, metadata={"check": "> 0"})
    """The window of ``run.restart_limit``, in seconds."""
    stall_timeout_s: float = field(default=120.0, metadata={"check": "> 0"})
    """A role (or worker) that makes no progress for this many seconds while it has work is reported as stalled
    (progress display, ``dynaray status``, metrics); the run's own stop rules still end the run."""


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    """An existing cluster to join (also RAY_ADDRESS); null starts an embedded local Ray."""
    num_cpus: int | None = field(default=None, metadata={"check": ">= 1"})
    """Logical CPUs of the embedded local Ray; null: enough for every role, at least the machine's cores."""
    include_dashboard: bool = False
    """Start the Ray dashboard with the embedded local Ray."""
    object_store_memory_mb: int | None = field(default=None, metadata={"check": ">= 1"})
    """Object store size of the embedded local Ray; null lets Ray choose."""
    malloc_arena_max: int = field(default=2, metadata={"check": ">= 0", "note": "0: glibc's default"})
    """glibc malloc arenas per process of the run (MALLOC_ARENA_MAX; glibc's default is 8 per core), so that memory
    freed by one of many threads is not kept in an arena of its own (system/heap.py; 0: glibc's default)."""
    heap_trim_every_s: float = field(default=60.0, metadata={"check": ">= 0", "note": "0: never"})
    """Seconds between the hand-backs of every process's free heap pages (glibc's malloc_trim; 0: never)."""
    task_events_max: int = field(default=2_000, metadata={"check": ">= 0"})
    """Task attempts whose events the embedded local Ray's GCS keeps (Ray's task_events_max_num_task_in_gcs,
    100,000 by default, some hundreds of MB; about 3.6 KB each here): the newest are what the dashboard and the state
    API list, the last 6-7 minutes of the roles' long calls at the debug preset's rates. A cluster's head sets its
    own (RAY_task_events_max_num_task_in_gcs; docs/architecture.md, Metrics and observability)."""


@dataclass(frozen=True)
class RoleResources:
    """The Ray resources one actor of a role asks for (where it can run), and how often Ray restarts it."""

    num_cpus: float = field(default=1.0, metadata={"check": ">= 0"})
    """Logical CPUs."""
    num_gpus: float = field(default=0.0, metadata={"check": ">= 0"})
    """GPUs; a learner given a GPU trains on CUDA (device 'auto'), on CPU otherwise, with no code change."""
    memory_mb: int = field(default=0, metadata={"check": ">= 0", "note": "0: none reserved"})
    """Memory Ray reserves for the actor (0: none reserved)."""
    resources: Mapping[str, float] = field(default_factory=dict, metadata={"check": ">= 0"})
    """Custom resources, e.g. {learner_gpu: 1} to land on nodes that advertise them."""
    max_restarts: int = field(default=10, metadata={"check": ">= -1", "note": "-1: no limit"})
    """How often Ray restarts the actor when its process dies (the driver sends it its work again)."""

    def ray_options(self) -> dict[str, Any]:
        """The resource part of ``actor.options(...)``, and ``max_restarts``."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                   "resources": dict(self.resources), "max_restarts": self.max_restarts}
        if self.memory_mb:
            options["memory"] = self.memory_mb * 1024 * 1024
        return options


@dataclass(frozen=True)
class PlacementConfig:
    """Where the learners and replay shards run on a cluster (rollout, imagination, eval and gateway workers have
    their resources in their own sections)."""

    policy: RoleResources = field(default_factory=RoleResources)
    """The policy learner actor."""
    world_model: RoleResources = field(default_factory=RoleResources)
    """The world-model learner actor."""
    replay_resources: Mapping[str, float] = field(default_factory=dict, metadata={"check": ">= 0"})
    """Custom resources per replay shard (besides replay.num_cpus), e.g. {replay_node: 1}."""
    replay_strategy: str = field(default="SPREAD", metadata={"check": ("SPREAD", "DEFAULT")})
    """Ray scheduling strategy of the replay shards: SPREAD (over the nodes that fit) or DEFAULT."""
    timeout_s: float = field(default=120.0, metadata={"check": "> 0"})
    """How long the driver waits for every actor to be placed before it names the roles that cannot be and why."""


@dataclass(frozen=True)
class SystemConfig:
    """Every default of a run lives in these dataclasses (a preset only overlays some keys); they carry the settings
    measured best on the default env, InvertedPendulum-v5 (docs/benchmarks.md)."""

    name: str = ""
    """Run name (runs_dir/<name>/); empty: <env id>-<timestamp>."""
    seed: int = 0
    """Base seed: env resets, network initialisation and sampling of every role derive from it."""
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    imagination: ImaginationConfig = field(default_factory=ImaginationConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    """Offline mode: train from a dataset with no rollout workers (system/offline.py, docs/offline.md)."""

    def __post_init__(self) -> None:
        problem = offline_problem(self)
        if problem:
            raise ValueError(problem)
        if self.eval.in_model and not self.world_model.enabled:
            raise ValueError("eval.in_model=true: expected world_model.enabled=true (policies are scored in the "
                             "learned world model), got world_model.enabled=false")
        if self.rollout.planner.enabled and not self.world_model.enabled:
            raise ValueError("rollout.planner.enabled=True: expected world_model.enabled=true (the planner scores "
                             "its candidates with the learned world model), got world_model.enabled=false")
        # Inserts of more rows than this can never pass a shard's rate limiter (replay/rate_limiter.py).
        max_rows = self.replay.max_insert_rows()
        limit = (f"2 * replay.error_buffer_steps / replay.num_shards = 2 * {self.replay.error_buffer_steps} / "
                 f"{self.replay.num_shards} = {max_rows} rows per insert")
        chunk_rows = self.rollout.chunk_length * self.rollout.envs_per_worker
        if chunk_rows > max_rows:
            need = -(-chunk_rows * self.replay.num_shards // 2)
            raise ValueError(f"rollout.chunk_length={self.rollout.chunk_length}: expected chunk_length * "
                             f"rollout.envs_per_worker ({chunk_rows} rows per chunk) <= {limit} (no chunk could "
                             f"ever be stored); lower rollout.chunk_length or raise replay.error_buffer_steps to "
                             f">= {need}")
        if self.gateway.enabled and self.gateway.insert_chunk_rows > max_rows:
            raise ValueError(f"gateway.insert_chunk_rows={self.gateway.insert_chunk_rows}: expected <= {limit} "
                             f"(every upload would fail)")
        if self.policy.prioritized and self.replay.real_disk_capacity > 0:
            raise ValueError("policy.prioritized=true: expected replay.real_disk_capacity=0 (rows of the cold tier on "
                             "disk keep no priorities), got "
                             f"replay.real_disk_capacity={self.replay.real_disk_capacity}")

    @property
    def imagination_enabled(self) -> bool:
        """Dyna on: a world model is learned and imagination workers feed the ``imagined`` table."""
        return self.world_model.enabled and self.imagination.num_workers > 0


# ---------------------------------------------------------------------------------------------------------------
# dict <-> dataclass


def _describe(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce_scalar(value: Any, tp: type, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{key}={value!r}: expected {tp.__name__}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r}: expected {_describe(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list of {_describe(args[0])}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (abc.Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return {k: _coerce(v, args[1], f"{key}.{k}") if args else v for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    return _coerce_scalar(value, tp, key)


def _build(cls: type, values: Any, prefix: str) -> Any:
    """``cls`` from ``values`` (a mapping of some of its fields): each value coerced to its field's type, every field
    (given or default, nested sections too) checked against its declared constraint, then the class's own
    cross-field rules (``__post_init__``)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}={values!r}: expected a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            path = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown config key {path!r}{_suggest(path)}")
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], path)
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], {}, path)
        else:
            kwargs[name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        _check(f, hints[name], kwargs[name], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------------------
# field checks: each field declares its constraint once, as ``metadata``, and _check reads it for every section
#
#   "check":    ">= 1", "> 0", "<= N", "< N", "in [a, b]" (either end open: "in (0, 1]"), applied to a number, to
#               each item of a list or to each value of a mapping; a tuple of allowed values; or a function
#               value -> what was expected (None when the value is fine)
#   "inf":      True: a float field may be inf (every float key refuses NaN, and inf unless this is set)
#   "nonempty": True: a list field needs at least one item
#   "note":     shown after the expectation, in parentheses ("-1: no limit")
#   "secret":   True: the value is never shown (its length is)

_COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_NUMBER = r"-?(?:\d+\.?\d*(?:e[+-]?\d+)?|inf)"
_COMPARISON = re.compile(rf"(>=|>|<=|<) ({_NUMBER})")
_INTERVAL = re.compile(rf"in ([\[(])({_NUMBER}), ({_NUMBER})([\])])")


def _within(x: float, spec: str) -> bool:
    if match := _COMPARISON.fullmatch(spec):
        return _COMPARISONS[match[1]](x, float(match[2]))
    if match := _INTERVAL.fullmatch(spec):
        low = x > float(match[2]) if match[1] == "(" else x >= float(match[2])
        high = x < float(match[3]) if match[4] == ")" else x <= float(match[3])
        return low and high
    raise TypeError(f"metadata check {spec!r}: expected '>= N', '> N', '<= N', '< N' or 'in [a, b]'")


def _item_ok(x: Any, tp: Any, check: Any, meta: Mapping) -> bool:
    if tp is float and (math.isnan(x) or (math.isinf(x) and not meta.get("inf"))):
        return False
    if isinstance(check, str):
        return _within(x, check)
    if isinstance(check, tuple):
        return x in check
    return True


def _expectation(tp: Any, check: Any, meta: Mapping, many: str) -> str:
    """E.g. "an integer >= 1", "a list of numbers in [0, 10]", "'sync' or 'async'"."""
    if isinstance(check, tuple):
        shown = [repr(c) for c in check]
        return " or ".join(shown) if len(shown) == 2 else f"one of {', '.join(shown)}"
    if tp is int:
        kind = ("an integer", "integers")
    elif meta.get("inf") or (isinstance(check, str) and check.startswith("in ")):
        kind = ("a number", "numbers")
    else:
        kind = ("a finite number", "finite numbers")
    text = kind[0] if not many else f"{many}{kind[1]}"
    return f"{text} {check}" if isinstance(check, str) else text


def _problem(tp: Any, value: Any, meta: Mapping) -> str | None:
    """What a field of type ``tp`` declared with ``meta`` expected, when ``value`` is not that; else None."""
    check = meta.get("check")
    if callable(check):
        return check(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        problem = _problem(next(a for a in args if a is not type(None)), value, meta)
        return problem and f"null or {problem}"
    if origin is tuple:
        items, item_tp = list(value), args[0]
        many = "a non-empty list of " if meta.get("nonempty") else "a list of "
    elif origin in (abc.Mapping, dict):
        items, item_tp, many = list(value.values()), args[1], "a mapping of names to "
    else:
        items, item_tp, many = [value], tp, ""
    if item_tp not in (int, float) and not isinstance(check, tuple):
        return None
    if all(_item_ok(x, item_tp, check, meta) for x in items) and (items or not meta.get("nonempty")):
        return None
    return _expectation(item_tp, check, meta, many) + (f" ({meta['note']})" if "note" in meta else "")


def _check(f: dataclasses.Field, tp: Any, value: Any, key: str) -> None:
    """Raise ConfigError("key=value: expected ...") when ``value`` breaks field ``f``'s declared constraint."""
    problem = _problem(tp, value, f.metadata)
    if problem:
        shown = f"<{len(value)} characters>" if f.metadata.get("secret") else repr(to_dict(value))
        raise ConfigError(f"{key}={shown}: expected {problem}")


def all_keys(cls: type = SystemConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(all_keys(hints[f.name], path + "."))
        else:
            keys.append(path)
    return keys


def _suggest(path: str) -> str:
    keys = all_keys()
    sections = sorted({k.rsplit(".", 1)[0] for k in keys if "." in k})
    close = difflib.get_close_matches(path, keys + sections, n=1, cutoff=0.5)
    if not close and "." in path:
        section, leaf = path.rsplit(".", 1)
        leaves = [k.rsplit(".", 1)[1] for k in keys if k.startswith(section + ".")]
        close = [f"{section}.{m}" for m in difflib.get_close_matches(leaf, leaves, n=1, cutoff=0.4)]
    return f"; did you mean {close[0]!r}?" if close else ""


def to_dict(config: Any) -> Any:
    """Plain YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config


# ---------------------------------------------------------------------------------------------------------------
# presets and overrides


DEFAULT_PRESET = "default"
"""The name of no overlay at all: the dataclass defaults (``dynaray train default`` is ``dynaray train``)."""


def available_presets() -> list[str]:
    return sorted([DEFAULT_PRESET, *(p.stem for p in PRESET_DIR.glob("*.yaml"))])


def _read_yaml(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_preset(name: str) -> dict:
    """A preset by name (system/presets/NAME.yaml; ``default``: none, an empty overlay) or by path to a YAML file."""
    if name == DEFAULT_PRESET:
        return {}
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file {name!r} does not exist")
        return _read_yaml(path, "preset file")
    preset = PRESET_DIR / f"{name}.yaml"
    if not preset.is_file():
        known = available_presets()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown preset {name!r}: {hint}expected one of {', '.join(known)} "
                          "or a path to a .yaml file")
    return _read_yaml(preset, "preset")


def merge(base: dict, update: Mapping) -> dict:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``a.b=value`` -> ``{"a": {"b": value}}`` with the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key=value, e.g. policy.batch_size=128")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    tree: dict = {}
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def load_config(presets: Sequence[str] = (), overrides: Sequence[str] = ()) -> SystemConfig:
    """The dataclass defaults, overlaid by each of ``presets`` in order, then by each ``key=value`` override."""
    data: dict = {}
    for name in presets:
        data = merge(data, read_preset(name))
    for text in overrides:
        data = merge(data, parse_override(text))
    return _build(SystemConfig, data, "")


def config_from_dict(data: Mapping) -> SystemConfig:
    """Rebuild a config written by :func:`to_dict` (e.g. a run directory's config.yaml)."""
    return _build(SystemConfig, data, "")
