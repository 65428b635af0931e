//! The one renderer of `std::error::Error` source chains for the whole workspace: PID 1 prints
//! a fatal error's whole chain once (`fatal: <stage>: <one_line>`), the guest API, the KMS
//! client and the tools log with it. Messages never repeat their `#[source]`, so joining the
//! chain with `: ` reads as one sentence from the failed operation down to the root cause.

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

/// The chain on one line, `outer: middle: root cause`.
pub fn one_line(error: &dyn Error) -> String {
    let mut line = messages(error).join(": ");
    // A console line must stay one line even if a message embeds a newline.
    line.retain(|c| c != '\n' && c != '\r');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("inner cause")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("mount /sys/kernel/security")]
    struct Outer(#[source] Inner);

    #[test]
    fn chain_lists_outer_first() {
        let e = Outer(Inner);
        assert_eq!(
            messages(&e),
            vec!["mount /sys/kernel/security", "inner cause"]
        );
        assert_eq!(one_line(&e), "mount /sys/kernel/security: inner cause");
    }

    #[test]
    fn one_line_strips_newlines() {
        let e = std::io::Error::other("a\nb");
        assert_eq!(one_line(&e), "ab");
    }
}
