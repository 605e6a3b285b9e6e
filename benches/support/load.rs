//! Closed-loop load: a number of clients, each doing one operation after another for a fixed
//! time, on one thread; what the benchmarks measure latency and throughput with.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::appends::Measured;
use super::http::Conn;

pub type Fut<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
pub type Op<C> = Arc<dyn for<'a> Fn(&'a mut C, u64) -> Fut<'a> + Send + Sync>;

pub fn op<C, F>(f: F) -> Op<C>
where
    F: for<'a> Fn(&'a mut C, u64) -> Fut<'a> + Send + Sync + 'static,
{
    Arc::new(f)
}

/// Runs one loop per client for `dur`, each calling `op` with a global counter.
pub async fn drive<C: Send + 'static>(clients: Vec<C>, dur: Duration, op: Op<C>) -> Measured {
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (op, counter) = (op.clone(), counter.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while started.elapsed() < dur {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    op(&mut c, i).await;
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Measured::new(lat, started.elapsed().as_secs_f64())
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub async fn conns(addr: &str, n: usize) -> Vec<Conn> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Conn::open(addr).await);
    }
    out
}

pub fn expect(conn: &Conn, status: u16, want: u16) {
    assert_eq!(status, want, "{}", conn.body());
}

/// `n` keep-alive connections to `addr`, each sending `request(i)` and expecting `status`
/// with a body that contains `must` (when given).
pub fn http_load(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    n: usize,
    dur: Duration,
    status: u16,
    must: Option<&'static str>,
    request: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static,
) -> Measured {
    rt.block_on(http_drive(addr, n, dur, status, must, request))
}

/// [`http_load`] inside a runtime already running.
pub async fn http_drive(
    addr: &str,
    n: usize,
    dur: Duration,
    status: u16,
    must: Option<&'static str>,
    request: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static,
) -> Measured {
    let request = Arc::new(request);
    drive(
        conns(addr, n).await,
        dur,
        op(move |c: &mut Conn, i| {
            let req = request(i);
            Box::pin(async move {
                let got = c.call(&req).await;
                expect(c, got, status);
                if let Some(must) = must {
                    assert!(c.body().contains(must), "{}", c.body());
                }
            })
        }),
    )
    .await
}
