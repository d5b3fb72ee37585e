"""Python exceptions raised in callbacks propagate, with their traceback."""
import os
import threading
import traceback

import numpy as np
import pytest

import ckpt_manager
from ckpt_manager import CallbackFailedError, CheckpointManager, ReentrantCallError, _lib
from conftest import tf_save


class Boom(Exception):
    pass


def test_exception_in_save_propagates_and_commits_nothing(directory, clock):
    fail = [False]

    def my_failing_save_callback(prefix, number):
        tf_save(prefix, number)
        if fail[0]:
            raise ValueError("disk says no for %s" % os.path.basename(prefix))

    with CheckpointManager(directory, 2, save_fn=my_failing_save_callback, clock=clock) as m:
        first = m.save()
        before = (m.latest_checkpoint, m.checkpoints, m.save_counter, sorted(os.listdir(directory)))
        state_before = open(os.path.join(directory, "checkpoint")).read()
        fail[0] = True
        with pytest.raises(ValueError, match="disk says no for ckpt-2") as info:
            m.save()
        frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
        assert "my_failing_save_callback" in frames
        assert frames[0] == "test_exception_in_save_propagates_and_commits_nothing"
        # Nothing changed: counter, latest, list, state file, files on disk.
        after = (m.latest_checkpoint, m.checkpoints, m.save_counter, sorted(os.listdir(directory)))
        assert after == before
        assert open(os.path.join(directory, "checkpoint")).read() == state_before
        assert m.latest_checkpoint == first
        fail[0] = False
        assert os.path.basename(m.save()) == "ckpt-2"  # retried with the same number


def test_the_same_exception_object_is_raised(directory, clock):
    error = Boom("the original")

    def save_fn(prefix, number):
        raise error

    with CheckpointManager(directory, 2, save_fn=save_fn, clock=clock) as m:
        with pytest.raises(Boom) as info:
            m.save()
        assert info.value is error


def test_base_exceptions_propagate_too(directory, clock):
    def save_fn(prefix, number):
        raise KeyboardInterrupt

    with CheckpointManager(directory, 2, save_fn=save_fn, clock=clock) as m:
        with pytest.raises(KeyboardInterrupt):
            m.save()
        assert m.latest_checkpoint is None


def test_exception_in_restore_and_init(directory, clock):
    def init_fn():
        raise Boom("init")

    def restore_fn(prefix):
        raise Boom("restore " + os.path.basename(prefix))

    with CheckpointManager(directory, 2, save_fn=tf_save, restore_fn=restore_fn,
                           init_fn=init_fn, clock=clock) as m:
        with pytest.raises(Boom, match="init"):
            m.restore_or_initialize()
        m.save()
        with pytest.raises(Boom, match="restore ckpt-1"):
            m.restore_or_initialize()


def test_exception_in_step_counter(directory, clock):
    def step_counter():
        raise Boom("no step")

    with CheckpointManager(directory, 2, save_fn=tf_save, step_counter=step_counter,
                           checkpoint_interval=1, clock=clock) as m:
        with pytest.raises(Boom, match="no step"):
            m.save()
        assert m.checkpoints == [] and m.save_counter == 0


def test_step_counter_must_give_an_integer(directory, clock):
    with CheckpointManager(directory, 2, save_fn=tf_save, step_counter=lambda: "seven",
                           checkpoint_interval=1, clock=clock) as m:
        with pytest.raises(TypeError):
            m.save()


def test_step_counter_accepts_numpy_scalars(directory, clock):
    step = np.int64(5)
    with CheckpointManager(directory, None, save_fn=tf_save, step_counter=lambda: step,
                           checkpoint_interval=1, clock=clock) as m:
        assert m.save() is not None
        assert m.save() is None  # same step


def test_exception_in_clock_at_open(directory):
    def clock():
        raise Boom("clock broke")

    with pytest.raises(Boom, match="clock broke"):
        CheckpointManager(directory, 2, save_fn=tf_save, clock=clock)


def test_non_finite_clock_is_callback_failed(directory):
    with pytest.raises(CallbackFailedError):
        CheckpointManager(directory, 2, save_fn=tf_save, clock=lambda: float("nan"))


