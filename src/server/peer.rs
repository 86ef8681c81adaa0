//! Who is on the other end of a connection: uid, gid, pid and supplementary
//! groups, as the kernel recorded them when the peer connected.
//!
//! The groups come from `SO_PEERGROUPS` (Linux 4.13 and later), taken at
//! connect time like `SO_PEERCRED`. Not `/proc/PID/status`: the process
//! may be gone or its pid reused by then, and the service unit's
//! `ProtectProc=invisible` hides other users' processes from the daemon.
//! Not the group database either: it says what a user would get at their
//! next login, not what the connecting process holds. So a user added with
//! `usermod -aG` is admitted once they log in again, as for files.

use crate::config::SocketConfig;
use std::fmt;
use std::os::fd::AsRawFd;
use tokio::net::UnixStream;

/// The credentials of a connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Supplementary groups; empty if the kernel could not say.
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the peer's credentials; `None` if the kernel gives none.
    pub fn of(stream: &UnixStream) -> Option<Peer> {
        let cred = stream.peer_cred().ok()?;
        let groups = match peer_groups(stream) {
            Ok(groups) => groups,
            Err(e) => {
                // Only the primary gid can then be checked.
                tracing::debug!(error = %e, "cannot read the peer's supplementary groups");
                Vec::new()
            }
        };
        Some(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups,
        })
    }

    /// Whether `socket.allowed_uids` / `allowed_gids` let this peer in: its
    /// uid, its primary gid or any of its supplementary groups is listed.
    pub fn admitted_by(&self, socket: &SocketConfig) -> bool {
        std::iter::once(self.gid)
            .chain(self.groups.iter().copied())
            .any(|gid| socket.admits(self.uid, gid))
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uid={} gid={} pid={}",
            self.uid,
            self.gid,
            self.pid.unwrap_or(0)
        )
    }
}

/// The peer's supplementary groups, through `SO_PEERGROUPS`.
fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    // The kernel answers ERANGE with the size it needs; the group list
    // cannot change in between, so a second try is enough.
    for _ in 0..2 {
        let mut len = libc::socklen_t::try_from(groups.len() * GID)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is valid for writes of `len` bytes, and the kernel
        // writes at most `len` bytes and sets `len` to what it wrote.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let len = len as usize / GID;
        if rc == 0 {
            groups.truncate(len);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || len <= groups.len() {
            return Err(err);
        }
        groups.resize(len, 0);
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn socket(uids: Option<Vec<u32>>, gids: Option<Vec<u32>>) -> SocketConfig {
        SocketConfig {
            path: PathBuf::from("/run/s.sock"),
            mode: 0o660,
            idle_timeout: Duration::from_secs(60),
            line_timeout: Duration::from_secs(10),
            max_connections: 1,
            allowed_uids: uids,
            allowed_gids: gids,
            max_job_bytes: crate::job::DEFAULT_MAX_JOB_BYTES,
        }
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: Some(1),
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn allowed_gids_admits_a_supplementary_group() {
        let only_990 = socket(None, Some(vec![990]));
        assert!(peer(1000, 1000, &[27, 990]).admitted_by(&only_990));
        assert!(peer(1000, 990, &[]).admitted_by(&only_990));
        assert!(!peer(1000, 1000, &[27]).admitted_by(&only_990));
        assert!(!peer(1000, 1000, &[]).admitted_by(&only_990));
        // A uid list alone is not widened by groups.
        let uid_0 = socket(Some(vec![0]), None);
        assert!(!peer(1000, 1000, &[0]).admitted_by(&uid_0));
        assert!(peer(0, 1000, &[]).admitted_by(&uid_0));
        assert!(peer(5, 5, &[]).admitted_by(&socket(None, None)));
    }

    #[tokio::test]
    async fn peer_groups_are_this_process_s_supplementary_groups() {
        let (a, _b) = UnixStream::pair().expect("socket pair");
        let seen = Peer::of(&a).expect("credentials");
        // SAFETY: getgroups(0, NULL) only returns the count.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut mine: Vec<libc::gid_t> = vec![0; usize::try_from(n).expect("count")];
        // SAFETY: `mine` has room for `n` gids.
        let n = unsafe { libc::getgroups(n, mine.as_mut_ptr()) };
        mine.truncate(usize::try_from(n).expect("count"));
        let mut seen_groups = seen.groups.clone();
        seen_groups.sort_unstable();
        mine.sort_unstable();
        assert_eq!(seen_groups, mine);
    }
}
