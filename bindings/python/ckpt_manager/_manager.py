"""CheckpointManager and the module-level functions, over the C API."""
import atexit
import collections.abc
import contextlib
import ctypes
import dataclasses
import itertools
import json
import logging
import math
import numbers
import operator
import os
import signal
import sys
import threading
import warnings
import weakref

from . import _communicator, _lib, _prototypes
from ._statuses import DTYPES, OK, REENTRANT_CALL
from .errors import ERRORS_BY_STATUS, InvalidArgumentError, error_for_status

logger = logging.getLogger("ckpt_manager")

_LOG_LEVELS = {_lib.CKPT_LOG_LEVEL_INFO: logging.INFO, _lib.CKPT_LOG_LEVEL_WARNING: logging.WARNING}


# ---------------------------------------------------------------- helpers

def _encode_path(path, what="path"):
    data = os.fsencode(os.fspath(path))
    if b"\0" in data:
        raise ValueError("%s contains a NUL byte: %r" % (what, path))
    return data


def _encode_text(text, what):
    if not isinstance(text, str):
        raise TypeError("%s must be a str, not %s" % (what, type(text).__name__))
    data = text.encode("utf-8")
    if b"\0" in data:
        raise ValueError("%s contains a NUL character: %r" % (what, text))
    return data


def _take_string(pointer):
    """Decode a library-owned string as a path and free it. None for NULL."""
    if not pointer:
        return None
    try:
        return os.fsdecode(ctypes.string_at(pointer))
    finally:
        _lib.ckpt_string_free(pointer)


def _take_list(list_pointer):
    try:
        items = list_pointer.contents
        return [os.fsdecode(ctypes.string_at(items.items[i])) for i in range(items.len)]
    finally:
        _lib.ckpt_string_list_free(list_pointer)


def _last_error():
    return _lib.ckpt_last_error_message().decode("utf-8", "backslashreplace")


def _check(status):
    if status != OK:
        raise error_for_status(status, _last_error())


def _to_int(value, what):
    """An int from an int, a NumPy/TF scalar (`.numpy()`), or anything int()-able."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if isinstance(value, bool):
        raise TypeError("%s must be an integer, not bool" % what)
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise TypeError("%s must be an integer, not %r" % (what, value)) from None
    if as_int != value:
        raise TypeError("%s must be an integer, not %r" % (what, value))
    return as_int


def _to_unsigned(value, what, bits):
    """_to_int, checked to fit a C unsigned integer of `bits` bits (ctypes
    would wrap it silently)."""
    number = _to_int(value, what)
    if number < 0 or number >= 1 << bits:
        raise InvalidArgumentError("%s must be in [0, 2**%d), not %d" % (what, bits, number),
                                   InvalidArgumentError.status)
    return number


def _to_metric(value, name):
    """A metric's value as a float: a real number, or a NumPy/TF scalar."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("metric %r must be a real number, not %r" % (name, value))
    return float(value)


# How checkpoint_info's JSON spells the metric values JSON has no number for.
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _json_path(value):
    """A path of checkpoint_info's JSON: a string, or an array of byte values
    when the path is not UTF-8."""
    return os.fsdecode(bytes(value)) if isinstance(value, list) else value


_METRIC_MODES = {"min": _lib.CKPT_METRIC_MIN, "max": _lib.CKPT_METRIC_MAX}


def _string_arg(pointer):
    return os.fsdecode(ctypes.string_at(pointer))


# --------------------------------------------------------- callbacks

# Keys of the user_data of callbacks the library still holds. The library
# calls _finalize exactly once per key when it no longer needs the callback;
# tests use this to check that closing a manager releases its callbacks.
_live_callbacks = set()
_next_key = [0]
_keys_lock = threading.Lock()


def _new_key():
    with _keys_lock:
        _next_key[0] += 1
        key = _next_key[0]
        _live_callbacks.add(key)
    return key


@_lib.ckpt_finalizer
def _finalize(user_data):
    try:
        _live_callbacks.discard(user_data)
    except Exception:  # interpreter shutdown: nothing left to do
        pass


class _Pending(threading.local):
    """The exception a callback raised, per thread: callbacks run on the
    thread that called into the manager, during the call (`calls` counts
    this manager's calls open on this thread)."""
    exc = None
    which = None
    calls = 0

    @contextlib.contextmanager
    def open_call(self):
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1


# Callbacks that cannot fail a call: a deletion runs after the commit, and a
# log message changes nothing.
_AFTER_COMMIT = ("delete", "log")


# Exceptions a callback attached to the failure it returned
# (ckpt_callback_set_error), by the key the library holds as the payload:
# the library hands the key back to the thread of the call that reports the
# failure (ckpt_take_error_payload), or releases it through
# _release_payload when nobody takes it. Each entry is (which, exception).
_attached = {}
_attached_keys = itertools.count(1)


@_lib.ckpt_finalizer
def _release_payload(key):
    try:
        _attached.pop(key, None)
    except Exception:  # interpreter shutdown: nothing left to do
        pass


def _attach(which, exc):
    """Attaches `exc`, raised in the `which` callback, to the failure the
    callback is about to return to the library."""
    key = next(_attached_keys)
    _attached[key] = (which, exc)
    message = "%s: %s" % (type(exc).__name__, exc)
    _lib.ckpt_callback_set_error(message.encode("utf-8", "backslashreplace"), key,
                                 _release_payload)


def _take_attached():
    """(which, exception) attached to this thread's last failed call, or None."""
    key = ctypes.c_void_p()
    if _lib.ckpt_take_error_payload(ctypes.byref(key)) != OK or not key.value:
        return None
    return _attached.pop(key.value, None)


