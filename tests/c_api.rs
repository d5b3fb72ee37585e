//! The C test programs in tests/c, compiled with warnings as errors against
//! the checked-in header and run case by case.

mod support;

macro_rules! c_cases {
    ($module:ident, $source:literal: $($case:ident),* $(,)?) => {
        mod $module {
            fn program() -> std::path::PathBuf {
                super::support::c_program(
                    stringify!($module),
                    &[concat!("tests/c/", $source), "tests/c/test_support.c"],
                )
            }
            $(
                #[test]
                fn $case() {
                    super::support::run_case(&program(), stringify!($case));
                }
            )*
        }
    };
}

c_cases!(tf_cases, "tf_cases.c":
    deletion,
    keep_all,
    save_restore_state,
    continue_from_unmanaged,
    clock_reset,
    custom_numbering,
    custom_checkpoint_prefix,
    restore_or_initialize,
    checkpoint_interval,
    checkpoint_interval_with_last_step,
    checkpoint_interval_with_restore,
);

c_cases!(api_cases, "api_cases.c":
    version,
    status_names,
    null_arguments,
    invalid_options,
    nothing_created_at_construction,
    save_callback_failure,
    step_counter_and_clock_failures,
    clock_failure_during_save,
    state_write_failure,
    state_commit_sync_failure,
    restore_without_callback,
    finalizers,
    reentrant_call,
    threads,
    glob_characters,
    deletes_only_own_files,
    delete_callback,
    never_overwrites_existing_numbers,
    corrupt_state,
    reads_tf_written_state,
    state_file_bytes,
    non_utf8_paths,
    latest_checkpoint_missing_files,
    remove_checkpoint,
    explicit_overwrite,
    lower_max_to_keep,
    directory_is_a_file,
    save_file_writes,
    free_inside_callback,
    shared_callbacks,
    save_args_setters,
    save_with_records,
    save_with_numbers_and_intervals,
    keep_options_invalid,
    keep_best_retention,
    best_checkpoint,
    keep_period_retention,
    pins,
    pin_unmanaged,
    tf_written_checkpoint_info,
    should_save_and_request,
    preemption_bad_signals,
    preemption_handler,
    communicator_invalid,
);

c_cases!(async_cases, "async_cases.c":
    save_async_with_and_without_args,
    skipped_by_interval_never_waits,
    snapshot_at_the_call,
    failed_save_reported_by_save_async,
    failed_save_reported_by_wait,
    failed_save_reported_by_restore,
    wait_times_out_while_a_save_runs,
    free_waits_for_the_save_in_flight,
    save_async_from_four_threads,
    background_callbacks_cannot_call_managers,
    prepare_runs_on_the_calling_thread,
    read_only_refuses_save_async,
    remote_tier,
);

c_cases!(error_cases, "error_cases.c":
    sync_save_error,
    untaken_payload_is_finalized,
    background_save_error,
    other_callbacks,
    failed_new_clears_out_manager,
    failed_calls_clear_out_strings,
    failed_calls_clear_out_counts,
    failed_save_file_open_clears_out_file,
);

c_cases!(tensor_cases, "tensor_cases.c":
    registration_errors,
    empty_tensors,
    all_dtypes_round_trip,
    callback_and_builtin_saver,
    partial_restore_files,
    hostile_empty,
    hostile_seven_bytes,
    hostile_header_beyond_file,
    hostile_huge_header,
    hostile_max_header_length,
    hostile_not_json,
    hostile_not_utf8,
    hostile_json_array,
    hostile_overlap,
    hostile_out_of_range,
    hostile_far_out_of_range,
    hostile_gap,
    hostile_reversed_offsets,
    hostile_size_not_matching_shape,
    hostile_shape_overflow,
    hostile_unknown_dtype,
    hostile_missing_field,
    hostile_negative_offset,
    hostile_trailing_data,
    hostile_metadata_not_string,
    hostile_dtype_mismatch,
    hostile_shape_mismatch,
    hostile_unregistered_tensor,
    hostile_missing_tensor,
    hostile_no_tensors,
);
