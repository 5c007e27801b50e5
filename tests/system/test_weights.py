from replay.handles import LocalHandle
from system.weights import WeightsClient, WeightsPublisher, WeightsStore


def test_publish_then_poll_fetches_only_newer_versions():
    store = LocalHandle(WeightsStore())
    publisher = WeightsPublisher(store, "policy")
    client = WeightsClient(store, "policy")
    assert client.poll() is None and client.version == -1

    assert publisher.publish({"w": 1}) == 1
    assert client.poll() == {"w": 1} and client.version == 1
    assert client.poll() is None, "same version must not be fetched twice"

    publisher.publish({"w": 2})
    publisher.publish({"w": 3})
    assert client.poll() == {"w": 3} and client.version == 3


def test_store_ignores_older_versions_and_names_are_separate():
    store = WeightsStore()
    store.publish("policy", 5, "five")
    store.publish("policy", 4, "four")
    store.publish("world_model", 1, "wm")
    assert store.latest("policy") == (5, "five")
    assert store.latest("policy", newer_than=5) is None
    assert store.versions() == {"policy": 5, "world_model": 1}


class RestartableStore:
    """A store handle whose process can 'restart' (empty again) and whose calls can fail as a dead actor's do."""

    def __init__(self):
        self.store = LocalHandle(WeightsStore())
        self.down = False

    def restart(self):
        self.store = LocalHandle(WeightsStore())

    def __getattr__(self, name):
        if self.down:
            raise_lost = _LostMethod()
            return raise_lost
        return getattr(self.store, name)


class _LostMethod:
    def remote(self, *args, **kwargs):
        from replay.handles import LocalRef

        return LocalRef(error=_actor_error())


def _actor_error():
    import ray.exceptions

    return ray.exceptions.ActorUnavailableError("restarting", None)


def test_publisher_publishes_again_when_a_restarted_store_lost_its_weights(monkeypatch):
    import system.weights as weights

    monkeypatch.setattr(weights, "STORE_CHECK_S", 0.0)
    handle = RestartableStore()
    publisher = WeightsPublisher(handle, "policy")
    publisher.publish({"w": 1})
    publisher.publish({"w": 2})
    handle.restart()  # empty: clients would see nothing newer than what they hold until the next publish
    publisher.check()  # asks the store (the answer is read at the next check)
    publisher.check()
    assert handle.store.wrapped.versions() == {"policy": 2} and publisher.republished == 1
    publisher.check()
    publisher.check()
    assert publisher.republished == 1, "the store holds the newest version: nothing to publish again"


def test_a_new_publisher_continues_from_the_store_version():
    store = LocalHandle(WeightsStore())
    WeightsPublisher(store, "policy").publish({"w": 1})
    WeightsPublisher(store, "policy").publish({"w": 1})
    restarted = WeightsPublisher(store, "policy")  # a learner restarted from scratch
    assert restarted.publish({"w": 0}) == 3
    client = WeightsClient(store, "policy")
    assert client.poll() == {"w": 0} and client.version == 3


def test_clients_and_publishers_survive_a_store_that_is_restarting(monkeypatch):
    import system.weights as weights

    monkeypatch.setattr(weights, "STORE_CHECK_S", 0.0)
    handle = RestartableStore()
    publisher = WeightsPublisher(handle, "policy")
    client = WeightsClient(handle, "policy")
    publisher.publish({"w": 1})
    handle.down = True
    assert client.poll() is None and client.version == -1  # polls again next time
    publisher.check()
    publisher.check()  # the failed check is asked again later
    handle.down = False
    assert client.poll() == {"w": 1}


def test_store_stats_count_publishes_and_polls():
    store = WeightsStore()
    store.publish("policy", 1, "one")
    store.latest("policy")
    store.latest("policy", newer_than=1)
    assert store.stats() == {"versions": {"policy": 1}, "publishes": {"policy": 1}, "polls": 2}
