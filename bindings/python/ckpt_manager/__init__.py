"""Python bindings of ckpt-manager: a crash-safe checkpoint manager with the
behaviour of tf.train.CheckpointManager (pure Python over ctypes).

The C library is found through $CKPT_MANAGER_LIBRARY, then the copy packaged
in ckpt_manager/_native/, then the repository's target/release or target/debug
when imported from the source tree.
"""
from ._manager import (
    CheckpointManager,
    CheckpointState,
    RemoteStatus,
    checkpoint_exists,
    get_checkpoint_state,
    install_preemption_handler,
    latest_checkpoint,
    library_path,
    preemption_requested,
    remove_checkpoint,
    status_name,
    verify_checkpoint,
    version,
)
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = [
    "CheckpointManager",
    "CheckpointState",
    "RemoteStatus",
    "checkpoint_exists",
    "get_checkpoint_state",
    "install_preemption_handler",
    "latest_checkpoint",
    "library_path",
    "preemption_requested",
    "remove_checkpoint",
    "status_name",
    "verify_checkpoint",
    "version",
] + list(_errors_all)
