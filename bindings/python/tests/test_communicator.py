"""CheckpointManager(communicator=<an object with the protocol>), in one
process: a one-rank communicator, and the failures of its methods."""
import os

import numpy as np
import pytest

import ckpt_manager


class OneRank:
    """The protocol over one rank: every collective is a copy."""
    rank = 0
    size = 1

    def __init__(self):
        self.calls = []

    def barrier(self, timeout):
        self.calls.append("barrier")

    def broadcast(self, buffer, root, timeout):
        self.calls.append("broadcast")

    def all_gather(self, record, timeout):
        self.calls.append("all_gather")
        return [record]


class Raising(OneRank):
    """all_gather raises `exc`."""

    def __init__(self, exc):
        super().__init__()
        self.exc = exc

    def all_gather(self, record, timeout):
        raise self.exc


SHARD = "ckpt-1.rank-00000-of-00001"


def test_one_rank_saves_its_shard_and_restores_it(directory):
    communicator = OneRank()
    weights = np.arange(4, dtype=np.float32)
    with ckpt_manager.CheckpointManager(directory, max_to_keep=2,
                                        communicator=communicator) as manager:
        manager.register_array("weights", weights)
        assert manager.save() == os.path.join(directory, "ckpt-1")
    assert {"broadcast", "all_gather"} <= set(communicator.calls)
    assert sorted(os.listdir(directory)) == [
        "checkpoint", "checkpoint.lock", "ckpt-1.ckpt-manifest.json", SHARD + ".safetensors"]
    weights[:] = 0
    with ckpt_manager.CheckpointManager(directory, max_to_keep=2,
                                        communicator=OneRank()) as manager:
        manager.register_array("weights", weights)
        assert manager.restore_or_initialize() == os.path.join(directory, "ckpt-1")
    assert weights.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_the_save_callback_gets_the_rank_prefix(directory):
    prefixes = []

    def save_fn(prefix, _number):
        prefixes.append(os.path.basename(prefix))
        with open(prefix + ".data", "wb") as f:
            f.write(b"shard")

    with ckpt_manager.CheckpointManager(directory, max_to_keep=2, communicator=OneRank(),
                                        save_fn=save_fn) as manager:
        manager.save()
    assert prefixes == [SHARD]
    assert os.path.exists(os.path.join(directory, SHARD + ".data"))


def test_a_communicator_that_raises_fails_the_call_from_its_exception(directory):
    failure = ValueError("the network is down")
    with ckpt_manager.CheckpointManager(directory, max_to_keep=2, communicator=Raising(failure),
                                        save_fn=lambda prefix, _n: None) as manager:
        with pytest.raises(ckpt_manager.CheckpointError) as raised:
            manager.save()
        assert raised.value.__cause__ is failure
        assert manager.latest_checkpoint is None
    assert os.listdir(directory) == ["checkpoint.lock"]


def test_a_communicator_that_times_out_raises_checkpoint_timeout_error(directory):
    failure = TimeoutError("rank 3 did not come")
    with ckpt_manager.CheckpointManager(directory, max_to_keep=2, communicator=Raising(failure),
                                        save_fn=lambda prefix, _n: None) as manager:
        with pytest.raises(ckpt_manager.CheckpointTimeoutError) as raised:
            manager.save()
        assert raised.value.__cause__ is failure
    assert os.listdir(directory) == ["checkpoint.lock"]


def test_an_object_without_the_protocol_is_refused(directory):
    with pytest.raises(TypeError, match="all_gather"):
        ckpt_manager.CheckpointManager(directory, max_to_keep=2, communicator=object())
    assert not os.path.exists(directory)


@pytest.mark.parametrize("rank, size", [(1, 1), (0, 0)])
def test_a_rank_not_below_the_size_is_refused(directory, rank, size):
    communicator = OneRank()
    communicator.rank, communicator.size = rank, size
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        ckpt_manager.CheckpointManager(directory, max_to_keep=2, communicator=communicator)


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_a_coordination_timeout_that_is_not_positive_and_finite_is_refused(directory, seconds):
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        ckpt_manager.CheckpointManager(directory, max_to_keep=2, communicator=OneRank(),
                                       coordination_timeout=seconds)


def test_save_async_is_refused(directory):
    with ckpt_manager.CheckpointManager(directory, max_to_keep=2, communicator=OneRank(),
                                        save_fn=lambda prefix, _n: None) as manager:
        with pytest.raises(ckpt_manager.InvalidArgumentError):
            manager.save_async()
        assert manager.latest_checkpoint is None
