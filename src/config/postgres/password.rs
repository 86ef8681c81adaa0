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
    let found = secret_from_files(
        Secret {
            credential: DB_PASSWORD_CREDENTIAL,
            file,
            what: "database password file",
            key: "store.password_file",
        },
        env,
    );
    match found {
        Ok(Some((text, origin))) => DbPassword::from_text(&text, &origin).map(Some),
        Ok(None) => Ok(None),
        Err(SecretError::Read { path, cause }) => Err(ConfigError::DbPasswordRead { path, cause }),
        Err(SecretError::Refused(message)) => Err(ConfigError::DbPassword(message)),
    }
}