# The _Pending of the manager whose background save callback runs on this
# thread, if any: calls into managers from there are refused before they
# take a manager's lock (another thread may hold it while it waits for that
# save).
_background_callback = threading.local()


def _running_background_callback():
    return getattr(_background_callback, "pending", None)


def _trampolines(pending, *, save_fn, prepare_fn, restore_fn, init_fn, step_counter,
                 clock, delete_fn, log_fn):
    """ctypes callbacks (setter, CFUNCTYPE object) for the given Python callables.

    They reference `pending` and the user's callables only, never the
    manager, so that a manager is collected when unreachable."""

    def run(which, body, failure):
        """body()'s value; if it raises, the exception goes to the call open
        on this thread, and is attached to the failure returned to the
        library (`failure`), which carries it to the call that reports it:
        a background save's (run with no call open) included."""
        in_call = pending.calls > 0
        if not in_call:
            _background_callback.pending = pending
        try:
            return body()
        except BaseException as exc:
            if in_call and pending.exc is None:  # keep the first one
                pending.exc, pending.which = exc, which
            if which != "log":  # the only one that cannot report failure
                _attach(which, exc)
            return failure
        finally:
            if not in_call:
                _background_callback.pending = None

    result = []
    if save_fn is not None:
        def save(_user_data, prefix, number):
            def body():
                save_fn(_string_arg(prefix), number)
                return 0
            return run("save", body, 1)
        result.append((_lib.ckpt_options_set_save_callback, _lib.ckpt_save_callback(save)))
    if prepare_fn is not None:
        def prepare(_user_data, number):
            def body():
                prepare_fn(number)
                return 0
            return run("prepare", body, 1)
        result.append((_lib.ckpt_options_set_prepare_callback, _lib.ckpt_prepare_callback(prepare)))
    if restore_fn is not None:
        def restore(_user_data, prefix):
            def body():
                restore_fn(_string_arg(prefix))
                return 0
            return run("restore", body, 1)
        result.append((_lib.ckpt_options_set_restore_callback, _lib.ckpt_restore_callback(restore)))
    if init_fn is not None:
        def init(_user_data):
            def body():
                init_fn()
                return 0
            return run("init", body, 1)
        result.append((_lib.ckpt_options_set_init_callback, _lib.ckpt_init_callback(init)))
    if step_counter is not None:
        def step(_user_data, out_step):
            def body():
                value = step_counter() if callable(step_counter) else step_counter
                out_step[0] = _to_int(value, "step_counter's value")
                return 0
            return run("step_counter", body, 1)
        result.append((_lib.ckpt_options_set_step_counter_callback, _lib.ckpt_step_counter_callback(step)))
    if clock is not None:
        def clock_cb(_user_data):
            # NaN is refused by the library as a clock failure.
            return run("clock", lambda: float(clock()), float("nan"))
        result.append((_lib.ckpt_options_set_clock_callback, _lib.ckpt_clock_callback(clock_cb)))
    if delete_fn is not None:
        def delete(_user_data, prefix):
            def body():
                delete_fn(_string_arg(prefix))
                return 0
            return run("delete", body, 1)
        result.append((_lib.ckpt_options_set_delete_callback, _lib.ckpt_delete_callback(delete)))

    def log(_user_data, level, message):
        def body():
            text = ctypes.string_at(message).decode("utf-8", "backslashreplace")
            py_level = _LOG_LEVELS.get(level, logging.WARNING)
            if log_fn is None:
                logger.log(py_level, "%s", text)
            else:
                log_fn(py_level, text)
        run("log", body, None)
    result.append((_lib.ckpt_options_set_log_callback, _lib.ckpt_log_callback(log)))
    return result


def _with_note(exc, note):
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)
    return exc


def _warn_callback_raised(which, exc, outcome, stacklevel):
    warnings.warn("ckpt_manager: the %s callback raised %r; %s" % (which, exc, outcome),
                  RuntimeWarning, stacklevel=stacklevel + 1)


# Managers not closed yet: closed at exit, so that a background save in
# flight finishes while the interpreter can still run its callbacks.
_open_managers = weakref.WeakSet()


@atexit.register
def _close_open_managers():
    for manager in list(_open_managers):
        try:
            manager.close()
        except Exception:  # another thread's call still runs: nothing to wait for here
            pass


@contextlib.contextmanager
def _save_args(checkpoint_number, check_interval, metrics, metadata):
    """A ckpt_save_args for the duration of the block."""
    args = ctypes.c_void_p()
    _check(_lib.ckpt_save_args_new(ctypes.byref(args)))
    try:
        if checkpoint_number is not None:
            _check(_lib.ckpt_save_args_set_checkpoint_number(
                args, _to_unsigned(checkpoint_number, "checkpoint_number", 64)))
        _check(_lib.ckpt_save_args_set_check_interval(args, bool(check_interval)))
        if metrics is not None:
            if not isinstance(metrics, collections.abc.Mapping):
                raise TypeError("metrics must be a dict of name: float, not %s"
                                % type(metrics).__name__)
            for name, value in metrics.items():
                _check(_lib.ckpt_save_args_set_metric(
                    args, _encode_text(name, "a metric's name"), _to_metric(value, name)))
        if metadata is not None:
            _check(_lib.ckpt_save_args_set_metadata_json(
                args, _encode_text(_metadata_json(metadata), "metadata")))
        yield args
    finally:
        _lib.ckpt_save_args_free(args)


# ------------------------------------------------------------ manager

