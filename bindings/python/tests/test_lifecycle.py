"""The handle is freed by close(), a with block and garbage collection; the
callbacks live exactly as long as the handle."""
import gc
import weakref

import pytest

import ckpt_manager
from ckpt_manager import CheckpointManager, _manager
from conftest import tf_save


def can_open_writer(directory):
    try:
        CheckpointManager(directory, 2, save_fn=tf_save).close()
        return True
    except ckpt_manager.LockedError:
        return False


def test_close_releases_the_lock_and_callbacks(directory, clock):
    m = CheckpointManager(directory, 2, save_fn=tf_save, restore_fn=print, clock=clock)
    keys = m._callback_keys
    assert len(keys) == 4  # save, restore, clock, log
    assert set(keys) <= _manager._live_callbacks
    assert not can_open_writer(directory)
    m.close()
    assert m.closed
    assert not set(keys) & _manager._live_callbacks  # the library ran every finalizer
    assert can_open_writer(directory)
    m.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        m.save()
    with pytest.raises(ValueError, match="closed"):
        m.latest_checkpoint
    assert "closed" in repr(m)


def test_context_manager(directory, clock):
    with CheckpointManager(directory, 2, save_fn=tf_save, clock=clock) as m:
        assert not can_open_writer(directory)
        m.save()
    assert m.closed and can_open_writer(directory)


def test_context_manager_closes_on_exception(directory, clock):
    with pytest.raises(RuntimeError):
        with CheckpointManager(directory, 2, save_fn=tf_save, clock=clock) as m:
            raise RuntimeError
    assert m.closed and can_open_writer(directory)


def test_garbage_collection_frees_the_handle(directory, clock):
    m = CheckpointManager(directory, 2, save_fn=tf_save, clock=clock)
    keys, ref = m._callback_keys, weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None
    assert not set(keys) & _manager._live_callbacks
    assert can_open_writer(directory)


def test_a_cycle_through_a_callback_is_collected(directory, clock):
    holder = {}

    def save_fn(prefix, number):  # refers to the manager: a reference cycle
        tf_save(prefix, number)
        assert holder["manager"] is not None

    m = CheckpointManager(directory, 2, save_fn=save_fn, clock=clock)
    holder["manager"] = m
    m.save()
    keys, ref = m._callback_keys, weakref.ref(m)
    del m, save_fn, holder  # only the cycle manager -> callback -> manager is left
    gc.collect()
    assert ref() is None
    assert not set(keys) & _manager._live_callbacks
    assert can_open_writer(directory)


def test_callbacks_survive_while_the_handle_lives(directory, clock):
    calls = []
    m = CheckpointManager(directory, 2, save_fn=lambda p, n: (calls.append(n), tf_save(p, n)),
                          clock=clock)  # nothing else refers to the lambda
    gc.collect()
    m.save()
    m.save()
    assert calls == [1, 2]
    m.close()


def test_failed_open_releases_the_callbacks(directory, clock):
    before = set(_manager._live_callbacks)
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        CheckpointManager(directory, 0, save_fn=tf_save, clock=clock)
    with CheckpointManager(directory, 2, save_fn=tf_save, clock=clock):
        with pytest.raises(ckpt_manager.LockedError):
            CheckpointManager(directory, 2, save_fn=tf_save, clock=clock)
    gc.collect()
    assert _manager._live_callbacks == before
