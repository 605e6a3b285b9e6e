//! Cancel keys. Each client connection gets a key of the Gateway's own (BackendKeyData), never
//! the backend's; a CancelRequest carrying it is forwarded to the right backend with the
//! backend's key. Keys are random, so one cannot be guessed from another, and a key that is
//! unknown (its connection closed, or another Gateway's) is ignored, as PostgreSQL ignores it.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::io::AsyncWriteExt;

use crate::pgwire::Out;

/// Where a client's cancel goes: its backend, and the backend's own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub backend_addr: String,
    pub pid: u32,
    pub secret: u32,
}

#[derive(Default)]
pub struct Cancels {
    keys: Mutex<HashMap<(u32, u32), Target>>,
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
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        crate::lock(&self.cancels.keys).remove(&(self.pid, self.secret));
    }
}

impl Cancels {
    /// A fresh key for a connection whose backend is `target`.
    pub fn register(&self, target: Target) -> Registration<'_> {
        let mut keys = crate::lock(&self.keys);
        loop {
            let (pid, secret) = (random_u32() >> 1, random_u32());
            if let std::collections::hash_map::Entry::Vacant(e) = keys.entry((pid, secret)) {
                e.insert(target);
                return Registration {
                    cancels: self,
                    pid,
                    secret,
                };
            }
        }
    }

    /// Forwards a cancel with key (`pid`, `secret`) to its backend; nothing for an unknown key.
    pub async fn cancel(&self, pid: u32, secret: u32) {
        let Some(t) = crate::lock(&self.keys).get(&(pid, secret)).cloned() else {
            tracing::debug!("a cancel request with an unknown key: ignored");
            return;
        };
        let Ok(mut backend) = tokio::net::TcpStream::connect(&t.backend_addr).await else {
            return;
        };
        let mut out = Out::default();
        out.cancel(t.pid, t.secret);
        let _ = backend.write_all(&out.0).await;
        let _ = backend.shutdown().await;
    }
}
