//! The checked-in header is what cbindgen generates, and it compiles as
//! C++17 with warnings as errors.

mod support;

use std::path::PathBuf;

fn checked_in_header() -> PathBuf {
    support::repo_root().join("include/ckpt_manager.h")
}

/// Ordinary builds never run cbindgen; this test does, and with
/// `CKPT_UPDATE_HEADER=1` (what `make header` sets) it rewrites the
/// checked-in copy instead of failing.
#[test]
fn checked_in_header_is_current() {
    let root = support::repo_root();
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    if std::env::var_os("CKPT_UPDATE_HEADER").is_some() {
        std::fs::write(checked_in_header(), &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(checked_in_header()).unwrap();
    assert!(
        generated == checked_in,
        "include/ckpt_manager.h is stale: run `make header` and commit it"
    );
}

/// Dependent crates get the checked-in header through `cargo:include`.
#[test]
fn build_script_exposes_the_checked_in_header() {
    let exposed = include_str!(concat!(env!("OUT_DIR"), "/include/ckpt_manager.h"));
    let checked_in = std::fs::read_to_string(checked_in_header()).unwrap();
    assert!(exposed == checked_in, "OUT_DIR/include holds a stale copy");
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

/// `NAME = value` for each enumerator of `enum <type_name>` in the header.
fn enumerators(header: &str, type_name: &str) -> Vec<(String, u32)> {
    let body = header
        .split(&format!("enum {type_name}\n"))
        .nth(1)
        .and_then(|rest| rest.split("};").next())
        .unwrap_or_else(|| panic!("no enum {type_name} in the header"));
    body.lines()
        .filter_map(|line| line.trim().strip_suffix(','))
        .filter_map(|item| item.split_once(" = "))
        .map(|(name, value)| (name.to_owned(), value.parse().unwrap()))
        .collect()
}

/// The status and dtype tables have one source each, the Rust enums: the
/// header's enumerators (cbindgen's rendering of them) are what the
/// library names, every value is taken, and the next one is unknown.
#[test]
fn header_enums_match_the_library() {
    use ckpt_manager::{ffi::ckpt_status_name, DType};
    let header = std::fs::read_to_string(checked_in_header()).unwrap();
    let statuses = enumerators(&header, "ckpt_status");
    for (index, (name, value)) in statuses.iter().enumerate() {
        assert_eq!(*value as usize, index, "statuses are numbered densely");
        // SAFETY: ckpt_status_name returns a static NUL-terminated string.
        let library = unsafe { std::ffi::CStr::from_ptr(ckpt_status_name(*value)) };
        assert_eq!(library.to_str().unwrap(), name);
    }
    // SAFETY: as above.
    let next = unsafe { std::ffi::CStr::from_ptr(ckpt_status_name(statuses.len() as u32)) };
    assert_eq!(next.to_str().unwrap(), "CKPT_STATUS_UNKNOWN");

    let dtypes = enumerators(&header, "ckpt_dtype");
    assert_eq!(dtypes.len(), DType::ALL.len());
    for (name, value) in dtypes {
        let dtype = DType::from_u32(value).unwrap();
        assert_eq!(name, format!("CKPT_DTYPE_{}", dtype.name()));
    }
}

/// Every function's comment states who owns each pointer, the result, the
/// errors, which threads may call it and which run its callbacks.
#[test]
fn every_function_documents_its_contract() {
    let header = std::fs::read_to_string(checked_in_header()).unwrap();
    let functions = header
        .split("extern \"C\" {")
        .nth(1)
        .and_then(|rest| rest.split("}  // extern").next())
        .unwrap();
    let mut comment = String::new();
    let (mut checked, mut in_declaration) = (0, false);
    for line in functions.lines().map(str::trim) {
        if in_declaration {
            in_declaration = !line.ends_with(';');
        } else if let Some(text) = line.strip_prefix("//") {
            comment.push_str(text);
            comment.push('\n');
        } else if !line.is_empty() && !line.starts_with('#') {
            let name = line.split('(').next().unwrap();
            for label in ["Ownership", "Returns:", "Errors:", "Threads:", "Callbacks:"] {
                assert!(comment.contains(label), "{name}: no {label}\n{comment}");
            }
            checked += 1;
            comment.clear();
            in_declaration = !line.ends_with(';');
        }
    }
    assert!(checked > 40, "the scan found only {checked} declarations");
}

/// Every name the header defines is prefixed, so that it cannot clash with
/// a user's own macros and types.
#[test]
fn every_name_in_the_header_is_prefixed() {
    let header = std::fs::read_to_string(checked_in_header()).unwrap();
    let mut names = Vec::new();
    for line in header.lines().map(str::trim) {
        if line.starts_with("//") || line.starts_with("/*") || line.starts_with('*') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("#define ") {
            names.push(rest.split_whitespace().next().unwrap().to_owned());
        } else if line.starts_with("typedef") || (line.starts_with("} ") && line.ends_with(';')) {
            // `typedef struct x x;`, `typedef int32_t (*x)(...)`, `} x;`
            let name = line
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|word| !word.is_empty())
                .find(|word| {
                    word.starts_with("ckpt_")
                        || ![
                            "typedef", "struct", "enum", "int32_t", "uint32_t", "void", "double",
                            "const", "char", "int64_t", "uint64_t", "bool", "size_t",
                        ]
                        .contains(word)
                });
            names.extend(name.map(str::to_owned));
        } else if let Some(open) = line.find('(') {
            if line.contains("ckpt_status ")
                || ["void ", "const char *", "size_t ", "double "]
                    .iter()
                    .any(|result| line.starts_with(result))
            {
                let before = &line[..open];
                names.push(before.rsplit([' ', '*']).next().unwrap().to_owned());
            }
        }
    }
    let guard = ["CKPT_MANAGER_H"];
    let stray: Vec<_> = names
        .iter()
        .filter(|name| {
            !(name.starts_with("ckpt_")
                || name.starts_with("CKPT_")
                || guard.contains(&name.as_str()))
        })
        .collect();
    assert!(names.len() > 60, "the scan found too few names: {names:?}");
    assert!(
        stray.is_empty(),
        "unprefixed names in the header: {stray:?}"
    );
}