class CheckpointManager:
    """Manages the checkpoints of one directory, like tf.train.CheckpointManager.

    `max_to_keep`: keep the newest N managed checkpoints (None keeps all).
    `keep_checkpoint_every_n_hours`: preserve one checkpoint every N hours among
    those max_to_keep pushes out (None: off). `checkpoint_name`: files are
    `<directory>/<name>-<N>...`. `step_counter` (a callable returning an int,
    or an object with `.numpy()` or `__int__`, such as a tf.Variable) and
    `checkpoint_interval` gate saves to one every N steps. `init_fn()` runs in
    restore_or_initialize() when there is no checkpoint.

    `save_fn(prefix, checkpoint_number)` writes a checkpoint's files, each
    named `prefix` or `prefix.<suffix>` (`prefix` is the save's staging
    prefix; the files move into place at the commit); `restore_fn(prefix)`
    reads them back.
    Alternatively (or in addition) register NumPy arrays with register_array()
    and the built-in saver writes them to `<prefix>.safetensors`. `checkpoint`
    may be an object with `write(prefix)` and `restore(prefix)` methods (as
    tf.train.Checkpoint has) used when save_fn/restore_fn are not given.
    A callback signals failure by raising: the exception propagates out of
    the call that ran it, and nothing is committed.

    Other options: `clock()` returns seconds since the epoch (for tests),
    `read_only` opens without the lock and refuses writes, `verify_checksums`
    (default True) checks CRC32C on restore, `partial_restore` lets the
    built-in saver skip tensors on one side only, `delete_fn(prefix)` replaces
    deletion, `log_fn(level, message)` receives warnings with a `logging`
    level (default: the "ckpt_manager" logger), `last_checkpoint_step` as in TF.

    Retention beyond TF (a checkpoint is kept if any rule keeps it):
    `keep_best=k` with `best_metric=name` also keeps the k best checkpoints
    by the metric that save(metrics=...) records, smaller is better with
    `best_mode="min"`, larger with "max" (a save without the metric, or with
    NaN, is never among the best; of equal values the newer); `keep_period=n`
    keeps every checkpoint whose number is a multiple of n; pin() keeps one
    until unpin(). Metrics, metadata and pins live in each checkpoint's
    manifest, so all of it survives a restart. `save_interval_seconds` lets
    save() go ahead at most that often by `clock` (with `checkpoint_interval`
    too, both must have passed).

    Multi-process training: `communicator` (an mpi4py communicator, or an
    object with rank, size, barrier, broadcast and all_gather: see
    README.md) makes the manager's creation, save() and
    restore_or_initialize() collective: every rank calls them in the same
    order, writes its own files (`<name>-<N>.rank-RRRRR-of-SSSSS...`), and
    every rank gets the same result; a failure on any rank raises the
    library's error on all ranks (`rank R: ...`), from the exception raised
    there. `coordination_timeout` (seconds, default 300) bounds each wait for
    the other ranks (CheckpointTimeoutError). save_async() is refused. With
    `node_local=True` each rank's `directory` is its own (a node-local disk):
    every rank locks, commits and sweeps its own files there, and restores
    follow rank 0's state (ckpt_options_set_node_local in the header).

    Object storage: `directory` may be `s3://bucket/prefix` (a str), a prefix
    of an S3-compatible bucket; every prefix the manager returns is then such
    a URL too. Endpoint, region and credentials come from the `AWS_*`
    environment variables and `~/.aws` files; `storage_options` ({key: value})
    overrides them with the S3 client's keys (`aws_endpoint`, `aws_region`,
    `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`, ...) and
    sets the library's own: `ckpt_local_staging_directory` (where `save_fn`
    writes and `restore_fn` reads, uploaded and downloaded by the library),
    `ckpt_allow_unconditional_writes`, `ckpt_max_retries` and
    `ckpt_lease_seconds` (how long a writer's lease on the prefix lasts; a
    second writer gets LockedError at open). A value may be a
    str, a bool ("true"/"false") or an int. An unknown key, or a URL of
    another scheme (`gs://`, ...), raises InvalidArgumentError. Local
    directories ignore the options. (ckpt_options_set_storage_option in the
    header.)

    Two tiers: `remote_directory` (a path or `s3://` URL) receives a copy of
    every checkpoint committed to `directory`, uploaded in the background by
    one thread and committed there with its own manifest and state file, so
    it is a valid checkpoint directory on its own; save() returns after the
    local commit. `remote_max_to_keep` and
    `remote_keep_checkpoint_every_n_hours` are its own retention (default:
    the local values); a checkpoint waiting for its upload is not deleted
    locally unless `local_max_held_for_upload` (a count) forces it.
    remote_status() reports the uploads; wait_until_finished() waits for
    them too; restore_or_initialize() takes the newer tier, downloading into
    `directory`. A save answering a preemption signal gives the uploads
    `remote_preemption_seconds` (default 30). See docs/tiers.md.

    Close it with close() or a `with` block; garbage collection closes it too.
    """

    def __init__(self, directory, max_to_keep, keep_checkpoint_every_n_hours=None,
                 checkpoint_name="ckpt", step_counter=None, checkpoint_interval=None,
                 init_fn=None, last_checkpoint_step=None, *, save_fn=None, restore_fn=None,
                 checkpoint=None, clock=None, read_only=False, verify_checksums=True,
                 partial_restore=False, delete_fn=None, log_fn=None, keep_best=None,
                 best_metric=None, best_mode="min", keep_period=None,
                 save_interval_seconds=None, prepare_fn=None, communicator=None,
                 coordination_timeout=None, node_local=False, storage_options=None,
                 remote_directory=None, remote_max_to_keep=None,
                 remote_keep_checkpoint_every_n_hours=None, local_max_held_for_upload=None,
                 remote_preemption_seconds=None):
        self._handle = None
        self._communicator = None
        self._arrays = {}
        self._callbacks = []
        self._lock = threading.RLock()
        self._depth = 0
        self._pending = _Pending()
        if checkpoint is not None:
            if save_fn is None:
                save_fn = lambda prefix, _number: checkpoint.write(prefix)  # noqa: E731
            if restore_fn is None:
                restore_fn = checkpoint.restore
        for name, fn in (("save_fn", save_fn), ("prepare_fn", prepare_fn),
                         ("restore_fn", restore_fn), ("init_fn", init_fn), ("clock", clock),
                         ("delete_fn", delete_fn), ("log_fn", log_fn)):
            if fn is not None and not callable(fn):
                raise TypeError("%s must be callable, not %r" % (name, fn))
        self._checkpoint_interval = (None if checkpoint_interval is None
                                     else _to_int(checkpoint_interval, "checkpoint_interval"))
        if (keep_best is None) != (best_metric is None):
            raise InvalidArgumentError(
                "keep_best and best_metric go together: keep the best k (keep_best=k) by the "
                "metric named best_metric; got keep_best=%r, best_metric=%r"
                % (keep_best, best_metric), InvalidArgumentError.status)
        if best_mode not in _METRIC_MODES:
            raise InvalidArgumentError("best_mode must be \"min\" or \"max\", not %r"
                                       % (best_mode,), InvalidArgumentError.status)

        options = ctypes.c_void_p()
        _check(_lib.ckpt_options_new(ctypes.byref(options)))
        try:
            _check(_lib.ckpt_options_set_directory(options, _encode_path(directory, "directory")))
            if max_to_keep is None:
                _check(_lib.ckpt_options_set_keep_all(options))
            else:
                _check(_lib.ckpt_options_set_max_to_keep(
                    options, _to_int(max_to_keep, "max_to_keep")))
            if keep_checkpoint_every_n_hours is not None:
                _check(_lib.ckpt_options_set_keep_checkpoint_every_n_hours(
                    options, float(keep_checkpoint_every_n_hours)))
            _check(_lib.ckpt_options_set_checkpoint_name(
                options, _encode_path(checkpoint_name, "checkpoint_name")))
            if self._checkpoint_interval is not None:
                _check(_lib.ckpt_options_set_checkpoint_interval(
                    options, self._checkpoint_interval))
            if last_checkpoint_step is not None:
                _check(_lib.ckpt_options_set_last_checkpoint_step(
                    options, _to_int(last_checkpoint_step, "last_checkpoint_step")))
            _check(_lib.ckpt_options_set_read_only(options, bool(read_only)))
            _check(_lib.ckpt_options_set_verify_checksums(options, bool(verify_checksums)))
            _check(_lib.ckpt_options_set_partial_restore(options, bool(partial_restore)))
            if keep_best is not None:
                _check(_lib.ckpt_options_set_keep_best(
                    options, _encode_text(best_metric, "best_metric"), _METRIC_MODES[best_mode],
                    _to_unsigned(keep_best, "keep_best", 8 * ctypes.sizeof(ctypes.c_size_t))))
            if keep_period is not None:
                _check(_lib.ckpt_options_set_keep_period(
                    options, _to_unsigned(keep_period, "keep_period", 64)))
            if save_interval_seconds is not None:
                _check(_lib.ckpt_options_set_save_interval_seconds(
                    options, float(save_interval_seconds)))
            if communicator is not None:
                bridge = _communicator.Bridge(_communicator.adapt(communicator))
                _check(_lib.ckpt_options_set_communicator(options, ctypes.byref(bridge.struct)))
                # The library calls the bridge's callbacks until the handle is freed.
                self._communicator = bridge
            if coordination_timeout is not None:
                _check(_lib.ckpt_options_set_coordination_timeout(
                    options, float(coordination_timeout)))
            if node_local:
                _check(_lib.ckpt_options_set_node_local(options, True))
            for key, value in _storage_options(storage_options):
                _check(_lib.ckpt_options_set_storage_option(options, key, value))
            if remote_directory is not None:
                _check(_lib.ckpt_options_set_remote_directory(
                    options, _encode_path(remote_directory, "remote_directory")))
            if remote_max_to_keep is not None:
                _check(_lib.ckpt_options_set_remote_max_to_keep(
                    options, _to_int(remote_max_to_keep, "remote_max_to_keep")))
            if remote_keep_checkpoint_every_n_hours is not None:
                _check(_lib.ckpt_options_set_remote_keep_checkpoint_every_n_hours(
                    options, float(remote_keep_checkpoint_every_n_hours)))
            if local_max_held_for_upload is not None:
                _check(_lib.ckpt_options_set_local_max_held_for_upload(
                    options, _to_int(local_max_held_for_upload, "local_max_held_for_upload")))
            if remote_preemption_seconds is not None:
                _check(_lib.ckpt_options_set_remote_preemption_seconds(
                    options, float(remote_preemption_seconds)))
            keys = []
            for setter, cfunc in _trampolines(
                    self._pending, save_fn=save_fn, prepare_fn=prepare_fn,
                    restore_fn=restore_fn, init_fn=init_fn, step_counter=step_counter,
                    clock=clock, delete_fn=delete_fn, log_fn=log_fn):
                key = _new_key()
                status = setter(options, cfunc, key, _finalize)
                if status != OK:  # ownership stayed with us
                    _live_callbacks.discard(key)
                    _check(status)
                self._callbacks.append(cfunc)
                keys.append(key)
            self._callback_keys = tuple(keys)
            handle = ctypes.c_void_p()
            with self._pending.open_call():
                status = _lib.ckpt_manager_new(options, ctypes.byref(handle))
            self._raise_for(status)
            self._handle = handle
            _open_managers.add(self)
        finally:
            _lib.ckpt_options_free(options)
        if self._handle is None:  # pragma: no cover (the raise above)
            self._callbacks = []

    # -- plumbing

    def _raise_for(self, status):
        """Raise for `status`, preferring an exception a callback raised: one
        of this call, or, when the call returns a background save's failure,
        the one that save's callback raised (attached to the failure). Warns
        about exceptions of callbacks that could not fail a call."""
        pending = self._pending
        exc, which = pending.exc, pending.which
        pending.exc = pending.which = None
        attached = _take_attached() if status != OK else None
        if self._communicator is not None:
            self._raise_collective(status, exc, which)
        if attached is not None and (exc is None or which in _AFTER_COMMIT):
            if exc is not None:
                _warn_callback_raised(which, exc, "the call failed anyway", stacklevel=3)
            failed_which, failed = attached
            raise _with_note(failed, "(raised in the %s callback of a background save run "
                                     "by ckpt_manager: %s)" % (failed_which, _last_error()))
        if exc is not None:
            if status != OK:
                raise _with_note(exc, "(raised in the %s callback run by ckpt_manager: %s)"
                                 % (which, _last_error()))
            _warn_callback_raised(which, exc, "the call succeeded anyway", stacklevel=3)
        _check(status)

    def _raise_collective(self, status, exc, which):
        """With a communicator every rank must raise the same error, so the
        library's is raised, from the exception a callback raised here."""
        bridge = self._communicator
        communicator_exc, bridge.first_error = bridge.first_error, None
        if status == OK:
            if exc is not None:
                _warn_callback_raised(which, exc, "the call succeeded anyway", stacklevel=4)
            return
        error = error_for_status(status, _last_error())
        if exc is not None:
            raise error from _with_note(
                exc, "(raised in the %s callback run by ckpt_manager)" % which)
        raise error from communicator_exc

    class _Call:
        __slots__ = ("manager",)

        def __init__(self, manager):
            self.manager = manager

        def __enter__(self):
            if _running_background_callback() is not None:
                raise ERRORS_BY_STATUS[REENTRANT_CALL](
                    "a callback of a background save called into a manager; it could wait "
                    "for the save that runs it", REENTRANT_CALL)
            manager = self.manager
            manager._lock.acquire()
            if manager._handle is None:
                manager._lock.release()
                raise ValueError("operation on a closed CheckpointManager")
            manager._depth += 1
            manager._pending.calls += 1
            return manager._handle

        def __exit__(self, *exc_info):
            self.manager._pending.calls -= 1
            self.manager._depth -= 1
            self.manager._lock.release()

    def _call(self):
        return CheckpointManager._Call(self)

    # -- TF's API

    def save(self, checkpoint_number=None, check_interval=True, metrics=None, metadata=None,
             *, blocking=True):
        """Saves a checkpoint; returns its prefix, or None when the interval skipped it.

        `metrics` ({name: float}, NaN and infinities allowed) and `metadata` (a
        dict that json.dumps can write) are recorded in the checkpoint's
        manifest; checkpoint_info() reads them back and `keep_best` ranks by
        the metric `best_metric`. `blocking=False` is save_async()."""
        if not blocking:
            return self.save_async(checkpoint_number, check_interval, metrics, metadata)
        if metrics is None and metadata is None:
            return self._save(checkpoint_number, check_interval)
        out = ctypes.c_void_p()
        with _save_args(checkpoint_number, check_interval, metrics, metadata) as args:
            with self._call() as handle:
                self._raise_for(_lib.ckpt_manager_save_with(handle, args, ctypes.byref(out)))
        return _take_string(out.value)

    def save_async(self, checkpoint_number=None, check_interval=True, metrics=None,
                   metadata=None):
        """save() in the background: returns the prefix the checkpoint will
        have (None when the interval skipped it) once the registered arrays
        are copied and `prepare_fn` has run; the library's thread then runs
        `save_fn`, writes and commits. The checkpoint becomes the latest only
        at its commit. A save in flight is waited for first; a skipped call
        never waits. If the background save fails, the next call that saves,
        restores, pins, reloads, asks should_save() or waits raises its error
        (the exception `save_fn` raised, itself), once; nothing is left of
        it."""
        out = ctypes.c_void_p()
        with _save_args(checkpoint_number, check_interval, metrics, metadata) as args:
            with self._call() as handle:
                self._raise_for(_lib.ckpt_manager_save_async(handle, args, ctypes.byref(out)))
        return _take_string(out.value)

    def remote_status(self):
        """The remote tier's uploads (None without a remote_directory): a
        RemoteStatus with the newest checkpoint number in the remote (None
        before the first), how many wait, failed attempts, checkpoints
        deleted locally before their upload, and the last failure's message
        (None once an upload succeeds)."""
        status = _prototypes.ckpt_remote_status()
        message = ctypes.c_void_p()
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_remote_status(
                handle, ctypes.byref(status), ctypes.byref(message)))
        last_error = None
        if message.value:
            try:
                last_error = ctypes.string_at(message.value).decode("utf-8", "replace")
            finally:
                _lib.ckpt_string_free(message.value)
        if not status.has_remote:
            return None
        return RemoteStatus(
            newest_uploaded=status.newest_uploaded if status.has_uploaded else None,
            pending=status.pending, failures=status.failures, dropped=status.dropped,
            last_error=last_error)

    def wait_until_finished(self, timeout=None):
        """Waits until the background save in flight, if any, has committed
        or failed, and every upload to the remote tier is done: raises the
        save's error if it failed (once), or CheckpointTimeoutError if it or
        an upload still runs after `timeout` seconds (None waits as long as
        it takes, 0 only checks)."""
        if timeout is None:
            seconds = -1.0  # the library's "as long as it takes"
        else:
            seconds = float(timeout)
            if seconds < 0:
                raise InvalidArgumentError("timeout must be None or >= 0, not %r" % (timeout,),
                                           InvalidArgumentError.status)
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_wait_until_finished(handle, seconds))

    def _save(self, checkpoint_number, check_interval):
        number_p = (None if checkpoint_number is None else ctypes.byref(ctypes.c_uint64(
            _to_unsigned(checkpoint_number, "checkpoint_number", 64))))
        out = ctypes.c_void_p()
        with self._call() as handle:
            status = _lib.ckpt_manager_save(handle, number_p, bool(check_interval),
                                            ctypes.byref(out))
            self._raise_for(status)
        return _take_string(out.value)

    def restore_or_initialize(self):
        """Restores the newest intact checkpoint and returns its prefix, or runs
        init_fn and returns None when there is none."""
        out = ctypes.c_void_p()
        with self._call() as handle:
            status = _lib.ckpt_manager_restore_or_initialize(handle, ctypes.byref(out))
            self._raise_for(status)
        return _take_string(out.value)

    @property
    def latest_checkpoint(self):
        """The latest checkpoint's prefix (as the state file records it), or None."""
        out = ctypes.c_void_p()
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_latest(handle, ctypes.byref(out)))
        return _take_string(out.value)

    @property
    def checkpoints(self):
        """The managed checkpoints' prefixes, oldest first (preserved ones not listed)."""
        out = ctypes.POINTER(_lib.ckpt_string_list)()
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_checkpoints(handle, ctypes.byref(out)))
        return _take_list(out)

    @property
    def directory(self):
        out = ctypes.c_void_p()
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_directory(handle, ctypes.byref(out)))
        return _take_string(out.value)

    @property
    def save_counter(self):
        out = ctypes.c_uint64()
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_save_counter(handle, ctypes.byref(out)))
        return out.value

    @property
    def checkpoint_interval(self):
        return self._checkpoint_interval

    # -- beyond TF

    @property
    def best_checkpoint(self):
        """The best managed checkpoint's prefix by `best_metric` (of equal
        values the newer), or None when none recorded the metric (or all
        recorded NaN). InvalidArgumentError without `keep_best`."""
        out = ctypes.c_void_p()
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_best(handle, ctypes.byref(out)))
        return _take_string(out.value)

    def pin(self, prefix):
        """Keeps the managed checkpoint `prefix` through every sweep until
        unpin(); recorded in its manifest, so it survives a restart.
        InvalidArgumentError if `prefix` is not on the managed list."""
        encoded = _encode_path(prefix, "prefix")
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_pin(handle, encoded))

    def unpin(self, prefix):
        """Undoes pin(); deletes nothing now (the next save's sweep may)."""
        encoded = _encode_path(prefix, "prefix")
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_unpin(handle, encoded))

    def checkpoint_info(self, prefix):
        """What is known of the checkpoint at `prefix`, a dict: prefix, number,
        step (or None), timestamp, metrics ({name: float}), metadata (the dict
        saved, or None), pinned, managed, latest, has_manifest, files
        ([{"suffix", "size"}]) and total_size. InvalidArgumentError if the
        directory has no checkpoint at `prefix`."""
        encoded = _encode_path(prefix, "prefix")
        out = ctypes.c_void_p()
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_checkpoint_info(handle, encoded, ctypes.byref(out)))
        try:
            info = json.loads(ctypes.string_at(out.value))
        finally:
            _lib.ckpt_string_free(out.value)
        info["prefix"] = _json_path(info["prefix"])
        info["metrics"] = {name: _NON_FINITE.get(value, value) if isinstance(value, str)
                           else value for name, value in info["metrics"].items()}
        for file in info["files"]:
            file["suffix"] = _json_path(file["suffix"])
        return info

    def should_save(self):
        """Whether save() (checking the intervals) would save now; saves nothing."""
        out = ctypes.c_bool()
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_should_save(handle, ctypes.byref(out)))
        return out.value

    def request_save(self):
        """Makes the next save() go ahead whatever the intervals say; the
        request stands until a save goes through, or finds the current step
        saved already. Waits for a call another
        thread is running on this manager."""
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_request_save(handle))

    def verify(self, prefix=None, checksums=True):
        """Checks a checkpoint (default: the latest) against its manifest; raises
        CheckpointDamagedError or NoManifestError if it does not verify."""
        encoded = None if prefix is None else _encode_path(prefix, "prefix")
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_verify(handle, encoded, bool(checksums)))

    def reload(self):
        """Re-reads the state file (a read-only manager sees new checkpoints)."""
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_reload(handle))

    def register_array(self, name, array, replicated=False, global_shape=None, offset=None):
        """Registers a NumPy array with the built-in saver, without copying.

        Every save writes it to the checkpoint's safetensors file;
        restore_or_initialize() writes the checkpoint's values into it in
        place. The array must be C-contiguous, writeable, aligned, native byte
        order, of dtype float64/32/16, (u)int64/32/16/8, bool (or
        ml_dtypes.bfloat16); it may be empty (a zero dimension). The manager
        keeps a reference to it until unregister(name) or close().

        Under a communicator the array is one of three kinds (docs/tensors.md):
        by default rank-local (each rank its own); `replicated=True`: the same
        on every rank, written once; `global_shape` and `offset` (sequences
        of ints, as long as array.ndim): this rank's box, starting at `offset`,
        of a tensor of `global_shape` sharded across the ranks. A checkpoint
        restores onto any number of ranks."""
        np = _numpy()
        if not isinstance(array, np.ndarray):
            raise TypeError("register_array needs a numpy.ndarray, not %s" % type(array).__name__)
        dtype_name = _NUMPY_DTYPES.get(array.dtype.name)
        if dtype_name is None or not array.dtype.isnative:
            raise TypeError("unsupported dtype %s for %r (supported: %s, native byte order)"
                            % (array.dtype.str, name, ", ".join(sorted(_NUMPY_DTYPES))))
        flags = array.flags
        if not flags.c_contiguous:
            raise ValueError("array %r is not C-contiguous (use numpy.ascontiguousarray and "
                             "register the copy)" % name)
        if not flags.writeable:
            raise ValueError("array %r is not writeable" % name)
        if not flags.aligned:
            raise ValueError("array %r is not aligned" % name)
        if (global_shape is None) != (offset is None):
            raise ValueError("array %r: give both global_shape and offset (a sharded tensor) "
                             "or neither" % name)
        if replicated and global_shape is not None:
            raise ValueError("array %r: a replicated tensor has no global_shape or offset "
                             "(it is the whole tensor on every rank)" % name)
        encoded = _encode_text(name, "name")
        ndim = array.ndim

        def dims(values, what):
            values = tuple(values)
            if len(values) != ndim or not all(
                    isinstance(v, (int, np.integer)) and v >= 0 for v in values):
                raise ValueError("array %r: %s %r is not %d non-negative ints (one per "
                                 "dimension of the array)" % (name, what, values, ndim))
            return (ctypes.c_uint64 * max(ndim, 1))(*values) if ndim else None

        shape = dims(array.shape, "shape")
        with self._call() as handle:
            if global_shape is not None:
                status = _lib.ckpt_manager_register_tensor_slice(
                    handle, encoded, DTYPES[dtype_name], dims(global_shape, "global_shape"),
                    dims(offset, "offset"), shape, ndim, array.ctypes.data)
            elif replicated:
                status = _lib.ckpt_manager_register_replicated_tensor(
                    handle, encoded, DTYPES[dtype_name], shape, ndim, array.ctypes.data)
            else:
                status = _lib.ckpt_manager_register_tensor(
                    handle, encoded, DTYPES[dtype_name], shape, ndim, array.ctypes.data)
            self._raise_for(status)
            self._arrays[name] = array

    def unregister(self, name):
        """Unregisters an array; the manager no longer reads, writes or holds it."""
        encoded = _encode_text(name, "name")
        with self._call() as handle:
            self._raise_for(_lib.ckpt_manager_unregister_tensor(handle, encoded))
            self._arrays.pop(name, None)

    @property
    def registered_arrays(self):
        """{name: array} registered with the built-in saver."""
        return dict(self._arrays)

    @property
    def closed(self):
        return self._handle is None

    def close(self):
        """Frees the handle (releases the directory's lock and the callbacks),
        after the background save in flight, if any, has finished; its failure
        is logged and warned about. Idempotent. Not allowed from inside one of
        this manager's callbacks."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        if _running_background_callback() is self._pending:
            # The lock may be held by a thread that waits for this very save.
            raise ERRORS_BY_STATUS[REENTRANT_CALL](
                "close() called from a callback of the same manager", REENTRANT_CALL)
        with lock:
            if self._handle is None:
                return
            if self._depth:
                raise ERRORS_BY_STATUS[REENTRANT_CALL](
                    "close() called from a callback of the same manager", REENTRANT_CALL)
            handle, self._handle = self._handle, None
            _open_managers.discard(self)
            # Not PyDLL: the GIL is released while the library waits for a
            # background save whose Python callbacks need it.
            with self._pending.open_call():
                _lib.ckpt_manager_free(handle)
            self._arrays = {}
            self._callbacks = []
            self._communicator = None
        # No call is left to raise it (the library logged a background
        # save's failure it found, and released that save's exception).
        pending = self._pending
        if pending.exc is not None:
            _warn_callback_raised(pending.which, pending.exc, "the manager closed anyway",
                                  stacklevel=2)
        pending.exc = pending.which = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is None:
            return
        if sys.is_finalizing():
            return  # the process exits: the kernel releases the lock
        if _running_background_callback() is self._pending:
            # Collected by this manager's own background save callback: the
            # library cannot free it until that save ends, so another thread
            # closes it (and keeps it alive until then).
            threading.Thread(target=self.close, name="ckpt-manager-close").start()
            return
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        if self._handle is None:
            return "<CheckpointManager (closed)>"
        return "<CheckpointManager directory=%r latest=%r>" % (
            self.directory, self.latest_checkpoint)


_NUMPY_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}


def _numpy():
    try:
        import numpy
    except ImportError as exc:
        raise ImportError("register_array needs NumPy: pip install numpy") from exc
    return numpy


def _storage_options(storage_options):
    """[(key, value)] encoded for ckpt_options_set_storage_option."""
    if storage_options is None:
        return []
    if not isinstance(storage_options, collections.abc.Mapping):
        raise TypeError("storage_options must be a dict of key: value, not %s"
                        % type(storage_options).__name__)
    encoded = []
    for key, value in storage_options.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int):
            value = str(value)
        encoded.append((_encode_text(key, "a storage option's key"),
                        _encode_text(value, "storage option %r" % (key,))))
    return encoded


def _metadata_json(metadata):
    if not isinstance(metadata, collections.abc.Mapping):
        raise TypeError("metadata must be a dict, not %s" % type(metadata).__name__)
    try:
        return json.dumps(dict(metadata), allow_nan=False)
    except ValueError as exc:  # NaN or an infinity: JSON has no such number
        raise InvalidArgumentError("metadata cannot be written as JSON: %s" % exc,
                                   InvalidArgumentError.status) from exc


# ----------------------------------------------------- module functions

@dataclasses.dataclass(frozen=True)
class RemoteStatus:
    """What CheckpointManager.remote_status() reports."""
    newest_uploaded: object
    pending: int
    failures: int
    dropped: int
    last_error: object


@dataclasses.dataclass(frozen=True)
class CheckpointState:
    """A directory's `checkpoint` state file (tf.train.get_checkpoint_state)."""
    model_checkpoint_path: str
    all_model_checkpoint_paths: list
    all_model_checkpoint_timestamps: list
    last_preserved_timestamp: float


