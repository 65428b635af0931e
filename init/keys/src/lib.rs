//! App keys: dstack KDF, encrypted environment, RA-TLS and the KMS protocol

#![forbid(unsafe_code)]

pub mod env;
pub mod kdf;
pub mod provider;
pub mod ratls;
pub mod secret;
