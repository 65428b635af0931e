//! The workspace's one error-chain printer (the crate `cvm-error-chain`, which crates below
//! `init-core` share too), under the path the init crates use.

pub use ::cvm_error_chain::{joined, messages, one_line};
