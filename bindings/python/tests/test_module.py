"""Module-level functions and paths."""
import os

import pytest

import ckpt_manager
from ckpt_manager import CheckpointManager
from conftest import tf_save


def test_no_state(tmp_path):
    assert ckpt_manager.latest_checkpoint(str(tmp_path)) is None
    assert ckpt_manager.get_checkpoint_state(str(tmp_path)) is None
    assert ckpt_manager.latest_checkpoint(str(tmp_path / "missing")) is None


def test_state_and_functions(directory, clock):
    with CheckpointManager(directory, 3, save_fn=tf_save, clock=clock) as m:
        assert m.directory == directory
        clock.now = 100.0
        first = m.save()
        clock.now = 200.0
        second = m.save()
    state = ckpt_manager.get_checkpoint_state(directory)
    assert state.model_checkpoint_path == second
    assert state.all_model_checkpoint_paths == [first, second]
    assert state.all_model_checkpoint_timestamps == [100.0, 200.0]
    assert state.last_preserved_timestamp == 999.0  # opened at 1000: now - 1
    assert ckpt_manager.latest_checkpoint(directory) == second
    assert ckpt_manager.latest_checkpoint(directory, verify_checksums=True) == second
    assert ckpt_manager.checkpoint_exists(first)
    ckpt_manager.verify_checkpoint(first)
    ckpt_manager.remove_checkpoint(first)
    assert not ckpt_manager.checkpoint_exists(first)
    assert not os.path.exists(first + ".index")
    ckpt_manager.remove_checkpoint(first)  # nothing to delete is fine


def test_path_like_and_non_utf8_paths(tmp_path, clock):
    directory = os.fsencode(str(tmp_path)) + b"/caf\xe9-[run]*"
    with CheckpointManager(directory, 2, save_fn=tf_save, clock=clock) as m:
        prefix = m.save()
        assert isinstance(prefix, str)
        assert os.fsencode(prefix) == directory + b"/ckpt-1"
        assert os.path.exists(os.fsencode(prefix) + b".index")
        assert m.directory == os.fsdecode(directory)
    assert ckpt_manager.latest_checkpoint(directory) == prefix
    assert ckpt_manager.latest_checkpoint(os.fsdecode(directory)) == prefix
    with CheckpointManager(tmp_path / "pathlib", 2, save_fn=tf_save, clock=clock) as m:
        assert m.save() == str(tmp_path / "pathlib" / "ckpt-1")


def test_nul_bytes_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        CheckpointManager(str(tmp_path) + "/a\0b", 2)
    with pytest.raises(ValueError):
        ckpt_manager.checkpoint_exists("a\0b")


def test_version_and_library():
    assert ckpt_manager.version().split(".")[0] == "0"
    assert os.path.exists(ckpt_manager.library_path())
