//! Cancel keys. Each client connection gets a key of the Gateway's own (BackendKeyData), never
//! the backend's; a CancelRequest carrying it is forwarded to the backend serving that client
//! at that moment, with the backend's key. Keys are random, so one cannot be guessed from
//! another, and a key that is unknown (its connection closed, or another Gateway's) is ignored,
//! as PostgreSQL ignores it.
//!
//! A pooled client changes backends between transactions. Its key's target is set while it
//! holds a backend and cleared before the backend goes back to the pool; a cancel holds the
//! target until the backend's postmaster has taken the request (it closes the connection once
//! it signalled the backend), so a backend never goes to another client with a cancel meant for
//! this one still on its way. A signal that reaches a backend between queries is dropped by
//! PostgreSQL itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pgwire::Out;

/// Where a client's cancel goes: its backend, and the backend's own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub backend_addr: String,
    pub pid: u32,
    pub secret: u32,
}

type Slot = Arc<tokio::sync::Mutex<Option<Target>>>;

#[derive(Default)]
pub struct Cancels {
    keys: Mutex<HashMap<(u32, u32), Slot>>,
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the operating system's random generator is unavailable");
    u32::from_ne_bytes(b)
}

/// A registered key, removed when dropped (its connection closed).
pub struct Registration<'a> {
    cancels: &'a Cancels,
    pub pid: u32,
    pub secret: u32,
    target: Slot,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        crate::lock(&self.cancels.keys).remove(&(self.pid, self.secret));
    }
}

impl Registration<'_> {
    /// The backend this key's cancels go to from now on (`None`: nowhere), once no cancel to
    /// the previous one is under way.
    pub async fn set(&self, target: Option<Target>) {
        *self.target.lock().await = target;
    }
}

/// How long a cancel waits for the backend's postmaster to take it.
const CANCEL_TAKEN: Duration = Duration::from_secs(2);

impl Cancels {
    /// A fresh key for a connection whose backend is `target` (if it has one).
    pub fn register(&self, target: Option<Target>) -> Registration<'_> {
        let mut keys = crate::lock(&self.keys);
        loop {
            let (pid, secret) = (random_u32() >> 1, random_u32());
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry((pid, secret)) {
                let target: Slot = Arc::new(tokio::sync::Mutex::new(target));
                e.insert(target.clone());
                return Registration {
                    cancels: self,
                    pid,
                    secret,
                    target,
                };
            }
        }
    }

    /// Forwards a cancel with key (`pid`, `secret`) to its backend; nothing for an unknown key
    /// or a client that holds no backend now.
    pub async fn cancel(&self, pid: u32, secret: u32) {
        let Some(slot) = crate::lock(&self.keys).get(&(pid, secret)).cloned() else {
            tracing::debug!("a cancel request with an unknown key: ignored");
            return;
        };
        let target = slot.lock().await;
        if let Some(t) = target.as_ref() {
            send(t).await;
        }
    }
}

/// Sends a CancelRequest to `t`'s backend; returns once its postmaster has taken it.
pub async fn send(t: &Target) {
    let forward = async {
        let mut backend = tokio::net::TcpStream::connect(&t.backend_addr).await?;
        let mut out = Out::default();
        out.cancel(t.pid, t.secret);
        backend.write_all(&out.0).await?;
        // The postmaster closes the connection once it has signalled the backend.
        let mut rest = [0u8; 16];
        while backend.read(&mut rest).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(CANCEL_TAKEN, forward).await;
}
