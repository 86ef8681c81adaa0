//! File descriptors: whether the process may open as many as the config
//! asks for.
//!
//! Every request to Coax in flight holds a connection, every client of the
//! socket holds one, and the database, its WAL, the lock, the logs and the
//! runtime hold a few more. A concurrency that the limit cannot carry fails
//! later, request by request, with "too many open files"; so it is refused
//! at start-up (and by `check-config`), naming both numbers. The soft limit
//! is first raised to the hard limit, as the kernel lets any process do;
//! the unit's `LimitNOFILE=` sets both.

use crate::config::Config;
use crate::server::RESERVED_SLOTS;

/// Descriptors for everything but connections: the database (file, WAL,
/// shared memory, lock), the listener, stdio and journald, the runtime's
/// epoll and wake-ups, DNS look-ups, and the refusals being answered.
pub const MARGIN: u64 = 64;

/// The descriptor limit was too low for the config.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error(
        "dispatch.concurrency = {concurrency} and socket.max_connections = {max_connections} need \
         {needed} file descriptors (with {RESERVED_SLOTS} reserved socket slots and {MARGIN} for \
         the database, logs and runtime), but this process may open only {limit} (RLIMIT_NOFILE, \
         hard limit {hard}); raise the limit (LimitNOFILE= in the service unit, ulimit -n) or \
         lower dispatch.concurrency or socket.max_connections"
    )]
    TooFew {
        concurrency: usize,
        max_connections: usize,
        needed: u64,
        limit: u64,
        hard: u64,
    },
    #[error("cannot read the file descriptor limit: {0}")]
    Read(std::io::Error),
}

/// The descriptors a config needs at most.
pub fn needed(concurrency: usize, max_connections: usize) -> u64 {
    (concurrency as u64)
        .saturating_add(max_connections as u64)
        .saturating_add(RESERVED_SLOTS as u64)
        .saturating_add(MARGIN)
}

/// What was found: the descriptors needed and the (possibly raised) limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fds {
    pub needed: u64,
    pub limit: u64,
}

/// Raises the soft descriptor limit to the hard one, then checks that it
/// carries `config`.
pub fn ensure(config: &Config) -> Result<Fds, FdError> {
    let (soft, hard) = raise_soft_limit().map_err(FdError::Read)?;
    check(
        config.dispatch.concurrency,
        config.socket.max_connections,
        soft,
        hard,
    )
}

/// The check itself, on given limits.
pub fn check(
    concurrency: usize,
    max_connections: usize,
    limit: u64,
    hard: u64,
) -> Result<Fds, FdError> {
    let needed = needed(concurrency, max_connections);
    if needed > limit {
        return Err(FdError::TooFew {
            concurrency,
            max_connections,
            needed,
            limit,
            hard,
        });
    }
    Ok(Fds { needed, limit })
}

/// Sets the soft `RLIMIT_NOFILE` to the hard one; returns (soft, hard) as
/// they then are. A refusal to raise leaves the soft limit as it was.
fn raise_soft_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot raise the soft file descriptor limit to the hard one"
            );
        }
    }
    // rlim_t is u64 on Linux; RLIM_INFINITY is u64::MAX, above any count.
    Ok((limit.rlim_cur, limit.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_limit_counts_concurrency_connections_reserved_slots_and_a_margin() {
        assert_eq!(needed(8, 256), 8 + 256 + 4 + 64);
        assert_eq!(needed(1024, 256), 1348);
        assert!(check(8, 256, 1024, 1024).is_ok(), "the defaults fit 1024");
        assert_eq!(
            check(8, 256, 332, 332).ok(),
            Some(Fds {
                needed: 332,
                limit: 332
            })
        );
        assert!(check(8, 256, 331, 4096).is_err());
        let err = check(1024, 256, 1024, 1024).expect_err("1024 + 256 do not fit 1024");
        let text = err.to_string();
        assert!(text.contains("1348") && text.contains("1024"), "{text}");
        assert!(text.contains("dispatch.concurrency = 1024"), "{text}");
    }
}
