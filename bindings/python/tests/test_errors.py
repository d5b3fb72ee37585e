"""Every status of the header maps to an exception class; the mapping is
generated from the header, so the two cannot drift."""
import ctypes
import os
import pickle

import pytest

import ckpt_manager
from ckpt_manager import _lib, _statuses, errors
from conftest import HEADER, assert_generated, load_generator, tf_save

EXPECTED_CLASSES = {
    "NULL_ARGUMENT": "NullArgumentError",
    "INVALID_ARGUMENT": "InvalidArgumentError",
    "STATE_CORRUPT": "StateCorruptError",
    "IO_ERROR": "CheckpointIOError",
    "CALLBACK_FAILED": "CallbackFailedError",
    "REENTRANT_CALL": "ReentrantCallError",
    "PANIC": "PanicError",
    "CHECKPOINT_DAMAGED": "CheckpointDamagedError",
    "LOCKED": "LockedError",
    "READ_ONLY": "ReadOnlyError",
    "NO_MANIFEST": "NoManifestError",
    "TENSOR_MISMATCH": "TensorMismatchError",
    "TIMEOUT": "CheckpointTimeoutError",
}


def test_statuses_module_is_generated_from_the_header():
    assert_generated("_statuses.py")


def test_generator_parses_every_enumerator_of_the_header():
    with open(HEADER, encoding="utf-8") as f:
        text = f.read()
    import re
    in_header = set(re.findall(r"^\s*CKPT_STATUS_([A-Z0-9_]+)\s*=", text, re.M))
    assert in_header == {name for name, _, _ in _statuses.STATUSES}


def test_every_status_has_its_own_class():
    seen = set()
    for name, value, _ in _statuses.STATUSES:
        if name == "OK":
            continue
        cls = errors.ERRORS_BY_STATUS[value]
        assert cls.__name__ == EXPECTED_CLASSES[name], "no explicit class for %s" % name
        assert getattr(ckpt_manager, cls.__name__) is cls
        assert issubclass(cls, ckpt_manager.CheckpointError)
        assert cls.status == value and cls.status_name == "CKPT_STATUS_" + name
        assert cls not in seen
        seen.add(cls)
    assert set(EXPECTED_CLASSES) == {n for n, _, _ in _statuses.STATUSES if n != "OK"}


def test_names_agree_with_the_library():
    for name, value, _ in _statuses.STATUSES:
        assert ckpt_manager.status_name(value) == "CKPT_STATUS_" + name
    # The library knows no status the header lacks.
    top = max(value for _, value, _ in _statuses.STATUSES)
    for value in range(top + 1, top + 50):
        assert ckpt_manager.status_name(value) == "CKPT_STATUS_UNKNOWN"


def test_library_version_matches_the_header():
    major, minor, patch = _statuses.HEADER_VERSION
    assert ckpt_manager.version() == "%d.%d.%d" % (major, minor, patch)


def test_dtypes_match_the_header():
    assert _statuses.DTYPES["F64"] == 0 and _statuses.DTYPES["BOOL"] == 12


def test_python_base_classes():
    assert issubclass(ckpt_manager.InvalidArgumentError, ValueError)
    assert issubclass(ckpt_manager.CheckpointIOError, OSError)
    error = errors.error_for_status(_statuses.IO_ERROR, "open x: No such file")
    assert isinstance(error, OSError) and error.status == 4
    assert error.message == "open x: No such file"
    assert str(error) == "CKPT_STATUS_IO_ERROR: open x: No such file"
    timeout = errors.error_for_status(_statuses.TIMEOUT, "still saving")
    assert isinstance(timeout, TimeoutError) and timeout.status == 13
    assert str(timeout) == "CKPT_STATUS_TIMEOUT: still saving"
    unknown = errors.error_for_status(999, "from the future")
    assert type(unknown) is ckpt_manager.CheckpointError and unknown.status == 999


@pytest.mark.parametrize("status", [v for n, v, _ in _statuses.STATUSES if n != "OK"])
def test_errors_pickle(status):
    error = errors.error_for_status(status, "message")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.status == status and copy.message == "message"


def test_null_argument():
    status = _lib.ckpt_manager_save(None, None, True, ctypes.byref(ctypes.c_void_p()))
    with pytest.raises(ckpt_manager.NullArgumentError):
        ckpt_manager._manager._check(status)


