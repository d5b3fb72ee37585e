"""Finds libckpt_manager.so and declares the C prototypes (ctypes)."""
import ctypes
import os

from . import _statuses

ENV_VAR = "CKPT_MANAGER_LIBRARY"
LIBRARY_NAME = "libckpt_manager.so"
EXPECTED_MAJOR = _statuses.HEADER_VERSION[0]

_HERE = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    """(description, path) in the order they are tried."""
    env = os.environ.get(ENV_VAR)
    if env:
        yield ("$%s" % ENV_VAR, env)
        return  # an explicit choice is never silently replaced
    yield ("packaged copy", os.path.join(_HERE, "_native", LIBRARY_NAME))
    # Imported from the source tree: bindings/python/ckpt_manager -> repo root.
    repo = os.path.normpath(os.path.join(_HERE, "..", "..", ".."))
    if os.path.isfile(os.path.join(repo, "Cargo.toml")):
        for profile in ("release", "debug"):
            yield ("repository build", os.path.join(repo, "target", profile, LIBRARY_NAME))


def _load():
    tried = []
    for what, path in _candidates():
        if what.startswith("$"):
            if not os.path.exists(path):
                raise ImportError(
                    "ckpt_manager: %s=%r does not exist; point it at libckpt_manager.so "
                    "(built by `cargo build --release` in the ckpt-manager repository, "
                    "in target/release/)" % (ENV_VAR, path))
        elif not os.path.exists(path):
            tried.append(path)
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as exc:
            raise ImportError("ckpt_manager: cannot load %s (%s): %s" % (path, what, exc)) from exc
    raise ImportError(
        "ckpt_manager: libckpt_manager.so not found (looked in: %s). Set %s to its path, "
        "e.g. `cargo build --release` in the ckpt-manager repository and "
        "`export %s=$PWD/target/release/libckpt_manager.so`, or reinstall the package "
        "with cargo available so that it bundles the library."
        % (", ".join(tried) or "nothing", ENV_VAR, ENV_VAR))


lib, path = _load()

c_char_p_p = ctypes.POINTER(ctypes.c_char_p)
c_void_p = ctypes.c_void_p
status_t = ctypes.c_uint32  # ckpt_status


class StringList(ctypes.Structure):
    _fields_ = [("items", ctypes.POINTER(ctypes.c_void_p)), ("len", ctypes.c_size_t)]


# Callback types. Strings arrive as c_void_p so that ctypes does not decode or
# copy them behind our back; _string_at reads the bytes.
SAVE_CB = ctypes.CFUNCTYPE(ctypes.c_int32, c_void_p, c_void_p, ctypes.c_uint64)
FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)
RESTORE_CB = ctypes.CFUNCTYPE(ctypes.c_int32, c_void_p, c_void_p)
INIT_CB = ctypes.CFUNCTYPE(ctypes.c_int32, c_void_p)
STEP_CB = ctypes.CFUNCTYPE(ctypes.c_int32, c_void_p, ctypes.POINTER(ctypes.c_int64))
CLOCK_CB = ctypes.CFUNCTYPE(ctypes.c_double, c_void_p)
DELETE_CB = ctypes.CFUNCTYPE(ctypes.c_int32, c_void_p, c_void_p)
LOG_CB = ctypes.CFUNCTYPE(None, c_void_p, ctypes.c_uint32, c_void_p)

_OUT_STR = ctypes.POINTER(ctypes.c_void_p)