# The module functions take a local path or an `s3://bucket/prefix` URL; for
# a URL, the endpoint and credentials come from the `AWS_*` environment
# variables and `~/.aws` files, read at each call.

def latest_checkpoint(directory, *, fallback=True, verify_checksums=False):
    """The newest usable checkpoint of `directory` (tf.train.latest_checkpoint,
    a path or an `s3://` URL), or None. If the latest's files are damaged, the newest intact older one is
    returned (with a warning on stderr) unless `fallback=False`, which raises
    CheckpointDamagedError. `verify_checksums` checks CRC32C, not only sizes."""
    flags = (0 if fallback else _lib.CKPT_LATEST_NO_FALLBACK) | (
        _lib.CKPT_LATEST_VERIFY_CHECKSUMS if verify_checksums else 0)
    out = ctypes.c_void_p()
    _check(_lib.ckpt_latest_checkpoint_with_flags(
        _encode_path(directory, "directory"), flags, ctypes.byref(out)))
    return _take_string(out.value)


def get_checkpoint_state(directory):
    """The parsed state file of `directory` (a path or an `s3://` URL; paths
    joined onto it), or None."""
    out = ctypes.c_void_p()
    _check(_lib.ckpt_get_checkpoint_state(_encode_path(directory, "directory"),
                                          ctypes.byref(out)))
    if not out:
        return None
    state = out.value
    try:
        return CheckpointState(
            model_checkpoint_path=os.fsdecode(
                _lib.ckpt_checkpoint_state_model_checkpoint_path(state)),
            all_model_checkpoint_paths=[
                os.fsdecode(_lib.ckpt_checkpoint_state_path(state, i))
                for i in range(_lib.ckpt_checkpoint_state_path_count(state))],
            all_model_checkpoint_timestamps=[
                _lib.ckpt_checkpoint_state_timestamp(state, i)
                for i in range(_lib.ckpt_checkpoint_state_timestamp_count(state))],
            last_preserved_timestamp=_lib.ckpt_checkpoint_state_last_preserved_timestamp(state))
    finally:
        _lib.ckpt_checkpoint_state_free(state)