def test_reentrant_call_is_refused(directory, clock):
    holder = {}

    def save_fn(prefix, number):
        tf_save(prefix, number)
        holder["manager"].latest_checkpoint  # calls back into the running manager

    with CheckpointManager(directory, 2, save_fn=save_fn, clock=clock) as m:
        holder["manager"] = m
        with pytest.raises(ReentrantCallError):
            m.save()
        assert m.latest_checkpoint is None


def test_close_inside_a_callback_is_refused(directory, clock):
    holder = {}

    def save_fn(prefix, number):
        tf_save(prefix, number)
        holder["manager"].close()

    with CheckpointManager(directory, 2, save_fn=save_fn, clock=clock) as m:
        holder["manager"] = m
        with pytest.raises(ReentrantCallError):
            m.save()
        assert not m.closed
        holder.clear()


def test_the_library_refuses_a_free_inside_a_callback(directory, clock):
    holder = {}

    def save_fn(prefix, number):
        tf_save(prefix, number)
        _lib.ckpt_manager_free(holder["manager"]._handle)  # bypasses close()'s own check
        holder["message"] = _lib.ckpt_last_error_message()

    with CheckpointManager(directory, 2, save_fn=save_fn, clock=clock) as m:
        holder["manager"] = m
        m.save()
        assert b"was not freed" in holder["message"]
        clock.now += 1
        m.save()
        assert len(m.checkpoints) == 2
        holder.clear()


def test_delete_fn_replaces_deletion(directory, clock):
    deleted = []
    with CheckpointManager(directory, 1, save_fn=tf_save, delete_fn=deleted.append,
                           clock=clock) as m:
        first = m.save()
        m.save()
    assert deleted == [first]
    assert ckpt_manager.checkpoint_exists(first)  # our delete_fn kept the files


def test_exception_in_delete_fn_after_the_commit_is_a_warning(directory, clock):
    def delete_fn(prefix):
        raise Boom("cannot delete")

    with CheckpointManager(directory, 1, save_fn=tf_save, delete_fn=delete_fn,
                           clock=clock) as m:
        m.save()
        with pytest.warns(RuntimeWarning, match="cannot delete"):
            second = m.save()
        assert m.latest_checkpoint == second


def test_default_log_goes_to_python_logging(directory, caplog):
    times = iter([10000.0, 10000.0])
    with CheckpointManager(directory, 1, save_fn=tf_save, clock=lambda: next(times)) as m:
        m.save()
    with caplog.at_level("WARNING", logger="ckpt_manager"):
        CheckpointManager(directory, 1, save_fn=tf_save, clock=lambda: 5000.0).close()
    assert any("clock" in r.getMessage() for r in caplog.records)


def test_threads_share_a_manager(directory, clock):
    with CheckpointManager(directory, None, save_fn=tf_save, clock=clock) as m:
        errors = []

        def work():
            try:
                for _ in range(20):
                    m.save()
            except Exception as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert m.save_counter == 80 and len(m.checkpoints) == 80


def test_exceptions_stay_on_their_thread(directory, clock):
    """A callback failing on one thread never surfaces on another."""
    def save_fn(prefix, number):
        tf_save(prefix, number)
        if threading.current_thread().name == "failing":
            raise Boom(threading.current_thread().name)

    with CheckpointManager(directory, None, save_fn=save_fn, clock=clock) as m:
        results = {}

        def work():
            name = threading.current_thread().name
            try:
                for _ in range(20):
                    m.save()
                results[name] = "ok"
            except Boom as exc:
                results[name] = str(exc)

        threads = [threading.Thread(target=work, name=n) for n in ("failing", "a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {"failing": "failing", "a": "ok", "b": "ok"}


def test_checkpoint_object_with_write_and_restore(directory, clock):
    class Checkpoint:  # the shape of tf.train.Checkpoint
        def __init__(self):
            self.restored = []

        def write(self, prefix):
            tf_save(prefix, 0)

        def restore(self, prefix):
            self.restored.append(prefix)

    checkpoint = Checkpoint()
    with CheckpointManager(directory, 2, checkpoint=checkpoint, clock=clock) as m:
        prefix = m.save()
        assert ckpt_manager.checkpoint_exists(prefix)
        assert m.restore_or_initialize() == prefix
    assert checkpoint.restored == [prefix]


def test_callbacks_must_be_callable(directory):
    with pytest.raises(TypeError):
        CheckpointManager(directory, 2, save_fn="not callable")
