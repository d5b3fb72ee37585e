//! `scripts/install` into a temporary prefix, then what a user of the
//! installed library does: `tests/install/hello.c` built with
//! `pkg-config --cflags --libs ckpt_manager` and the CMake project
//! `tests/install/CMakeLists.txt` (`find_package(ckpt_manager)`, the shared
//! and the static target), each run. One test, in order. It installs the
//! dev profile, the tree the tests themselves built, so that no second tree
//! of dependencies is compiled: bin/ckpt from target/debug and, from a copy
//! of that tree's compiled crates, the library with its SONAME (in
//! target/install/debug). `make install` runs the same script for release.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NAME: &str = "ckpt_manager";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn version_part(index: usize) -> u64 {
    VERSION.split('.').nth(index).unwrap().parse().unwrap()
}

/// The ABI version in the SONAME, as cargo-c computes it: MAJOR from 1.0 on,
/// 0.MINOR for 0.x, 0.0.PATCH for 0.0.x.
fn soversion() -> String {
    match (version_part(0), version_part(1), version_part(2)) {
        (0, 0, patch) => format!("0.0.{patch}"),
        (0, minor, _) => format!("0.{minor}"),
        (major, _, _) => format!("{major}"),
    }
}

/// Fails (never skips) when a tool the test needs is missing.
fn require_tools() {
    let missing: Vec<&str> = ["cc", "c++", "pkg-config", "cmake", "readelf", "mpicc"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the install test needs {}: run scripts/setup (it installs them)",
        missing.join(", ")
    );
}

fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    support::assert_success(&output, what);
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command with none of cargo's library paths: what it loads comes from
/// the prefix (or from the program's RUNPATH).
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_remove("LD_LIBRARY_PATH");
    command
}

fn dynamic_section(file: &Path) -> String {
    stdout(&run(
        Command::new("readelf").arg("-d").arg(file),
        &format!("readelf -d {}", file.display()),
    ))
}

fn needed(file: &Path) -> Vec<String> {
    dynamic_section(file)
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| Some(line.split('[').nth(1)?.trim_end_matches(']').to_owned()))
        .collect()
}

fn soname_of(file: &Path) -> Option<String> {
    dynamic_section(file)
        .lines()
        .find(|line| line.contains("(SONAME)"))
        .map(|line| {
            line.split('[')
                .nth(1)
                .unwrap()
                .trim_end_matches(']')
                .to_owned()
        })
}

/// Runs scripts/install as from a user's shell: without the variables cargo
/// sets for this test (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, ...). Build
/// scripts that watch them (ring's, through `rerun-if-env-changed`) would
/// otherwise make the next plain `cargo build`, the Python package's,
/// compile half the tree again.
fn install(args: &[&str]) -> String {
    let mut command = Command::new("bash");
    command
        .arg(support::repo_root().join("scripts/install"))
        .args(["--profile", "dev"])
        .args(args)
        .env_remove("PREFIX")
        .env_remove("DESTDIR")
        .env_remove("LIBDIR");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo = name == "OUT_DIR"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || [
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&&*name);
        if set_by_cargo {
            command.env_remove(&*name);
        }
    }
    let output = run(&mut command, &format!("scripts/install {}", args.join(" ")));
    stdout(&output)
}

fn assert_symlink(link: &Path, target: &str) {
    let read = std::fs::read_link(link)
        .unwrap_or_else(|e| panic!("{} is not a symlink: {e}", link.display()));
    assert_eq!(
        read,
        Path::new(target),
        "{} points elsewhere",
        link.display()
    );
}

