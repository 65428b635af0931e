//! App keys: dstack KDF, encrypted environment, RA-TLS and the KMS protocol

#![forbid(unsafe_code)]

pub mod env;
pub mod kdf;
pub mod kms;
pub mod provider;
pub mod ratls;
pub mod secret;
pub mod stage;
pub mod transport;

/// An error and its sources on one line, `outer: inner: …` (secrets are never in errors).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}
