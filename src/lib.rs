//! ckpt-manager: a checkpoint manager for machine-learning training with a
//! C ABI, matching `tf.train.CheckpointManager` and its `checkpoint` state
//! file byte for byte.
//!
//! The Rust API is [`CheckpointManager`] with a [`Config`] and
//! [`Callbacks`]; the C API in [`ffi`] is a thin layer over it, described by
//! the generated header `include/ckpt_manager.h`.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod background;
mod communicator;
mod config;
mod error;
#[cfg(test)]
mod fault_injection_tests;
pub mod ffi;
mod inspect;
mod integrity;
mod layout;
pub mod location;
mod manager;
mod manifest;
pub mod paths;
mod policy;
mod preemption;
mod safetensors;
mod save_file;
mod sharding;
pub mod state;
mod state_file;
mod store;
mod tensor_file;
mod tensor_read;
mod tensors;
mod transaction;

pub use communicator::{broadcast_bytes, CommError, Communicator};
pub use config::{Callbacks, Config, KeepBest, LogLevel, MaxToKeep, UnmatchedRankLocal};
pub use error::{CallbackError, Error, ErrorKind, Result};
pub use inspect::{
    checkpoint_exists, checkpoints_on_disk, get_checkpoint_state, latest_checkpoint, read_manifest,
    recover_directory, remove_checkpoint, upload_list, verify_checkpoint,
    verify_checkpoint_with_progress, LatestOptions,
};
pub use integrity::Integrity;
pub use manager::{
    CheckpointInfo, CheckpointManager, FileInfo, KeepReason, Pruned, RemoteStatus,
    RetainedCheckpoint, SaveArgs,
};
pub use manifest::{
    Annotations, ByteString, FileRecord, Manifest, Metric, SavedBox, TensorRecord, Verification,
};
pub use policy::MetricMode;
pub use preemption::{install_preemption_handler, preemption_requested};
pub use safetensors::{FileTensor, Header as TensorHeader};
pub use save_file::SaveFile;
pub use state::CheckpointState;
pub use tensor_file::TensorFile;
pub use tensor_read::CheckpointTensors;
pub use tensors::{DType, TensorBox, TensorKind};
pub use transaction::tiers::UploadList;
pub use transaction::RecoveryAction;
