//! Hands the checked-in headers to crates that depend on this one, as
//! rustls-ffi does: with `links = "ckpt_manager"` their build scripts find
//! the directory in `DEP_CKPT_MANAGER_INCLUDE`. Nothing is generated here:
//! `make header` regenerates include/ckpt_manager.h with cbindgen, and
//! tests/header.rs fails when the checked-in copy is stale.

use std::path::PathBuf;
use std::{env, fs};

fn main() {
    // benches/commit.rs also builds against a baseline without `SaveFile`;
    // this tree has it.
    println!("cargo:rustc-check-cfg=cfg(ckpt_bench_write_through)");
    println!("cargo:rustc-cfg=ckpt_bench_write_through");
    let include = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("include");
    fs::create_dir_all(&include).unwrap();
    for header in [
        "include/ckpt_manager.h",
        "include/ckpt_manager_mpi.h",
        "bindings/cpp/ckpt_manager.hpp",
    ] {
        println!("cargo:rerun-if-changed={header}");
        let name = header.rsplit('/').next().unwrap();
        fs::copy(header, include.join(name)).unwrap();
    }
    println!("cargo:include={}", include.display());
}
