//! Loading the Coax API key: environment, systemd credential, or key file.
//! The credential and file lookup ([`secret_from_files`]) serves the
//! database password too.
//!
//! Files are opened without blocking and must be regular files once symlinks
//! are followed: a FIFO, a device or a directory given as a key file would
//! otherwise hang `check-config`, start-up or a reload (and with it the
//! signal handling that runs beside the reload).

use super::*;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

pub(super) fn load_api_key(
    key_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ApiKey, ConfigError> {
    // An empty (or blank) variable counts as unset, as shells and unit files
    // often leave one defined but empty.
    if let Some(value) = env(API_KEY_ENV).filter(|v| !v.trim().is_empty()) {
        return ApiKey::from_text(&value, &format!("environment variable {API_KEY_ENV}"));
    }

    let found = secret_from_files(
        Secret {
            credential: API_KEY_CREDENTIAL,
            file: key_file,
            what: "API key file",
            key: "coax.api_key_file",
        },
        env,
    );
    match found {
        Ok(Some((text, origin))) => return ApiKey::from_text(&text, &origin),
        Ok(None) => {}
        Err(SecretError::Read { path, cause }) => {
            return Err(ConfigError::ApiKeyRead { path, cause });
        }
        Err(SecretError::Refused(message)) => return Err(ConfigError::ApiKey(message)),
    }

    Err(ConfigError::ApiKey(format!(
        "no API key: set {API_KEY_ENV}, or coax.api_key_file, \
         or provide the systemd credential {API_KEY_CREDENTIAL} (LoadCredential=)"
    )))
}

/// Where a secret is looked for after its environment variable.
pub(super) struct Secret<'a> {
    /// The name of its systemd credential.
    pub credential: &'a str,
    /// Its file from the config, if one is named.
    pub file: Option<&'a Path>,
    /// What the file is, in messages: "API key file".
    pub what: &'a str,
    /// The config key that names the file.
    pub key: &'a str,
}

/// Why a secret's credential or file could not be used.
pub(super) enum SecretError {
    Read {
        path: PathBuf,
        cause: io::Error,
    },
    /// Refused, in words that say what to do.
    Refused(String),
}

/// The text of the systemd credential `secret.credential` if
/// `$CREDENTIALS_DIRECTORY` holds it, else of `secret.file` (refused if
/// group or others may read it), with where it came from; none if neither
/// is there.
pub(super) fn secret_from_files(
    secret: Secret<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>, SecretError> {
    if let Some(dir) = env(CREDENTIALS_DIRECTORY_ENV).filter(|d| !d.is_empty()) {
        let path = Path::new(&dir).join(secret.credential);
        // No permission check here: systemd owns this file and its mode.
        match open_regular(&path).and_then(|file| read_capped(file, MAX_KEY_BYTES)) {
            Ok(text) => {
                return Ok(Some((
                    text,
                    format!("systemd credential {}", path.display()),
                )));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(cause) => return Err(SecretError::Read { path, cause }),
        }
    }
    let Some(path) = secret.file else {
        return Ok(None);
    };
    let read_err = |cause| SecretError::Read {
        path: path.to_owned(),
        cause,
    };
    // Check the mode of the file actually opened, not of whatever the path
    // points to a moment earlier.
    let file = open_regular(path).map_err(read_err)?;
    let mode = file.metadata().map_err(read_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretError::Refused(format!(
            "{what} {path} is accessible by group or others (mode {mode:04o}); \
             restrict it with: chmod 600 {path}",
            what = secret.what,
            path = path.display(),
            mode = mode & 0o7777,
        )));
    }
    let text = read_capped(file, MAX_KEY_BYTES).map_err(read_err)?;
    let origin = format!("{} {} ({})", secret.what, path.display(), secret.key);
    Ok(Some((text, origin)))
}

/// The largest key file or credential read: a key is a few dozen bytes,
/// and a huge (or sparse) file must not be read whole into memory.
pub(super) const MAX_KEY_BYTES: u64 = 4 * 1024;

/// Reads all of `file` as UTF-8 text if it is at most `cap` bytes; a larger
/// one is refused, naming the cap, after reading at most `cap + 1` bytes.
pub(super) fn read_capped(file: fs::File, cap: u64) -> io::Result<String> {
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than the {} KiB this file may be", cap / 1024),
        )
    };
    if file.metadata()?.len() > cap {
        return Err(too_large());
    }
    // The size is checked again while reading: the file may grow meanwhile.
    let mut text = String::new();
    file.take(cap + 1).read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(text)
}

