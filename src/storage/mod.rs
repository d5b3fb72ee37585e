//! All file-system work, and nothing else: the state file, a checkpoint's
//! files, their integrity, and the directory lock.

mod fault;
mod files;
mod integrity;
mod lock;
mod state_file;
mod tensor_file;

pub use files::{
    checkpoint_exists, checkpoint_files, create_directory, delete_checkpoint,
    highest_number_on_disk, numbers_on_disk, remove_file, sync_checkpoint, sync_directory,
};
pub use integrity::{
    clear_pending, describe_checkpoint, mark_pending, mark_pending_all, verify_checkpoint,
    verify_checkpoint_deferring, write_manifest, Integrity,
};
pub use lock::DirectoryLock;
pub use state_file::{read_state, remove_temporary_state_files, replace_state};
pub use tensor_file::{read_tensor_file, write_tensor_file, TENSOR_FILE_SUFFIX};

#[cfg(test)]
pub use fault::{fail_after, io_steps_taken};