def checkpoint_exists(prefix):
    """Whether any file (or object, for an `s3://` URL) `<prefix>` or
    `<prefix>.<suffix>` exists."""
    out = ctypes.c_bool()
    _check(_lib.ckpt_checkpoint_exists(_encode_path(prefix, "prefix"), ctypes.byref(out)))
    return out.value


def remove_checkpoint(prefix):
    """Deletes every file of the checkpoint at `prefix`."""
    _check(_lib.ckpt_remove_checkpoint(_encode_path(prefix, "prefix")))


def verify_checkpoint(prefix, checksums=True):
    """Checks the checkpoint at `prefix` against its manifest; raises
    CheckpointDamagedError or NoManifestError if it does not verify."""
    _check(_lib.ckpt_verify_checkpoint(_encode_path(prefix, "prefix"), bool(checksums)))


def install_preemption_handler(signum=signal.SIGTERM):
    """Installs a C-level handler for `signum` that makes the next save() of
    every manager, open now or later, go ahead whatever its intervals say,
    and preemption_requested() true. A handler installed before is called
    after it (unless it was the default action or "ignore"), so the signal no
    longer ends the process: save, then stop. signal.signal() for the same
    signal afterwards replaces it. InvalidArgumentError for SIGKILL, SIGSTOP,
    SIGABRT, a fault signal or a number that is no signal."""
    number = _to_int(signum, "signum")
    if not -(1 << 31) <= number < 1 << 31:  # ctypes would wrap it into a valid signal
        raise InvalidArgumentError("%d is not a signal number" % number,
                                   InvalidArgumentError.status)
    _check(_lib.ckpt_install_preemption_handler(number))


def preemption_requested():
    """Whether a signal handled by install_preemption_handler() has arrived:
    the trainer should save (the save goes ahead) and stop. Never resets."""
    return bool(_lib.ckpt_preemption_requested())


def version():
    """The loaded library's version, "MAJOR.MINOR.PATCH"."""
    return _lib.version


def status_name(status):
    """The header's name of a status value, e.g. "CKPT_STATUS_IO_ERROR"."""
    return _lib.ckpt_status_name(status).decode("ascii")


def library_path():
    """The path of the loaded libckpt_manager.so."""
    return _lib.path
