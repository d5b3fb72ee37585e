//! Makes the README's demo directory: `cargo run -p ckpt-cli --example
//! demo_directory DIR` saves six checkpoints with the built-in saver
//! (keeping 3, `ckpt-2` pinned) and a TensorFlow-style run in DIR/tf.

#[path = "../tests/support/mod.rs"]
mod support;

fn main() {
    let directory = std::env::args_os()
        .nth(1)
        .expect("usage: demo_directory DIR");
    let directory = std::path::Path::new(&directory);
    support::save_run(directory, 6, 3, Some(2));
    support::tensorflow_run(&directory.join("tf"));
}
