"""When save() goes ahead: save_interval_seconds by the clock, should_save(),
request_save(), and the preemption handler (in a process of its own: its
state is process-global and never resets)."""
import os
import subprocess
import sys

import pytest

import ckpt_manager
from ckpt_manager import CheckpointManager
from conftest import subprocess_env, tf_save


def open_timed(directory, clock, **kwargs):
    return CheckpointManager(directory, 5, save_interval_seconds=60, save_fn=tf_save,
                             clock=clock, **kwargs)


def test_should_save_follows_the_time_interval(directory, clock):
    with open_timed(directory, clock) as m:
        assert m.should_save()  # no save yet
        assert m.should_save()  # asking saves nothing
        assert m.checkpoints == [] and not os.path.exists(directory + "/ckpt-1.index")
        assert m.save() == directory + "/ckpt-1"
        clock.now = 1059.0
        assert not m.should_save()
        assert m.save() is None
        assert m.save(check_interval=False) == directory + "/ckpt-2"  # at 1059
        clock.now = 1118.0
        assert not m.should_save()  # counted from the unchecked save
        clock.now = 1119.0
        assert m.should_save()
        assert m.save() == directory + "/ckpt-3"
    # Reopened: the interval counts from the latest checkpoint's time.
    clock.now = 1170.0
    with open_timed(directory, clock) as m:
        assert not m.should_save()
        assert m.save() is None
        clock.now = 1179.0
        assert m.should_save()
        assert m.save() == directory + "/ckpt-4"
    assert ckpt_manager.get_checkpoint_state(directory).all_model_checkpoint_timestamps == [
        1000.0, 1059.0, 1119.0, 1179.0]


def test_request_save_forces_one_save_within_the_interval(directory, clock):
    with open_timed(directory, clock) as m:
        m.save()
        clock.now += 10
        assert not m.should_save()
        m.request_save()
        assert m.should_save()
        assert m.should_save()  # the request stands until a save goes through
        assert m.save() == directory + "/ckpt-2"
        assert not m.should_save()
        assert m.save() is None
    assert os.path.exists(directory + "/ckpt-2.index")


def test_request_save_at_the_same_step_saves_once(directory, clock):
    with open_timed(directory, clock, step_counter=lambda: 7, checkpoint_interval=10) as m:
        assert m.save() == directory + "/ckpt-1"
        m.request_save()
        assert m.save() is None  # never twice at one step


def test_should_save_on_a_read_only_manager(directory, clock):
    with open_timed(directory, clock) as m:
        m.save()
    with CheckpointManager(directory, 5, read_only=True) as reader:
        with pytest.raises(ckpt_manager.ReadOnlyError):
            reader.should_save()


PREEMPTION = r"""
import os, signal, sys
import ckpt_manager

def save_fn(prefix, number):
    with open(prefix + ".index", "w") as f:
        f.write("checkpoint %d" % number)

now = [1000.0]
manager = ckpt_manager.CheckpointManager(sys.argv[1], 5, save_interval_seconds=3600,
                                         save_fn=save_fn, clock=lambda: now[0])
assert manager.save() is not None
now[0] += 10
try:
    ckpt_manager.install_preemption_handler(signal.SIGKILL)
    raise AssertionError("SIGKILL was accepted")
except ckpt_manager.InvalidArgumentError:
    pass
ckpt_manager.install_preemption_handler(signal.SIGUSR1)
assert not ckpt_manager.preemption_requested()
assert not manager.should_save() and manager.save() is None
# In a single-threaded process kill() delivers the signal before it returns.
os.kill(os.getpid(), signal.SIGUSR1)
assert ckpt_manager.preemption_requested()
print("saved", manager.save())
print("then", manager.save())
assert ckpt_manager.preemption_requested()  # it never resets
print("alive")
"""


def test_preemption_signal_makes_the_next_save_go_ahead(tmp_path):
    directory = str(tmp_path / "run")
    result = subprocess.run([sys.executable, "-c", PREEMPTION, directory], env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # SIGUSR1 would have ended the process without the handler.
    assert result.stdout.splitlines() == [
        "saved %s/ckpt-2" % directory, "then None", "alive"]
    with open(os.path.join(directory, "ckpt-2.index")) as f:
        assert f.read() == "checkpoint 2"
    assert ckpt_manager.latest_checkpoint(directory) == directory + "/ckpt-2"
