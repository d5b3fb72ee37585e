"""Checkpoints on S3-compatible object storage from Python, against a real
moto server on loopback (build/s3-venv/bin/moto_server, installed by
scripts/setup, or $CKPT_MOTO_SERVER), read back with boto3."""
import json
import os
import socket
import struct
import subprocess
import time
import urllib.request
import uuid

import numpy as np
import pytest

import ckpt_manager
from ckpt_manager import CheckpointManager, InvalidArgumentError
from conftest import REPO, FakeClock

try:
    import boto3
except ImportError as exc:  # fail, never skip: CI must run these tests
    raise ImportError("the S3 tests need boto3 (make test installs it; pip install boto3)") from exc

MOTO_SERVER = os.environ.get("CKPT_MOTO_SERVER") or os.path.join(
    REPO, "build", "s3-venv", "bin", "moto_server")
# moto imports all of its services before it answers: seconds on a loaded machine.
STARTUP_DEADLINE_SECONDS = 60
# Another process may take the port picked between the probe and moto's bind.
PORT_ATTEMPTS = 5
CREDENTIALS = {"aws_region": "us-east-1", "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing"}


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_moto(log):
    """(process, endpoint) once it answers, or (None, None) if it exited."""
    port = _free_port()
    endpoint = "http://127.0.0.1:%d" % port
    server = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while server.poll() is None:
        try:
            urllib.request.urlopen(endpoint + "/", timeout=1).close()
            return server, endpoint
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                server.wait()
                pytest.fail("moto_server did not answer on %s within %d s"
                            % (endpoint, STARTUP_DEADLINE_SECONDS))
            time.sleep(0.05)  # poll again: it answers once its imports are done
    return None, None


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """One moto server for the module (each test has its own bucket); killed
    at teardown."""
    if not os.path.exists(MOTO_SERVER):
        pytest.fail("%s is missing: run ./scripts/setup (it installs moto[server] into "
                    "build/s3-venv) or set CKPT_MOTO_SERVER" % MOTO_SERVER)
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        for _ in range(PORT_ATTEMPTS):
            server, url = _start_moto(log)
            if server is not None:
                break
        else:
            pytest.fail("moto_server exited at startup %d times; its log: %s"
                        % (PORT_ATTEMPTS, log_path.read_text(errors="replace")))
    try:
        yield url
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def s3(endpoint):
    """The test's own client, to read back what the library wrote."""
    return boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["aws_region"],
                        aws_access_key_id=CREDENTIALS["aws_access_key_id"],
                        aws_secret_access_key=CREDENTIALS["aws_secret_access_key"])


@pytest.fixture
def bucket(s3):
    name = "test-%s" % uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def storage_options(endpoint, tmp_path):
    return dict(CREDENTIALS, aws_endpoint=endpoint, aws_allow_http=True,
                ckpt_local_staging_directory=str(tmp_path / "staging"))


