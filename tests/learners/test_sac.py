"""SAC learner and policy: Bellman targets, learning signal, entropy tuning, checkpoints, acting."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from learners import Policy, PolicyConfig, SACLearner
from system.config import ConfigError, load_config

O, A = 3, 2
LOW, HIGH = np.array([-2.0, 0.0]), np.array([2.0, 1.0])
SMALL = dict(hidden_sizes=(32, 32), device="cpu", precision="fp32")  # the maths checks: fp32 on any CPU


def make_learner(seed=0, **overrides):
    return SACLearner(O, A, LOW, HIGH, PolicyConfig(**{**SMALL, **overrides}), seed=seed)


def make_batch(rows=64, seed=0, **columns):
    rng = np.random.default_rng(seed)
    batch = {
        "obs": rng.normal(size=(rows, O)).astype(np.float32),
        "action": rng.uniform(LOW, HIGH, size=(rows, A)).astype(np.float32),
        "reward": rng.normal(size=rows).astype(np.float32),
        "next_obs": rng.normal(size=(rows, O)).astype(np.float32),
        "terminated": np.zeros(rows, dtype=bool),
        "truncated": np.zeros(rows, dtype=bool),
        "episode_id": np.arange(rows, dtype=np.int64),
    }
    batch.update(columns)
    return batch


METRICS = {"critic_loss", "actor_loss", "alpha", "alpha_loss", "entropy", "q_mean", "critic_grad_norm",
           "actor_grad_norm"}


def test_update_metrics_and_counters():
    learner = make_learner()
    metrics = learner.update(make_batch())
    assert set(metrics) == METRICS
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert learner.num_updates == 1 and learner.nonfinite_streak == 0


def test_critic_loss_drops_on_a_fixed_batch():
    learner = make_learner(critic_lr=3e-3)
    batch = make_batch()
    batch["reward"] = 2.0 * batch["obs"][:, 0]
    losses = [learner.update(batch)["critic_loss"] for _ in range(50)]
    assert np.mean(losses[-5:]) < 0.25 * losses[0]


def test_q_ranks_high_reward_state_above_low_reward_state():
    learner = make_learner(critic_lr=1e-3)
    rows = 64
    obs = np.zeros((rows, O), dtype=np.float32)
    obs[: rows // 2, 0], obs[rows // 2:, 0] = 1.0, -1.0
    reward = np.where(obs[:, 0] > 0, 1.0, -1.0).astype(np.float32)
    batch = make_batch(rows, obs=obs, reward=reward, next_obs=obs)
    tensors = learner._tensors(batch)
    @torch.no_grad()
    def gap():
        q = learner._q(learner.critic, tensors["obs"], tensors["action"]).mean(0)
        return float(q[: rows // 2].mean() - q[rows // 2:].mean())
    before = gap()
    for _ in range(100):
        learner.update(batch)
    assert gap() > before + 1.0


def test_terminated_rows_do_not_bootstrap_truncated_rows_do():
    learner = make_learner()
    rows = 16
    flags = np.ones(rows, dtype=bool)
    def targets(**columns):
        learner._generator.manual_seed(123)
        return learner._targets(learner._tensors(make_batch(rows, **columns)))
    plain = targets()
    truncated = targets(truncated=flags)
    terminated = targets(terminated=flags)
    reward = torch.from_numpy(make_batch(rows)["reward"])
    torch.testing.assert_close(truncated, plain)
    torch.testing.assert_close(terminated, reward)
    assert (plain - reward).abs().min() > 1e-3


def test_target_uses_min_over_critics_and_soft_value():
    learner = make_learner(num_critics=3, critic_subset=3)
    tensors = learner._tensors(make_batch(8))
    learner._generator.manual_seed(7)
    target = learner._targets(tensors)
    learner._generator.manual_seed(7)
    with torch.no_grad():
        next_action, next_log_prob = learner.actor(tensors["next_obs"], generator=learner._generator)
        next_q = learner._q(learner.target_critic, tensors["next_obs"], next_action)
    assert next_q.shape == (3, 8)
    expected = tensors["reward"] + 0.99 * (next_q.min(0).values - learner.alpha * next_log_prob)
    torch.testing.assert_close(target, expected)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_fused_q_matches_the_critic_modules(layer_norm):
    learner = make_learner(num_critics=3, critic_subset=3, critic_layer_norm=layer_norm)
    learner.update(make_batch())
    tensors = learner._tensors(make_batch(16, seed=1))
    with torch.no_grad():
        inputs = torch.cat([tensors["obs"], tensors["action"]], dim=-1).expand(3, 16, O + A)
        expected = learner.critic(inputs).squeeze(-1)
        torch.testing.assert_close(learner._q(learner.critic, tensors["obs"], tensors["action"]), expected)


def test_redq_target_is_the_min_over_a_random_subset_of_critics():
    learner = make_learner(num_critics=10, critic_subset=2)
    tensors = learner._tensors(make_batch(8))
    subsets = []
    for seed in (7, 8, 9):
        learner._generator.manual_seed(seed)
        target = learner._targets(tensors)
        learner._generator.manual_seed(seed)
        with torch.no_grad():
            next_action, next_log_prob = learner.actor(tensors["next_obs"], generator=learner._generator)
            subset = learner._critic_subset()
            next_q = learner._q(learner.target_critic, tensors["next_obs"], next_action)
        assert next_q.shape == (10, 8) and subset.shape == (2,) and len(set(subset.tolist())) == 2
        expected = tensors["reward"] + 0.99 * (next_q[subset].min(0).values - learner.alpha * next_log_prob)
        torch.testing.assert_close(target, expected)
        assert not torch.allclose(target, tensors["reward"] + 0.99 * (next_q.min(0).values - learner.alpha
                                                                       * next_log_prob))
        subsets.append(tuple(subset.tolist()))
    assert len(set(subsets)) > 1  # a fresh subset per update


def test_critic_subset_equal_to_num_critics_draws_no_subset():
    learner = make_learner(num_critics=3, critic_subset=3)
    state = learner._generator.get_state()
    assert learner._critic_subset() is None
    assert torch.equal(learner._generator.get_state(), state)


@pytest.mark.parametrize("num_critics, critic_subset, reduce", [(2, 2, "min"), (5, 5, "min"), (5, 2, "mean")])
def test_actor_loss_uses_min_or_mean_over_critics(num_critics, critic_subset, reduce):
    learner = make_learner(num_critics=num_critics, critic_subset=critic_subset)
    batch = make_batch()
    tensors = learner._tensors(batch)
    learner._generator.manual_seed(3)
    metrics = learner.update(batch)
    fresh = make_learner(num_critics=num_critics, critic_subset=critic_subset)  # the weights before the update
    fresh._generator.manual_seed(3)
    with torch.no_grad():
        fresh._targets(tensors)
        action, log_prob = fresh.actor(tensors["obs"], generator=fresh._generator)
        q_pi = fresh._q(fresh.critic, tensors["obs"], action)
    q_pi = q_pi.min(0).values if reduce == "min" else q_pi.mean(0)
    expected = float((fresh.alpha * log_prob - q_pi).mean())
    assert metrics["actor_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_actor_loss_gives_the_critics_no_gradient():
    learner = make_learner(num_critics=4, critic_subset=2, critic_lr=1e-3)
    twin = make_learner(num_critics=4, critic_subset=2, critic_lr=1e-3)
    batch = make_batch()
    learner.update(batch)
    # the same critic step with the actor and temperature losses left out
    tensors = twin._tensors(batch)
    target = twin._targets(tensors, twin.log_alpha.detach().exp())
    q = twin._q(twin.critic, tensors["obs"], tensors["action"])
    grads = torch.autograd.grad((q - target).pow(2).mean(dim=1).sum(), list(twin.critic.parameters()))
    for param, grad in zip(twin.critic.parameters(), grads):
        param.grad = grad
    twin.critic_optimizer.step()
    for ours, theirs in zip(learner.critic.parameters(), twin.critic.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("target_entropy, direction", [(100.0, 1), (-100.0, -1)])
def test_alpha_moves_toward_entropy_target(target_entropy, direction):
    learner = make_learner(target_entropy=target_entropy, alpha_lr=1e-2)
    before = learner.alpha
    for _ in range(3):
        learner.update(make_batch())
    assert direction * (learner.alpha - before) > 0


def test_target_critic_tracks_critic_by_polyak_averaging():
    learner = make_learner(tau=0.5)
    target_before = [p.clone() for p in learner.target_critic.parameters()]
    learner.update(make_batch())
    for old, new, online in zip(target_before, learner.target_critic.parameters(), learner.critic.parameters()):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * online)


def test_nonfinite_loss_skips_the_step():
    learner = make_learner()
    before = {k: v.clone() for k, v in learner.actor.state_dict().items()}
    bad = make_batch(reward=np.full(64, np.nan, dtype=np.float32))
    for streak in (1, 2):
        metrics = learner.update(bad)
        assert metrics["skipped"] == 1.0 and learner.nonfinite_streak == streak
    assert learner.num_updates == 0
    for key, value in learner.actor.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert "skipped" not in learner.update(make_batch())
    assert learner.nonfinite_streak == 0 and learner.num_updates == 1


def test_bad_batch_shapes_are_reported():
    learner = make_learner()
    with pytest.raises(ValueError, match=r"batch\['obs'\] has shape \(64, 5\), expected \(N, 3\)"):
        learner.update(make_batch(obs=np.zeros((64, 5), dtype=np.float32)))
    batch = make_batch()
    del batch["truncated"]
    with pytest.raises(KeyError, match="truncated"):
        learner.update(batch)


def reference_critic_step(learner, batch, seed, weights=None):
    """Critic loss and per-row |TD error| of ``learner``'s next update on ``batch`` (its generator seeded with
    ``seed``), computed the long way: sum over critics of the mean over rows of w * (Q - target)^2, w divided by
    its maximum (no w: the unweighted loss)."""
    tensors = learner._tensors(batch)
    learner._generator.manual_seed(seed)
    with torch.no_grad():
        target = learner._targets(tensors)
        q = learner._q(learner.critic, tensors["obs"], tensors["action"])
    squared = (q - target).pow(2)
    if weights is not None:
        w = torch.as_tensor(weights)
        squared = squared * (w / w.max())
    return float(squared.mean(dim=1).sum()), (q - target).abs().mean(dim=0).numpy()


def test_unprioritized_critic_loss_is_the_plain_mean_squared_td_error_and_ignores_weights():
    batch = make_batch()
    expected, _ = reference_critic_step(make_learner(), batch, seed=5)
    runs = []
    for columns in ({}, {"weight": np.linspace(0.1, 1.0, 64, dtype=np.float32)}):
        learner = make_learner()
        learner._generator.manual_seed(5)
        metrics = learner.update({**batch, **columns})
        assert metrics["critic_loss"] == expected and "td_error" not in metrics
        runs.append((metrics, [p.clone() for p in learner.critic.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_prioritized_update_with_unit_weights_is_the_unweighted_update():
    batch = make_batch()
    plain, prioritized, no_column = make_learner(), make_learner(prioritized=True), make_learner(prioritized=True)
    for _ in range(3):
        expected = plain.update(batch)
        metrics = prioritized.update({**batch, "weight": np.ones(64, dtype=np.float32)})
        td_error = metrics.pop("td_error")
        assert metrics == expected
        assert td_error.shape == (64,) and td_error.dtype == np.float32 and (td_error >= 0).all()
        missing = no_column.update(batch)
        np.testing.assert_array_equal(missing.pop("td_error"), td_error)
        assert missing == expected
    for a, b in zip(plain.critic.parameters(), prioritized.critic.parameters()):
        assert torch.equal(a, b)


def test_prioritized_critic_loss_is_importance_weighted_and_td_errors_are_per_row():
    batch = make_batch()
    weights = np.random.default_rng(1).uniform(0.05, 0.5, 64).astype(np.float32)  # the learner divides by the max
    expected_loss, expected_td = reference_critic_step(make_learner(prioritized=True), batch, seed=5, weights=weights)
    unweighted, _ = reference_critic_step(make_learner(prioritized=True), batch, seed=5)
    learner = make_learner(prioritized=True)
    learner._generator.manual_seed(5)
    metrics = learner.update({**batch, "weight": weights})
    assert metrics["critic_loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert abs(metrics["critic_loss"] - unweighted) > 1e-3 * unweighted
    np.testing.assert_allclose(metrics["td_error"], expected_td, rtol=1e-6)


def test_prioritized_update_rejects_bad_weights_and_returns_no_td_error_when_skipped():
    learner = make_learner(prioritized=True)
    for weights in (np.ones(63, dtype=np.float32), np.zeros(64, dtype=np.float32),
                    np.full(64, np.nan, dtype=np.float32)):
        with pytest.raises(ValueError, match=r"batch\['weight'\] has shape .* expected \(64,\) finite weights > 0"):
            learner.update(make_batch(weight=weights))
    metrics = learner.update(make_batch(reward=np.full(64, np.nan, dtype=np.float32)))
    assert metrics["skipped"] == 1.0 and "td_error" not in metrics


def test_state_dict_round_trip_with_weights_only(tmp_path):
    learner = make_learner(seed=0)
    batch = make_batch()
    for _ in range(3):
        learner.update(batch)
    path = tmp_path / "sac.pt"
    torch.save(learner.state_dict(), path)
    restored = make_learner(seed=1)
    restored.load_state_dict(torch.load(path, weights_only=True))
    obs = torch.from_numpy(batch["obs"])
    with torch.no_grad():
        expected = learner.actor(obs, deterministic=True)[0]
        torch.testing.assert_close(restored.actor(obs, deterministic=True)[0], expected)
    assert restored.num_updates == 3 and restored.alpha == learner.alpha
    assert restored.update(batch) == learner.update(batch)


def test_policy_act_shapes_bounds_and_reproducibility():
    learner = make_learner()
    policy = Policy(O, A, LOW, HIGH, SMALL["hidden_sizes"], seed=5)
    policy.load_state(learner.policy_state())
    assert all(v.device.type == "cpu" for v in learner.policy_state().values())
    obs = np.random.default_rng(0).normal(size=(1000, O)).astype(np.float32) * 10
    actions = policy.act(obs)
    assert actions.shape == (1000, A) and actions.dtype == np.float32
    assert (actions >= LOW).all() and (actions <= HIGH).all()
    assert policy.act(obs[0]).shape == (A,)
    np.testing.assert_array_equal(policy.act(obs, deterministic=True), policy.act(obs, deterministic=True))
    with torch.no_grad():
        expected = learner.actor(torch.from_numpy(obs), deterministic=True)[0].numpy()
    np.testing.assert_allclose(policy.act(obs, deterministic=True), expected, rtol=1e-6)
    same_seed = Policy(O, A, LOW, HIGH, SMALL["hidden_sizes"], seed=5)
    same_seed.load_state(learner.policy_state())
    fresh = Policy(O, A, LOW, HIGH, SMALL["hidden_sizes"], seed=5)
    fresh.load_state(learner.policy_state())
    np.testing.assert_array_equal(same_seed.act(obs), fresh.act(obs))
    assert not np.array_equal(same_seed.act(obs), same_seed.act(obs))
    tensor_actions = policy.act_tensor(torch.from_numpy(obs), deterministic=True)
    assert tensor_actions.shape == (1000, A)


def test_policy_rejects_wrong_obs_shape():
    policy = Policy(O, A, LOW, HIGH, (8,))
    with pytest.raises(ValueError, match=r"obs has shape \(4, 5\), expected \(N, 3\)"):
        policy.act(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"obs has shape \(4,\), expected \(N, 3\)"):
        policy.act_tensor(torch.zeros(4))


def test_log_prob_matches_change_of_variables():
    learner = make_learner()
    obs = torch.randn(4096, O)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        action, log_prob = learner.actor(obs[:1].expand(4096, O), generator=generator)
    scale = torch.as_tensor((HIGH - LOW) / 2, dtype=torch.float32)
    bias = torch.as_tensor((HIGH + LOW) / 2, dtype=torch.float32)
    with torch.no_grad():
        mean, log_std = learner.actor.trunk(obs[:1]).chunk(2, -1)
        log_std = log_std.clamp(-20, 2)
        squashed = ((action - bias) / scale).clamp(-1 + 1e-6, 1 - 1e-6)
        pre_tanh = torch.atanh(squashed)
        normal = torch.distributions.Normal(mean, log_std.exp())
        expected = (normal.log_prob(pre_tanh) - torch.log(scale * (1 - squashed.pow(2)))).sum(-1)
    torch.testing.assert_close(log_prob, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("field, value, message", [
    ("gamma", 1.5, "policy.gamma=1.5: expected a number in (0, 1]"),
    ("tau", 0.0, "policy.tau=0.0: expected a number in (0, 1]"),
    ("real_ratio", -0.1, "policy.real_ratio=-0.1: expected a number in [0, 1]"),
    ("num_critics", 1, "policy.num_critics=1: expected an integer >= 2"),
    ("critic_subset", 0, "policy.critic_subset=0: expected 1 <= critic_subset <= num_critics (2)"),
    ("critic_subset", 3, "policy.critic_subset=3: expected 1 <= critic_subset <= num_critics (2)"),
    ("hidden_sizes", [], "policy.hidden_sizes=[]: expected a non-empty list of integers >= 1"),
    ("hidden_sizes", [64, 0], "policy.hidden_sizes=[64, 0]: expected a non-empty list of integers >= 1"),
    ("actor_lr", 0.0, "policy.actor_lr=0.0: expected a finite number > 0"),
    ("actor_lr", "nan", "policy.actor_lr=nan: expected a finite number"),
    ("actor_lr", ".inf", "policy.actor_lr=inf: expected a finite number"),
    ("target_entropy", "nan", "policy.target_entropy=nan: expected null or a finite number"),
    ("batch_size", 0, "policy.batch_size=0: expected an integer >= 1"),
    ("device", "gpu", "policy.device='gpu': expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'"),
    ("priority_alpha", -0.5, "policy.priority_alpha=-0.5: expected a finite number >= 0"),
    ("priority_beta", 1.5, "policy.priority_beta=1.5: expected a number in [0, 1]"),
    ("priority_eps", 0.0, "policy.priority_eps=0.0: expected a finite number > 0"),
])
def test_policy_config_validation(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config([], [f"policy.{field}={value}"])


def test_policy_config_accepts_list_hidden_sizes():
    config = PolicyConfig(hidden_sizes=[64, 64])
    assert config.hidden_sizes == (64, 64)
    assert dataclasses.replace(config, gamma=0.9).gamma == 0.9


# ---------------------------------------------------------------------------------------------- precision


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what ``learners._common.cpu_has_bf16_matmul`` reports (this machine's answer is restored after)."""
    import learners._common as common

    def set_answer(value: bool) -> None:
        monkeypatch.setattr(common, "_CPU_BF16", value)

    return set_answer


