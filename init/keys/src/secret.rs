//! Secrets: values whose `Debug` prints `<redacted>` and that are zeroized on drop.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret value. `Debug` never shows it; dropping it overwrites it with zeros.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Borrows the secret. Callers must not log or persist what they read.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Mutably borrows the secret (to fill it in place, so no copy is left behind).
    pub fn expose_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> ZeroizeOnDrop for Secret<T> {}

impl<T: Zeroize> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T: Zeroize> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

/// 32 secret bytes (app keys, X25519 and P-256 scalars).
pub type SecretKey32 = Secret<[u8; 32]>;
/// Secret bytes of any length.
pub type SecretBytes = Secret<Vec<u8>>;
/// Secret text (PEM private keys, decrypted environment values).
pub type SecretString = Secret<String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let secret = SecretKey32::new([0xAB; 32]);
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(<redacted>)");
        assert_eq!(secret.expose(), &[0xAB; 32]);
        let text = SecretString::new("hunter2".into());
        assert!(!format!("{text:?}").contains("hunter2"));
    }

    #[test]
    fn zeroize_clears_the_value() {
        let mut bytes = [7u8; 4];
        bytes.zeroize();
        assert_eq!(bytes, [0; 4]);
        let mut text = String::from("abc");
        text.zeroize();
        assert!(text.is_empty());
    }
}
