"""Two tiers: remote_directory receives each checkpoint committed locally,
with its own max_to_keep; remote_status() reports the uploads;
restore_or_initialize() takes the newer tier."""
import os
import shutil

import numpy as np

from ckpt_manager import CheckpointManager, RemoteStatus, get_checkpoint_state


def _names(directory):
    state = get_checkpoint_state(directory)
    return [os.path.basename(path) for path in state.all_model_checkpoint_paths]


def _manager(local, remote, weights):
    manager = CheckpointManager(local, max_to_keep=1, remote_directory=remote,
                                remote_max_to_keep=3)
    manager.register_array("weights", weights)
    return manager


def test_saves_reach_the_remote_which_keeps_its_own_and_restores_a_lost_directory(tmp_path):
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    weights = np.zeros(16, dtype=np.float32)
    with _manager(local, remote, weights) as manager:
        for number in range(1, 5):
            weights[:] = number
            manager.save(checkpoint_number=number)
        manager.wait_until_finished()
        assert manager.remote_status() == RemoteStatus(
            newest_uploaded=4, pending=0, failures=0, dropped=0, last_error=None)
    assert _names(local) == ["ckpt-4"]
    assert _names(remote) == ["ckpt-2", "ckpt-3", "ckpt-4"]

    shutil.rmtree(local)
    weights[:] = -1
    with _manager(local, remote, weights) as manager:
        assert manager.restore_or_initialize().endswith("ckpt-4")
        assert (weights == 4).all()
    assert _names(local) == ["ckpt-4"]


def test_without_a_remote_the_status_is_none(tmp_path):
    with CheckpointManager(str(tmp_path), max_to_keep=1) as manager:
        assert manager.remote_status() is None