/// Every file of the layout, the symlinks, the SONAME, the header, the .pc.
fn check_layout(prefix: &Path, pc_prefix: &Path) {
    let lib = prefix.join("lib");
    let full = format!("lib{NAME}.so.{VERSION}");
    let soname = format!("lib{NAME}.so.{}", soversion());
    let shared = lib.join(&full);
    assert!(
        std::fs::symlink_metadata(&shared).unwrap().is_file(),
        "{} is not a file",
        shared.display()
    );
    assert_symlink(&lib.join(&soname), &full);
    assert_symlink(&lib.join(format!("lib{NAME}.so")), &full);
    assert!(lib.join(format!("lib{NAME}.a")).is_file());
    // The command-line tool runs from the prefix.
    let ckpt = prefix.join("bin/ckpt");
    let help = run(clean_command(&ckpt).arg("--help"), "bin/ckpt --help");
    assert!(
        stdout(&help).contains("Usage: ckpt"),
        "ckpt --help printed:\n{}",
        stdout(&help)
    );
    assert_eq!(
        soname_of(&shared).as_deref(),
        Some(soname.as_str()),
        "the SONAME"
    );

    for header in [format!("{NAME}.h"), format!("{NAME}_mpi.h")] {
        assert_eq!(
            std::fs::read(prefix.join("include").join(NAME).join(&header)).unwrap(),
            std::fs::read(support::repo_root().join("include").join(&header)).unwrap(),
            "the installed {header} is not include/{header}"
        );
    }
    let cpp = support::repo_root().join("bindings/cpp/ckpt_manager.hpp");
    if cpp.exists() {
        assert_eq!(
            std::fs::read(prefix.join("include").join(NAME).join("ckpt_manager.hpp")).unwrap(),
            std::fs::read(&cpp).unwrap()
        );
    }

    let pc = std::fs::read_to_string(lib.join("pkgconfig").join(format!("{NAME}.pc"))).unwrap();
    for line in [
        format!("prefix={}", pc_prefix.display()),
        format!("Name: {NAME}"),
        format!("Version: {VERSION}"),
        format!("Description: {}", env!("CARGO_PKG_DESCRIPTION")),
        format!("Libs: -L${{libdir}} -l{NAME}"),
        format!("Cflags: -I${{includedir}}/{NAME}"),
    ] {
        assert!(
            pc.lines().any(|l| l == line),
            "no line {line:?} in the .pc file:\n{pc}"
        );
    }
    let private = pc
        .lines()
        .find_map(|l| l.strip_prefix("Libs.private: "))
        .unwrap_or_else(|| panic!("no Libs.private in the .pc file:\n{pc}"));
    for lib in ["-lpthread", "-ldl", "-lm"] {
        assert!(
            private.split(' ').any(|l| l == lib),
            "{lib} not in Libs.private: {private}"
        );
    }

    let cmake = lib.join("cmake").join(NAME);
    assert!(cmake.join(format!("{NAME}-config.cmake")).is_file());
    assert!(cmake.join(format!("{NAME}-config-version.cmake")).is_file());
    let config = std::fs::read_to_string(cmake.join(format!("{NAME}-config.cmake"))).unwrap();
    assert!(
        !config.contains(&*prefix.to_string_lossy())
            && !config.contains(&*pc_prefix.to_string_lossy()),
        "the CMake config names its prefix instead of computing it:\n{config}"
    );
}

/// Runs a program built against the prefix in a fresh directory: it saves
/// and restores a tensor and prints the library's version.
fn run_hello(mut command: Command, what: &str) {
    let workdir = tempfile::tempdir().unwrap();
    let output = run(command.arg(workdir.path().join("checkpoints")), what);
    let text = stdout(&output);
    assert!(
        text.starts_with(&format!("ckpt_manager {VERSION} (header {VERSION})\n")),
        "{what} printed:\n{text}"
    );
    assert!(text.contains("\nrestored "), "{what} printed:\n{text}");
}