def test_precision_auto_is_bf16_only_for_wide_networks_on_a_cpu_with_bf16_matrix_instructions(cpu_bf16):
    from learners._common import BF16_MIN_WIDTH, resolve_precision

    wide = (BF16_MIN_WIDTH, BF16_MIN_WIDTH)
    cpu_bf16(True)
    assert make_learner(precision="auto", hidden_sizes=wide).dtype == torch.bfloat16
    assert make_learner(precision="auto").dtype == torch.float32  # narrow: bf16 would be slower
    assert resolve_precision("auto", torch.device("cpu"), (BF16_MIN_WIDTH, BF16_MIN_WIDTH - 1)) == torch.float32
    assert resolve_precision("auto", torch.device("cuda"), wide) == torch.float32
    cpu_bf16(False)
    assert make_learner(precision="auto", hidden_sizes=wide).dtype == torch.float32
    assert make_learner(precision="bf16").dtype == torch.bfloat16
    assert make_learner(precision="fp32", hidden_sizes=wide).dtype == torch.float32
    assert PolicyConfig().precision == "auto"


@pytest.mark.parametrize("flags, expected", [("fpu sse avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4
                                             ("fpu avx512f amx_bf16 amx_tile avx512_bf16", True),  # Intel AMX
                                             ("fpu sse avx2 avx512f avx512_vnni", False), ("", False)])
def test_bf16_matmul_is_found_by_the_cpu_flags_of_amx_or_avx512_bf16(flags, expected, tmp_path, monkeypatch):
    import learners._common as common

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(common, "CPUINFO", str(cpuinfo))
    monkeypatch.setattr(common, "_CPU_BF16", None)
    assert common.cpu_has_bf16_matmul() is expected
    monkeypatch.setattr(common, "CPUINFO", str(tmp_path / "missing"))
    monkeypatch.setattr(common, "_CPU_BF16", None)
    assert common.cpu_has_bf16_matmul() is False


def test_policy_config_rejects_an_unknown_precision():
    with pytest.raises(ConfigError, match=re.escape("policy.precision='fp16': expected 'auto', 'fp32' or 'bf16'")):
        load_config([], ["policy.precision=fp16"])


def test_bf16_update_matches_fp32_losses_within_bf16_rounding_and_keeps_fp32_weights():
    batch = make_batch(rows=128, seed=3)
    fp32, bf16 = make_learner(seed=1, precision="fp32"), make_learner(seed=1, precision="bf16")
    expected, got = fp32.update(batch), bf16.update(batch)
    for key in ("critic_loss", "actor_loss", "alpha_loss", "entropy", "q_mean"):
        assert got[key] == pytest.approx(expected[key], rel=0.05, abs=0.02), key
    assert "skipped" not in got and bf16.num_updates == 1
    assert all(p.dtype == torch.float32 for p in [*bf16.actor.parameters(), *bf16.critic.parameters()])
    for a, b in zip(fp32.critic.parameters(), bf16.critic.parameters()):  # the same Adam step, up to rounding
        torch.testing.assert_close(a, b, rtol=0.0, atol=5e-3)


def test_policy_in_bf16_acts_like_fp32_within_rounding():
    learner = make_learner(seed=2, precision="fp32")
    policy = Policy(O, A, LOW, HIGH, SMALL["hidden_sizes"], seed=0)
    policy.load_state(learner.policy_state())
    obs = torch.randn(64, O)
    expected = policy.act_tensor(obs, deterministic=True)
    policy.set_dtype(torch.bfloat16)
    got = policy.act_tensor(obs, deterministic=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.0, atol=0.05)
    policy.load_state(learner.policy_state())  # the dtype stays across new weights
    torch.testing.assert_close(policy.act_tensor(obs, deterministic=True), got)
    with pytest.raises(ValueError, match="expected torch.float32 or torch.bfloat16"):
        policy.set_dtype(torch.float16)


def test_behaviour_cloning_reproduces_the_data_policys_actions():
    """A teacher policy labels states; after cloning, the student's deterministic actions are the teacher's."""
    config = PolicyConfig(hidden_sizes=(64, 64), actor_lr=3e-3, device="cpu")
    teacher = Policy(O, A, -2.0, 2.0, (32,), seed=5)
    student = SACLearner(O, A, -2.0, 2.0, config, seed=0)
    rng = np.random.default_rng(0)
    held_out = rng.normal(size=(512, O)).astype(np.float32)
    before = np.mean((Policy(O, A, -2.0, 2.0, (64, 64), seed=0).act(held_out, True) -
                      teacher.act(held_out, True)) ** 2)
    critic_before = [p.detach().clone() for p in student.critic.parameters()]
    for _ in range(300):
        obs = rng.normal(size=(128, O)).astype(np.float32)
        metrics = student.bc_update({"obs": obs, "action": teacher.act(obs, deterministic=True)})
    assert set(metrics) == {"bc_loss", "bc_action_mse", "actor_grad_norm"} and student.num_updates == 300
    cloned = Policy(O, A, -2.0, 2.0, (64, 64))
    cloned.load_state(student.policy_state())
    after = np.mean((cloned.act(held_out, True) - teacher.act(held_out, True)) ** 2)
    assert after < 0.02 * before and after < 0.01
    assert all(torch.equal(a, b) for a, b in zip(critic_before, student.critic.parameters()))


def test_critic_only_update_leaves_the_actor_and_temperature():
    learner = make_learner()
    actor = [p.detach().clone() for p in learner.actor.parameters()]
    critic = [p.detach().clone() for p in learner.critic.parameters()]
    alpha = learner.alpha
    learner.update(make_batch(), update_actor=False)
    assert all(torch.equal(a, b) for a, b in zip(actor, learner.actor.parameters())) and learner.alpha == alpha
    assert not all(torch.equal(a, b) for a, b in zip(critic, learner.critic.parameters()))
    learner.update(make_batch())
    assert not all(torch.equal(a, b) for a, b in zip(actor, learner.actor.parameters()))


def test_anchor_keeps_the_refined_actor_near_the_anchor_and_survives_a_state_round_trip(tmp_path):
    """The same updates with and without the anchor's trust region: the anchored actor drifts less from where it
    started; with anchor_weight=0 (or no anchor set) the update is plain SAC's."""
    batch = make_batch(rows=128)
    obs = torch.from_numpy(batch["obs"])
    drift = {}
    for weight in (0.0, 5.0):
        learner = make_learner(anchor_weight=weight)
        learner.set_anchor()
        with torch.no_grad():
            start = learner.actor(obs, deterministic=True)[0]
        for _ in range(100):
            metrics = learner.update(batch)
        assert ("anchor_distance" in metrics) == (weight > 0), metrics
        with torch.no_grad():
            drift[weight] = float((learner.actor(obs, deterministic=True)[0] - start).pow(2).mean())
    assert drift[5.0] < 0.5 * drift[0.0], drift
    assert make_learner(anchor_weight=5.0).update(batch) == make_learner().update(batch)  # no anchor set: plain SAC

    torch.save(learner.state_dict(), tmp_path / "sac.pt")
    restored = make_learner(seed=1, anchor_weight=5.0)
    restored.load_state_dict(torch.load(tmp_path / "sac.pt", weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(restored.anchor.parameters(), learner.anchor.parameters()))
    assert restored.update(batch) == learner.update(batch)
