//! Integration tests of every op on every device present, against a float64 reference, golden
//! vectors, finite differences and the hard cases of the numerics contract.
//!
//! One test binary with a module per concern, so `cargo test --release` links the crate once.

// Comparisons walk several parallel buffers (input, output, reference, bound) by one index.
#![allow(clippy::needless_range_loop)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod cross_entropy;
mod dispatch;
mod errors;
mod finite_differences;
mod golden;
mod hard_cases;
mod masks;
mod properties;
