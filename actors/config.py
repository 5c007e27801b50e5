"""The actors' settings: one frozen dataclass per role (rollout and its planner, imagination, evaluation in the env
and in the model, the ingest gateway).

Light on purpose (no torch, no aiohttp): ``system.config`` composes these into the run's config, and a command that
only reads a config (``dynaray status``, ``dynaray scale``, ``dynaray train`` up to its checks of the input) imports
them without the roles. ``metadata["check"]`` declares a field's constraint (checked by ``system.config``);
cross-field rules are in ``__post_init__``.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Mapping

from learners.config import device_problem, precision_problem


@dataclass(frozen=True)
class PlannerConfig:
    """``rollout.planner``: optimistic model-predictive action selection on rollout workers. ``metadata["check"]``
    declares a field's constraint (checked by ``system.config``)."""

    enabled: bool = False
    """Rollout workers act through the planner once a world model has been published (needs
    ``world_model.enabled``); off: they act with the policy alone."""
    num_candidates: int = field(default=8, metadata={"check": ">= 1"})
    """K: candidate action sequences per env observation, each drawn from the stochastic policy."""
    horizon: int = field(default=5, metadata={"check": ">= 1"})
    """H: model steps each candidate is rolled out and scored over."""
    bonus_scale: float = field(default=1.0, metadata={"check": ">= 0", "note": "0: no bonus"})
    """Optimism: each step's score is reward + bonus_scale * disagreement (0: plain predicted return)."""
    gamma: float = field(default=0.99, metadata={"check": "in (0, 1]"})
    """Discount of the per-step scores over the horizon."""


@dataclass(frozen=True)
class RolloutConfig:
    """Rollout workers. ``metadata["check"]`` declares a field's constraint (checked by ``system.config``)."""

    num_workers: int = field(default=1, metadata={"check": ">= 0", "note": "0: offline mode only"})
    """Rollout worker actors (0 only in offline mode, ``offline.enabled``)."""
    envs_per_worker: int = field(default=1, metadata={"check": ">= 1"})
    """Env copies in each worker's vector env (one batched policy forward per vector step)."""
    vector_mode: str = field(default="sync", metadata={"check": ("sync", "async")})
    """'sync' steps the copies in the worker's process, 'async' in subprocesses."""
    chunk_length: int = field(default=25, metadata={"check": ">= 1"})
    """Vector steps per chunk written to replay; a chunk holds chunk_length * envs_per_worker rows."""
    warmup_steps: int = field(default=250, metadata={"check": ">= 0"})
    """Env steps (all workers together) taken with uniform random actions before the policy acts."""
    weights_poll_steps: int = field(default=10, metadata={"check": ">= 1"})
    """Vector steps between non-blocking polls for newer policy weights (and ``weights_poll_s`` at least)."""
    weights_poll_s: float = field(default=0.0, metadata={"check": ">= 0", "note": "0: by steps alone"})
    """Least seconds between polls, for a fast env whose polls every ``weights_poll_steps`` cost more than they
    bring (one Ray call each, on the worker's CPU and the store's). At 0.05 s a HalfCheetah worker on Ray spent
    less CPU on them but acted 2-3 versions behind at the median instead of 1 (docs/benchmarks.md), so 0 by
    default."""
    first_policy_wait_s: float = field(default=30.0, metadata={"check": ">= 0", "note": "0: no wait"})
    """Seconds a worker that starts past the warm-up (a resumed, restarted or added worker, an offline_to_online
    run's) waits for its first policy weights, once in its life, rather than fill replay with random actions until
    its first non-blocking poll is answered; then it acts at random until they come. A worker that took warm-up
    steps never waits."""
    steps_per_call: int = field(default=50, metadata={"check": ">= 1"})
    """Env steps per run() call, i.e. how often the driver hears from each worker; at least one chunk
    (:attr:`call_steps`)."""
    num_cpus: float = field(default=1.0, metadata={"check": ">= 0"})
    """Ray CPUs per rollout worker."""
    num_gpus: float = field(default=0.0, metadata={"check": ">= 0"})
    """Ray GPUs per rollout worker."""
    resources: Mapping[str, float] = field(default_factory=dict, metadata={"check": ">= 0"})
    """Custom Ray resources per rollout worker, e.g. ``{rollout_node: 1}`` to keep workers on nodes that offer it
    (an autoscaler adds such nodes when workers wait for them)."""
    exploration_noise: tuple[float, ...] = field(default=(), metadata={"check": "in [0, 10]"})
    """Std of Gaussian noise added to the policy's (stochastic) actions, as a fraction of each action's half-range,
    per worker index (worker i uses entry i mod length), so a pool explores at several scales; empty: none."""
    max_restarts: int = field(default=10, metadata={"check": ">= -1", "note": "-1: no limit"})
    """How often Ray restarts a rollout worker whose process died (it resumes from the current weights)."""
    max_env_errors_in_a_row: int = field(default=20, metadata={"check": ">= 1"})
    """Env failures (an exception, or NaN/inf in an observation or reward) a worker survives in a row by making
    its envs afresh; one more stops the run with the env's error."""
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    """Optimistic model-predictive action selection (``actors/planner.py``); off by default."""

    @property
    def call_steps(self) -> int:
        """Env steps the driver asks of a worker per run() call: ``steps_per_call``, but at least one chunk
        (``chunk_length * envs_per_worker``), so that a large vector env is not asked for a Ray call every vector
        step or two (32 envs at 50 steps a call made one call per 2 vector steps)."""
        return max(self.steps_per_call, self.chunk_length * self.envs_per_worker)


