"""save_async / save(blocking=False) and wait_until_finished: the state
saved is the state at the call, a background save's failure (its callback's
exception itself) is raised once by the next call, and closing waits for the
save in flight without deadlocking on the GIL."""
import ctypes
import gc
import os
import subprocess
import sys
import threading
import traceback
import weakref

import numpy as np
import pytest

import ckpt_manager
from ckpt_manager import (CheckpointManager, CheckpointTimeoutError, InvalidArgumentError,
                          ReentrantCallError, _lib, _manager)
from conftest import subprocess_env, tf_save


class Boom(Exception):
    pass


class Gate:
    """Holds a background save callback until the test opens it. If a call
    waits for the save where it must not, the test would hang: a valve
    opens the gate after a minute instead, and the fixture fails the test."""

    VALVE_SECONDS = 60

    def __init__(self):
        self.entered = threading.Event()
        self._opened = threading.Event()
        self.valve_fired = False
        self._valve = threading.Timer(self.VALVE_SECONDS, self._fire)
        self._valve.daemon = True
        self._valve.start()

    def _fire(self):
        self.valve_fired = True
        self._opened.set()

    def pass_through(self):
        self.entered.set()
        self._opened.wait()

    def open(self):
        self._opened.set()

    def close(self):
        self._valve.cancel()
        self._opened.set()


@pytest.fixture
def gate():
    g = Gate()
    yield g
    g.close()
    assert not g.valve_fired, "a call waited for a save it must not wait for"


def listing(directory):
    return sorted(os.listdir(directory))


def state_file(directory):
    with open(os.path.join(directory, "checkpoint"), "rb") as f:
        return f.read()


def frame_names(exc):
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def can_open_writer(directory):
    try:
        CheckpointManager(directory, 2, save_fn=tf_save).close()
        return True
    except ckpt_manager.LockedError:
        return False


def test_registered_arrays_are_saved_as_they_were_at_the_call(directory, clock, gate):
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    at_the_call = weights.copy()

    def gated_save(prefix, number):
        gate.pass_through()
        tf_save(prefix, number)

    with CheckpointManager(directory, 3, save_fn=gated_save, clock=clock) as m:
        m.register_array("weights", weights)
        prefix = m.save_async()
        assert prefix == os.path.join(directory, "ckpt-1")
        weights[...] = -1.0  # the next training step, while the save runs
        gate.entered.wait()
        # Not committed yet: neither latest nor listed, nor in the state file.
        assert m.latest_checkpoint is None and m.checkpoints == []
        assert ckpt_manager.get_checkpoint_state(directory) is None
        gate.open()
        assert m.wait_until_finished() is None
        assert m.latest_checkpoint == prefix and m.checkpoints == [prefix]

    restored = np.zeros_like(weights)
    with CheckpointManager(directory, 3) as m:
        m.register_array("weights", restored)
        assert m.restore_or_initialize() == prefix
    np.testing.assert_array_equal(restored, at_the_call)


def test_save_blocking_false_is_save_async(directory, clock, gate):
    def gated_save(prefix, number):
        gate.pass_through()
        tf_save(prefix, number)

    with CheckpointManager(directory, None, save_fn=gated_save, clock=clock) as m:
        prefix = m.save(7, metrics={"loss": 0.5}, metadata={"epoch": 1}, blocking=False)
        assert prefix == os.path.join(directory, "ckpt-7")
        assert m.latest_checkpoint is None  # returned before the save callback ran
        gate.open()
        m.wait_until_finished()
        info = m.checkpoint_info(prefix)
        assert info["latest"] and info["metrics"] == {"loss": 0.5}
        assert info["metadata"] == {"epoch": 1}
        with open(prefix + ".index", "rb") as f:
            assert f.read() == b"index 7"


NEXT_CALLS = {
    "wait_until_finished": lambda m: m.wait_until_finished(),
    "save": lambda m: m.save(),
    "save_async": lambda m: m.save_async(),
    "save_blocking_false": lambda m: m.save(blocking=False),
    "restore_or_initialize": lambda m: m.restore_or_initialize(),
    "reload": lambda m: m.reload(),
}


