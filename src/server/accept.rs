//! Accepting connections: who may connect, and how many at once.
//!
//! It owns admission (the peer's uid and groups against `socket.allowed_*`),
//! the connection slots (`socket.max_connections` normal ones, plus
//! [`RESERVED_SLOTS`] on which only [`RESERVED_OPS`] are served, so an
//! operator can still look in while every normal slot is taken), and the
//! connection counts that the summary line reports.
//!
//! A reserved slot is kept from a flood by two rules: one peer process
//! holds at most one reserved slot at a time, and a reserved connection
//! is closed when it does not send a line within
//! [`connection::RESERVED_DEADLINE`] (or take its answer within it). So
//! however many connections one process opens, trickling or reconnecting,
//! it leaves the other reserved slots to other processes. Reading and answering
//! lines is [`super::connection`]'s job.
//!
//! Nothing here logs at INFO per connection: a connect/close loop must not
//! flood the journal and push real errors out of its rate limit. Each
//! connection is a DEBUG line; the counts go into the periodic summary, and
//! the first refusal after each summary is a WARN.

use super::Service;
use super::budget::Budget;
use super::connection::{self, Limits, SlotKind};
use super::peer::Peer;
use crate::config::SocketConfig;
use crate::protocol::{ErrorBody, ErrorCode};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};

/// Slots kept back for when every normal slot is taken.
pub const RESERVED_SLOTS: usize = 4;

/// The operations served on a reserved slot: looking at the daemon and
/// letting it send again, nothing that adds work.
pub const RESERVED_OPS: [&str; 3] = ["ping", "stats", "resume"];

/// Connections accepted and refused since the last summary.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Whether a refusal was logged at WARN since the last summary.
    warned: AtomicBool,
}

impl ConnectionCounts {
    /// Returns (accepted, refused) since the last call, and starts over.
    pub fn take(&self) -> (u64, u64) {
        self.warned.store(false, Ordering::Relaxed);
        (
            self.accepted.swap(0, Ordering::Relaxed),
            self.refused.swap(0, Ordering::Relaxed),
        )
    }

    /// Counts a refusal; true for the first one since the last summary.
    fn refused(&self) -> bool {
        self.refused.fetch_add(1, Ordering::Relaxed);
        !self.warned.swap(true, Ordering::Relaxed)
    }
}

/// The peer processes holding a reserved slot, by pid.
#[derive(Debug, Default)]
struct ReservedPids(Mutex<HashSet<i32>>);

/// One process's hold on a reserved slot; let go when dropped.
struct ReservedHold {
    pids: Arc<ReservedPids>,
    pid: Option<i32>,
}

impl ReservedPids {
    /// Takes `pid`'s one reserved slot; `None` if it already holds one. A
    /// peer whose pid the kernel did not give is not limited.
    fn hold(self: &Arc<Self>, pid: Option<i32>) -> Option<ReservedHold> {
        if let Some(pid) = pid {
            let mut pids = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if !pids.insert(pid) {
                return None;
            }
        }
        Some(ReservedHold {
            pids: self.clone(),
            pid,
        })
    }
}

impl Drop for ReservedHold {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let mut pids = self.pids.0.lock().unwrap_or_else(PoisonError::into_inner);
            pids.remove(&pid);
        }
    }
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    service: Service,
    socket: SocketConfig,
    counts: Arc<ConnectionCounts>,
    mut shutdown: watch::Receiver<bool>,
) {
    let normal = Arc::new(Semaphore::new(socket.max_connections));
    let reserved = Arc::new(Semaphore::new(RESERVED_SLOTS));
    let reserved_pids = Arc::new(ReservedPids::default());
    let limits = Limits {
        idle: socket.idle_timeout,
        line: socket.line_timeout,
        budget: Budget::new(),
    };
    tokio::spawn(limits.budget.clone().give_back_when_idle(shutdown.clone()));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                // Out of descriptors, typically; give the system a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = Peer::of(&stream);
        if !peer.as_ref().is_some_and(|p| p.admitted_by(&socket)) {
            let who = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
            refuse(
                &counts,
                stream,
                &who,
                "peer not in socket.allowed_uids or allowed_gids",
                ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!("{who} may not use this socket (socket.allowed_uids, allowed_gids)"),
                ),
            );
            continue;
        }
        let pid = peer.as_ref().and_then(|p| p.pid);
        let who = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        let (permit, kind, hold) = match normal.clone().try_acquire_owned() {
            Ok(permit) => (permit, SlotKind::Normal, None),
            Err(_) => {
                let refusal = match reserved_pids.hold(pid) {
                    None => Err((
                        "too many connections (socket.max_connections), and this process \
                         already holds a reserved one",
                        "too many connections, and this process already holds a reserved \
                         connection; try again shortly",
                    )),
                    Some(hold) => match reserved.clone().try_acquire_owned() {
                        Ok(permit) => Ok((permit, SlotKind::Reserved, Some(hold))),
                        Err(_) => Err((
                            "too many connections (socket.max_connections)",
                            "too many connections; try again shortly",
                        )),
                    },
                };
                match refusal {
                    Ok(taken) => taken,
                    Err((why, answer)) => {
                        refuse(
                            &counts,
                            stream,
                            &who,
                            why,
                            ErrorBody::new(ErrorCode::Internal, answer),
                        );
                        continue;
                    }
                }
            }
        };
        counts.accepted.fetch_add(1, Ordering::Relaxed);
        let service = service.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _counted = crate::metrics::connection();
            tracing::debug!(peer = %who, slot = ?kind, "client connected");
            if let Err(e) = connection::run(stream, &service, &limits, kind, shutdown).await {
                tracing::debug!(peer = %who, error = %e, "client connection ended with an error");
            }
            drop(permit);
            drop(hold);
        });
    }
}

/// Counts and logs a refused connection, and answers it with one error line.
fn refuse(counts: &ConnectionCounts, stream: UnixStream, who: &str, why: &str, error: ErrorBody) {
    if counts.refused() {
        tracing::warn!(
            peer = %who,
            "connection refused: {why}; further refusals until the next summary are logged at DEBUG"
        );
    } else {
        tracing::debug!(peer = %who, "connection refused: {why}");
    }
    tokio::spawn(async move {
        let mut stream = stream;
        // Bounded, so a peer that never reads cannot keep the descriptor.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            stream.write_all(format!("{}\n", error.to_line()).as_bytes()),
        )
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_start_over_after_each_summary_and_warn_once_per_interval() {
        let counts = ConnectionCounts::default();
        counts.accepted.fetch_add(3, Ordering::Relaxed);
        assert!(counts.refused(), "the first refusal is a WARN");
        assert!(!counts.refused(), "the second is not");
        assert_eq!(counts.take(), (3, 2));
        assert_eq!(counts.take(), (0, 0));
        assert!(counts.refused(), "a new interval warns again");
    }

    #[test]
    fn one_process_holds_at_most_one_reserved_slot_until_it_lets_go() {
        let pids = Arc::new(ReservedPids::default());
        let first = pids.hold(Some(7)).expect("the first");
        assert!(pids.hold(Some(7)).is_none(), "a second for the same pid");
        let other = pids.hold(Some(8)).expect("another process");
        drop(first);
        assert!(pids.hold(Some(7)).is_some(), "free again once let go");
        drop(other);
        // Without a pid there is nothing to count by.
        let _a = pids.hold(None).expect("no pid");
        let _b = pids.hold(None).expect("no pid again");
    }
}
