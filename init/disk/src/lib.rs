//! Encrypted data disk: header, GPT, dm-integrity + dm-crypt AEAD tables, ext4 formatter

#![forbid(unsafe_code)]

pub mod ext4;
pub mod gpt;
pub mod header;
pub mod kernel;
pub mod keys;
pub mod tables;
pub mod volume;
