# Generated from include/ckpt_manager.h by generate_from_header.py; do not edit.
# Regenerate with: python3 bindings/python/generate_from_header.py

"""ctypes declarations of every type and function of the C API."""
import ctypes

# #define constants and enumerators
CKPT_VERSION_MAJOR = 0
CKPT_VERSION_MINOR = 1
CKPT_VERSION_PATCH = 0
CKPT_COMMUNICATOR_VERSION = 1
CKPT_COMMUNICATOR_TIMEOUT = 1
CKPT_LATEST_NO_FALLBACK = 1
CKPT_LATEST_VERIFY_CHECKSUMS = 2
CKPT_LOG_LEVEL_INFO = 0
CKPT_LOG_LEVEL_WARNING = 1
CKPT_METRIC_MIN = 0
CKPT_METRIC_MAX = 1


class ckpt_string_list(ctypes.Structure):
    _fields_ = [
        ('items', ctypes.POINTER(ctypes.c_void_p)),
        ('len', ctypes.c_size_t),
    ]


class ckpt_remote_status(ctypes.Structure):
    _fields_ = [
        ('has_remote', ctypes.c_bool),
        ('has_uploaded', ctypes.c_bool),
        ('newest_uploaded', ctypes.c_uint64),
        ('pending', ctypes.c_uint64),
        ('failures', ctypes.c_uint64),
        ('dropped', ctypes.c_uint64),
    ]


class ckpt_communicator(ctypes.Structure):
    _fields_ = [
        ('version', ctypes.c_uint32),
        ('rank', ctypes.c_uint32),
        ('size', ctypes.c_uint32),
        ('user_data', ctypes.c_void_p),
        ('barrier', ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_double)),
        ('broadcast', ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_double)),
        ('all_gather', ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_double)),
    ]


ckpt_finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
ckpt_save_callback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64)
ckpt_prepare_callback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_uint64)
ckpt_restore_callback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
ckpt_init_callback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)
ckpt_step_counter_callback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64))
ckpt_clock_callback = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_void_p)
ckpt_delete_callback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
ckpt_log_callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)

