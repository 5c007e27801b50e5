"""The ingest gateway as the system layer makes it: tokens kept out of config files, insert sizes the replay rate
limiters admit, a run that outlives its gateway. In process, no Ray."""

from __future__ import annotations

import os
import stat
import types

import numpy as np
import pytest
import yaml

from actors.envs import probe_env
from actors.gateway_client import send_episode
from actors.gateway_tokens import TOKEN_ENV, Token
from system.config import ConfigError, load_config
from replay.handles import LocalRef
from system.run_dir import RunDir

SECRET = "run-secret-token-0123456789abcdef"


def test_a_token_is_not_a_setting_and_is_never_echoed(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'gateway\.token'") as info:
        load_config(["debug"], [f"gateway.token={SECRET}"])
    assert SECRET not in str(info.value)
    config = load_config(["debug"], ["gateway.enabled=true", f"gateway.token_file={tmp_path / 'tokens'}"])
    assert SECRET not in repr(config)
    run = RunDir(tmp_path / "run").create(config)
    written = yaml.safe_load((run.path / "config.yaml").read_text())
    assert "token" not in written["gateway"] and written["gateway"]["token_file"] == str(tmp_path / "tokens")
    # A run directory written before tokens left the config still loads.
    written["gateway"]["token"] = ""
    (run.path / "config.yaml").write_text(yaml.safe_dump(written))
    assert run.load_config().gateway.enabled


def test_the_run_takes_the_token_from_the_environment_or_writes_a_new_one_0600(tmp_path, monkeypatch, capsys):
    from system.cli import _gateway_tokens

    config = load_config(["debug"], ["gateway.enabled=true"])
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    (token,) = _gateway_tokens(config, tmp_path)
    assert token.secret == SECRET and token.id == "default" and list(tmp_path.iterdir()) == []

    monkeypatch.delenv(TOKEN_ENV)
    (token,) = _gateway_tokens(config, tmp_path)
    path = tmp_path / "gateway_token"
    assert path.read_text().strip() == token.secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert token.secret not in capsys.readouterr().err

    bad = tmp_path / "tokens"
    bad.write_text(f"robot-1 upload {SECRET}\n")
    os.chmod(bad, 0o644)
    with pytest.raises(ValueError, match="mode 0644") as info:
        _gateway_tokens(load_config(["debug"], ["gateway.enabled=true", f"gateway.token_file={bad}"]), tmp_path)
    assert SECRET not in str(info.value)
    assert _gateway_tokens(load_config(["debug"]), tmp_path) == ()


def test_gateway_inserts_fit_the_rate_limiters_of_five_shards():
    from system.wiring import build_system, kill_system

    refused = r"gateway\.insert_chunk_rows=50: expected <= 2 \* replay\.error_buffer_steps"
    with pytest.raises(ConfigError, match=refused):
        load_config([], ["gateway.enabled=true", "replay.num_shards=5"])  # every upload would fail: refused
    rows = load_config(["debug"], ["replay.num_shards=5"]).replay.max_insert_rows()
    config = load_config(["debug"], ["gateway.enabled=true", "replay.num_shards=5",
                                     f"gateway.insert_chunk_rows={rows}"])
    spec = probe_env(config.env)
    token = Token("default", frozenset({"upload", "download"}), SECRET)
    system = build_system(config, spec, local=True, gateway_tokens=(token,))
    try:
        gateway = system.gateway.wrapped
        n = 60
        rng = np.random.default_rng(0)
        obs = rng.standard_normal((n + 1, spec.obs_dim)).astype(np.float32)
        answer = send_episode(gateway.url(), SECRET, {
            "obs": obs[:-1], "next_obs": obs[1:], "action": np.zeros((n, spec.action_dim), np.float32),
            "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool)},
            retries=0)
        assert answer["rows"] == n
        assert sum(shard.wrapped.size("real") for shard in system.shards) == n
    finally:
        kill_system(system)


def test_the_driver_goes_on_while_the_gateway_is_away():
    from system.driver import Driver, _Call

    driver = Driver.__new__(Driver)
    driver._gateway_pending, driver._first_report_at = True, None
    driver.system = types.SimpleNamespace(gateway=None)  # the call's actor, unknown here: not a restart
    driver._handle(LocalRef(error=RuntimeError("the gateway's process died")), _Call("gateway_stats"))
    assert driver._gateway_pending is False
