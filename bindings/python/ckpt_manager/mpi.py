"""A communicator for CheckpointManager(communicator=...) over an mpi4py
communicator: the Python twin of include/ckpt_manager_mpi.h.

CheckpointManager wraps an mpi4py communicator with MPICommunicator itself;
build one explicitly to keep it (its `error` says what broke it). Importing
this module imports mpi4py; the rest of the package never does.

How it works, as the C adapter:
 - It works on its own duplicate of the communicator (Dup), so its
   collectives never match the trainer's.
 - Each collective is a non-blocking one (Ibarrier, Ibcast, Iallgather)
   polled with Test until it completes or its timeout passes. While some
   rank has not made the call, the rank sleeps between polls (50 us doubling
   up to 10 ms); once every rank is in, it polls without sleeping.
 - Every call returns only once every rank has made it (a broadcast posts a
   barrier too), so a dead or absent rank makes the others raise
   TimeoutError rather than hang.
 - MPI cannot cancel a posted collective: after any failure, timeouts
   included, the communicator is broken, every later call raises at once,
   and the trainer should end the job (comm.Abort()). The buffers of the
   abandoned operation are kept referenced for ever, so that a late
   completion never writes to freed memory.
"""
import time

from mpi4py import MPI

__all__ = ["MPICommunicator", "CommunicatorBrokenError"]

_FIRST_SLEEP = 50e-6
_LONGEST_SLEEP = 10e-3
# The most bytes one Ibcast carries (MPI counts are ints).
_MAX_CHUNK = 1 << 30


class CommunicatorBrokenError(RuntimeError):
    """An earlier call on this communicator failed or timed out; nothing was done."""


class MPICommunicator:
    """The communicator protocol of CheckpointManager over an mpi4py Comm.

    Collective: every rank of `comm` builds it (Comm.Dup has no timeout:
    build it where the ranks are together). `comm` is borrowed; call free()
    (collective) before MPI is finalized, once no manager built with it lives
    (mpi4py finalizes MPI at exit)."""

    def __init__(self, comm):
        if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
            raise TypeError("MPICommunicator needs an mpi4py intra-communicator, not %r"
                            % (comm,))
        if comm.Is_inter():
            raise TypeError("MPICommunicator needs an intra-communicator")
        self._comm = comm.Dup()
        self._comm.Set_errhandler(MPI.ERRORS_RETURN)
        self._comm.Set_name("ckpt_manager")
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        # What broke the communicator, "" while it works.
        self.error = ""
        # The requests and buffers of the operation abandoned at the failure.
        self._abandoned = None

    # -- the protocol

    def barrier(self, timeout):
        start = time.monotonic()
        self._check_call("barrier", timeout)
        requests = self._post("barrier", lambda: [self._comm.Ibarrier()], ())
        self._wait("barrier", requests, (), start, timeout)

    def broadcast(self, buffer, root, timeout):
        """Copies `buffer` (a bytearray) of rank `root` into `buffer` on every
        other rank, in place."""
        start = time.monotonic()
        self._check_call("broadcast", timeout)
        if not 0 <= root < self.size:
            self._fail("broadcast", ValueError("the root %r is not a rank" % (root,)))
        staging = bytearray(buffer) if self.rank == root else bytearray(len(buffer))
        view = memoryview(staging)

        def post():
            posted = [self._comm.Ibarrier()]
            for offset in range(0, len(staging), _MAX_CHUNK):
                chunk = view[offset:offset + _MAX_CHUNK]
                posted.append(self._comm.Ibcast([chunk, MPI.BYTE], root=root))
            return posted
        requests = self._post("broadcast", post, (staging, view))
        self._wait("broadcast", requests, (staging, view), start, timeout)
        if self.rank != root:
            buffer[:] = staging

    def all_gather(self, record, timeout):
        """Every rank's `record` (bytes of the same length), in rank order."""
        start = time.monotonic()
        self._check_call("all_gather", timeout)
        length = len(record)
        send = bytearray(record)
        received = bytearray(length * self.size)
        buffers = (send, received)
        requests = self._post("all_gather", lambda: [self._comm.Iallgather(
            [send, MPI.BYTE], [received, MPI.BYTE])], buffers)
        self._wait("all_gather", requests, buffers, start, timeout)
        return [bytes(received[i * length:(i + 1) * length]) for i in range(self.size)]

    # -- beyond the protocol

    @property
    def broken(self):
        return bool(self.error)

    def free(self):
        """Frees the duplicate communicator (collective as Comm.Free, without
        waiting for the others). Idempotent; nothing once MPI is finalized."""
        comm, self._comm = self._comm, None
        if comm is not None and not MPI.Is_finalized():
            comm.Free()

    # -- plumbing

    def _check_call(self, what, timeout):
        if self._comm is None:
            raise CommunicatorBrokenError("%s: the communicator was freed" % what)
        if self.error:
            raise CommunicatorBrokenError("%s: the communicator is broken: %s"
                                          % (what, self.error))
        if not timeout >= 0:
            self._fail(what, ValueError("the timeout %r is NaN or negative" % (timeout,)))

    def _fail(self, what, exc, abandoned=None):
        self.error = "%s: %s" % (what, exc)
        self._abandoned = abandoned
        raise exc

    def _post(self, what, post, buffers):
        try:
            return post()
        except MPI.Exception as exc:
            # Chunks posted before the failure may still complete into `buffers`.
            self._fail(what, exc, buffers)

    def _wait(self, what, requests, buffers, start, timeout):
        """Polls `requests` until they complete or `timeout` seconds after
        `start` pass; requests[0] completes once every rank made the call."""
        sleep = _FIRST_SLEEP
        everyone_called = False
        try:
            while True:
                if not everyone_called:
                    everyone_called = requests[0].Test()
                if MPI.Request.Testall(requests):
                    return
                left = start + timeout - time.monotonic()
                if left <= 0:
                    self._fail(what, TimeoutError(
                        "timed out after %g s: %s" % (timeout, (
                            "every rank made the call, but it did not complete"
                            if everyone_called else "a rank did not make the call"))),
                        (requests, buffers))
                if not everyone_called:
                    time.sleep(min(sleep, left))
                    sleep = min(sleep * 2, _LONGEST_SLEEP)
        except MPI.Exception as exc:
            self._fail(what, exc, (requests, buffers))
