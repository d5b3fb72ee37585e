//! The C++ wrapper (bindings/cpp/ckpt_manager.hpp): its tests
//! (tests/cpp/wrapper_tests.cpp) and its quick-start example
//! (bindings/cpp/examples/quickstart.cpp, shown in docs/cpp.md), compiled as
//! C++17 with warnings as errors under AddressSanitizer (with
//! LeakSanitizer) and UndefinedBehaviorSanitizer, and run case by case.
//!
//! The programs run directly, never under valgrind (`CKPT_VALGRIND`): a
//! sanitized process cannot also run under valgrind.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The sanitizer flags, with the wrapper's directory on the include path
/// (`support::program` adds `include/` and `tests/c/`).
fn flags() -> Vec<String> {
    let mut flags: Vec<String> = support::CXX_FLAGS.iter().map(|f| f.to_string()).collect();
    flags.extend(
        [
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
        ]
        .map(String::from),
    );
    flags.push(format!(
        "-I{}",
        support::repo_root().join("bindings/cpp").display()
    ));
    flags
}

fn sanitized_program(name: &str, source: &str) -> PathBuf {
    let flags = flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    support::program("c++", &flags, name, &[source])
}

/// `program` against the freshly built library, with the sanitizers set to
/// fail the process on any report.
fn sanitized_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env("LD_LIBRARY_PATH", support::library_dir())
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=86:strict_string_checks=1:\
             detect_stack_use_after_return=1:check_initialization_order=1",
        )
        .env(
            "UBSAN_OPTIONS",
            "halt_on_error=1:print_stacktrace=1:exitcode=87",
        )
        .env("LSAN_OPTIONS", "exitcode=88");
    command
}

fn run(program: &Path, args: &[&std::ffi::OsStr], what: &str) -> Output {
    let output = sanitized_command(program).args(args).output().unwrap();
    support::assert_success(&output, what);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("Sanitizer"),
        "{what}: a sanitizer reported:\n{stderr}"
    );
    output
}

fn run_case(case: &str) {
    let program = sanitized_program("cpp_wrapper_tests", "tests/cpp/wrapper_tests.cpp");
    let workdir = tempfile::tempdir().unwrap();
    run(
        &program,
        &[case.as_ref(), workdir.path().as_os_str()],
        &format!("wrapper_tests {case}"),
    );
}

/// The callbacks' exceptions on an `s3://` directory, on moto's server
/// (tests/support/s3.rs), sync and in the background.
#[cfg(feature = "s3")]
#[test]
fn s3_callback_exceptions() {
    let bucket = support::s3::Bucket::new("cpp-callback-exceptions");
    let program = sanitized_program("cpp_wrapper_tests", "tests/cpp/wrapper_tests.cpp");
    let workdir = tempfile::tempdir().unwrap();
    let output = sanitized_command(&program)
        .args([
            "s3_callback_exceptions".as_ref(),
            workdir.path().as_os_str(),
        ])
        .env("CKPT_TEST_S3_URL", bucket.url("run"))
        .env("CKPT_TEST_S3_ENDPOINT", &bucket.endpoint)
        .output()
        .unwrap();
    support::assert_success(&output, "wrapper_tests s3_callback_exceptions");
    assert!(
        bucket.keys().contains("run/ckpt-1.model"),
        "ckpt-1 is in the bucket: {:?}",
        bucket.keys()
    );
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                run_case(stringify!($case));
            }
        )*
    };
}

cases!(
    round_trip,
    save_exception,
    save_exception_then_success,
    restore_exception,
    init_exception,
    step_counter_and_clock_exceptions,
    delete_exception,
    log_exception,
    errors_carry_status_and_message,
    optional_none,
    move_semantics,
    tensors,
    tensor_kinds,
    module_functions,
    object_storage_options,
    nested_calls,
    threads,
    shared_options_threads,
    reset_inside_callback,
    keep_best_and_metrics,
    keep_period_and_pins,
    checkpoint_info_json,
    timed_and_requested_saves,
    preemption,
    save_async_snapshot,
    save_async_exception,
    wait_until_finished_timeout,
    prepare_callback,
    background_delete_exception,
    background_reentry,
    reset_waits_for_background_save,
    save_async_threads,
    background_exceptions_per_manager,
    communicator,
    remote_tier,
);

fn quickstart(directory: &Path, args: &[&str]) -> String {
    let program = sanitized_program("cpp_quickstart", "bindings/cpp/examples/quickstart.cpp");
    let mut all: Vec<&std::ffi::OsStr> = vec![directory.as_os_str()];
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    let output = run(&program, &all, "quickstart");
    String::from_utf8(output.stdout).unwrap()
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or("")
}

/// The C++ quick-start example: interrupted and resumed, it ends with the same
/// weights as a run straight through, and keeps the newest 3 checkpoints.
#[test]
fn quickstart_resumes_to_the_same_weights() {
    let root = tempfile::tempdir().unwrap();
    let straight = root.path().join("straight");
    let resumed = root.path().join("resumed");

    let out = quickstart(&straight, &["50"]);
    assert!(out.starts_with("no checkpoint in"), "{out}");
    assert!(out.contains("step 10: saved"), "{out}");
    assert!(!out.contains("step 11: saved"), "{out}");
    assert!(
        last_line(&out).starts_with("done at step 50: weights "),
        "{out}"
    );

    let first = quickstart(&resumed, &["50", "34"]);
    assert!(
        last_line(&first).starts_with("stopped at step 34"),
        "{first}"
    );
    let second = quickstart(&resumed, &["50"]);
    assert!(
        second.starts_with(&format!(
            "resumed from {}/ckpt-3 at step 30",
            resumed.display()
        )),
        "{second}"
    );
    assert_eq!(last_line(&second), last_line(&out), "{second}");

    let mut names: Vec<String> = std::fs::read_dir(&resumed)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected = vec!["checkpoint".to_owned(), "checkpoint.lock".to_owned()];
    for n in 3..=5 {
        for suffix in ["ckpt-manifest.json", "safetensors", "txt"] {
            expected.push(format!("ckpt-{n}.{suffix}"));
        }
    }
    assert_eq!(names, expected);
    assert_eq!(
        std::fs::read_to_string(resumed.join("ckpt-5.txt")).unwrap(),
        "checkpoint 5 at step 50\n"
    );
}

/// A directory the example cannot write to fails with the library's
/// status and message, and exit status 1.
#[test]
fn quickstart_reports_errors() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let program = sanitized_program("cpp_quickstart", "bindings/cpp/examples/quickstart.cpp");
    let output = sanitized_command(&program).arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("checkpoint error CKPT_STATUS_IO_ERROR: "),
        "{stderr}"
    );
}
