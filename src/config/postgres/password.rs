//! The database password: [`DbPassword`], and [`load_password`], which
//! reads it from the first of its three places.

use super::super::*;
use super::{DB_PASSWORD_CREDENTIAL, DB_PASSWORD_ENV};

/// The database password. Like [`ApiKey`], it has no `Display` and a
/// redacting `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct DbPassword(String);

impl DbPassword {
    /// The password, for the one place that hands it to the client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub(super) fn from_text(text: &str, origin: &str) -> Result<DbPassword, ConfigError> {
        // A file's trailing line break is not part of the password.
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(ConfigError::DbPassword(format!(
                "{origin} is empty; it must hold the database password (or remove it for \
                 trust or peer authentication)"
            )));
        }
        Ok(DbPassword(password.to_owned()))
    }
}

impl fmt::Debug for DbPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbPassword(<redacted>)")
    }
}

/// The password: `$COAX_SCHEDULER_DB_PASSWORD` if set and non-empty, else
/// the systemd credential `coax-db-password`, else `store.password_file`
/// (refused if group or others may read it), else none.
pub(in crate::config) fn load_password(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<DbPassword>, ConfigError> {
    if let Some(value) = env(DB_PASSWORD_ENV).filter(|v| !v.is_empty()) {
        return DbPassword::from_text(&value, &format!("environment variable {DB_PASSWORD_ENV}"))
            .map(Some);
    }
    if let Some(dir) = env(CREDENTIALS_DIRECTORY_ENV).filter(|d| !d.is_empty()) {
        let path = Path::new(&dir).join(DB_PASSWORD_CREDENTIAL);
        // No permission check: systemd owns this file and its mode.
        match open_regular(&path).and_then(|file| read_capped(file, MAX_KEY_BYTES)) {
            Ok(text) => {
                return DbPassword::from_text(
                    &text,
                    &format!("systemd credential {}", path.display()),
                )
                .map(Some);
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(ConfigError::DbPasswordRead { path, cause: err }),
        }
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let read_err = |err| ConfigError::DbPasswordRead {
        path: path.to_owned(),
        cause: err,
    };
    let file = open_regular(path).map_err(read_err)?;
    let mode = file.metadata().map_err(read_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(ConfigError::DbPassword(format!(
            "database password file {path} is accessible by group or others (mode {mode:04o}); \
             restrict it with: chmod 600 {path}",
            path = path.display(),
            mode = mode & 0o7777,
        )));
    }
    let text = read_capped(file, MAX_KEY_BYTES).map_err(read_err)?;
    DbPassword::from_text(
        &text,
        &format!(
            "database password file {} (store.password_file)",
            path.display()
        ),
    )
    .map(Some)
}
