//! Pure parsers for `/proc/<pid>/stat`, used to prove that PID 1 left no zombies.

/// Process state letter from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Zombie,
    Other(char),
}

/// The fields of `/proc/<pid>/stat` PID 1 needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub state: ProcState,
    pub ppid: u32,
}

/// Parse one stat line. The command name may contain spaces and parentheses, so the state is
/// found after the *last* `)`. Returns `None` on malformed input.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_owned();
    let mut rest = text[close + 1..].split_whitespace();
    let state = match rest.next()?.chars().next()? {
        'Z' => ProcState::Zombie,
        c => ProcState::Other(c),
    };
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        state,
        ppid,
    })
}

/// Whether a `/proc` directory entry name is a process id.
pub fn is_pid_dir(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_zombie_with_odd_comm() {
        let s = parse_stat("42 (a (b) c) Z 1 42 42 0 -1 4194304").unwrap();
        assert_eq!(s.pid, 42);
        assert_eq!(s.comm, "a (b) c");
        assert_eq!(s.state, ProcState::Zombie);
        assert_eq!(s.ppid, 1);
        let r = parse_stat("7 (sh) S 1 7 7").unwrap();
        assert_eq!(r.state, ProcState::Other('S'));
    }

    #[test]
    fn malformed_is_none() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1 )x( Z 1"), None);
        assert_eq!(parse_stat("x (a) Z 1"), None);
        assert_eq!(parse_stat("1 (a)"), None);
        assert!(is_pid_dir("123"));
        assert!(!is_pid_dir("self"));
        assert!(!is_pid_dir(""));
    }
}