@dataclass(frozen=True)
class ImaginationConfig:
    """Imagination workers. Defaults: the settings measured best on InvertedPendulum-v5 (docs/benchmarks.md).
    ``metadata["check"]`` declares a field's constraint (checked by ``system.config``)."""

    num_workers: int = field(default=1, metadata={"check": ">= 0", "note": "0: imagination off"})
    """Imagination worker actors (0 turns imagination off)."""
    batch_size: int = field(default=256, metadata={"check": ">= 1"})
    """Start states (B) per rollout batch."""
    starts_per_step: float = field(default=25.0, metadata={"check": "> 0"})
    """Start states sampled per real env step: the rate limiter holds imagination to this ratio."""
    horizon_start: int = field(default=1, metadata={"check": ">= 1"})
    """Rollout horizon H at the start of the schedule."""
    horizon_end: int = field(default=3, metadata={"check": ">= 1"})
    """Rollout horizon H at the end of the schedule."""
    horizon_ramp_start: int = field(default=500, metadata={"check": ">= 0"})
    """Env steps at which H starts rising from horizon_start."""
    horizon_ramp_end: int = 2500
    """Env steps at which H reaches horizon_end (>= horizon_ramp_start)."""
    prefetch: int = field(default=2, metadata={"check": ">= 1"})
    """Start-state batches requested ahead of use."""
    num_cpus: float = field(default=0.5, metadata={"check": ">= 0"})
    """Ray CPUs per imagination worker."""
    num_gpus: float = field(default=0.0, metadata={"check": ">= 0"})
    """Ray GPUs per imagination worker (fractions share one GPU); with device 'auto' it then runs on CUDA."""
    resources: Mapping[str, float] = field(default_factory=dict, metadata={"check": ">= 0"})
    """Custom Ray resources per imagination worker, e.g. ``{learner_gpu: 0.25}`` to land on nodes that offer
    them (empty: any node with the CPUs and GPUs)."""
    device: str = field(default="cpu", metadata={"check": device_problem})
    """Torch device for model and policy forwards: 'auto' (CUDA when the worker's process sees a GPU, i.e. with
    num_gpus > 0), 'cpu', 'cuda' or 'cuda:<i>'; resolved in the worker's own process."""
    precision: str = field(default="auto", metadata={"check": precision_problem})
    """Matmul precision of the model's and the policy's forwards: 'fp32'; 'bf16' (bf16 copies of the weights, inputs and
    outputs fp32); 'auto': bf16 for each of the two networks where the CPU has bf16 matrix instructions and the
    network is wide enough (``learners.config.PRECISIONS``). bf16 on a CPU runs on power-of-two row counts
    (:func:`rollout`), so that oneDNN keeps a few kernels, not one per row count."""
    max_restarts: int = field(default=10, metadata={"check": ">= -1", "note": "-1: no limit"})
    """How often Ray restarts an imagination worker whose process died; -1 without limit."""
    penalty_scale: float = field(default=0.0, metadata={"check": ">= 0", "note": "0: off"})
    """Imagined rewards are lowered by penalty_scale * disagreement (MOPO/COPlanner); 0 turns the penalty off."""
    max_disagreement: float = field(default=math.inf, metadata={"check": "> 0", "inf": True, "note": "inf: off"})
    """A row stops before a transition whose disagreement exceeds this (it is not written); inf turns it off."""

    def __post_init__(self):
        if self.horizon_ramp_end < self.horizon_ramp_start:
            raise ValueError(
                f"imagination.horizon_ramp_end={self.horizon_ramp_end}: expected >= horizon_ramp_start "
                f"({self.horizon_ramp_start})"
            )

    def horizon(self, env_steps: int) -> int:
        """H after ``env_steps`` real env steps: linear from horizon_start to horizon_end over the ramp."""
        if env_steps <= self.horizon_ramp_start:
            return self.horizon_start
        if env_steps >= self.horizon_ramp_end:
            return self.horizon_end
        frac = (env_steps - self.horizon_ramp_start) / (self.horizon_ramp_end - self.horizon_ramp_start)
        return int(self.horizon_start + frac * (self.horizon_end - self.horizon_start))