@pytest.fixture(autouse=True)
def in_empty_directory(tmp_path, monkeypatch):
    """Runs each test in an empty working directory, which must stay empty:
    nothing may take a URL for a local path (a folder named `s3:`)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert os.listdir(cwd) == []


def keys(s3, bucket):
    listing = s3.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def get(s3, bucket, key):
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def checkpoint_keys(prefix, numbers, suffixes):
    """The state object, the writers' lease and the checkpoints' objects."""
    return sorted(["%s/checkpoint" % prefix, "%s/checkpoint.lease" % prefix] + [
        "%s/ckpt-%d.%s" % (prefix, n, suffix) for n in numbers
        for suffix in ("ckpt-manifest.json",) + suffixes])


def safetensors_arrays(data):
    """{name: bytes} of a safetensors file."""
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_size])
    body = data[8 + header_size:]
    return {name: body[entry["data_offsets"][0]:entry["data_offsets"][1]]
            for name, entry in header.items() if name != "__metadata__"}


def files_under(directory):
    return [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]


def save_two(url, storage_options, weights, bias):
    """Saves ckpt-1 and ckpt-2 of `weights` (+1 for the second) and `bias`,
    with an optimizer file written by save_fn; returns the save_fn prefixes."""
    staged = []

    def save_fn(prefix, number):
        staged.append(prefix)
        with open(prefix + ".optimizer", "wb") as f:
            f.write(b"optimizer %d" % number)

    with CheckpointManager(url, 2, save_fn=save_fn, clock=FakeClock(),
                           storage_options=storage_options) as manager:
        manager.register_array("weights", weights)
        manager.register_array("bias", bias)
        assert manager.directory == url
        assert manager.save() == url + "/ckpt-1"
        weights += 1
        assert manager.save() == url + "/ckpt-2"
        assert manager.latest_checkpoint == url + "/ckpt-2"
    return staged


def test_save_and_restore_arrays_and_callback_files(s3, bucket, storage_options):
    url = "s3://%s/runs/a" % bucket
    weights = np.arange(300_000, dtype=np.float32).reshape(1000, 300)
    bias = np.linspace(-1, 1, 77)
    staged = save_two(url, storage_options, weights, bias)

    # save_fn wrote into the local staging directory, which is empty again.
    staging = storage_options["ckpt_local_staging_directory"]
    assert len(staged) == 2
    assert all(prefix.startswith(staging + os.sep) for prefix in staged), staged
    assert files_under(staging) == []

    assert keys(s3, bucket) == checkpoint_keys("runs/a", [1, 2], ("optimizer", "safetensors"))
    assert get(s3, bucket, "runs/a/ckpt-2.optimizer") == b"optimizer 2"
    stored = safetensors_arrays(get(s3, bucket, "runs/a/ckpt-2.safetensors"))
    assert stored == {"weights": weights.tobytes(), "bias": bias.tobytes()}
    state = get(s3, bucket, "runs/a/checkpoint").decode()
    assert state.startswith('model_checkpoint_path: "ckpt-2"\n'), state

    restored = {}

    def restore_fn(prefix):
        with open(prefix + ".optimizer", "rb") as f:
            restored["optimizer"] = f.read()

    weights_back = np.zeros_like(weights)
    bias_back = np.zeros_like(bias)
    with CheckpointManager(url, 2, restore_fn=restore_fn,
                           storage_options=storage_options) as manager:
        manager.register_array("weights", weights_back)
        manager.register_array("bias", bias_back)
        assert manager.restore_or_initialize() == url + "/ckpt-2"
    np.testing.assert_array_equal(weights_back, weights)
    np.testing.assert_array_equal(bias_back, bias)
    assert restored == {"optimizer": b"optimizer 2"}
    assert files_under(staging) == []


def test_module_functions_read_the_url_with_aws_environment(
        s3, bucket, endpoint, storage_options, monkeypatch, tmp_path):
    url = "s3://%s/run" % bucket
    save_two(url, storage_options, np.ones(10, dtype=np.float32), np.zeros(3))

    # No options here: the library reads the AWS_* variables at each call
    # (and HOME points where no ~/.aws files are).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_REGION", CREDENTIALS["aws_region"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])

    assert ckpt_manager.latest_checkpoint(url) == url + "/ckpt-2"
    assert ckpt_manager.latest_checkpoint(url, verify_checksums=True) == url + "/ckpt-2"
    state = ckpt_manager.get_checkpoint_state(url)
    assert state.model_checkpoint_path == url + "/ckpt-2"
    assert state.all_model_checkpoint_paths == [url + "/ckpt-1", url + "/ckpt-2"]
    assert state.all_model_checkpoint_timestamps == [1000.0, 1000.0]
    assert ckpt_manager.checkpoint_exists(url + "/ckpt-1")
    assert not ckpt_manager.checkpoint_exists(url + "/ckpt-9")
    ckpt_manager.verify_checkpoint(url + "/ckpt-2")

    ckpt_manager.remove_checkpoint(url + "/ckpt-1")
    assert not ckpt_manager.checkpoint_exists(url + "/ckpt-1")
    assert keys(s3, bucket) == checkpoint_keys("run", [2], ("optimizer", "safetensors"))

    # A prefix without checkpoints has no state.
    assert ckpt_manager.latest_checkpoint("s3://%s/empty" % bucket) is None
    assert ckpt_manager.get_checkpoint_state("s3://%s/empty" % bucket) is None


def test_unserved_schemes_and_unknown_options_are_refused(tmp_path):
    for call in (lambda: CheckpointManager("gs://bucket/run", 2),
                 lambda: ckpt_manager.latest_checkpoint("gs://bucket/run"),
                 lambda: ckpt_manager.get_checkpoint_state("gs://bucket/run"),
                 lambda: ckpt_manager.checkpoint_exists("gs://bucket/run/ckpt-1")):
        with pytest.raises(InvalidArgumentError, match="gs://"):
            call()
    with pytest.raises(InvalidArgumentError, match="no_such_option"):
        CheckpointManager(str(tmp_path / "run"), 2, storage_options={"no_such_option": "x"})
    with pytest.raises(InvalidArgumentError, match="ckpt_allow_unconditional_writes"):
        CheckpointManager(str(tmp_path / "run"), 2,
                          storage_options={"ckpt_allow_unconditional_writes": "yes"})
    with pytest.raises(TypeError):
        CheckpointManager(str(tmp_path / "run"), 2, storage_options=[("aws_region", "x")])
    assert not os.path.exists(tmp_path / "run")


class ModelError(Exception):
    pass


def test_callback_exceptions_come_back_with_their_type(bucket, storage_options):
    """On an s3:// directory the callbacks see a local staging prefix; their
    exceptions still come back as they were raised, from a blocking call and
    from the call that reports a background save's failure."""
    url = "s3://%s/exceptions" % bucket
    fail = {"save": False, "restore": False}
    staged = []

    def save_fn(prefix, number):
        staged.append(prefix)
        with open(prefix + ".model", "w") as f:
            f.write(str(number))
        if fail["save"]:
            raise ModelError("cannot save %d" % number)

    def restore_fn(prefix):
        if fail["restore"]:
            raise ModelError("cannot restore " + os.path.basename(prefix))

    with CheckpointManager(url, None, save_fn=save_fn, restore_fn=restore_fn,
                           clock=FakeClock(), storage_options=storage_options) as m:
        assert m.save() == url + "/ckpt-1"
        assert not staged[0].startswith("s3://")
        fail["save"] = True
        with pytest.raises(ModelError, match="cannot save 2"):
            m.save()
        assert m.save_async() == url + "/ckpt-2"
        with pytest.raises(ModelError, match="cannot save 2") as info:
            m.wait_until_finished()
        assert isinstance(info.value, ModelError)
        assert m.save_async() == url + "/ckpt-2"
        with pytest.raises(ModelError, match="cannot save 2"):
            m.save_async()  # the next call reports it, and starts nothing
        m.wait_until_finished()  # once
        fail["save"] = False
        assert m.latest_checkpoint == url + "/ckpt-1"
        fail["restore"] = True
        with pytest.raises(ModelError, match="cannot restore ckpt-1"):
            m.restore_or_initialize()
        fail["restore"] = False
        assert m.restore_or_initialize() == url + "/ckpt-1"