def _proto(name, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


ckpt_version = _proto("ckpt_version", ctypes.c_char_p)
ckpt_last_error_message = _proto("ckpt_last_error_message", ctypes.c_char_p)
ckpt_status_name = _proto("ckpt_status_name", ctypes.c_char_p, ctypes.c_uint32)
ckpt_string_free = _proto("ckpt_string_free", None, c_void_p)
ckpt_string_list_free = _proto("ckpt_string_list_free", None, ctypes.POINTER(StringList))
ckpt_latest_checkpoint = _proto("ckpt_latest_checkpoint", status_t, ctypes.c_char_p, _OUT_STR)
ckpt_latest_checkpoint_with_flags = _proto(
    "ckpt_latest_checkpoint_with_flags", status_t, ctypes.c_char_p, ctypes.c_uint32, _OUT_STR)
ckpt_verify_checkpoint = _proto("ckpt_verify_checkpoint", status_t, ctypes.c_char_p, ctypes.c_bool)
ckpt_get_checkpoint_state = _proto(
    "ckpt_get_checkpoint_state", status_t, ctypes.c_char_p, ctypes.POINTER(c_void_p))
ckpt_checkpoint_state_free = _proto("ckpt_checkpoint_state_free", None, c_void_p)
ckpt_checkpoint_state_model_checkpoint_path = _proto(
    "ckpt_checkpoint_state_model_checkpoint_path", c_void_p, c_void_p)
ckpt_checkpoint_state_path_count = _proto(
    "ckpt_checkpoint_state_path_count", ctypes.c_size_t, c_void_p)
ckpt_checkpoint_state_path = _proto(
    "ckpt_checkpoint_state_path", c_void_p, c_void_p, ctypes.c_size_t)
ckpt_checkpoint_state_timestamp_count = _proto(
    "ckpt_checkpoint_state_timestamp_count", ctypes.c_size_t, c_void_p)
ckpt_checkpoint_state_timestamp = _proto(
    "ckpt_checkpoint_state_timestamp", ctypes.c_double, c_void_p, ctypes.c_size_t)
ckpt_checkpoint_state_last_preserved_timestamp = _proto(
    "ckpt_checkpoint_state_last_preserved_timestamp", ctypes.c_double, c_void_p)
ckpt_checkpoint_exists = _proto(
    "ckpt_checkpoint_exists", status_t, ctypes.c_char_p, ctypes.POINTER(ctypes.c_bool))
ckpt_remove_checkpoint = _proto("ckpt_remove_checkpoint", status_t, ctypes.c_char_p)

ckpt_manager_new = _proto("ckpt_manager_new", status_t, c_void_p, ctypes.POINTER(c_void_p))
ckpt_manager_free = _proto("ckpt_manager_free", None, c_void_p)
ckpt_manager_save = _proto(
    "ckpt_manager_save", status_t, c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_bool,
    _OUT_STR)
ckpt_manager_latest = _proto("ckpt_manager_latest", status_t, c_void_p, _OUT_STR)
ckpt_manager_checkpoints = _proto(
    "ckpt_manager_checkpoints", status_t, c_void_p, ctypes.POINTER(ctypes.POINTER(StringList)))
ckpt_manager_restore_or_initialize = _proto(
    "ckpt_manager_restore_or_initialize", status_t, c_void_p, _OUT_STR)
ckpt_manager_directory = _proto("ckpt_manager_directory", status_t, c_void_p, _OUT_STR)
ckpt_manager_save_counter = _proto(
    "ckpt_manager_save_counter", status_t, c_void_p, ctypes.POINTER(ctypes.c_uint64))
ckpt_manager_verify = _proto(
    "ckpt_manager_verify", status_t, c_void_p, ctypes.c_char_p, ctypes.c_bool)
ckpt_manager_reload = _proto("ckpt_manager_reload", status_t, c_void_p)
ckpt_manager_register_tensor = _proto(
    "ckpt_manager_register_tensor", status_t, c_void_p, ctypes.c_char_p, ctypes.c_uint32,
    ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, c_void_p)
ckpt_manager_unregister_tensor = _proto(
    "ckpt_manager_unregister_tensor", status_t, c_void_p, ctypes.c_char_p)

ckpt_options_new = _proto("ckpt_options_new", status_t, ctypes.POINTER(c_void_p))
ckpt_options_free = _proto("ckpt_options_free", None, c_void_p)
ckpt_options_set_directory = _proto(
    "ckpt_options_set_directory", status_t, c_void_p, ctypes.c_char_p)
ckpt_options_set_max_to_keep = _proto(
    "ckpt_options_set_max_to_keep", status_t, c_void_p, ctypes.c_int64)
ckpt_options_set_keep_all = _proto("ckpt_options_set_keep_all", status_t, c_void_p)
ckpt_options_set_keep_checkpoint_every_n_hours = _proto(
    "ckpt_options_set_keep_checkpoint_every_n_hours", status_t, c_void_p, ctypes.c_double)
ckpt_options_set_checkpoint_name = _proto(
    "ckpt_options_set_checkpoint_name", status_t, c_void_p, ctypes.c_char_p)
ckpt_options_set_checkpoint_interval = _proto(
    "ckpt_options_set_checkpoint_interval", status_t, c_void_p, ctypes.c_int64)
ckpt_options_set_last_checkpoint_step = _proto(
    "ckpt_options_set_last_checkpoint_step", status_t, c_void_p, ctypes.c_int64)
ckpt_options_set_read_only = _proto(
    "ckpt_options_set_read_only", status_t, c_void_p, ctypes.c_bool)
ckpt_options_set_verify_checksums = _proto(
    "ckpt_options_set_verify_checksums", status_t, c_void_p, ctypes.c_bool)
ckpt_options_set_partial_restore = _proto(
    "ckpt_options_set_partial_restore", status_t, c_void_p, ctypes.c_bool)
ckpt_options_set_save_callback = _proto(
    "ckpt_options_set_save_callback", status_t, c_void_p, SAVE_CB, c_void_p, FINALIZER)
ckpt_options_set_restore_callback = _proto(
    "ckpt_options_set_restore_callback", status_t, c_void_p, RESTORE_CB, c_void_p, FINALIZER)
ckpt_options_set_init_callback = _proto(
    "ckpt_options_set_init_callback", status_t, c_void_p, INIT_CB, c_void_p, FINALIZER)
ckpt_options_set_step_counter_callback = _proto(
    "ckpt_options_set_step_counter_callback", status_t, c_void_p, STEP_CB, c_void_p, FINALIZER)
ckpt_options_set_clock_callback = _proto(
    "ckpt_options_set_clock_callback", status_t, c_void_p, CLOCK_CB, c_void_p, FINALIZER)
ckpt_options_set_delete_callback = _proto(
    "ckpt_options_set_delete_callback", status_t, c_void_p, DELETE_CB, c_void_p, FINALIZER)
ckpt_options_set_log_callback = _proto(
    "ckpt_options_set_log_callback", status_t, c_void_p, LOG_CB, c_void_p, FINALIZER)

CKPT_LATEST_NO_FALLBACK = 1
CKPT_LATEST_VERIFY_CHECKSUMS = 2
LOG_INFO = 0
LOG_WARNING = 1

version = ckpt_version().decode("ascii")
try:
    _major = int(version.split(".")[0])
except ValueError:
    raise ImportError("ckpt_manager: %s reports an unreadable version %r" % (path, version))
if _major != EXPECTED_MAJOR:
    raise ImportError(
        "ckpt_manager: %s is version %s, but this package needs major version %d "
        "(header %s); use a matching library" % (
            path, version, EXPECTED_MAJOR, ".".join(map(str, _statuses.HEADER_VERSION))))