# (name, restype, argtypes) of every function
FUNCTIONS = (
    ('ckpt_version', ctypes.c_char_p, ()),
    ('ckpt_last_error_message', ctypes.c_char_p, ()),
    ('ckpt_status_name', ctypes.c_char_p, (ctypes.c_uint32,)),
    ('ckpt_string_free', None, (ctypes.c_void_p,)),
    ('ckpt_string_list_free', None, (ctypes.POINTER(ckpt_string_list),)),
    ('ckpt_callback_set_error', ctypes.c_uint32, (ctypes.c_char_p, ctypes.c_void_p, ckpt_finalizer)),
    ('ckpt_take_error_payload', ctypes.c_uint32, (ctypes.POINTER(ctypes.c_void_p),)),
    ('ckpt_latest_checkpoint', ctypes.c_uint32, (ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_latest_checkpoint_with_flags', ctypes.c_uint32, (ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_verify_checkpoint', ctypes.c_uint32, (ctypes.c_char_p, ctypes.c_bool)),
    ('ckpt_get_checkpoint_state', ctypes.c_uint32, (ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_checkpoint_state_free', None, (ctypes.c_void_p,)),
    ('ckpt_checkpoint_state_model_checkpoint_path', ctypes.c_char_p, (ctypes.c_void_p,)),
    ('ckpt_checkpoint_state_path_count', ctypes.c_size_t, (ctypes.c_void_p,)),
    ('ckpt_checkpoint_state_path', ctypes.c_char_p, (ctypes.c_void_p, ctypes.c_size_t)),
    ('ckpt_checkpoint_state_timestamp_count', ctypes.c_size_t, (ctypes.c_void_p,)),
    ('ckpt_checkpoint_state_timestamp', ctypes.c_double, (ctypes.c_void_p, ctypes.c_size_t)),
    ('ckpt_checkpoint_state_last_preserved_timestamp', ctypes.c_double, (ctypes.c_void_p,)),
    ('ckpt_checkpoint_exists', ctypes.c_uint32, (ctypes.c_char_p, ctypes.POINTER(ctypes.c_bool))),
    ('ckpt_remove_checkpoint', ctypes.c_uint32, (ctypes.c_char_p,)),
    ('ckpt_manager_new', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_manager_free', None, (ctypes.c_void_p,)),
    ('ckpt_manager_save', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_bool, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_manager_latest', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_manager_checkpoints', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(ckpt_string_list)))),
    ('ckpt_manager_restore_or_initialize', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_manager_directory', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_manager_save_counter', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64))),
    ('ckpt_manager_verify', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_bool)),
    ('ckpt_manager_reload', ctypes.c_uint32, (ctypes.c_void_p,)),
    ('ckpt_manager_register_tensor', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, ctypes.c_void_p)),
    ('ckpt_manager_register_replicated_tensor', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, ctypes.c_void_p)),
    ('ckpt_manager_register_tensor_slice', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, ctypes.c_void_p)),
    ('ckpt_manager_unregister_tensor', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p)),
    ('ckpt_manager_save_with', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_manager_should_save', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ctypes.c_bool))),
    ('ckpt_manager_request_save', ctypes.c_uint32, (ctypes.c_void_p,)),
    ('ckpt_manager_pin', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p)),
    ('ckpt_manager_unpin', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p)),
    ('ckpt_manager_best', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_manager_checkpoint_info', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_manager_save_async', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_manager_wait_until_finished', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_double)),
    ('ckpt_manager_remote_status', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ckpt_remote_status), ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_options_new', ctypes.c_uint32, (ctypes.POINTER(ctypes.c_void_p),)),
    ('ckpt_options_free', None, (ctypes.c_void_p,)),
    ('ckpt_options_set_directory', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p)),
    ('ckpt_options_set_max_to_keep', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_int64)),
    ('ckpt_options_set_keep_all', ctypes.c_uint32, (ctypes.c_void_p,)),
    ('ckpt_options_set_keep_checkpoint_every_n_hours', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_double)),
    ('ckpt_options_set_remote_directory', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p)),
    ('ckpt_options_set_remote_max_to_keep', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_int64)),
    ('ckpt_options_set_remote_keep_checkpoint_every_n_hours', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_double)),
    ('ckpt_options_set_local_max_held_for_upload', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_int64)),
    ('ckpt_options_set_remote_preemption_seconds', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_double)),
    ('ckpt_options_set_keep_best', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_size_t)),
    ('ckpt_options_set_keep_period', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_uint64)),
    ('ckpt_options_set_save_interval_seconds', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_double)),
    ('ckpt_options_set_communicator', ctypes.c_uint32, (ctypes.c_void_p, ctypes.POINTER(ckpt_communicator))),
    ('ckpt_options_set_node_local', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_bool)),
    ('ckpt_options_set_coordination_timeout', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_double)),
    ('ckpt_options_set_storage_option', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p)),
    ('ckpt_options_set_checkpoint_name', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p)),
    ('ckpt_options_set_checkpoint_interval', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_int64)),
    ('ckpt_options_set_last_checkpoint_step', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_int64)),
    ('ckpt_options_set_read_only', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_bool)),
    ('ckpt_options_set_verify_checksums', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_bool)),
    ('ckpt_options_set_partial_restore', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_bool)),
    ('ckpt_options_set_unmatched_rank_local', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_uint32)),
    ('ckpt_options_set_save_callback', ctypes.c_uint32, (ctypes.c_void_p, ckpt_save_callback, ctypes.c_void_p, ckpt_finalizer)),
    ('ckpt_options_set_prepare_callback', ctypes.c_uint32, (ctypes.c_void_p, ckpt_prepare_callback, ctypes.c_void_p, ckpt_finalizer)),
    ('ckpt_options_set_restore_callback', ctypes.c_uint32, (ctypes.c_void_p, ckpt_restore_callback, ctypes.c_void_p, ckpt_finalizer)),
    ('ckpt_options_set_init_callback', ctypes.c_uint32, (ctypes.c_void_p, ckpt_init_callback, ctypes.c_void_p, ckpt_finalizer)),
    ('ckpt_options_set_step_counter_callback', ctypes.c_uint32, (ctypes.c_void_p, ckpt_step_counter_callback, ctypes.c_void_p, ckpt_finalizer)),
    ('ckpt_options_set_clock_callback', ctypes.c_uint32, (ctypes.c_void_p, ckpt_clock_callback, ctypes.c_void_p, ckpt_finalizer)),
    ('ckpt_options_set_delete_callback', ctypes.c_uint32, (ctypes.c_void_p, ckpt_delete_callback, ctypes.c_void_p, ckpt_finalizer)),
    ('ckpt_options_set_log_callback', ctypes.c_uint32, (ctypes.c_void_p, ckpt_log_callback, ctypes.c_void_p, ckpt_finalizer)),
    ('ckpt_install_preemption_handler', ctypes.c_uint32, (ctypes.c_int32,)),
    ('ckpt_preemption_requested', ctypes.c_bool, ()),
    ('ckpt_save_args_new', ctypes.c_uint32, (ctypes.POINTER(ctypes.c_void_p),)),
    ('ckpt_save_args_free', None, (ctypes.c_void_p,)),
    ('ckpt_save_args_set_checkpoint_number', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_uint64)),
    ('ckpt_save_args_set_check_interval', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_bool)),
    ('ckpt_save_args_set_metric', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_double)),
    ('ckpt_save_args_set_metadata_json', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_char_p)),
    ('ckpt_save_file_open', ctypes.c_uint32, (ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p))),
    ('ckpt_save_file_write', ctypes.c_uint32, (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)),
    ('ckpt_save_file_close', ctypes.c_uint32, (ctypes.c_void_p,)),
)
