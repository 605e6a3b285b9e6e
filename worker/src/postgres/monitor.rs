//! What a writer really does: the CPU of its process tree and its client sessions.
//!
//! CPU comes from `/proc`: the postmaster's own time plus what it collected from backends
//! that exited (`cutime`, `cstime`), plus the time of the backends alive now. Sampled at each
//! heartbeat, the difference over the interval, divided by the profile's vCPUs, is the
//! fraction the autoscaler reads. Sessions are `pg_stat_activity`'s client backends, the
//! worker's own counting session excluded.

use std::time::Instant;

/// Clock ticks of one process (`utime + stime`, and with `children` also `cutime + cstime`).
fn ticks(pid: u32, children: bool) -> Option<(u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Field 4 (ppid) is f[1]; 14..17 (utime, stime, cutime, cstime) are f[11..15].
    let ppid = f.get(1)?.parse().ok()?;
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let own = n(11) + n(12);
    Some((if children { own + n(13) + n(14) } else { own }, ppid))
}

/// Every tick the tree under `postmaster` has used.
pub fn tree_ticks(postmaster: u32) -> u64 {
    let mut total = ticks(postmaster, true).map_or(0, |(t, _)| t);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((t, ppid)) = ticks(pid, false) {
            if ppid == postmaster {
                total += t;
            }
        }
    }
    total
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

/// The last CPU sample of one writer.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

impl CpuSample {
    pub fn now(postmaster: u32) -> Self {
        CpuSample {
            ticks: tree_ticks(postmaster),
            at: Instant::now(),
        }
    }

    /// The CPU used since `self`, as a fraction of `vcpu` cores; the new sample.
    pub fn since(self, postmaster: u32, vcpu: f64) -> (f64, CpuSample) {
        let next = CpuSample::now(postmaster);
        let secs = next.at.duration_since(self.at).as_secs_f64();
        let used = next.ticks.saturating_sub(self.ticks) as f64 / ticks_per_second();
        let fraction = if secs > 0.0 && vcpu > 0.0 {
            used / secs / vcpu
        } else {
            0.0
        };
        (fraction, next)
    }
}

/// Client sessions on the server, this one excluded.
pub fn sessions(client: &mut postgres::Client) -> Result<u32, String> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .map_err(|e| format!("cannot count sessions: {}", super::cluster::sql_error(&e)))?;
    let n: i64 = row.get(0);
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_ticks_and_a_parent() {
        let me = std::process::id();
        let (t, ppid) = ticks(me, true).expect("own stat");
        assert!(ppid > 0);
        // Burn a little CPU so that the tick count can be seen to move.
        let began = Instant::now();
        let mut x = 0u64;
        while began.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(ticks(me, true).unwrap().0 >= t);
    }
}
