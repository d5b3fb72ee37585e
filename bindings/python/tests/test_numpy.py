"""The built-in saver with NumPy arrays: zero copy, dtype and shape checked."""
import gc
import json
import os
import struct
import sys

import numpy as np
import pytest

from ckpt_manager import CheckpointManager, InvalidArgumentError, TensorMismatchError

DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
          np.uint64, np.uint32, np.uint16, np.uint8, np.bool_]
SAFETENSORS_NAMES = ["F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8",
                     "BOOL"]


def make(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def read_header(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def test_every_dtype_round_trips_in_place(directory, clock):
    arrays = {"t%02d" % i: make(dtype, (3, 5), i) for i, dtype in enumerate(DTYPES)}
    arrays["scalar"] = np.array(7, dtype=np.int64)
    arrays["vector"] = make(np.float32, (17,), 99)
    originals = {name: a.copy() for name, a in arrays.items()}
    with CheckpointManager(directory, 2, clock=clock) as m:
        for name, array in arrays.items():
            m.register_array(name, array)
        prefix = m.save()
        header = read_header(prefix + ".safetensors")
        for i, name in enumerate(SAFETENSORS_NAMES):
            assert header["t%02d" % i]["dtype"] == name
            assert header["t%02d" % i]["shape"] == [3, 5]
        assert header["scalar"]["shape"] == []
        for name, array in arrays.items():  # mutate in place
            array[...] = make(array.dtype.type, array.shape, 1000 + len(name))
        assert m.restore_or_initialize() == prefix
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, originals[name])


def test_restore_writes_the_registered_buffer_not_a_copy(directory, clock):
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = weights[1]  # another view of the same memory
    with CheckpointManager(directory, 2, clock=clock) as m:
        m.register_array("w", weights)
        assert m.registered_arrays["w"] is weights
        m.save()
        weights[...] = 0
        m.restore_or_initialize()
    np.testing.assert_array_equal(view, [4, 5, 6, 7])


def test_save_with_a_callback_and_arrays(directory, clock):
    weights = np.ones(4, dtype=np.float64)

    def save_fn(prefix, number):
        with open(prefix + ".extra", "w") as f:
            f.write("x")

    restored = []
    with CheckpointManager(directory, 2, clock=clock, save_fn=save_fn,
                           restore_fn=restored.append) as m:
        m.register_array("w", weights)
        prefix = m.save()
        assert os.path.exists(prefix + ".extra") and os.path.exists(prefix + ".safetensors")
        weights[:] = 3
        m.restore_or_initialize()
        assert restored == [prefix]
        assert (weights == 1).all()
        m.verify()


@pytest.mark.parametrize("change", ["shape", "dtype", "missing", "extra"])
def test_mismatch_raises_and_changes_nothing(directory, clock, change):
    a = np.arange(6, dtype=np.float32)
    b = np.arange(4, dtype=np.int32)
    with CheckpointManager(directory, 2, clock=clock) as m:
        m.register_array("a", a)
        m.register_array("b", b)
        m.save()
    replacement = {
        "shape": {"a": np.full(5, -1, np.float32), "b": np.full(4, -1, np.int32)},
        "dtype": {"a": np.full(6, -1, np.float64), "b": np.full(4, -1, np.int32)},
        "missing": {"a": np.full(6, -1, np.float32)},
        "extra": {"a": np.full(6, -1, np.float32), "b": np.full(4, -1, np.int32),
                  "c": np.full(2, -1, np.int8)},
    }[change]
    with CheckpointManager(directory, 2, clock=clock) as m:
        for name, array in replacement.items():
            m.register_array(name, array)
        with pytest.raises(TensorMismatchError) as info:
            m.restore_or_initialize()
        assert info.value.message
    for array in replacement.values():
        assert (array == -1).all()


def test_partial_restore(directory, clock):
    a = np.arange(6, dtype=np.float32)
    with CheckpointManager(directory, 2, clock=clock) as m:
        m.register_array("a", a)
        m.register_array("b", np.arange(3, dtype=np.int8))
        m.save()
    a2 = np.zeros(6, np.float32)
    c = np.full(2, 9, np.int16)
    with CheckpointManager(directory, 2, clock=clock, partial_restore=True) as m:
        m.register_array("a", a2)
        m.register_array("c", c)
        m.restore_or_initialize()
    np.testing.assert_array_equal(a2, a)
    assert (c == 9).all()


def test_unregister(directory, clock):
    a = np.ones(3)
    with CheckpointManager(directory, 2, clock=clock) as m:
        m.register_array("a", a)
        m.unregister("a")
        assert m.registered_arrays == {}
        with pytest.raises(InvalidArgumentError):
            m.save()  # neither a save callback nor a tensor
        with pytest.raises(InvalidArgumentError):
            m.unregister("a")


def test_manager_keeps_the_array_alive(directory, clock):
    with CheckpointManager(directory, 2, clock=clock) as m:
        m.register_array("a", np.full(1000, 5.0))  # no other reference
        gc.collect()
        m.save()
        array = m.registered_arrays["a"]
        array[:] = 0
        m.restore_or_initialize()
        assert (array == 5.0).all()
        before = sys.getrefcount(array)
        m.unregister("a")
        assert sys.getrefcount(array) == before - 1


@pytest.mark.parametrize("array, error", [
    (np.zeros((4, 4))[:, ::2], ValueError),                 # not C-contiguous
    (np.zeros((4, 4)).T, ValueError),                        # Fortran order
    (np.zeros(3, dtype=np.complex128), TypeError),           # unsupported dtype
    (np.array(["x"], dtype=object), TypeError),
    (np.zeros(3, dtype=">f8"), TypeError),                   # non-native byte order
    ([1.0, 2.0], TypeError),                                 # not an ndarray
])
def test_rejected_arrays(directory, clock, array, error):
    with CheckpointManager(directory, 2, clock=clock) as m:
        with pytest.raises(error):
            m.register_array("x", array)
        assert m.registered_arrays == {}


def test_empty_arrays_round_trip(directory, clock):
    """Zero-size arrays are registered, saved with their shape and matched."""
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    with CheckpointManager(directory, 2, clock=clock) as m:
        m.register_array("weights", weights)
        m.register_array("bias", np.zeros((3, 0), dtype=np.float16))
        m.register_array("mask", np.zeros(0, dtype=bool))
        prefix = m.save()
    with open(prefix + ".safetensors", "rb") as f:
        header = f.read()
    assert b'"bias":{"dtype":"F16","shape":[3,0],"data_offsets":[24,24]}' in header
    restored = np.zeros((2, 3), dtype=np.float32)
    with CheckpointManager(directory, 2, clock=clock) as m:
        m.register_array("weights", restored)
        m.register_array("bias", np.zeros((3, 0), dtype=np.float16))
        m.register_array("mask", np.zeros(0, dtype=bool))
        assert m.restore_or_initialize() == prefix
        assert (restored == weights).all()
        m.unregister("bias")
        m.register_array("bias", np.zeros((0, 3), dtype=np.float16))
        with pytest.raises(TensorMismatchError, match="'bias'"):
            m.restore_or_initialize()


def test_rejects_read_only_and_unaligned(directory, clock):
    ro = np.zeros(3)
    ro.flags.writeable = False
    unaligned = np.frombuffer(bytearray(8 * 4 + 1), dtype=np.uint8)[1:].view(np.float64)
    assert not unaligned.flags.aligned
    with CheckpointManager(directory, 2, clock=clock) as m:
        with pytest.raises(ValueError, match="writeable"):
            m.register_array("ro", ro)
        with pytest.raises(ValueError):
            m.register_array("u", unaligned)
        m.register_array("ok", np.zeros(3))
        with pytest.raises(InvalidArgumentError):  # duplicate name
            m.register_array("ok", np.zeros(3))
        with pytest.raises(InvalidArgumentError):  # reserved name
            m.register_array("__metadata__", np.zeros(3))


def test_a_slice_restores_its_rows_of_a_whole_tensor_and_replicated_round_trips(directory,
                                                                                clock):
    """One process: a whole tensor saved, a box of it restored; a replicated
    array (without a communicator, the whole tensor) round trips."""
    whole = np.arange(12, dtype=np.float32).reshape(4, 3)
    bias = np.array([0.5, -1.5], dtype=np.float64)
    with CheckpointManager(directory, 2, clock=clock) as m:
        m.register_array("w", whole)
        m.register_array("bias", bias, replicated=True)
        m.save()
    rows = np.zeros((2, 3), dtype=np.float32)
    restored_bias = np.zeros(2, dtype=np.float64)
    with CheckpointManager(directory, 2, clock=clock) as m:
        m.register_array("w", rows, global_shape=(4, 3), offset=(2, 0))
        m.register_array("bias", restored_bias, replicated=True)
        m.restore_or_initialize()
    np.testing.assert_array_equal(rows, whole[2:])
    np.testing.assert_array_equal(restored_bias, bias)


def test_register_array_refuses_inconsistent_kinds_and_boxes(directory, clock):
    rows = np.zeros((2, 3), dtype=np.float32)
    with CheckpointManager(directory, 2, clock=clock) as m:
        with pytest.raises(ValueError, match="both global_shape and offset"):
            m.register_array("w", rows, global_shape=(4, 3))
        with pytest.raises(ValueError, match="a replicated tensor has no global_shape"):
            m.register_array("w", rows, replicated=True, global_shape=(4, 3), offset=(0, 0))
        with pytest.raises(ValueError, match="offset"):
            m.register_array("w", rows, global_shape=(4, 3), offset=(0,))
        # Rows 3 and 4 of a 4-row tensor: outside it.
        with pytest.raises(InvalidArgumentError):
            m.register_array("w", rows, global_shape=(4, 3), offset=(3, 0))
        assert "w" not in m.registered_arrays
