# Generated from include/ckpt_manager.h by generate_from_header.py; do not edit.
# Regenerate with: python3 bindings/python/generate_from_header.py

HEADER_VERSION = (0, 1, 0)

# (name without the CKPT_STATUS_ prefix, value, the header's comment)
STATUSES = (
    ('OK', 0, 'Success.'),
    ('NULL_ARGUMENT', 1, 'A pointer argument that must not be NULL was NULL.'),
    ('INVALID_ARGUMENT', 2, 'An option or argument has a value that cannot be used, or the call needs something that is not configured (such as a save callback).'),
    ('STATE_CORRUPT', 3, "The directory's `checkpoint` state file exists but cannot be parsed or used. Nothing was changed; the file is left as it is."),
    ('IO_ERROR', 4, 'A file-system operation failed; the message names it and the errno text.'),
    ('CALLBACK_FAILED', 5, 'A user callback reported failure; the message holds its return code. Nothing was committed.'),
    ('REENTRANT_CALL', 6, 'A callback called back into the manager that is running it; the call was refused instead of deadlocking.'),
    ('PANIC', 7, 'A panic inside the library was caught. A manager that panicked refuses later calls with this status; free it and open a new one.'),
    ('CHECKPOINT_DAMAGED', 8, "A checkpoint's files are missing or do not match its manifest (sizes or CRC32C), or no intact checkpoint is left to fall back to."),
    ('LOCKED', 9, 'Another manager (the message names its process) is writing to the directory. Open this one read-only, or stop the other.'),
    ('READ_ONLY', 10, 'The manager was opened read-only and the call would write.'),
    ('NO_MANIFEST', 11, 'The checkpoint has files but no manifest (another tool wrote it), or only one of an earlier save (another tool saved it again), so it cannot be verified.'),
    ('TENSOR_MISMATCH', 12, "The registered tensors do not match the checkpoint's: a name, dtype or shape differs, or a tensor is on one side only (see the message). Nothing was restored."),
    ('TIMEOUT', 13, '`ckpt_manager_wait_until_finished` timed out: the background save is still running.'),
)

OK = 0
NULL_ARGUMENT = 1
INVALID_ARGUMENT = 2
STATE_CORRUPT = 3
IO_ERROR = 4
CALLBACK_FAILED = 5
REENTRANT_CALL = 6
PANIC = 7
CHECKPOINT_DAMAGED = 8
LOCKED = 9
READ_ONLY = 10
NO_MANIFEST = 11
TENSOR_MISMATCH = 12
TIMEOUT = 13

# ckpt_dtype: safetensors dtype name -> value
DTYPES = {
    'F64': 0,
    'F32': 1,
    'F16': 2,
    'BF16': 3,
    'I64': 4,
    'I32': 5,
    'I16': 6,
    'I8': 7,
    'U64': 8,
    'U32': 9,
    'U16': 10,
    'U8': 11,
    'BOOL': 12,
}
