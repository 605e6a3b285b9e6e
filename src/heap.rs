//! Giving freed memory back to the kernel.
//!
//! The state is persistent maps whose versions share nodes: each batch frees the nodes only
//! its predecessor held, and a restart frees the snapshot's bytes and the replay's envelopes.
//! glibc's allocator keeps freed memory in its arenas (one per thread that allocated) and
//! returns it only from the top of each heap, so the resident set stays at its high-water
//! mark. `malloc_trim` gives back every free page inside the arenas too. It walks the free
//! lists holding each arena's lock (a few milliseconds at 100 000 databases), so it runs once
//! after a restart and when the service has gone quiet, never under load.

use std::sync::Arc;
use std::time::Duration;

use crate::committer::Shared;

/// Returns the allocator's free pages to the kernel.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory the allocator holds free; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long the log must have stood still before freed memory is given back.
const QUIET: Duration = Duration::from_secs(1);

/// Gives freed memory back once the log has stood still for [`QUIET`] after moving.
pub async fn trim_when_quiet(shared: Arc<Shared>) {
    let mut trimmed_at = shared.head();
    let mut seen = trimmed_at;
    loop {
        tokio::time::sleep(QUIET).await;
        let head = shared.head();
        if head == seen && head != trimmed_at {
            if tokio::task::spawn_blocking(give_back).await.is_err() {
                return;
            }
            trimmed_at = head;
        }
        seen = head;
    }
}
