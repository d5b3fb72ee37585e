"""CheckpointManager(communicator=...): a Python communicator as the C API's
ckpt_communicator struct.

The protocol (see README.md, "Multi-process training"): attributes `rank`
and `size` (ints), and three collective methods, each returning within
`timeout` seconds and raising TimeoutError if some rank did not take part
by then (any other exception is a failure):
  barrier(timeout)
  broadcast(buffer, root, timeout)   buffer: a bytearray, overwritten in
                                     place on every rank but `root`
  all_gather(record, timeout) -> list of every rank's record (bytes of
                                     the same length), in rank order
An mpi4py communicator is wrapped in ckpt_manager.mpi.MPICommunicator.
"""
import ctypes
import sys

from . import _lib

# Returned to the library for an exception other than TimeoutError (any
# value but 0 and CKPT_COMMUNICATOR_TIMEOUT is a failure).
_FAILED = 2
_METHODS = ("barrier", "broadcast", "all_gather")


def _is_mpi4py_comm(communicator):
    mpi = sys.modules.get("mpi4py.MPI")  # an mpi4py Comm means mpi4py is imported
    return mpi is not None and isinstance(communicator, mpi.Comm)


def adapt(communicator):
    """The protocol object for `communicator`: an mpi4py Comm wrapped, or the
    object itself once checked."""
    if _is_mpi4py_comm(communicator):
        from .mpi import MPICommunicator
        return MPICommunicator(communicator)
    missing = [name for name in ("rank", "size") + _METHODS if not hasattr(communicator, name)]
    if missing:
        raise TypeError("communicator must be an mpi4py communicator or have rank, size, "
                        "barrier, broadcast and all_gather; %r lacks %s"
                        % (communicator, ", ".join(missing)))
    return communicator


class Bridge:
    """The ctypes struct and callbacks over a protocol object. Keep it as
    long as any manager built with `struct` lives. `first_error` holds the
    first exception a callback raised (it never crosses ctypes)."""

    def __init__(self, communicator):
        self.communicator = communicator
        self.first_error = None
        struct_type = _lib.ckpt_communicator
        fields = dict((name, ctype) for name, ctype in struct_type._fields_)
        self.callbacks = (fields["barrier"](self._barrier),
                          fields["broadcast"](self._broadcast),
                          fields["all_gather"](self._all_gather))
        self.struct = struct_type(
            version=_lib.CKPT_COMMUNICATOR_VERSION, rank=_c_uint32(communicator.rank, "rank"),
            size=_c_uint32(communicator.size, "size"), user_data=None,
            barrier=self.callbacks[0], broadcast=self.callbacks[1],
            all_gather=self.callbacks[2])

    def _run(self, body):
        try:
            body()
            return 0
        except BaseException as exc:  # nothing may cross ctypes
            if self.first_error is None:
                self.first_error = exc
            return _lib.CKPT_COMMUNICATOR_TIMEOUT if isinstance(exc, TimeoutError) else _FAILED

    def _barrier(self, _user_data, timeout):
        return self._run(lambda: self.communicator.barrier(timeout))

    def _broadcast(self, _user_data, buffer, length, root, timeout):
        def body():
            data = bytearray(ctypes.string_at(buffer, length)) if length else bytearray()
            self.communicator.broadcast(data, root, timeout)
            if len(data) != length:
                raise ValueError("broadcast changed the buffer's length from %d to %d"
                                 % (length, len(data)))
            if length:
                ctypes.memmove(buffer, bytes(data), length)
        return self._run(body)

    def _all_gather(self, _user_data, record, length, records, timeout):
        def body():
            mine = ctypes.string_at(record, length) if length else b""
            gathered = list(self.communicator.all_gather(mine, timeout))
            size = self.struct.size
            if len(gathered) != size or any(len(r) != length for r in gathered):
                raise ValueError("all_gather must return %d records of %d bytes, not %r"
                                 % (size, length, [len(r) for r in gathered]))
            if length:
                ctypes.memmove(records, b"".join(bytes(r) for r in gathered), size * length)
        return self._run(body)


def _c_uint32(value, what):
    number = int(value)
    if not 0 <= number < 1 << 32:
        raise ValueError("communicator.%s must fit in 32 bits, not %r" % (what, value))
    return number
