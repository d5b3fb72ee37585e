//! What the benchmarks share.

#![allow(dead_code)] // Each benchmark uses part of this module.

use std::time::Duration;

/// A count from the environment (`CKPT_BENCH_*`), or `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
