//! A dstack-protocol KMS for tests and the demo (simulated-TEE root)

#![forbid(unsafe_code)]
