"""CheckpointManager(communicator=<mpi4py communicator>) under
`mpirun -np 4`: every rank runs tests/mpi_ranks.py and reports what it saw."""
import json
import os
import signal
import subprocess
import sys

import numpy as np

from conftest import PYTHON_DIR, ckpt_tool, subprocess_env

RANKS = 4
RANK_SCRIPT = os.path.join(PYTHON_DIR, "tests", "mpi_ranks.py")
# As tests/support/mod.rs: shared memory between the ranks, without the
# single-copy mechanism containers refuse.
MPI_SETTINGS = {"OMPI_MCA_btl": "self,vader", "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}
# A hang fails the test after this, instead of hanging the suite.
DEADLINE_SECONDS = 180


def _session_processes(session):
    """The pids of the processes in `session` (from /proc/<pid>/stat)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold anything.
        fields = stat[stat.rfind(")") + 1:].split()
        if int(fields[3]) == session:
            pids.append(int(entry))
    return pids


def _kill_session(session):
    """SIGKILLs every process of the session: mpirun puts ranks in process
    groups of their own, so killpg alone could leave them behind."""
    for _ in range(2):  # a process may fork while the first pass runs
        for pid in _session_processes(session):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        os.killpg(session, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_ranks(case, directory, reports, ranks=RANKS):
    """{rank: report} of `mpirun -np RANKS python mpi_ranks.py CASE DIRECTORY REPORTS`."""
    os.mkdir(reports)
    env = subprocess_env()
    env.update(MPI_SETTINGS)
    command = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks),
               sys.executable, RANK_SCRIPT, case, str(directory), str(reports)]
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        _kill_session(process.pid)
        stdout, stderr = process.communicate()
        raise AssertionError("mpirun did not finish within %d s; its processes were killed\n"
                             "--- stdout\n%s\n--- stderr\n%s"
                             % (DEADLINE_SECONDS, stdout, stderr))
    finally:
        _kill_session(process.pid)  # nothing may outlive the test
    assert process.returncode == 0, "mpirun failed (%d)\n--- stdout\n%s\n--- stderr\n%s" % (
        process.returncode, stdout, stderr)
    assert sorted(os.listdir(reports)) == ["rank-%d.json" % r for r in range(ranks)], stderr
    by_rank = {}
    for rank in range(ranks):
        with open(os.path.join(reports, "rank-%d.json" % rank)) as f:
            by_rank[rank] = json.load(f)
    return by_rank


def shard_files(number, suffix):
    return ["ckpt-%d.rank-%05d-of-%05d.%s" % (number, rank, RANKS, suffix)
            for rank in range(RANKS)]


def test_every_rank_saves_its_shard_and_restores_its_own_values(tmp_path):
    directory = tmp_path / "ckpts"
    reports = run_ranks("round_trip", directory, tmp_path / "reports")
    for rank, report in reports.items():
        assert report["saved"] == ["ckpt-1", "ckpt-2"], report
        assert report["restored"] == "ckpt-2", report
        assert report["weights_match"], report
    files = reports[0]["files"]
    assert files == sorted(
        ["checkpoint", "checkpoint.lock"]
        + ["ckpt-%d.ckpt-manifest.json" % n for n in (1, 2)]
        + shard_files(1, "safetensors") + shard_files(2, "safetensors"))
    # Rank 0 read every rank's shard: each holds that rank's values.
    assert reports[0]["shards_match"] == {
        name: True for n in (1, 2) for name in shard_files(n, "safetensors")}


def test_one_rank_whose_save_callback_raises_fails_the_save_on_every_rank(tmp_path):
    directory = tmp_path / "ckpts"
    reports = run_ranks("failing_save", directory, tmp_path / "reports")
    for rank, report in reports.items():
        assert report["error"] == "CallbackFailedError", report
        assert report["message"].startswith("rank 2:"), report
        assert report["latest"] is None, report
    # The failing rank's error comes from its own exception.
    assert reports[2]["cause"] == "RuntimeError('disk full on rank 2')"
    # Nothing was committed, and no rank's files were left behind.
    assert reports[0]["files"] == ["checkpoint.lock"], reports[0]


def test_node_local_directories_each_hold_their_own_rank(tmp_path):
    directory = tmp_path / "ckpts"
    reports = run_ranks("node_local", directory, tmp_path / "reports")
    for rank, report in reports.items():
        own = directory / ("rank-%d" % rank)
        assert report["restored"] == str(own / "ckpt-3"), report
        assert report["weights_match"], report
        shard = "rank-%05d-of-%05d.safetensors" % (rank, RANKS)
        assert report["files"] == sorted(
            ["checkpoint", "checkpoint.lock"]
            + ["ckpt-%d.%s" % (n, name) for n in (2, 3)
               for name in ("ckpt-manifest.json", shard)]), report


def test_a_checkpoint_of_4_ranks_restores_onto_2_and_exports_to_one_file(tmp_path):
    """Rows sharded over 4 ranks and a replicated bias, restored by 2 ranks
    each holding twice the rows; then `ckpt export` assembles the global
    tensors into one file that Hugging Face's safetensors loads."""
    directory = tmp_path / "ckpts"
    saved = run_ranks("reshard_save", directory, tmp_path / "saved")
    assert {r["saved"] for r in saved.values()} == {"ckpt-1"}
    restored = run_ranks("reshard_restore", directory, tmp_path / "restored", ranks=2)
    for rank, report in restored.items():
        assert report["size"] == 2 and report["restored"] == "ckpt-1", report
        assert report["rows"] == [4 * rank, 4 * rank + 4], report
        assert report["w_match"] and report["bias_match"], report

    from safetensors.numpy import load_file  # Hugging Face's reader
    sys.path.insert(0, os.path.join(PYTHON_DIR, "tests"))
    import mpi_ranks  # noqa: E402  (its expected values; mpi4py is installed)
    out = tmp_path / "model.safetensors"
    subprocess.run([ckpt_tool(), "export", str(directory / "ckpt-1"), str(out)], check=True,
                   capture_output=True)
    tensors = load_file(str(out))
    assert sorted(tensors) == ["bias", "w"]
    expected = {"w": mpi_ranks.reshard_global(), "bias": mpi_ranks.reshard_bias()}
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype and tensors[name].shape == value.shape, name
        np.testing.assert_array_equal(tensors[name], value)
