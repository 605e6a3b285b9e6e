//! `--compute simulated`: writers that only pretend, for the lifecycle's tests and demos.
//!
//! Each operation takes its configured delay (`--start-delay-ms`, `--prepare-delay-ms`,
//! `--promote-delay-ms`, `--stop-delay-ms`), fails on request (`--fail-start`,
//! `--fail-prepare`), or ends the process (`--die-mid-handoff`, status 3 on the first
//! `prepare`, with nothing reported: a candidate's host dying mid-handoff). Every writer
//! answers at `--address`; serving writers report a synthetic load (`--cpu` or a repeating
//! `--cpu-schedule`, and `--connections`). It keeps no data.

use std::thread;
use std::time::{Duration, Instant};

use tracing::error;
use uuid::Uuid;

use crate::compute::{Compute, Exited, Measured, Result, Served, WriterSpec};

/// `--die-mid-handoff`'s exit status.
pub const EXIT_DIED: i32 = 3;

/// A CPU value: a finite fraction, 0.0 or more.
pub fn parse_cpu(raw: &str) -> std::result::Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(cpu) if cpu.is_finite() && cpu >= 0.0 => Ok(cpu),
        _ => Err(format!("`{raw}`: expected a CPU fraction, 0.0 or more")),
    }
}

/// `--cpu-schedule`: (cpu, seconds) steps, repeated for ever.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuSchedule {
    steps: Vec<(f64, f64)>,
    period: f64,
}

impl CpuSchedule {
    /// `0.9:30,0.1:60` → 0.9 for 30 s, then 0.1 for 60 s, then again.
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        let steps = raw
            .split(',')
            .map(str::trim)
            .filter(|step| !step.is_empty())
            .map(Self::step)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if steps.is_empty() {
            return Err("expected cpu:seconds steps, e.g. 0.9:30,0.1:60".into());
        }
        let period = steps.iter().map(|(_, secs)| secs).sum();
        Ok(Self { steps, period })
    }

    fn step(raw: &str) -> std::result::Result<(f64, f64), String> {
        let (cpu, secs) = raw
            .split_once(':')
            .ok_or_else(|| format!("`{raw}`: expected cpu:seconds"))?;
        let cpu = parse_cpu(cpu)?;
        match secs.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 => Ok((cpu, secs)),
            _ => Err(format!("`{raw}`: seconds must be a positive number")),
        }
    }

    /// The CPU `elapsed` after the schedule began.
    pub fn at(&self, elapsed: Duration) -> f64 {
        let mut t = elapsed.as_secs_f64() % self.period;
        for &(cpu, secs) in &self.steps {
            if t < secs {
                return cpu;
            }
            t -= secs;
        }
        // Only rounding gets here: the end of the last step.
        self.steps.last().map_or(0.0, |&(cpu, _)| cpu)
    }
}

/// How the simulated host behaves.
#[derive(Debug, Clone)]
pub struct Simulated {
    pub address: String,
    pub start_delay: Duration,
    pub prepare_delay: Duration,
    pub promote_delay: Duration,
    pub stop_delay: Duration,
    pub fail_start: bool,
    pub fail_prepare: bool,
    pub die_mid_handoff: bool,
    pub cpu: f64,
    pub cpu_schedule: Option<CpuSchedule>,
    pub connections: u32,
    /// When the process began: the CPU schedule's clock.
    pub since: Instant,
}

impl Simulated {
    fn served(&self) -> Served {
        Served {
            backend_addr: self.address.clone(),
            keeps_data: false,
        }
    }

    fn cpu_now(&self) -> f64 {
        match &self.cpu_schedule {
            Some(schedule) => schedule.at(self.since.elapsed()),
            None => self.cpu,
        }
    }
}

impl Compute for Simulated {
    fn start(&self, _: &WriterSpec) -> Result<Served> {
        thread::sleep(self.start_delay);
        if self.fail_start {
            return Err("simulated start failure".into());
        }
        Ok(self.served())
    }

    fn stop(&self, _: Uuid, _: u64) -> Result<Option<spg99_wire::Stored>> {
        thread::sleep(self.stop_delay);
        Ok(None)
    }

    fn prepare(&self, _: &WriterSpec) -> Result<()> {
        if self.die_mid_handoff {
            error!("--die-mid-handoff: a prepare arrived; exiting with status {EXIT_DIED}");
            std::process::exit(EXIT_DIED);
        }
        thread::sleep(self.prepare_delay);
        if self.fail_prepare {
            return Err("simulated prepare failure".into());
        }
        Ok(())
    }

    fn promote(&self, _: &WriterSpec) -> Result<Served> {
        thread::sleep(self.promote_delay);
        Ok(self.served())
    }

    fn abort(&self, _: Uuid, _: u64) -> Result<()> {
        Ok(())
    }

    fn destroy(&self, _: Uuid, _: &str) -> Result<()> {
        Ok(())
    }

    fn update_role(&self, _: &WriterSpec) -> Result<()> {
        Ok(())
    }

    fn load(&self, serving: &[(Uuid, u64)]) -> (Vec<Measured>, Vec<Exited>) {
        let cpu = self.cpu_now();
        let measured = serving
            .iter()
            .map(|&(db_id, _)| Measured {
                db_id,
                cpu,
                sessions: self.connections,
                archive: None,
                replicas: Vec::new(),
            })
            .collect();
        (measured, Vec::new())
    }

    fn stop_all(&self) {}

    fn keeps_data(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_schedule_parses_and_repeats() {
        let schedule = CpuSchedule::parse("0.9:30, 0.1:60").unwrap();
        assert_eq!(schedule.at(Duration::ZERO), 0.9);
        assert_eq!(schedule.at(Duration::from_secs(29)), 0.9);
        assert_eq!(schedule.at(Duration::from_secs(30)), 0.1);
        assert_eq!(schedule.at(Duration::from_secs(89)), 0.1);
        assert_eq!(schedule.at(Duration::from_secs(90)), 0.9);
        assert_eq!(schedule.at(Duration::from_millis(120_500)), 0.1);
        assert_eq!(
            CpuSchedule::parse("1.5:0.5")
                .unwrap()
                .at(Duration::from_secs(7)),
            1.5
        );

        for bad in [
            "", ",", "0.9", "0.9:0", "-1:10", "x:10", "0.5:y", "NaN:3", "0.5:inf",
        ] {
            assert!(CpuSchedule::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn failures_are_injected_where_asked() {
        let sim = Simulated {
            address: "10.0.0.7:6432".into(),
            start_delay: Duration::ZERO,
            prepare_delay: Duration::ZERO,
            promote_delay: Duration::ZERO,
            stop_delay: Duration::ZERO,
            fail_start: true,
            fail_prepare: true,
            die_mid_handoff: false,
            cpu: 0.3,
            cpu_schedule: None,
            connections: 2,
            since: Instant::now(),
        };
        let w = WriterSpec {
            db_id: Uuid::nil(),
            term: 1,
            profile: "c1".into(),
            timeline: "t".into(),
            database: "app".into(),
            pg_user: "u".into(),
            verifier: "v".into(),
            restore: None,
            ha: None,
        };
        assert_eq!(sim.start(&w).unwrap_err(), "simulated start failure");
        assert_eq!(sim.prepare(&w).unwrap_err(), "simulated prepare failure");
        assert_eq!(sim.promote(&w).unwrap().backend_addr, "10.0.0.7:6432");
        let (loads, exits) = sim.load(&[(Uuid::nil(), 1)]);
        assert_eq!((loads[0].cpu, loads[0].sessions, exits.len()), (0.3, 2, 0));
    }
}