def test_locked_for_a_second_writer(directory, clock):
    with ckpt_manager.CheckpointManager(directory, 2, save_fn=tf_save, clock=clock):
        with pytest.raises(ckpt_manager.LockedError, match=str(os.getpid())):
            ckpt_manager.CheckpointManager(directory, 2, save_fn=tf_save, clock=clock)
        # A reader is allowed.
        ckpt_manager.CheckpointManager(directory, 2, read_only=True).close()
    ckpt_manager.CheckpointManager(directory, 2, save_fn=tf_save, clock=clock).close()


def test_invalid_arguments(directory):
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        ckpt_manager.CheckpointManager(directory, 0)
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        ckpt_manager.CheckpointManager(directory, 2, keep_checkpoint_every_n_hours=-1)
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        ckpt_manager.CheckpointManager(directory, 2, checkpoint_name="a/b")
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        ckpt_manager.CheckpointManager(directory, 2, checkpoint_name="checkpoint")
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        ckpt_manager.CheckpointManager(directory, 2, step_counter=lambda: 0,
                                       checkpoint_interval=0)
    with pytest.raises(ckpt_manager.InvalidArgumentError):
        ckpt_manager.CheckpointManager("", 2)
    with pytest.raises(TypeError):
        ckpt_manager.CheckpointManager(directory, 2.5)
    with ckpt_manager.CheckpointManager(directory, 2) as m:
        with pytest.raises(ckpt_manager.InvalidArgumentError):
            m.save()  # neither a save callback nor a registered tensor
        with pytest.raises(ckpt_manager.InvalidArgumentError):
            m.save(checkpoint_number=-1)
        with pytest.raises(ckpt_manager.InvalidArgumentError):
            m.verify()  # no latest


def test_read_only(directory, clock):
    with ckpt_manager.CheckpointManager(directory, 2, save_fn=tf_save, clock=clock) as writer:
        writer.save()
        with ckpt_manager.CheckpointManager(directory, 2, save_fn=tf_save,
                                            read_only=True) as reader:
            with pytest.raises(ckpt_manager.ReadOnlyError):
                reader.save()
            assert len(reader.checkpoints) == 1
            writer.save()
            reader.reload()
            assert reader.latest_checkpoint == writer.latest_checkpoint


def test_state_corrupt(directory):
    os.makedirs(directory)
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write("this is not a state file {")
    with pytest.raises(ckpt_manager.StateCorruptError):
        ckpt_manager.CheckpointManager(directory, 2, save_fn=tf_save)
    with pytest.raises(ckpt_manager.StateCorruptError):
        ckpt_manager.latest_checkpoint(directory)
    with pytest.raises(ckpt_manager.StateCorruptError):
        ckpt_manager.get_checkpoint_state(directory)


def test_io_error_is_an_oserror(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(OSError) as info:
        ckpt_manager.CheckpointManager(str(not_a_directory), 2, save_fn=tf_save)
    assert isinstance(info.value, ckpt_manager.CheckpointIOError)


def test_damaged_and_no_manifest(directory, clock):
    with ckpt_manager.CheckpointManager(directory, 3, save_fn=tf_save, clock=clock) as m:
        first = m.save()
        clock.now += 1
        second = m.save()
        with open(second + ".index", "ab") as f:
            f.write(b"torn")
        with pytest.raises(ckpt_manager.CheckpointDamagedError):
            m.verify()
        m.verify(first)
        assert ckpt_manager.latest_checkpoint(directory) == first  # fell back
        with pytest.raises(ckpt_manager.CheckpointDamagedError):
            ckpt_manager.latest_checkpoint(directory, fallback=False)
        with pytest.raises(ckpt_manager.CheckpointDamagedError):
            ckpt_manager.verify_checkpoint(second)
        foreign = os.path.join(directory, "foreign-1")
        tf_save(foreign, 1)
        with pytest.raises(ckpt_manager.NoManifestError):
            m.verify(foreign)
        with pytest.raises(ckpt_manager.NoManifestError):
            ckpt_manager.verify_checkpoint(foreign)


def test_a_new_status_in_the_header_changes_the_generated_module():
    with open(HEADER, encoding="utf-8") as f:
        text = f.read()
    grown = text.replace("  CKPT_STATUS_TENSOR_MISMATCH = 12,\n",
                         "  CKPT_STATUS_TENSOR_MISMATCH = 12,\n  // New.\n"
                         "  CKPT_STATUS_SOMETHING_NEW = 13,\n")
    assert grown != text
    generator = load_generator()
    assert generator.render(grown) != generator.render(text)
    assert ("SOMETHING_NEW", 13, "New.") in generator.parse(grown)[0]