@dataclass(frozen=True)
class ModelEvalConfig:
    """How a policy is evaluated in the model. ``metadata["check"]`` declares a field's constraint."""

    starts: int = field(default=128, metadata={"check": ">= 1"})
    """B: start states per evaluation (each rolled out once per elite member)."""
    horizon: int = field(default=1000, metadata={"check": ">= 0"})
    """Longest rollout, in model steps (the env's episode limit for returns comparable with real ones); 0 only for
    ``actors.evaluator.Evaluator``, which puts its env's limit in its place."""
    gamma: float = field(default=1.0, metadata={"check": "in (0, 1]"})
    """Discount of the estimated return (1: the undiscounted return, as the real evaluation reports)."""
    penalty_scale: float = field(default=0.0, metadata={"check": ">= 0"})
    """Score = estimate - penalty_scale * summed disagreement per rollout (0: the score is the estimate)."""
    max_disagreement: float = field(default=math.inf, metadata={"check": "> 0", "inf": True})
    """A rollout stops, untrusted, before a transition whose elite disagreement exceeds this (inf: never)."""


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation schedule and evaluators. ``metadata["check"]`` declares a field's constraint (checked by
    ``system.config``)."""

    every_steps: int = field(default=250, metadata={"check": ">= 1"})
    """Evaluate the policy published at every multiple of this many env steps."""
    episodes: int = field(default=5, metadata={"check": ">= 1"})
    """Episodes per evaluation."""
    num_workers: int = field(default=1, metadata={"check": ">= 1"})
    """Evaluator actors; evaluations queue round robin over them."""
    num_cpus: float = field(default=0.5, metadata={"check": ">= 0"})
    """Ray CPUs per evaluator."""
    max_restarts: int = field(default=10, metadata={"check": ">= -1", "note": "-1: no limit"})
    """How often Ray restarts an evaluator when its process dies (the driver sends it the lost evaluation again)."""
    in_model: bool = False
    """Also estimate every evaluated policy's return in the newest world model (no env steps; needs
    world_model.enabled): the evals table and the learning curve get it beside the real return."""
    real_every: int = field(default=1, metadata={"check": ">= 1"})
    """With ``in_model``: run the real episodes only at every this-many-th evaluation (and the last); the others
    are scored in the model alone."""
    model_starts: int = field(default=32, metadata={"check": ">= 1"})
    """With ``in_model``: start states (the evaluator's own env resets) rolled out once per elite member."""
    model_horizon: int = field(default=0, metadata={"check": ">= 0", "note": "0: the env's episode limit"})
    """With ``in_model``: model steps per rollout."""

    def real_episodes(self, index: int, final: bool = False) -> int:
        """Real episodes of a run's ``index``-th evaluation (0, 1, ...): all of them, or with ``in_model`` only at
        every ``real_every``-th and the ``final`` one."""
        due = not self.in_model or final or index % self.real_every == 0
        return self.episodes if due else 0


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: ``localhost``, 127.0.0.0/8, ``::1``."""
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GatewayConfig:
    """The ingest gateway: where it listens, who may talk to it, and how much it accepts. ``metadata["check"]``
    declares a field's constraint (checked by ``system.config``); the cross-field rules are in ``__post_init__``.

    Tokens are not settings: they come from ``$DYNARAY_GATEWAY_TOKEN`` and ``token_file`` (docs/gateway.md), so
    that no config file, command line or run directory holds one.
    """

    enabled: bool = False
    """Start the gateway with the run."""
    host: str = field(default="127.0.0.1", metadata={
        "check": lambda host: None if host.strip() else "a host name or IP address such as '127.0.0.1'"})
    """Address to listen on. The default accepts local connections only; any other needs ``tls_cert`` and
    ``tls_key`` (or ``allow_plain_http``)."""
    port: int = field(default=0, metadata={"check": "in [0, 65535]", "note": "0: pick a free port"})
    """TCP port; 0 picks a free one (read it from ``IngestGateway.url()``; a restarted gateway picks a new one, so
    robots should be given a fixed port)."""
    token_file: str = ""
    """Token file: one ``<id> <scopes> <token>`` per line, mode 0600, re-read when it changes (removing a line
    revokes that token). Empty: only ``$DYNARAY_GATEWAY_TOKEN`` (or the token the run generates)."""
    tls_cert: str = ""
    """PEM certificate chain to serve HTTPS with (together with ``tls_key``)."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    allow_plain_http: bool = False
    """Serve plain HTTP on a non-loopback ``host`` (only behind a TLS reverse proxy or on a private link: the
    bearer token crosses the network in clear otherwise)."""
    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata={"check": ">= 1024"})
    """Largest upload body accepted; a larger one is refused with 413 before it is read."""
    max_decoded_bytes: int = field(default=64 * 1024 * 1024, metadata={"check": ">= 1024"})
    """Largest size the upload's Arrow record batches may decode to (compressed buffers are measured before they
    are decompressed); 413 beyond."""
    max_episode_rows: int = field(default=10_000, metadata={"check": ">= 1"})
    """Most rows one upload may hold (413 beyond: send a longer episode in parts)."""
    max_abs_value: float = field(default=1e6, metadata={"check": "> 0"})
    """Largest magnitude accepted in ``obs``, ``next_obs`` and ``reward`` (400 beyond)."""
    max_concurrent_uploads: int = field(default=4, metadata={"check": ">= 1"})
    """Uploads read, validated and stored at once (each holds its body in memory); more are refused with 503."""
    max_uploads_per_token: int = field(default=2, metadata={"check": ">= 1"})
    """Uploads in progress at once per token, so one robot cannot hold every upload slot; 503 beyond."""
    max_rows_per_s: float = field(default=10_000.0, metadata={"check": ">= 0", "note": "0: no limit"})
    """Rows per second each token may upload on average (bursts up to one second's worth); 429 with Retry-After
    beyond. 0: no limit."""
    max_connections: int = field(default=64, metadata={"check": ">= 1"})
    """Open connections; a new one past this closes the oldest connection that has not authenticated (else the
    oldest idle one, else itself)."""
    request_timeout_s: float = field(default=60.0, metadata={"check": "> 0"})
    """Whole-request deadline: headers and body must have arrived this many seconds after the connection opened
    (or the previous answer was sent), however slowly they trickle in; else the connection is closed (408 when
    the body was being read). Also the TLS handshake timeout."""
    socket_timeout_s: float = field(default=30.0, metadata={"check": "> 0"})
    """A connection that sends nothing for this long (an idle keep-alive, a stalled upload) is closed."""
    max_idempotency_keys: int = field(default=10_000, metadata={"check": ">= 1"})
    """Uploads remembered for idempotent retries (oldest forgotten first)."""
    insert_chunk_rows: int = field(default=50, metadata={"check": ">= 1"})
    """Rows per replay insert when an episode is stored (the replay rate limiter refuses inserts of more than
    ``2 * replay.error_buffer_steps / replay.num_shards`` rows; the system config checks it)."""
    weights_poll_s: float = field(default=1.0, metadata={"check": "> 0"})
    """Seconds between non-blocking polls for newer policy weights."""
    num_cpus: float = field(default=0.5, metadata={"check": ">= 0"})
    """Ray CPUs reserved for the gateway actor (read by system/)."""
    max_restarts: int = field(default=3, metadata={"check": ">= -1", "note": "-1: no limit"})
    """How often Ray restarts the gateway actor when its process dies (read by system/)."""

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(f"gateway.tls_cert={self.tls_cert!r}, gateway.tls_key={self.tls_key!r}: expected both "
                             f"(certificate chain and private key, PEM) or neither")
        if not self.tls and not self.allow_plain_http and not is_loopback(self.host):
            raise ValueError(
                f"gateway.host={self.host!r} is reachable from the network: expected gateway.tls_cert and "
                f"gateway.tls_key (HTTPS), or gateway.allow_plain_http=true behind a TLS reverse proxy (bearer "
                f"tokens would otherwise cross the network in clear)"
            )

    @property
    def tls(self) -> bool:
        """Whether the gateway serves HTTPS."""
        return bool(self.tls_cert)
