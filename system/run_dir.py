"""The run directory ``runs/<name>/``: resolved config, metrics table, evaluations, checkpoint, learning curve.

Layout::

    config.yaml            the resolved config (reloadable with config_from_dict)
    metrics.parquet        one row per report: env_steps, wall_time_s, eval_return_mean, rates, losses
    .metrics-rows/         while the driver runs: its metrics rows in Parquet parts (TableRows; removed at the end)
    evals.parquet          one row per evaluation: env_steps, policy_version, return_mean, return_std, wall_time_s
                           (rewritten after every evaluation)
    checkpoint/            policy.pt, world_model.pt (full learner state), actor.pt (acting weights), meta.json
    learning_curve.png     eval return vs env steps (offline mode: vs policy updates)
    offline.json           offline mode: dataset, calibration, conservatism, eval returns by phase, eval env steps
    placement.json         the node (id, IP) each actor of the run landed on
    replay/                persisted replay tables, shard-<i>/<table>/ (unless replay.directory points elsewhere)
    gateway_token          the ingest gateway's generated token (mode 0600; never copied by upload)
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from system.config import SystemConfig, config_from_dict, to_dict

CHECKPOINT_FILES = ("actor.pt", "meta.json")
GATEWAY_TOKEN_FILE = "gateway_token"
"""The generated gateway token (a secret: :meth:`RunDir.upload` leaves it out)."""
SECRET_FILES = (GATEWAY_TOKEN_FILE,)
METRICS_SPILL_DIR = ".metrics-rows"
"""Where the driver's metrics rows wait on disk in parts while it runs (:class:`TableRows`)."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or unreadable."""


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def replay_directory(self, config: SystemConfig) -> Path:
        """Where the run's shards persist their tables: ``replay.directory`` if set, else ``<run dir>/replay``
        (absolute, since shard actors do not share the driver's working directory)."""
        return Path(config.replay.directory or self.path / "replay").resolve()

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    def create(self, config: SystemConfig) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        return self

    def load_config(self) -> SystemConfig:
        path = self.path / "config.yaml"
        if not path.is_file():
            raise CheckpointError(f"{str(self.path)!r} is not a run directory: {path.name} is missing")
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("gateway"), dict):
            data["gateway"].pop("token", None)  # written before tokens left the config (never a setting now)
        return config_from_dict(data)

    # tables ---------------------------------------------------------------------------------------------------
    def write_table(self, name: str, rows: "list[dict[str, Any]] | TableRows") -> None:
        if not len(rows):
            return
        tmp = self.path / f".{name}.parquet.tmp"
        if isinstance(rows, TableRows):
            rows.write(tmp)
        else:
            pq.write_table(_table(rows), tmp)
        tmp.replace(self.path / f"{name}.parquet")

    def upload(self, uri: str) -> str:
        """Copy the run directory to ``<uri>/<name>/`` on a pyarrow filesystem (S3, GCS, HDFS, local); return where.

        Raises:
            ValueError: ``uri`` names no filesystem pyarrow knows.
        """
        import pyarrow.fs as pafs

        try:
            filesystem, base = pafs.FileSystem.from_uri(uri)
        except (ValueError, pa.ArrowInvalid) as exc:
            raise ValueError(f"run.upload_to={uri!r}: expected a filesystem URI such as s3://bucket/runs "
                             f"({exc})") from None
        destination = f"{base.rstrip('/')}/{self.path.name}"
        filesystem.create_dir(destination, recursive=True)
        local, source = pafs.LocalFileSystem(), self.path.resolve()
        for entry in sorted(source.iterdir()):
            if entry.name in SECRET_FILES or entry.name.startswith("."):  # secrets and working files stay here
                continue
            target = f"{destination}/{entry.name}"
            if entry.is_dir():
                filesystem.create_dir(target, recursive=True)
            pafs.copy_files(str(entry), target, source_filesystem=local, destination_filesystem=filesystem)
        return f"{uri.rstrip('/')}/{self.path.name}"

    def write_json(self, name: str, value: Any) -> None:
        """Write ``<name>.json`` (e.g. ``placement``: where each actor of the run landed)."""
        (self.path / f"{name}.json").write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")

    def read_table(self, name: str) -> pa.Table:
        path = self.path / f"{name}.parquet"
        if not path.is_file():
            raise CheckpointError(f"{str(self.path)!r}: {path.name} is missing")
        return pq.read_table(path)

    # checkpoint -----------------------------------------------------------------------------------------------
    def save_checkpoint(self, states: dict[str, Any], meta: dict[str, Any]) -> None:
        """Write each state dict with torch.save (loadable with weights_only=True) and the meta as JSON."""
        import torch  # here, not at the top: the driver reads run directories before it has loaded torch

        self.checkpoint.mkdir(parents=True, exist_ok=True)
        for name, state in states.items():
            tmp = self.checkpoint / f".{name}.pt.tmp"
            torch.save(state, tmp)
            tmp.replace(self.checkpoint / f"{name}.pt")
        (self.checkpoint / "meta.json").write_text(json.dumps(meta, indent=2))

    def load_state(self, name: str, device: str = "cpu") -> Any:
        for required in CHECKPOINT_FILES:
            if not (self.checkpoint / required).is_file():
                raise CheckpointError(f"checkpoint in {str(self.path)!r} is incomplete: {required} is missing")
        path = self.checkpoint / f"{name}.pt"
        if not path.is_file():
            raise CheckpointError(f"checkpoint in {str(self.path)!r} has no {path.name}")
        try:
            import torch

            return torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt or not a dynaray checkpoint "
                                  f"({type(exc).__name__})") from None

    # plot -----------------------------------------------------------------------------------------------------
    def plot_learning_curve(self, evals: list[dict[str, Any]], title: str, xlabel: str = "env steps") -> Path:
        """``learning_curve.png``: the real eval return (mean +- std) and, where the rows have one
        (``eval.in_model``), the estimate in the world model with its members' range."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        real = [e for e in evals if math.isfinite(e["return_mean"])]
        steps = [e["env_steps"] for e in real]
        mean = [e["return_mean"] for e in real]
        std = [e["return_std"] for e in real]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, mean, marker="o", markersize=3, label="real env")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        model = [e for e in evals if math.isfinite(e.get("model_return_mean", math.nan))]
        if model:  # eval.in_model: the estimate in the world model, its members' range shaded
            ax.plot([e["env_steps"] for e in model], [e["model_return_mean"] for e in model], marker="s",
                    markersize=3, label="in the world model")
            ax.fill_between([e["env_steps"] for e in model], [e["model_return_low"] for e in model],
                            [e["model_return_high"] for e in model], alpha=0.15)
            ax.legend(fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval return (deterministic)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.path / "learning_curve.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


class TableRows:
    """The rows of a table a run keeps whole (the metrics table: one row per report, for days). The newest
    ``chunk_rows`` are Python dicts; each earlier chunk is a Parquet part in ``spill_dir`` (an Arrow table in memory
    when there is none), so that the driver's memory stays flat however long the run (docs/benchmarks.md, Soak).
    256 rows of some 70 metrics are about 1.6 MB of dicts; at one report a second the first part is written in the
    run's fifth minute, and with it the driver's one-off step of loading Arrow's Parquet reader and writer.

    Usage::

        rows = TableRows(run_dir / ".metrics-rows")    # emptied: parts of an earlier driver are not this one's
        rows.append({"env_steps": 100, "loss": 0.5})   # a column may appear later, an int column become float
        rows.write(path)                               # every row so far, streamed part by part
        rows.close()                                   # the parts go
    """

    def __init__(self, spill_dir: Path | None = None, chunk_rows: int = 256):
        self._chunk_rows, self._spill_dir = chunk_rows, spill_dir
        self._parts: list[tuple[pa.Table | Path, pa.Schema]] = []
        """Each sealed chunk (in memory, or its part's path) with its schema, so a rewrite reads no part twice."""
        self._recent: list[dict[str, Any]] = []
        self._count = 0
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)
            spill_dir.mkdir(parents=True)

    def append(self, row: dict[str, Any]) -> None:
        self._recent.append(row)
        self._count += 1
        if len(self._recent) >= self._chunk_rows:
            self._seal(_table(self._recent))
            self._recent = []

    def extend(self, table: pa.Table) -> None:
        """Append the rows of ``table`` (a resumed run's metrics up to its checkpoint), after any appended before."""
        if self._recent:
            self._seal(_table(self._recent))
            self._recent = []
        for start in range(0, table.num_rows, self._chunk_rows):
            self._seal(table.slice(start, self._chunk_rows))
        self._count += table.num_rows

    def _seal(self, part: pa.Table) -> None:
        if self._spill_dir is None:
            self._parts.append((part, part.schema))
            return
        path = self._spill_dir / f"part-{len(self._parts):06d}.parquet"
        pq.write_table(part, path)
        self._parts.append((path, part.schema))

    def __len__(self) -> int:
        return self._count

    def write(self, path: Path) -> None:
        """Every row so far as one Parquet file: columns in the order they first appeared, a missing value or NaN
        as null, a column with ints in one part and floats in another as float. One part is in memory at a time."""
        recent = [(table, table.schema) for table in ([_table(self._recent)] if self._recent else [])]
        parts = [*self._parts, *recent]
        schema = pa.unify_schemas([part_schema for _, part_schema in parts], promote_options="permissive")
        with pq.ParquetWriter(path, schema) as writer:
            for part, _ in parts:
                writer.write_table(_aligned(pq.read_table(part) if isinstance(part, Path) else part, schema))

    def close(self) -> None:
        """Remove the spilled parts (the table written last stays)."""
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)


def _aligned(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order: the missing ones null, the others cast to its types."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, list] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for key in columns:
        columns[key] = [_scalar(row.get(key)) for row in rows]
    return pa.table(columns)


def _scalar(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value
