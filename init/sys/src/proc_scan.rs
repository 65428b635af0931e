//! Scan /proc: the processes left at shutdown and the zombies among them.

use std::path::Path;

use init_core::procfs::{ProcStat, ProcState, is_pid_dir, parse_stat};

/// Every process visible in `proc_root` except `exclude_pid` and kernel threads (children of
/// kthreadd, pid 2, and kthreadd itself).
pub fn processes(proc_root: &Path, exclude_pid: u32) -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_pid_dir(name) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&text)
            && stat.pid != exclude_pid
            && stat.pid != 2
            && stat.ppid != 2
        {
            out.push(stat);
        }
    }
    out.sort_by_key(|s| s.pid);
    out
}

/// How many of `procs` are zombies.
pub fn zombie_count(procs: &[ProcStat]) -> u32 {
    let n = procs
        .iter()
        .filter(|p| p.state == ProcState::Zombie)
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_a_fake_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, line) in [
            ("1", "1 (init) S 0 1 1"),
            ("2", "2 (kthreadd) S 0 0 0"),
            ("9", "9 (kworker/0:1) I 2 0 0"),
            ("40", "40 (a b) Z 1 40 40"),
            ("41", "41 (sleep) S 1 41 41"),
        ] {
            std::fs::create_dir(dir.path().join(pid)).unwrap();
            std::fs::write(dir.path().join(pid).join("stat"), line).unwrap();
        }
        std::fs::create_dir(dir.path().join("self")).unwrap();
        let procs = processes(dir.path(), 1);
        assert_eq!(
            procs.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![40, 41]
        );
        assert_eq!(zombie_count(&procs), 1);
        assert!(processes(Path::new("/nonexistent"), 1).is_empty());
    }
}
