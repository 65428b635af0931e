//! App keys: dstack KDF, encrypted environment, RA-TLS and the KMS protocol

#![forbid(unsafe_code)]

pub mod kdf;
pub mod secret;
