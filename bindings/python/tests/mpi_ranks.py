"""One rank of test_mpi.py's runs:
`mpirun -np N python mpi_ranks.py CASE DIRECTORY REPORTS`.

Each rank writes REPORTS/rank-R.json, {"rank": R, ...}, of what it saw (not
to stdout, where mpirun may interleave the ranks' lines); rank 0 adds what
it read from the directory. Any exception ends the rank with a
traceback (and mpirun with a failure)."""
import json
import os
import struct
import sys

import numpy as np
from mpi4py import MPI

import ckpt_manager
from ckpt_manager.mpi import MPICommunicator

TIMEOUT = 60.0


def weights_at(rank, step):
    return np.arange(6, dtype=np.float64) + 1000.0 * rank + step


def read_safetensors(path):
    """{name: (dtype, shape, raw bytes)} of a .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_length])
    body = data[8 + header_length:]
    return {name: (entry["dtype"], entry["shape"],
                   body[entry["data_offsets"][0]:entry["data_offsets"][1]])
            for name, entry in header.items() if name != "__metadata__"}


def round_trip(directory, comm):
    rank, size = comm.rank, comm.size
    weights = np.zeros(6, dtype=np.float64)
    saved = []
    # An mpi4py communicator, wrapped by the manager.
    with ckpt_manager.CheckpointManager(directory, max_to_keep=5, communicator=comm,
                                        coordination_timeout=TIMEOUT) as manager:
        manager.register_array("weights", weights)
        for step in (1, 2):
            weights[:] = weights_at(rank, step)
            saved.append(os.path.basename(manager.save()))
    weights[:] = 0
    # An MPICommunicator built by the trainer, freed after the manager.
    communicator = MPICommunicator(comm)
    with ckpt_manager.CheckpointManager(directory, max_to_keep=5, communicator=communicator,
                                        coordination_timeout=TIMEOUT) as manager:
        manager.register_array("weights", weights)
        restored = os.path.basename(manager.restore_or_initialize())
    communicator.free()
    report = {"rank": rank, "saved": saved, "restored": restored,
              "weights_match": bool(np.array_equal(weights, weights_at(rank, 2)))}
    if rank == 0:
        report["files"] = sorted(os.listdir(directory))
        shards_match = {}
        for number in (1, 2):
            for shard in range(size):
                name = "ckpt-%d.rank-%05d-of-%05d.safetensors" % (number, shard, size)
                tensors = read_safetensors(os.path.join(directory, name))
                shards_match[name] = tensors == {
                    "weights": ("F64", [6], weights_at(shard, number).astype("<f8").tobytes())}
        report["shards_match"] = shards_match
    return report


def failing_save(directory, comm):
    rank = comm.rank

    def save_fn(prefix, _number):
        if rank == 2:
            raise RuntimeError("disk full on rank 2")
        with open(prefix + ".data", "wb") as f:
            f.write(b"rank %d" % rank)

    with ckpt_manager.CheckpointManager(directory, max_to_keep=5, save_fn=save_fn,
                                        communicator=comm,
                                        coordination_timeout=TIMEOUT) as manager:
        try:
            manager.save()
        except ckpt_manager.CallbackFailedError as exc:
            error = exc
        else:
            raise AssertionError("save() succeeded on rank %d" % rank)
        latest = manager.latest_checkpoint
    report = {"rank": rank, "error": type(error).__name__, "message": error.message,
              "cause": repr(error.__cause__), "latest": latest}
    if rank == 0:
        report["files"] = sorted(os.listdir(directory))
    return report


def node_local(directory, comm):
    """Each rank in DIRECTORY/rank-R: saves 3 with max_to_keep=2, reopens and
    restores; reports its own directory's files."""
    rank, size = comm.rank, comm.size
    own = os.path.join(directory, "rank-%d" % rank)
    weights = np.zeros(6, dtype=np.float64)
    options = dict(max_to_keep=2, communicator=comm, coordination_timeout=TIMEOUT,
                   node_local=True)
    with ckpt_manager.CheckpointManager(own, **options) as manager:
        manager.register_array("weights", weights)
        for step in (1, 2, 3):
            weights[:] = weights_at(rank, step)
            manager.save()
    weights[:] = 0
    with ckpt_manager.CheckpointManager(own, **options) as manager:
        manager.register_array("weights", weights)
        restored = manager.restore_or_initialize()
    return {"rank": rank, "size": size, "restored": restored, "files": sorted(os.listdir(own)),
            "weights_match": bool(np.array_equal(weights, weights_at(rank, 3)))}


# reshard_*: a [8, 6] float32 tensor sharded by rows and a replicated bias,
# saved by 4 ranks, restored by 2.
RESHARD_SHAPE = (8, 6)


def reshard_global():
    return np.arange(48, dtype=np.float32).reshape(RESHARD_SHAPE) * 1.5


def reshard_bias():
    return np.arange(6, dtype=np.float64) * 0.25 - 1.0


def reshard_rows(rank, size):
    rows = RESHARD_SHAPE[0] // size
    return rank * rows, rows


def reshard_save(directory, comm):
    """Each rank saves its rows of the global tensor `w` and the bias."""
    first, rows = reshard_rows(comm.rank, comm.size)
    w = np.ascontiguousarray(reshard_global()[first:first + rows])
    bias = reshard_bias()
    with ckpt_manager.CheckpointManager(directory, max_to_keep=2, communicator=comm,
                                        coordination_timeout=TIMEOUT) as manager:
        manager.register_array("w", w, global_shape=RESHARD_SHAPE, offset=(first, 0))
        manager.register_array("bias", bias, replicated=True)
        saved = manager.save()
    return {"rank": comm.rank, "saved": os.path.basename(saved)}


def reshard_restore(directory, comm):
    """Each rank (of fewer) restores its own, larger, rows and the bias."""
    first, rows = reshard_rows(comm.rank, comm.size)
    w = np.zeros((rows, RESHARD_SHAPE[1]), dtype=np.float32)
    bias = np.zeros(6, dtype=np.float64)
    with ckpt_manager.CheckpointManager(directory, max_to_keep=2, communicator=comm,
                                        coordination_timeout=TIMEOUT) as manager:
        manager.register_array("w", w, global_shape=RESHARD_SHAPE, offset=(first, 0))
        manager.register_array("bias", bias, replicated=True)
        restored = manager.restore_or_initialize()
    return {"rank": comm.rank, "size": comm.size, "restored": os.path.basename(restored),
            "rows": [first, first + rows],
            "w_match": bool(np.array_equal(w, reshard_global()[first:first + rows])),
            "bias_match": bool(np.array_equal(bias, reshard_bias()))}


CASES = {"round_trip": round_trip, "failing_save": failing_save, "node_local": node_local,
         "reshard_save": reshard_save, "reshard_restore": reshard_restore}

if __name__ == "__main__":
    case, directory, reports = sys.argv[1:4]
    report = CASES[case](directory, MPI.COMM_WORLD)
    with open(os.path.join(reports, "rank-%d.json" % report["rank"]), "w") as f:
        json.dump(report, f)