fn cmake_configure(source: &Path, build: &Path, prefix: &Path, extra: &[&str]) -> Output {
    let mut command = clean_command("cmake");
    command
        .arg("-S")
        .arg(source)
        .arg("-B")
        .arg(build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
        .arg("-DCMAKE_C_FLAGS=-Wall -Wextra -Wpedantic -Werror")
        .args(extra)
        .env_remove("CMAKE_PREFIX_PATH");
    command.output().expect("cannot run cmake")
}

/// Configures, builds and runs tests/install/CMakeLists.txt against `prefix`.
fn cmake_project(prefix: &Path, build: &Path) {
    let source = support::repo_root().join("tests/install");
    let output = cmake_configure(&source, build, prefix, &[]);
    support::assert_success(&output, "cmake (configure tests/install)");
    run(
        clean_command("cmake").arg("--build").arg(build),
        "cmake --build",
    );

    // The shared target: no LD_LIBRARY_PATH, CMake set the RUNPATH.
    let hello = build.join("hello");
    let soname = format!("lib{NAME}.so.{}", soversion());
    assert!(
        needed(&hello).contains(&soname),
        "{} does not need {soname}",
        hello.display()
    );
    assert!(
        dynamic_section(&hello).contains(&*prefix.join("lib").to_string_lossy()),
        "hello's RUNPATH is not {}/lib",
        prefix.display()
    );
    run_hello(
        clean_command(&hello),
        "hello (CMake, ckpt_manager::ckpt_manager)",
    );

    // The static target: no libckpt_manager to load at all.
    let hello_static = build.join("hello_static");
    assert!(
        !needed(&hello_static).iter().any(|lib| lib.contains(NAME)),
        "hello_static needs the shared library"
    );
    run_hello(
        clean_command(&hello_static),
        "hello_static (CMake, ckpt_manager::static)",
    );
}

/// find_package(ckpt_manager VERSION) accepts the installed version and
/// refuses the next ABI version.
fn cmake_versions(prefix: &Path, scratch: &Path) {
    let source = scratch.join("versions");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(
        source.join("CMakeLists.txt"),
        "cmake_minimum_required(VERSION 3.10)\nproject(versions NONE)\n\
         find_package(ckpt_manager ${WANT} QUIET)\n\
         message(STATUS \"found=${ckpt_manager_FOUND} version=${ckpt_manager_VERSION}\")\n",
    )
    .unwrap();
    let next_abi = match (version_part(0), version_part(1)) {
        (0, 0) => format!("0.0.{}", version_part(2) + 1),
        (0, minor) => format!("0.{}", minor + 1),
        (major, _) => format!("{}", major + 1),
    };
    let same_abi = format!("{}.{}", version_part(0), version_part(1));
    for (i, (want, found)) in [(same_abi.as_str(), true), (next_abi.as_str(), false)]
        .into_iter()
        .enumerate()
    {
        let output = cmake_configure(
            &source,
            &scratch.join(format!("versions-build-{i}")),
            prefix,
            &[&format!("-DWANT={want}")],
        );
        support::assert_success(&output, &format!("find_package(ckpt_manager {want})"));
        let expected = if found {
            format!("found=1 version={VERSION}")
        } else {
            "found=0".to_owned()
        };
        assert!(
            stdout(&output).contains(&expected),
            "find_package(ckpt_manager {want}): expected {expected:?} in:\n{}",
            stdout(&output)
        );
    }
}

/// `source` compiles with `compiler`, `flags` and `cflags` (pkg-config's):
/// what a user's `#include <...>` finds in the prefix.
fn compiles(compiler: &str, flags: &[&str], cflags: &str, source: &str) {
    use std::io::Write;
    let language = if compiler == "c++" { "c++" } else { "c" };
    let mut child = Command::new(compiler)
        .args(flags)
        .args(["-fsyntax-only", "-x", language, "-"])
        .args(cflags.split_whitespace())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(source.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    support::assert_success(&output, &format!("{compiler} from the prefix: {source}"));
}

#[test]
fn install_then_build_with_pkg_config_and_cmake() {
    require_tools();

    // `cargo test`'s own library has no SONAME, before the install and
    // after it (which builds in the same tree): the other tests' programs
    // link it by its plain name.
    let test_library = support::library_dir().join(format!("lib{NAME}.so"));
    let assert_no_soname = || {
        if test_library.exists() {
            assert_eq!(
                soname_of(&test_library),
                None,
                "{} has a SONAME",
                test_library.display()
            );
        }
    };
    assert_no_soname();

    let scratch = tempfile::tempdir().unwrap();
    let prefix = scratch.path().join("prefix");
    let prefix_arg = prefix.to_str().unwrap();
    let report = install(&["--prefix", prefix_arg]);
    assert_no_soname();
    assert!(
        report.contains(&format!("lib{NAME}.so.{VERSION}")),
        "scripts/install printed:\n{report}"
    );
    check_layout(&prefix, &prefix);

    // pkg-config: the flags, then a C program built with them.
    let pkgconfig_dir = prefix.join("lib/pkgconfig");
    let pkg_config = |args: &[&str]| {
        let mut command = Command::new("pkg-config");
        command
            .args(args)
            .arg(NAME)
            .env("PKG_CONFIG_PATH", &pkgconfig_dir);
        stdout(&run(
            &mut command,
            &format!("pkg-config {}", args.join(" ")),
        ))
    };
    assert_eq!(pkg_config(&["--modversion"]).trim(), VERSION);
    let static_libs = pkg_config(&["--static", "--libs"]);
    assert!(
        static_libs.contains("-lpthread"),
        "pkg-config --static --libs: {static_libs}"
    );
    let flags = pkg_config(&["--cflags", "--libs"]);
    let hello = scratch.path().join("hello-pkg-config");
    run(
        Command::new("cc")
            .args(support::C_FLAGS)
            .arg(support::repo_root().join("tests/install/hello.c"))
            .arg("-o")
            .arg(&hello)
            .args(flags.split_whitespace()),
        &format!("cc tests/install/hello.c {}", flags.trim()),
    );
    let soname = format!("lib{NAME}.so.{}", soversion());
    assert!(
        needed(&hello).contains(&soname),
        "hello does not need {soname}: {:?}",
        needed(&hello)
    );
    let mut command = clean_command(&hello);
    command.env("LD_LIBRARY_PATH", prefix.join("lib"));
    run_hello(command, "hello (pkg-config)");

    // The C++ wrapper, when there is one, and the MPI adapter compile from
    // the prefix.
    let cflags = pkg_config(&["--cflags"]);
    if support::repo_root()
        .join("bindings/cpp/ckpt_manager.hpp")
        .exists()
    {
        compiles(
            "c++",
            support::CXX_FLAGS,
            &cflags,
            "#include <ckpt_manager.hpp>\nint main() { return 0; }\n",
        );
    }
    compiles(
        "mpicc",
        &[support::C_FLAGS, &["-D_POSIX_C_SOURCE=200809L"]].concat(),
        &cflags,
        "#include <ckpt_manager_mpi.h>\nint main(void) { return (int)sizeof(ckpt_communicator); }\n",
    );

    // CMake: find_package, the shared and the static target.
    cmake_project(&prefix, &scratch.path().join("cmake-build"));
    cmake_versions(&prefix, scratch.path());

    // The CMake package is relocatable: the prefix moved elsewhere still works.
    let moved = scratch.path().join("moved").join("prefix");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&prefix, &moved).unwrap();
    cmake_project(&moved, &scratch.path().join("cmake-build-moved"));

    // DESTDIR staging: the files under DESTDIR/PREFIX, the .pc naming PREFIX.
    let stage = scratch.path().join("stage");
    install(&[
        "--prefix",
        "/opt/ckpt",
        "--destdir",
        stage.to_str().unwrap(),
    ]);
    check_layout(&stage.join("opt/ckpt"), &PathBuf::from("/opt/ckpt"));
}
