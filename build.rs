//! Generates the C header with cbindgen into OUT_DIR. The checked-in copy
//! `include/ckpt_manager.h` is what C code compiles against; a test fails
//! when it differs from this output. `CKPT_UPDATE_HEADER=1 cargo build`
//! (or a missing header) rewrites the checked-in copy.

use std::env;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=CKPT_UPDATE_HEADER");
    // benches/commit.rs also builds against a baseline without `SaveFile`;
    // this tree has it.
    println!("cargo:rustc-check-cfg=cfg(ckpt_bench_write_through)");
    println!("cargo:rustc-cfg=ckpt_bench_write_through");

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen can generate the header");
    bindings.write_to_file(out_dir.join("ckpt_manager.h"));

    let checked_in = crate_dir.join("include").join("ckpt_manager.h");
    if env::var_os("CKPT_UPDATE_HEADER").is_some() || !checked_in.exists() {
        bindings.write_to_file(checked_in);
    }
}
