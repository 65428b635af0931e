//! The one renderer of `std::error::Error` source chains for the whole workspace: PID 1 prints
//! a fatal error's whole chain once (`fatal: <stage>: <one_line>`), the guest API, the KMS
//! client, the verifiers and the tools log with it. Messages never repeat their `#[source]`, so
//! joining the chain with `: ` reads as one sentence from the failed operation down to the root
//! cause.
//!
//! A crate of its own, without dependencies, so that crates which do not depend on `init-core`
//! (`nv-verify`, `cvm-measure`, the tools) share it; `init-core` re-exports it as
//! `init_core::error_chain`.
#![forbid(unsafe_code)]

use std::error::Error;

/// Every message in the chain, outermost first.
pub fn messages(error: &dyn Error) -> Vec<String> {
    let mut out = vec![error.to_string()];
    let mut current = error.source();
    while let Some(e) = current {
        out.push(e.to_string());
        current = e.source();
    }
    out
}

/// The chain joined with `: `, `outer: middle: root cause`, messages kept as they are.
pub fn joined(error: &dyn Error) -> String {
    messages(error).join(": ")
}

/// [`joined`] as one console line: a message that embeds a newline does not break it.
pub fn one_line(error: &dyn Error) -> String {
    let mut line = joined(error);
    line.retain(|c| c != '\n' && c != '\r');
    line
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    #[derive(Debug)]
    struct Inner;

    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("inner cause")
        }
    }

    impl Error for Inner {}

    #[derive(Debug)]
    struct Outer(Inner);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("mount /sys/kernel/security")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chain_lists_outer_first() {
        let e = Outer(Inner);
        assert_eq!(
            messages(&e),
            vec!["mount /sys/kernel/security", "inner cause"]
        );
        assert_eq!(joined(&e), "mount /sys/kernel/security: inner cause");
        assert_eq!(one_line(&e), "mount /sys/kernel/security: inner cause");
        assert_eq!(messages(&Inner), vec!["inner cause"]);
        assert_eq!(joined(&Inner), "inner cause");
    }

    #[test]
    fn one_line_strips_newlines_joined_keeps_them() {
        let e = std::io::Error::other("a\nb\r");
        assert_eq!(one_line(&e), "ab");
        assert_eq!(joined(&e), "a\nb\r");
    }
}
