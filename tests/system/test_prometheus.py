"""Every role on a real Prometheus: a short `dynaray train debug` run scraped through Ray's service-discovery file
with the shipped config (deploy/prometheus/prometheus.yml), its key metrics queried over the HTTP API, and every
PromQL expression of the shipped Grafana dashboard evaluated without error.

Needs the `prometheus` binary (Debian package `prometheus`; `make setup-test` installs it where apt-get can) and
runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.system.runs import ray_pids

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "dynaray.json"
DISCOVERY_FILE = "prom_metrics_service_discovery.json"
RUN = "prom"
NO_END = 10**7
"""The run's env-step budget: more than it reaches, so that it goes on until the test stops it with Ctrl-C."""

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="the prometheus binary is not installed (Debian: apt-get install prometheus; "
                              "make setup-test does it where apt-get can)"),
]

# Per role, selectors whose values must be > 0 while the run goes on (summed over the series of the run).
KEY_METRICS = {
    "rollout": ["ray_dynaray_rollout_env_steps_total", "ray_dynaray_rollout_episodes_total",
                "ray_dynaray_rollout_env_steps_per_s", "ray_dynaray_rollout_episode_length"],
    "replay": ['ray_dynaray_replay_size{table="real"}', 'ray_dynaray_replay_inserted_rows_total{table="real"}',
               'ray_dynaray_replay_sampled_rows_total{table="real"}',
               'ray_dynaray_replay_inserted_rows_total{table="imagined"}',
               "ray_dynaray_replay_capacity"],
    "policy": ["ray_dynaray_policy_updates_total", "ray_dynaray_policy_updates_per_s",
               "ray_dynaray_policy_published_version", "ray_dynaray_policy_critic_loss",
               "ray_dynaray_policy_critic_grad_norm"],
    "world_model": ["ray_dynaray_world_model_updates_total", "ray_dynaray_world_model_published_version",
                    "ray_dynaray_world_model_loss", "ray_dynaray_world_model_val_mse"],
    "imagination": ["ray_dynaray_imagination_transitions_total", "ray_dynaray_imagination_rollouts_total",
                    "ray_dynaray_imagination_horizon"],
    "gateway": ['ray_dynaray_gateway_requests_total{code="200"}', 'ray_dynaray_gateway_requests_total{code="401"}'],
    "evaluator": ["ray_dynaray_evaluator_evaluations_total", "ray_dynaray_evaluator_seconds"],
    "store": ["ray_dynaray_store_polls_total", 'ray_dynaray_store_version{name="policy"}'],
    "control": ["ray_dynaray_control_desired_workers"],
    "driver": ["ray_dynaray_driver_env_steps_total", "ray_dynaray_driver_budget_env_steps",
               "ray_dynaray_driver_env_steps_per_s", "ray_dynaray_driver_workers"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_run(selector: str) -> str:
    """``selector`` restricted to this test's run."""
    if selector.endswith("}"):
        return f'{selector[:-1]}, run="{RUN}"}}'
    return f'{selector}{{run="{RUN}"}}'


class Prometheus:
    """A Prometheus server on 127.0.0.1 with the shipped config, pointed at ``discovery`` and scraping every 1 s."""

    def __init__(self, discovery: Path, workdir: Path):
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        (job,) = config["scrape_configs"]
        (sd,) = job["file_sd_configs"]
        sd.update(files=[str(discovery)], refresh_interval="1s")
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            assert self.proc.poll() is None, f"prometheus exited: {(workdir / 'prometheus.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "prometheus not ready within 60 s"
            time.sleep(0.5)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> dict:
        """``/api/v1/query``'s answer (status, data or error), whatever the HTTP status."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as err:  # 400/422 carry the PromQL error in the body
            return json.load(err)

    def value(self, expr: str) -> float | None:
        """The value of an expression that yields one sample, None when it yields nothing."""
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> int:
        return int(self.value('count(up{job="ray"} == 1)') or 0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Lines:
    """A subprocess's output, read on a thread (so its pipe never fills) and kept."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def find(self, needle: str) -> str | None:
        return next((line for line in list(self.lines) if needle in line), None)

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "".join(self.lines)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen, lines: Lines):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert proc.poll() is None, f"the run ended before {what}:\n{lines.text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s:\n{lines.text()[-3000:]}"
        time.sleep(0.5)
    return result


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the shipped dashboard, plus the run variable's query."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict) and query["query"].startswith("label_values("):
            metric = query["query"].removeprefix("label_values(").split(",")[0]
            found.append((f"variable {variable['name']}", metric))
    return found


def grafana_to_promql(expr: str) -> str:
    """Substitute the Grafana variables the dashboard uses, as Grafana would for this run."""
    return expr.replace("$__rate_interval", "10s").replace("${run}", RUN).replace("$run", RUN)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="module")
