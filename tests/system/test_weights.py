from replay.handles import LocalHandle
from system.weights import WeightsClient, WeightsPublisher, WeightsStore


def test_publish_then_poll_fetches_only_newer_versions():
    store = LocalHandle(WeightsStore())
    publisher = WeightsPublisher(store, "policy", local=True)
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
    store.publish("policy", 5, ["five"])
    store.publish("policy", 4, ["four"])
    store.publish("world_model", 1, ["wm"])
    assert store.latest("policy") == (5, ["five"])
    assert store.latest("policy", newer_than=5) is None
    assert store.versions() == {"policy": 5, "world_model": 1}
