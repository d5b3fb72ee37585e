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
