//! The checked-in header is what cbindgen generates, and it compiles as
//! C++17 with warnings as errors.

mod support;

#[test]
fn checked_in_header_is_current() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/ckpt_manager.h"));
    let checked_in =
        std::fs::read_to_string(support::repo_root().join("include/ckpt_manager.h")).unwrap();
    assert!(
        generated == checked_in,
        "include/ckpt_manager.h is stale: run `CKPT_UPDATE_HEADER=1 cargo build` and commit it"
    );
}

#[test]
fn header_compiles_and_links_as_cpp17() {
    let program = support::program(
        "c++",
        support::CXX_FLAGS,
        "header_compiles_cpp",
        &["tests/cpp/header_compiles.cpp"],
    );
    let output = support::command(&program).output().unwrap();
    support::assert_success(&output, "header_compiles_cpp");
}
