//! Helpers of the bad-input matrix and the secrets scan (`tests/bad_inputs.rs`,
//! `tests/secrets.rs`): a byte scanner for secret spellings
//! and the console without the kernel's own echo of the command line.

/// Every `(needle index, offset)` where one of `needles` occurs in `haystack` (empty needles
/// are ignored). One pass, keyed on each needle's first byte.
pub fn find_needles(haystack: &[u8], needles: &[Vec<u8>]) -> Vec<(usize, usize)> {
    let mut by_first: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (i, n) in needles.iter().enumerate() {
        if let Some(first) = n.first() {
            by_first[usize::from(*first)].push(i);
        }
    }
    let mut hits = Vec::new();
    for (offset, byte) in haystack.iter().enumerate() {
        for &i in &by_first[usize::from(*byte)] {
            if haystack[offset..].starts_with(&needles[i]) {
                hits.push((i, offset));
            }
        }
    }
    hits
}

/// The console without the lines where the kernel (not the init) echoes its command line
/// (`Command line: …`, `Kernel command line: …`): a test hook's value passed on the command
/// line is printed there by the kernel before the init runs.
pub fn console_without_cmdline_echo(console: &str) -> String {
    console
        .lines()
        .filter(|line| !line.contains("Command line:") && !line.contains("command line:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_needle_at_its_offset() {
        let hay = b"xxabcxxdefabc\0\0";
        let needles = vec![b"abc".to_vec(), b"def".to_vec(), Vec::new(), b"zz".to_vec()];
        assert_eq!(find_needles(hay, &needles), vec![(0, 2), (1, 7), (0, 10)]);
        assert!(find_needles(b"ab", &needles).is_empty());
    }

    #[test]
    fn drops_only_the_kernel_cmdline_echo() {
        let console = "[0.0] Command line: console=ttyS0 cvm.k=1\n[0.1] Kernel command line: cvm.k=1\ncvm-init: cvm.k=1\n";
        assert_eq!(console_without_cmdline_echo(console), "cvm-init: cvm.k=1");
    }
}
