"""The SAC update's CUDA-graph path (learners/cuda_graphs.py, ``UpdateGraphs``): on the CPU the same code runs
eagerly and must give the plain update's bits; on CUDA (the device check runs this file there) the replayed graphs
must give the eager update's values."""

import numpy as np
import pytest
import torch

from learners import PolicyConfig, SACLearner
from learners.cuda_graphs import CapturedCall, PinnedBatch
from learners.sac import UpdateGraphs

O, A = 5, 2
CUDA = torch.cuda.is_available()


def make_batch(rows, seed, prioritized=False):
    rng = np.random.default_rng(seed)
    batch = {
        "obs": rng.normal(size=(rows, O)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(rows, A)).astype(np.float32),
        "reward": rng.normal(size=rows).astype(np.float32),
        "next_obs": rng.normal(size=(rows, O)).astype(np.float32),
        "terminated": rng.random(rows) < 0.2,
        "truncated": np.zeros(rows, dtype=bool),
    }
    if prioritized:
        batch["weight"] = rng.uniform(0.1, 1.0, rows).astype(np.float32)
    return batch


def learner_pair(device, **overrides):
    """Two learners from the same seed: eager, and through ``UpdateGraphs`` (forced on the CPU, where
    ``cuda_graphs`` is ignored)."""
    config = PolicyConfig(**{"hidden_sizes": (32, 32), "device": device, "precision": "fp32", **overrides})
    eager = SACLearner(O, A, -1.0, 1.0, PolicyConfig(**{**config.__dict__, "cuda_graphs": False}), seed=3)
    graphed = SACLearner(O, A, -1.0, 1.0, config, seed=3)
    if graphed._graphs is None:
        graphed._graphs = UpdateGraphs(graphed)
    return eager, graphed


def run_both(eager, graphed, schedule, prioritized=False):
    """Update both on the same batches; ``schedule``: (rows, update_actor) per update. Returns their metrics."""
    out = ([], [])
    for i, (rows, update_actor) in enumerate(schedule):
        batch = make_batch(rows, seed=i, prioritized=prioritized)
        for learner, metrics in zip((eager, graphed), out):
            metrics.append(learner.update(batch, update_actor=update_actor))
    return out


def state_tensors(learner):
    return [*learner.critic.parameters(), *learner.target_critic.parameters(), *learner.actor.parameters(),
            learner.log_alpha]


def test_pinned_batch_copies_every_batch_into_the_same_tensors():
    staged = PinnedBatch({"obs": (4, O), "terminated": (4,)}, torch.device("cpu"))
    first = make_batch(4, seed=0)
    columns = staged.load(first)
    pointer = columns["obs"].data_ptr()
    second = make_batch(4, seed=1)
    columns = staged.load(second)
    assert columns["obs"].data_ptr() == pointer
    assert torch.equal(columns["obs"], torch.from_numpy(second["obs"]))
    assert columns["terminated"].dtype == torch.float32
    assert columns["terminated"].tolist() == second["terminated"].astype(np.float32).tolist()


def test_captured_call_off_cuda_is_the_function():
    call = CapturedCall(lambda x: x * 2, torch.device("cpu"), warmup=0)
    for _ in range(3):
        assert torch.equal(call(torch.ones(2)), torch.full((2,), 2.0))
    assert not call.captured


@pytest.mark.parametrize("variant", ["plain", "prioritized", "anchored"])
def test_graph_path_on_cpu_gives_the_plain_updates_bits(variant):
    overrides = {"prioritized": True} if variant == "prioritized" else {}
    if variant == "anchored":
        overrides["anchor_weight"] = 0.4
    eager, graphed = learner_pair("cpu", **overrides)
    if variant == "anchored":
        eager.set_anchor(), graphed.set_anchor()
    schedule = [(16, False), (16, True), (8, True), (16, True), (16, False), (16, True)]
    eager_metrics, graphed_metrics = run_both(eager, graphed, schedule, prioritized=variant == "prioritized")
    for a, b in zip(eager_metrics, graphed_metrics):
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), f"{key}: eager {a[key]} vs graph path {b[key]}"
    for a, b in zip(state_tensors(eager), state_tensors(graphed)):
        assert torch.equal(a, b)
    assert eager.num_updates == graphed.num_updates == len(schedule)


def test_graph_path_skips_a_nonfinite_update_and_changes_nothing():
    _, graphed = learner_pair("cpu")
    graphed.update(make_batch(16, seed=0))
    before = [t.clone() for t in state_tensors(graphed)]
    batch = make_batch(16, seed=1)
    batch["reward"][3] = np.nan
    metrics = graphed.update(batch)
    assert metrics["skipped"] == 1.0 and graphed.nonfinite_streak == 1
    assert all(torch.equal(a, b) for a, b in zip(before, state_tensors(graphed)))


def test_checkpoint_round_trip_keeps_the_graph_path_equal():
    eager, graphed = learner_pair("cpu")
    run_both(eager, graphed, [(16, True)] * 3)
    state = graphed.state_dict()
    eager.load_state_dict(eager.state_dict())
    graphed.load_state_dict(state)
    eager_metrics, graphed_metrics = run_both(eager, graphed, [(16, True)] * 3)
    assert eager_metrics == graphed_metrics


def test_graphs_are_off_on_the_cpu_and_with_redq():
    assert SACLearner(O, A, -1.0, 1.0, PolicyConfig(device="cpu"))._graphs is None
    if CUDA:
        redq = PolicyConfig(device="cuda", num_critics=4, critic_subset=2)
        assert SACLearner(O, A, -1.0, 1.0, redq)._graphs is None


@pytest.mark.skipif(not CUDA, reason="needs CUDA (tests/benchmarks/device_check.sh runs it on a GPU machine)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_replayed_graphs_give_the_eager_updates_values_on_cuda(precision):
    eager, graphed = learner_pair("cuda", precision=precision, prioritized=True)
    schedule = [(64, True)] * 12 + [(64, False)] * 3 + [(32, True)] * 5
    eager_metrics, graphed_metrics = run_both(eager, graphed, schedule, prioritized=True)
    assert graphed._graphs._entry(64, False)[1].captured
    worst = max(abs(a[k] - b[k]) / max(1.0, abs(a[k])) for a, b in zip(eager_metrics, graphed_metrics)
                for k in a if k != "td_error")
    params = max(float((a - b).abs().max()) for a, b in zip(state_tensors(eager), state_tensors(graphed)))
    print(f"cuda graphs vs eager ({precision}): worst relative metric difference {worst:.2e}, "
          f"largest parameter difference {params:.2e}")
    assert worst < 1e-4 and params < 1e-4


def test_compiled_losses_give_the_plain_updates_values():
    """``policy.compile`` (on CUDA; forced here on the CPU): inductor's fused kernels may round differently, so the
    values agree to float32 precision, not bit for bit."""
    eager, graphed = learner_pair("cpu")
    graphed._compile_losses()
    eager_metrics, graphed_metrics = run_both(eager, graphed, [(16, True), (16, False), (16, True)])
    for a, b in zip(eager_metrics, graphed_metrics):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(state_tensors(eager), state_tensors(graphed)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_compile_is_off_by_default_and_ignored_on_the_cpu():
    assert not PolicyConfig().compile
    learner = SACLearner(O, A, -1.0, 1.0, PolicyConfig(device="cpu", compile=True))
    assert "_losses" not in vars(learner)