/// Opens `path` for reading, following symlinks, and refuses anything that
/// is not a regular file with an error of kind `InvalidInput`.
///
/// `O_NONBLOCK` makes opening a FIFO return at once instead of waiting for a
/// writer; the type is then checked on the opened file, so nothing can be
/// swapped in between a check and the open. Reading a regular file ignores
/// the flag.
pub(super) fn open_regular(path: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is {}, not a regular file", describe(kind)),
    ))
}

/// What a file that is not a regular file is, in words.
fn describe(kind: fs::FileType) -> &'static str {
    if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path) -> PathBuf {
        let path = dir.join("api-key");
        fs::write(&path, "ck_live_abc\n").expect("write key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn key_and_config_files_over_their_cap_are_refused_without_being_read_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("api-key");
        // Sparse: 3 GiB on paper, nothing on disk; read whole it would
        // take 3 GiB of memory.
        let file = fs::File::create(&path).expect("create");
        file.set_len(3 << 30).expect("set_len");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = load_api_key(Some(&path), &no_env).expect_err("a huge key file");
        assert!(err.to_string().contains("larger than the 4 KiB"), "{err}");
        // A file just over the cap is refused too, and one at it is read.
        fs::write(&path, "k".repeat(4097)).expect("write");
        let err = load_api_key(Some(&path), &no_env).expect_err("4097 bytes");
        assert!(err.to_string().contains("4 KiB"), "{err}");
        fs::write(&path, "k".repeat(4096)).expect("write");
        assert_eq!(
            load_api_key(Some(&path), &no_env)
                .expect("4096 bytes")
                .expose()
                .len(),
            4096
        );
        let config = dir.path().join("config.toml");
        let file = fs::File::create(&config).expect("create");
        file.set_len(3 << 30).expect("set_len");
        let err = Config::load_with_env(&config, &no_env).expect_err("a huge config");
        let text = err.to_string();
        assert!(text.contains("larger than the 1024 KiB"), "{text}");
        assert!(text.contains(&config.display().to_string()), "{text}");
    }

    #[test]
    fn key_file_refusal_says_its_reason_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = anyhow::Error::new(load_api_key(Some(dir.path()), &no_env).expect_err("dir"));
        let text = format!("{err:#}");
        assert_eq!(text.matches("a directory").count(), 1, "{text}");
        let err = anyhow::Error::new(Config::load_with_env(dir.path(), &no_env).expect_err("dir"));
        let text = format!("{err:#}");
        assert_eq!(text.matches("a directory").count(), 1, "{text}");
    }

    #[test]
    fn key_file_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("api-key");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let err = load_api_key(Some(&path), &no_env).expect_err("a FIFO is refused");
        let text = err.to_string();
        assert!(text.contains("FIFO"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }

    #[test]
    fn key_file_directory_and_char_device_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = load_api_key(Some(dir.path()), &no_env).expect_err("a directory");
        assert!(
            err.to_string().contains("a directory, not a regular file"),
            "{err}"
        );
        let err = load_api_key(Some(Path::new("/dev/zero")), &no_env).expect_err("a device");
        assert!(err.to_string().contains("a character device"), "{err}");
    }

    #[test]
    fn key_file_symlink_to_a_regular_file_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = key_file(dir.path());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let key = load_api_key(Some(&link), &no_env).expect("a symlink to a file works");
        assert_eq!(key.expose(), "ck_live_abc");
    }

    #[test]
    fn credential_that_is_a_fifo_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(API_KEY_CREDENTIAL);
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let dir_text = dir.path().display().to_string();
        let env = |name: &str| (name == CREDENTIALS_DIRECTORY_ENV).then(|| dir_text.clone());
        let err = load_api_key(None, &env).expect_err("a FIFO credential is refused");
        assert!(err.to_string().contains("FIFO"), "{err}");
    }
}
