//! Binding the control socket without harming anything already there.
//!
//! A path that is not a socket is never removed. A socket that answers is a
//! live daemon, so it is left alone and start-up fails; only a socket that
//! refuses connections is stale and replaced. The mode is set after binding,
//! because the umask applies at bind time.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "{path} exists and is not a socket; refusing to remove it. Move it away or change socket.path"
    )]
    NotASocket { path: PathBuf },
    #[error("another daemon is already listening on {path}")]
    InUse { path: PathBuf },
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set mode {mode:o} on {path}: {source}")]
    Mode {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
}

/// Binds a Unix stream socket at `path` with permissions `mode`.
///
/// Must be called inside a tokio runtime.
pub fn bind(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
            tracing::info!(path = %path.display(), "removed a stale socket");
        }
        Err(_) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| SocketError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
            }
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SocketError::Mode {
            path: path.to_owned(),
            mode,
            source,
        }
    })?;
    Ok(listener)
}

/// Removes our socket at shutdown, if it is still a socket.
pub fn remove(path: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        let _ = std::fs::remove_file(path);
    }
}
