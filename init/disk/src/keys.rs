//! The disk key and the keys derived from it. The raw disk key never reaches the kernel or the
//! header: every use gets its own HKDF-SHA256 output (salt = the header's random salt, info = a
//! purpose string with the format version), so the header MAC key, the dm-crypt key and the
//! dm-integrity journal MAC key are independent.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of the disk key the key provider (KMS `disk_crypt_key`) supplies.
pub const DISK_KEY_LEN: usize = 32;
/// dm-crypt key: AES-256-XTS (2 x 32 bytes) followed by the HMAC-SHA256 key (32 bytes).
pub const CRYPT_KEY_LEN: usize = 96;

/// Purpose strings (HKDF info). Changing one changes every disk's keys: bump the format version.
const INFO_HEADER_MAC: &[u8] = b"cvm-disk v1 header mac";
const INFO_CRYPT: &[u8] = b"cvm-disk v1 dm-crypt authenc(hmac(sha256),xts(aes))";
const INFO_JOURNAL_MAC: &[u8] = b"cvm-disk v1 dm-integrity journal_mac hmac(sha256)";

/// The 32-byte disk key from the key provider. Debug prints `<redacted>`; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DiskKey([u8; DISK_KEY_LEN]);

impl DiskKey {
    pub const fn from_bytes(bytes: [u8; DISK_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parse 64 hex digits (the test hook's cmdline form); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = Zeroizing::new([0u8; DISK_KEY_LEN]);
        hex::decode_to_slice(text, bytes.as_mut_slice()).ok()?;
        Some(Self(*bytes))
    }

    fn derive<const N: usize>(&self, salt: &[u8], info: &[u8]) -> Zeroizing<[u8; N]> {
        // HKDF-SHA256 expands to at most 255 * 32 bytes, so `expand` cannot fail for these N.
        const { assert!(N <= 255 * 32) };
        let mut out = Zeroizing::new([0u8; N]);
        let hkdf = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let _ = hkdf.expand(info, out.as_mut_slice());
        out
    }

    /// Key of the header MAC.
    pub(crate) fn header_mac_key(&self, salt: &[u8]) -> Zeroizing<[u8; 32]> {
        self.derive(salt, INFO_HEADER_MAC)
    }

    /// dm-crypt key (XTS key then HMAC key, the order dm-crypt's authenc mode expects).
    pub(crate) fn crypt_key(&self, salt: &[u8]) -> Zeroizing<[u8; CRYPT_KEY_LEN]> {
        self.derive(salt, INFO_CRYPT)
    }

    /// dm-integrity `journal_mac` key.
    pub(crate) fn journal_mac_key(&self, salt: &[u8]) -> Zeroizing<[u8; 32]> {
        self.derive(salt, INFO_JOURNAL_MAC)
    }
}

impl std::fmt::Debug for DiskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let key = DiskKey::from_bytes([7; 32]);
        assert_eq!(format!("{key:?}"), "DiskKey(<redacted>)");
    }

    #[test]
    fn hex_form() {
        assert!(DiskKey::from_hex(&"ab".repeat(32)).is_some());
        assert!(DiskKey::from_hex(&"ab".repeat(31)).is_none());
        assert!(DiskKey::from_hex(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn purposes_give_independent_keys() {
        let key = DiskKey::from_bytes([1; 32]);
        let salt = [2u8; 32];
        let mac = key.header_mac_key(&salt);
        let crypt = key.crypt_key(&salt);
        let journal = key.journal_mac_key(&salt);
        assert_ne!(mac.as_slice(), &crypt[..32]);
        assert_ne!(mac.as_slice(), journal.as_slice());
        assert_ne!(&crypt[..32], &[1u8; 32]);
        // Another salt, other keys.
        assert_ne!(key.header_mac_key(&[3; 32]).as_slice(), mac.as_slice());
    }

    #[test]
    fn hkdf_known_answer() {
        // RFC 5869 test case 1 shape with our own inputs, computed with Python's hmac module:
        // prk = HMAC-SHA256(salt, ikm); okm = HMAC-SHA256(prk, info || 0x01)[..32].
        let key = DiskKey::from_bytes([0x0b; 32]);
        let out = key.header_mac_key(&[0u8; 32]);
        assert_eq!(hex::encode(out.as_slice()), EXPECTED_HEADER_MAC_KEY);
    }

    const EXPECTED_HEADER_MAC_KEY: &str =
        "c6a4c52f2d1cae9ca58823e1fe1c83f2b90b3a306ee09b0db2ca8cf559c6a0ae";
}
