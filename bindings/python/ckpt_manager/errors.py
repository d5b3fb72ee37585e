"""Exceptions: one class per ckpt_status, mapped by the status's value.

The values come from _statuses.py, which is generated from the C header
(generate_from_header.py); a test regenerates it and checks every status has a
class here.
"""
from . import _statuses

__all__ = [
    "CheckpointError",
    "NullArgumentError",
    "InvalidArgumentError",
    "StateCorruptError",
    "CheckpointIOError",
    "CallbackFailedError",
    "ReentrantCallError",
    "PanicError",
    "CheckpointDamagedError",
    "LockedError",
    "ReadOnlyError",
    "NoManifestError",
    "TensorMismatchError",
    "CheckpointTimeoutError",
    "error_for_status",
]


class CheckpointError(Exception):
    """A ckpt-manager call failed. `status` is the ckpt_status value, `message`
    the library's ckpt_last_error_message() for the failed call."""

    status = None
    status_name = None

    def __init__(self, message="", status=None):
        if status is not None:
            self.status = status
        self.message = message
        super().__init__(message)

    def __str__(self):
        name = self.status_name or ("status %s" % self.status)
        return "%s: %s" % (name, self.message) if self.message else name

    def __reduce__(self):
        return (type(self), (self.message, self.status))


class NullArgumentError(CheckpointError):
    """CKPT_STATUS_NULL_ARGUMENT."""


class InvalidArgumentError(CheckpointError, ValueError):
    """CKPT_STATUS_INVALID_ARGUMENT (also a ValueError)."""


class StateCorruptError(CheckpointError):
    """CKPT_STATUS_STATE_CORRUPT: the `checkpoint` state file cannot be used."""


class CheckpointIOError(CheckpointError, OSError):
    """CKPT_STATUS_IO_ERROR (also an OSError)."""

    def __init__(self, message="", status=None):
        CheckpointError.__init__(self, message, status)

    def __str__(self):
        return CheckpointError.__str__(self)


class CallbackFailedError(CheckpointError):
    """CKPT_STATUS_CALLBACK_FAILED: a callback returned a non-zero code.

    A Python exception raised in a callback is re-raised itself instead."""


class ReentrantCallError(CheckpointError):
    """CKPT_STATUS_REENTRANT_CALL: a callback called back into its manager."""


class PanicError(CheckpointError):
    """CKPT_STATUS_PANIC: a panic inside the library was caught."""


class CheckpointDamagedError(CheckpointError):
    """CKPT_STATUS_CHECKPOINT_DAMAGED."""


class LockedError(CheckpointError):
    """CKPT_STATUS_LOCKED: another writer holds the directory."""


class ReadOnlyError(CheckpointError):
    """CKPT_STATUS_READ_ONLY: the manager is read-only and the call would write."""


class NoManifestError(CheckpointError):
    """CKPT_STATUS_NO_MANIFEST: the checkpoint cannot be verified."""


class TensorMismatchError(CheckpointError):
    """CKPT_STATUS_TENSOR_MISMATCH: nothing was restored."""


class CheckpointTimeoutError(CheckpointError, TimeoutError):
    """CKPT_STATUS_TIMEOUT: wait_until_finished() timed out; the background
    save still runs (also a TimeoutError)."""

    def __init__(self, message="", status=None):
        CheckpointError.__init__(self, message, status)

    def __str__(self):
        return CheckpointError.__str__(self)


# Status name (as in the header, without CKPT_STATUS_) -> class.
_CLASSES_BY_NAME = {
    "NULL_ARGUMENT": NullArgumentError,
    "INVALID_ARGUMENT": InvalidArgumentError,
    "STATE_CORRUPT": StateCorruptError,
    "IO_ERROR": CheckpointIOError,
    "CALLBACK_FAILED": CallbackFailedError,
    "REENTRANT_CALL": ReentrantCallError,
    "PANIC": PanicError,
    "CHECKPOINT_DAMAGED": CheckpointDamagedError,
    "LOCKED": LockedError,
    "READ_ONLY": ReadOnlyError,
    "NO_MANIFEST": NoManifestError,
    "TENSOR_MISMATCH": TensorMismatchError,
    "TIMEOUT": CheckpointTimeoutError,
}

# Status value -> class, built from the generated table.
ERRORS_BY_STATUS = {}
for _name, _value, _doc in _statuses.STATUSES:
    if _name == "OK":
        continue
    _cls = _CLASSES_BY_NAME.get(_name)
    if _cls is None:  # a status newer than this module: still a distinct class
        _cls = type("".join(p.capitalize() for p in _name.split("_")) + "Error",
                    (CheckpointError,), {"__doc__": "CKPT_STATUS_%s." % _name})
        _CLASSES_BY_NAME[_name] = _cls
    _cls.status = _value
    _cls.status_name = "CKPT_STATUS_" + _name
    ERRORS_BY_STATUS[_value] = _cls
del _name, _value, _doc, _cls


def error_for_status(status, message=""):
    """The exception instance for a non-OK status value."""
    cls = ERRORS_BY_STATUS.get(status, CheckpointError)
    return cls(message, status)
