"""The system config: one frozen dataclass per component, YAML presets merged in order, ``key=value`` overrides.

Usage::

    config = load_config(["debug"], ["policy.batch_size=64", "seed=3"])
    config.policy        # PolicyConfig: the only section the policy learner receives

Every error names the key, the value and what is allowed (``ConfigError``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from actors.envs import EnvConfig
from actors.evaluator import EvalConfig
from actors.gateway import GatewayConfig
from actors.imagination import ImaginationConfig
from actors.rollout import RolloutConfig
from learners.sac import PolicyConfig
from learners.world_model import WorldModelConfig
from replay.config import ReplayConfig

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A config key, value or preset that is not allowed."""


@dataclass(frozen=True)
class RunConfig:
    total_env_steps: int = 20_000
    """Stop after this many real env steps (all rollout workers together)."""
    target_return: float | None = None
    """Stop early once an evaluation's mean return reaches this; null to always use the whole budget."""
    runs_dir: str = "runs"
    """Where run directories are made (runs_dir/<name>/)."""
    upload_to: str = ""
    """A pyarrow filesystem URI (s3://bucket/runs, gs://..., hdfs://..., file:///shared/runs) the finished run
    directory is copied to as <upload_to>/<name>/ (replay data too); empty: keep it only under runs_dir."""
    report_interval_s: float = 2.0
    """Seconds between progress reports and metrics-table rows."""
    progress: bool = True
    """Show the live progress line."""
    metrics: bool = True
    """Export every role's metrics to Prometheus through ray.util.metrics (docs/architecture.md, Metrics)."""
    torch_threads: int = 1
    """torch intra-op threads per actor (keep 1 when actors share a few cores)."""
    startup_timeout_s: float = 180.0
    """How long every role may take to start before the run stops with an error."""

    def __post_init__(self):
        if self.total_env_steps < 1:
            raise ValueError(f"run.total_env_steps={self.total_env_steps}: expected an integer >= 1")
        if self.report_interval_s <= 0:
            raise ValueError(f"run.report_interval_s={self.report_interval_s}: expected a number > 0")
        if self.torch_threads < 1:
            raise ValueError(f"run.torch_threads={self.torch_threads}: expected an integer >= 1")
        if self.startup_timeout_s <= 0:
            raise ValueError(f"run.startup_timeout_s={self.startup_timeout_s}: expected a number > 0")


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    """An existing cluster to join (also RAY_ADDRESS); null starts an embedded local Ray."""
    num_cpus: int | None = None
    """Logical CPUs of the embedded local Ray; null: enough for every role, at least the machine's cores."""
    include_dashboard: bool = False
    """Start the Ray dashboard with the embedded local Ray."""
    object_store_memory_mb: int | None = None
    """Object store size of the embedded local Ray; null lets Ray choose."""


@dataclass(frozen=True)
class RoleResources:
    """The Ray resources one actor of a role asks for: where it can run."""

    num_cpus: float = 1.0
    """Logical CPUs."""
    num_gpus: float = 0.0
    """GPUs; a learner given a GPU trains on CUDA (device 'auto'), on CPU otherwise, with no code change."""
    memory_mb: int = 0
    """Memory Ray reserves for the actor (0: none reserved)."""
    resources: Mapping[str, float] = field(default_factory=dict)
    """Custom resources, e.g. {learner_gpu: 1} to land on nodes that advertise them."""

    def __post_init__(self) -> None:
        amounts = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "memory_mb": self.memory_mb,
                   **{f"resources.{k}": v for k, v in self.resources.items()}}
        for name, value in amounts.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r}: expected a number >= 0")

    def ray_options(self) -> dict[str, Any]:
        """The resource part of ``actor.options(...)``."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                   "resources": dict(self.resources)}
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
    replay_resources: Mapping[str, float] = field(default_factory=dict)
    """Custom resources per replay shard (besides replay.num_cpus), e.g. {replay_node: 1}."""
    replay_strategy: str = "SPREAD"
    """Ray scheduling strategy of the replay shards: SPREAD (over the nodes that fit) or DEFAULT."""
    timeout_s: float = 120.0
    """How long the driver waits for every actor to be placed before it names the roles that cannot be and why."""

    def __post_init__(self) -> None:
        if self.replay_strategy not in ("SPREAD", "DEFAULT"):
            raise ValueError(f"placement.replay_strategy={self.replay_strategy!r}: expected 'SPREAD' or 'DEFAULT'")
        if self.timeout_s <= 0:
            raise ValueError(f"placement.timeout_s={self.timeout_s!r}: expected a number > 0")


@dataclass(frozen=True)
class SystemConfig:
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

    def __post_init__(self) -> None:
        if self.rollout.planner.enabled and not self.world_model.enabled:
            raise ValueError("rollout.planner.enabled=True: expected world_model.enabled=true (the planner scores "
                             "its candidates with the learned world model), got world_model.enabled=false")
        if self.policy.prioritized and self.replay.real_disk_capacity > 0:
            raise ValueError("policy.prioritized=true: expected replay.real_disk_capacity=0 (rows of the cold tier on "
                             f"disk keep no priorities), got replay.real_disk_capacity={self.replay.real_disk_capacity}")

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
    if origin in (Mapping, dict, typing.Mapping) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    return _coerce_scalar(value, tp, key)


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}={values!r}: expected a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{_suggest(path)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


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


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_preset(name: str) -> dict:
    """A preset by name (system/presets/NAME.yaml) or by path to a YAML file."""
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
        raise ConfigError(f"unknown preset {name!r}: {hint}expected one of {', '.join(known)} or a path to a .yaml file")
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
    """``default`` preset, then each of ``presets`` in order, then each ``key=value`` override."""
    data = read_preset("default")
    for name in presets:
        if name != "default":
            data = merge(data, read_preset(name))
    for text in overrides:
        data = merge(data, parse_override(text))
    return _build(SystemConfig, data, "")


def config_from_dict(data: Mapping) -> SystemConfig:
    """Rebuild a config written by :func:`to_dict` (e.g. a run directory's config.yaml)."""
    return _build(SystemConfig, data, "")