@pytest.mark.parametrize("next_call", sorted(NEXT_CALLS))
def test_a_background_exception_is_raised_once_by_the_next_call(directory, clock, next_call):
    error = Boom("disk on fire")
    fail = [False]

    def failing_background_save(prefix, number):
        tf_save(prefix, number)  # a partial checkpoint
        if fail[0]:
            raise error

    with CheckpointManager(directory, 3, save_fn=failing_background_save,
                           restore_fn=lambda prefix: None, clock=clock) as m:
        first = m.save()
        before = listing(directory), state_file(directory)
        fail[0] = True
        assert m.save_async() == os.path.join(directory, "ckpt-2")
        with pytest.raises(Boom) as info:
            NEXT_CALLS[next_call](m)
        # The callback's own exception, with its traceback from the callback.
        assert info.value is error
        names = frame_names(info.value)
        assert names[0] == "test_a_background_exception_is_raised_once_by_the_next_call"
        assert names[-1] == "failing_background_save"
        # Never latest, nothing left on disk (no staging), the call did nothing else.
        assert m.latest_checkpoint == first and m.checkpoints == [first]
        assert (listing(directory), state_file(directory)) == before
        assert m.save_counter == 1
        # Once: the same call again does what it does.
        fail[0] = False
        NEXT_CALLS[next_call](m)
        m.wait_until_finished()
        assert m.latest_checkpoint in (first, os.path.join(directory, "ckpt-2"))