def monitored_run():
    # A short temp dir of its own: Ray's socket paths must stay under 108 bytes, and the discovery file of this
    # cluster must not be confused with another Ray's on the machine.
    workdir = Path(tempfile.mkdtemp(prefix="drp-", dir="/tmp"))
    runs = workdir / "runs"
    env = {**os.environ, "RAY_TMPDIR": str(workdir), "DYNARAY_TEST_RUN": str(workdir),
           # Ray's exporters report every 2 s instead of 10 s, so a short run shows up in several scrapes.
           "RAY_metrics_report_interval_ms": "2000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "system.cli", "train", "debug", f"name={RUN}", f"run.runs_dir={runs}",
         "run.progress=false", f"run.total_env_steps={NO_END}", "ray.include_dashboard=true", "gateway.enabled=true",
         "ray.num_cpus=8"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
        preexec_fn=_ignore_sigint,  # as a background job of a shell without job control starts it
    )
    lines = Lines(proc.stdout)
    prometheus = None
    try:
        discovery = workdir / "ray" / DISCOVERY_FILE

        def discovered() -> bool:
            try:
                return bool(json.loads(discovery.read_text())[0]["targets"])
            except (OSError, ValueError, IndexError, KeyError):
                return False

        wait_for(discovered, 180, f"service-discovery file {discovery}", proc, lines)
        prometheus = Prometheus(discovery, workdir)
        yield proc, lines, prometheus, runs / RUN
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if prometheus is not None:
            prometheus.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_every_role_on_prometheus_and_every_dashboard_query_evaluates(monitored_run):
    proc, lines, prometheus, run_dir = monitored_run
    wait_for(prometheus.targets_up, 60, "scraped Ray node", proc, lines)

    # The gateway answers one request with the token and one without, so both codes are counted.
    url_line = wait_for(lambda: lines.find("ingest gateway at"), 180, "gateway", proc, lines)
    url = url_line.split(" at ")[1].split()[0]
    token = (run_dir / "gateway_token").read_text().strip()
    from actors.gateway_client import fetch_spec

    fetch_spec(url, token)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/v1/spec", timeout=10)
    assert refused.value.code == 401

    # Queried while the run goes on (its processes end with it); summed over every series of the run, as absolute
    # values: the world model's loss is a Gaussian negative log-likelihood, below 0 once it fits well.
    missing = {role: list(selectors) for role, selectors in KEY_METRICS.items()}

    def all_seen() -> bool:
        for role, selectors in missing.items():
            selectors[:] = [s for s in selectors if not (prometheus.value(f"sum(abs({with_run(s)}))") or 0) > 0]
        return not any(missing.values())

    deadline = time.monotonic() + 300
    while not all_seen():
        assert proc.poll() is None and time.monotonic() < deadline, (
            f"metrics never above 0: { {r: s for r, s in missing.items() if s} }\n{lines.text()[-2000:]}")
        time.sleep(1)

    # Every expression of the shipped dashboard, as Grafana would send it for this run.
    evaluated, with_data, errors = 0, 0, []
    for title, expr in dashboard_expressions():
        answer = prometheus.query(grafana_to_promql(expr))
        evaluated += 1
        if answer["status"] != "success":
            errors.append(f"{title}: {expr}: {answer.get('errorType')}: {answer.get('error')}")
        elif answer["data"]["result"]:
            with_data += 1
    assert not errors, "\n".join(errors)
    assert evaluated >= 50 and with_data >= evaluated // 2, (evaluated, with_data)

    # Ctrl-C: every role stops and no Ray process of the run is left, although the run inherited SIGINT ignored
    # (`dynaray train` installs its own handler in either case)
    assert proc.poll() is None, lines.text()[-3000:]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, lines.text()[-3000:]
    out = lines.text()  # (the reader's end: the process has ended)
    assert "interrupted; stopping every role" in out and "Traceback" not in out, out[-3000:]
    time.sleep(1)
    assert not ray_pids(f"DYNARAY_TEST_RUN={run_dir.parent.parent}"), "Ray processes left behind after Ctrl-C"
