//! Abuse limits, shared by the control plane's HTTP API and the Gateway: soft state in
//! memory (a restart forgets it, on purpose — nothing here is worth a log record).
//!
//! - [`Window`]: how many times something happened to a key (an address, a key id, a
//!   PostgreSQL user) in the current fixed window; over the limit, the wait until it ends.
//! - [`Slots`]: how many of something a key holds at once (open event streams), released
//!   when the [`Slot`] guard drops.
//! - [`Known`]: the addresses a key was last used from successfully, so that a limit on
//!   failures for one key (which anybody who knows the key's name can run up) does not lock
//!   out the addresses that proved they hold its secret.
//!
//! Every map is bounded: past [`MAX_KEYS`] keys, expired entries are swept, and while it stays
//! full a new key is not counted (an attacker spraying keys gets no memory, and no lock-outs
//! of others either).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most keys one map holds.
pub const MAX_KEYS: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A limit of `limit` events per `period` and key; `limit` 0 is no limit.
pub struct Window<K> {
    limit: u32,
    period: Duration,
    counts: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Eq + Hash + Clone> Window<K> {
    pub fn new(limit: u32, period: Duration) -> Self {
        Window {
            limit,
            period,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event for `key`: `Err(wait)` when that made it more than the limit.
    pub fn hit(&self, key: &K) -> Result<(), Duration> {
        self.hit_at(key, Instant::now())
    }

    /// Whether `key` is over its limit now, without counting: the wait until it is not.
    pub fn blocked(&self, key: &K) -> Option<Duration> {
        self.blocked_at(key, Instant::now())
    }

    fn hit_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut counts = lock(&self.counts);
        // A key already counted is found without making its owned copy (this runs on every
        // authenticated request).
        if !counts.contains_key(key) {
            if counts.len() >= MAX_KEYS {
                let period = self.period;
                counts.retain(|_, (start, _)| now.duration_since(*start) < period);
                if counts.len() >= MAX_KEYS {
                    return Ok(());
                }
            }
            counts.insert(key.clone(), (now, 0));
        }
        let entry = counts.get_mut(key).expect("inserted above");
        if now.duration_since(entry.0) >= self.period {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > self.limit {
            Err(self.period.saturating_sub(now.duration_since(entry.0)))
        } else {
            Ok(())
        }
    }

    fn blocked_at(&self, key: &K, now: Instant) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let counts = lock(&self.counts);
        let (start, count) = counts.get(key)?;
        let age = now.duration_since(*start);
        (age < self.period && *count >= self.limit).then(|| self.period - age)
    }
}

/// At most `limit` held at once per key; `limit` 0 is no limit.
pub struct Slots<K: Eq + Hash> {
    limit: u32,
    held: Arc<Mutex<HashMap<K, u32>>>,
}

/// One slot of a [`Slots`], given back when dropped.
pub struct Slot<K: Eq + Hash> {
    key: K,
    held: Arc<Mutex<HashMap<K, u32>>>,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    pub fn new(limit: u32) -> Self {
        Slots {
            limit,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for `key`, or `None` when it holds the limit already.
    pub fn take(&self, key: &K) -> Option<Slot<K>> {
        let mut held = lock(&self.held);
        let n = held.entry(key.clone()).or_insert(0);
        if self.limit != 0 && *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            key: key.clone(),
            held: self.held.clone(),
        })
    }
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Addresses each key was used from successfully, the most recent [`Known::PER_KEY`].
#[derive(Default)]
pub struct Known<K> {
    seen: Mutex<HashMap<K, Vec<IpAddr>>>,
}

impl<K: Eq + Hash + Clone> Known<K> {
    pub const PER_KEY: usize = 16;

    pub fn new() -> Self {
        Known {
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `key` was just used successfully from `addr`.
    pub fn remember(&self, key: &K, addr: IpAddr) {
        let mut seen = lock(&self.seen);
        match seen.get(key) {
            // The usual case: the key's latest address again; nothing to change.
            Some(addrs) if addrs.last() == Some(&addr) => return,
            Some(_) => {}
            None if seen.len() >= MAX_KEYS => return,
            None => {
                seen.insert(key.clone(), Vec::new());
            }
        }
        let addrs = seen.get_mut(key).expect("present");
        addrs.retain(|a| *a != addr);
        addrs.push(addr);
        if addrs.len() > Self::PER_KEY {
            addrs.remove(0);
        }
    }

    pub fn knows(&self, key: &K, addr: IpAddr) -> bool {
        lock(&self.seen).get(key).is_some_and(|a| a.contains(&addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_refuses_past_its_limit_until_it_ends() {
        let w = Window::new(3, Duration::from_secs(10));
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(w.hit_at(&"a", t), Ok(()));
        }
        assert!(w.blocked_at(&"a", t).is_some());
        assert_eq!(w.hit_at(&"a", t), Err(Duration::from_secs(10)));
        // Another key is not affected.
        assert_eq!(w.hit_at(&"b", t), Ok(()));
        assert!(w.blocked_at(&"b", t).is_none());
        // The next window starts afresh.
        let later = t + Duration::from_secs(10);
        assert!(w.blocked_at(&"a", later).is_none());
        assert_eq!(w.hit_at(&"a", later), Ok(()));
    }

    #[test]
    fn slots_are_given_back_when_their_guards_drop() {
        let s = Slots::new(2);
        let a = s.take(&1).unwrap();
        let _b = s.take(&1).unwrap();
        assert!(s.take(&1).is_none());
        assert!(s.take(&2).is_some());
        drop(a);
        assert!(s.take(&1).is_some());
    }

    #[test]
    fn a_key_remembers_its_last_addresses() {
        let k = Known::new();
        let addr = |i: u8| IpAddr::from([10, 0, 0, i]);
        for i in 0..20 {
            k.remember(&"key", addr(i));
        }
        assert!(k.knows(&"key", addr(19)) && k.knows(&"key", addr(4)));
        assert!(!k.knows(&"key", addr(3)), "only the last 16");
        assert!(!k.knows(&"other", addr(19)));
    }

    #[test]
    fn no_limit_is_zero() {
        let w = Window::new(0, Duration::from_secs(1));
        for _ in 0..1000 {
            assert!(w.hit(&1).is_ok());
        }
        let s = Slots::new(0);
        let held: Vec<_> = (0..1000).map(|_| s.take(&1).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