def test_a_background_failure_is_raised_by_one_thread_only(directory, clock):
    """Saves from several threads: each background failure is raised once, by
    whichever call comes next, and only the saves that started and did not
    fail are checkpoints."""
    def save_fn(prefix, number):
        tf_save(prefix, number)
        if number % 7 == 0:
            raise Boom(number)

    threads, rounds = 4, 12
    started, raised, others = [], [], []
    record = threading.Lock()

    with CheckpointManager(directory, None, save_fn=save_fn, clock=clock) as m:
        def work(first):
            for number in range(first, first + rounds):
                try:
                    prefix = m.save_async(number, check_interval=False)
                    with record:
                        started.append(number)
                    assert prefix == os.path.join(directory, "ckpt-%d" % number)
                except Boom as exc:  # an earlier save's: this one did not start
                    with record:
                        raised.append(exc.args[0])
                except BaseException as exc:  # pragma: no cover
                    others.append(exc)

        workers = [threading.Thread(target=work, args=(1 + 100 * t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        try:
            m.wait_until_finished()
        except Boom as exc:
            raised.append(exc.args[0])
        assert others == []
        failing = sorted(n for n in started if n % 7 == 0)
        assert failing, "some started save must fail"
        assert sorted(raised) == failing  # each once
        saved = sorted(n for n in started if n % 7)
        assert sorted(int(p.rsplit("-", 1)[1]) for p in m.checkpoints) == saved
        assert [n for n in range(1, 400) if os.path.exists(
            os.path.join(directory, "ckpt-%d.index" % n))] == saved


def test_wait_until_finished_times_out_while_the_save_runs(directory, clock, gate):
    def gated_save(prefix, number):
        gate.pass_through()
        tf_save(prefix, number)

    with CheckpointManager(directory, 3, save_fn=gated_save, clock=clock) as m:
        m.wait_until_finished(timeout=0)  # nothing in flight
        prefix = m.save_async()
        gate.entered.wait()
        with pytest.raises(CheckpointTimeoutError) as info:
            m.wait_until_finished(timeout=0)
        assert isinstance(info.value, TimeoutError)
        assert info.value.status_name == "CKPT_STATUS_TIMEOUT"
        with pytest.raises(CheckpointTimeoutError):
            m.wait_until_finished(timeout=0.01)
        assert m.latest_checkpoint is None
        gate.open()
        assert m.wait_until_finished() is None
        assert m.latest_checkpoint == prefix
        with pytest.raises(InvalidArgumentError):
            m.wait_until_finished(timeout=-1)
        with pytest.raises(InvalidArgumentError):
            m.wait_until_finished(timeout=float("nan"))


def test_a_skipped_save_does_not_wait(directory, clock, gate):
    step = [10]

    def gated_save(prefix, number):
        gate.pass_through()
        tf_save(prefix, number)

    with CheckpointManager(directory, 3, save_fn=gated_save, clock=clock,
                           step_counter=lambda: step[0], checkpoint_interval=10,
                           last_checkpoint_step=0) as m:
        prefix = m.save_async()
        assert prefix == os.path.join(directory, "ckpt-1")
        gate.entered.wait()
        step[0] = 15  # within the interval of the save in flight
        assert m.save_async() is None
        assert m.save() is None
        assert not m.should_save()
        # The save in flight still runs: none of those calls waited for it.
        with pytest.raises(CheckpointTimeoutError):
            m.wait_until_finished(timeout=0)
        gate.open()
        m.wait_until_finished()
        assert m.checkpoints == [prefix]


def test_prepare_runs_on_the_calling_thread_and_save_on_the_background(directory, clock):
    threads = {}
    fail_prepare = [False]

    def prepare_fn(number):
        threads.setdefault("prepare", set()).add(threading.get_ident())
        if fail_prepare[0]:
            raise Boom("no device copy for %d" % number)

    def save_fn(prefix, number):
        threads.setdefault("save", set()).add(threading.get_ident())
        tf_save(prefix, number)

    with CheckpointManager(directory, 3, save_fn=save_fn, prepare_fn=prepare_fn,
                           clock=clock) as m:
        m.save_async()
        m.wait_until_finished()
        assert threads["prepare"] == {threading.get_ident()}
        assert threading.get_ident() not in threads["save"]
        m.save()  # a blocking save runs it too
        assert len(threads["prepare"]) == 1
        # A failing prepare fails save_async itself, and nothing starts.
        fail_prepare[0] = True
        with pytest.raises(Boom, match="no device copy for 3"):
            m.save_async()
        m.wait_until_finished()
        assert [os.path.basename(p) for p in m.checkpoints] == ["ckpt-1", "ckpt-2"]
        assert "ckpt-3.index" not in listing(directory)
    with pytest.raises(TypeError):
        CheckpointManager(directory, 3, save_fn=save_fn, prepare_fn="not callable")


def test_a_background_delete_exception_is_a_logged_warning(directory, clock):
    """It fails nothing (the checkpoint is committed): the library's warning,
    naming the exception, reaches the log from the wait that saw the save end."""
    def delete_fn(prefix):
        raise Boom("cannot delete " + os.path.basename(prefix))

    logged = []
    with CheckpointManager(directory, 1, save_fn=tf_save, delete_fn=delete_fn,
                           clock=clock, log_fn=lambda level, text: logged.append(text)) as m:
        m.save()
        second = m.save_async()
        m.wait_until_finished()
        assert [text for text in logged if "could not delete" in text] == [
            text for text in logged if "Boom: cannot delete ckpt-1" in text]
        assert any("Boom: cannot delete ckpt-1" in text for text in logged)
        assert m.latest_checkpoint == second and m.checkpoints == [second]


def test_a_background_exception_carries_the_library_message(directory, clock):
    """The exception raised is the callback's own; the library's message (which
    names it) is in a note, and its payload is released once raised."""
    def save_fn(prefix, number):
        raise Boom("disk full at %d" % number)

    with CheckpointManager(directory, 3, save_fn=save_fn, clock=clock) as m:
        m.save_async()
        with pytest.raises(Boom) as info:
            m.wait_until_finished()
        if sys.version_info >= (3, 11):
            notes = "\n".join(info.value.__notes__)
            assert "background save" in notes
            assert "the save callback failed: Boom: disk full at 1" in notes
        assert _manager._attached == {}


@pytest.mark.parametrize("reentry", ["latest_checkpoint", "close"])
def test_a_background_callback_cannot_call_its_manager(directory, clock, reentry):
    holder = {}

    def save_fn(prefix, number):
        tf_save(prefix, number)
        m = holder["manager"]
        m.close() if reentry == "close" else m.latest_checkpoint

    with CheckpointManager(directory, 3, save_fn=save_fn, clock=clock) as m:
        holder["manager"] = m
        m.save_async()
        with pytest.raises(ReentrantCallError):
            m.wait_until_finished()
        assert not m.closed and m.latest_checkpoint is None
        holder.clear()


@pytest.mark.parametrize("how", ["close", "with", "del"])
def test_closing_waits_for_a_python_callback_in_flight(directory, clock, monkeypatch, how):
    """The library waits for the save in flight while the background thread
    needs the GIL to finish the Python callback: the foreign call must not
    hold the GIL."""
    assert not _lib.lib._func_flags_ & ctypes._FUNCFLAG_PYTHONAPI  # a CDLL, not a PyDLL
    events = []
    entered, release = threading.Event(), threading.Event()

    def slow_save(prefix, number):
        entered.set()
        release.wait()
        tf_save(prefix, number)  # Python code, after the free has begun
        events.append("callback finished")

    real_free = _lib.ckpt_manager_free

    def free(handle):
        events.append("free called")
        release.set()
        real_free(handle)
        events.append("free returned")

    monkeypatch.setattr(_lib, "ckpt_manager_free", free)
    m = CheckpointManager(directory, 3, save_fn=slow_save, clock=clock)
    keys = m._callback_keys
    prefix = m.save_async()
    entered.wait()
    if how == "close":
        m.close()
    elif how == "with":
        with m:
            pass
    else:
        del m
    assert events == ["free called", "callback finished", "free returned"]
    assert not set(keys) & _manager._live_callbacks  # the ctypes callbacks were released last
    assert ckpt_manager.latest_checkpoint(directory) == prefix
    assert can_open_writer(directory)


def test_a_manager_collected_by_its_own_background_callback(directory, clock):
    """gc may find an unreachable manager while its background save callback
    runs, on the library's thread, which cannot free it: another thread
    closes it once the save has ended."""
    collected = threading.Event()
    collected_here = []

    def save_fn(prefix, number):
        tf_save(prefix, number)
        gc.collect()
        collected_here.append(ref() is None)
        collected.set()

    m = CheckpointManager(directory, 3, save_fn=save_fn, clock=clock)
    m.cycle = m  # only gc can collect it
    ref = weakref.ref(m)
    gc.disable()  # only the callback's collection
    try:
        prefix = m.save_async()
        del m
        collected.wait()
    finally:
        gc.enable()
    assert collected_here == [True]
    for thread in threading.enumerate():
        if thread.name == "ckpt-manager-close":
            thread.join()
    gc.collect()
    assert ref() is None
    assert ckpt_manager.latest_checkpoint(directory) == prefix
    assert can_open_writer(directory)


EXIT_DURING_A_SAVE = """
import atexit, sys, threading
import ckpt_manager

exiting = threading.Event()
atexit.register(exiting.set)  # runs before the package's own exit handler

def save_fn(prefix, number):
    exiting.wait()  # still running when the interpreter exits
    with open(prefix + ".txt", "w") as f:
        f.write("saved at exit")

m = ckpt_manager.CheckpointManager(sys.argv[1], 3, save_fn=save_fn)
print(m.save_async())
"""


def test_the_save_in_flight_finishes_at_exit(directory):
    result = subprocess.run([sys.executable, "-c", EXIT_DURING_A_SAVE, directory],
                            env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    prefix = result.stdout.strip()
    assert prefix == os.path.join(directory, "ckpt-1")
    assert ckpt_manager.latest_checkpoint(directory) == prefix
    with open(prefix + ".txt") as f:
        assert f.read() == "saved at exit"
