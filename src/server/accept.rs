//! Accepting connections: who may connect, and how many at once.
//!
//! It owns admission (the peer's uid and groups against `socket.allowed_*`),
//! the connection slots (`socket.max_connections` normal ones, plus
//! [`RESERVED_SLOTS`] on which only [`RESERVED_OPS`] are served, so an
//! operator can still look in while every normal slot is taken), and the
//! connection counts that the summary line reports. Reading and answering
//! lines is [`super::connection`]'s job.
//!
//! Nothing here logs at INFO per connection: a connect/close loop must not
//! flood the journal and push real errors out of its rate limit. Each
//! connection is a DEBUG line; the counts go into the periodic summary, and
//! the first refusal after each summary is a WARN.

use super::Service;
use super::connection::{self, Budget, Limits, SlotKind};
use super::peer::Peer;
use crate::config::SocketConfig;
use crate::protocol::{ErrorBody, ErrorCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        let who = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        let (permit, kind) = match normal.clone().try_acquire_owned() {
            Ok(permit) => (permit, SlotKind::Normal),
            Err(_) => match reserved.clone().try_acquire_owned() {
                Ok(permit) => (permit, SlotKind::Reserved),
                Err(_) => {
                    refuse(
                        &counts,
                        stream,
                        &who,
                        "too many connections (socket.max_connections)",
                        ErrorBody::new(
                            ErrorCode::Internal,
                            "too many connections; try again shortly",
                        ),
                    );
                    continue;
                }
            },
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
}
