//! What a writer really does: the CPU of its process tree and its client sessions, read from
//! `/proc` at each heartbeat (no connection to the server: counting by SQL forked a backend per
//! writer per heartbeat).
//!
//! CPU is the postmaster's own time plus what it collected from backends that exited
//! (`cutime`, `cstime`), plus the time of its children alive now. The difference since the
//! last heartbeat, divided by the interval and the profile's vCPUs, is the fraction the
//! autoscaler reads. Sessions are the tenant's client backends: children whose process title
//! is `postgres: <cluster>: <pg_user> <database> <host>(<port>) <state>`. A child's title is
//! read once (a backend's user does not change); its times at every heartbeat.

use std::collections::HashMap;
use std::time::Instant;

/// `(ppid, utime + stime, cutime + cstime)` of one process.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Field 4 (ppid) is f[1]; 14..17 (utime, stime, cutime, cstime) are f[11..15].
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((f.get(1)?.parse().ok()?, n(11) + n(12), n(13) + n(14)))
}

/// The children of `pid` (`/proc/<pid>/task/<pid>/children`, else a scan of `/proc`).
fn children(pid: u32) -> Vec<u32> {
    if let Ok(list) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return list
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat(*child).is_some_and(|(ppid, _, _)| ppid == pid))
        .collect()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// One writer's process tree, watched from heartbeat to heartbeat.
#[derive(Debug)]
pub struct Monitor {
    postmaster: u32,
    /// The tenant's backends' title prefix: `postgres: <cluster>: <pg_user> `.
    session_title: String,
    /// Per child: whether it is one of the tenant's sessions.
    kinds: HashMap<u32, bool>,
    ticks: u64,
    at: Instant,
}

impl Monitor {
    pub fn new(postmaster: u32, cluster: &str, pg_user: &str) -> Monitor {
        let mut m = Monitor {
            postmaster,
            session_title: format!("postgres: {cluster}: {pg_user} "),
            kinds: HashMap::new(),
            ticks: 0,
            at: Instant::now(),
        };
        m.ticks = m.read().0;
        m
    }

    /// The tree's ticks, and the tenant's sessions in it.
    fn read(&mut self) -> (u64, u32) {
        let (_, own, reaped) = stat(self.postmaster).unwrap_or_default();
        let kids = children(self.postmaster);
        self.kinds.retain(|pid, _| kids.contains(pid));
        let mut ticks = own + reaped;
        let mut sessions = 0;
        for pid in kids {
            let Some((_, t, _)) = stat(pid) else {
                continue;
            };
            ticks += t;
            let title = &self.session_title;
            let session = *self.kinds.entry(pid).or_insert_with(|| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmd| cmd.starts_with(title.as_bytes()))
            });
            sessions += u32::from(session);
        }
        (ticks, sessions)
    }

    /// The CPU used since the last sample, as a fraction of `vcpu` cores, and the sessions.
    pub fn sample(&mut self, vcpu: f64) -> (f64, u32) {
        let (ticks, sessions) = self.read();
        let now = Instant::now();
        let secs = now.duration_since(self.at).as_secs_f64();
        let used = ticks.saturating_sub(self.ticks) as f64 / ticks_per_second();
        (self.ticks, self.at) = (ticks, now);
        let cpu = if secs > 0.0 && vcpu > 0.0 {
            used / secs / vcpu
        } else {
            0.0
        };
        (cpu, sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_found_with_its_ticks_and_children() {
        // A single-threaded parent (as a postmaster is) with a child, which burns CPU.
        let mut sh = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .unwrap();
        let pid = sh.id();
        let mut m = Monitor::new(pid, "none", "nobody");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (cpu, sessions) = m.sample(1.0);
        assert!(cpu > 0.0, "{cpu}");
        assert_eq!(sessions, 0);
        let began = Instant::now();
        while children(pid).is_empty() {
            assert!(
                began.elapsed().as_secs() < 10,
                "the shell's sleep never showed up"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        sh.kill().unwrap();
        sh.wait().unwrap();
    }
}
