//! Loading the Coax API key: environment, systemd credential, or key file.

use super::*;

pub(super) fn load_api_key(
    key_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ApiKey, ConfigError> {
    // An empty (or blank) variable counts as unset, as shells and unit files
    // often leave one defined but empty.
    if let Some(value) = env(API_KEY_ENV).filter(|v| !v.trim().is_empty()) {
        return ApiKey::from_text(&value, &format!("environment variable {API_KEY_ENV}"));
    }

    if let Some(dir) = env(CREDENTIALS_DIRECTORY_ENV).filter(|d| !d.is_empty()) {
        let path = Path::new(&dir).join(API_KEY_CREDENTIAL);
        // No permission check here: systemd owns this file and its mode.
        match fs::read_to_string(&path) {
            Ok(text) => {
                return ApiKey::from_text(&text, &format!("systemd credential {}", path.display()));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(ConfigError::ApiKeyRead { path, source: err }),
        }
    }

    if let Some(path) = key_file {
        let read_err = |err| ConfigError::ApiKeyRead {
            path: path.to_owned(),
            source: err,
        };
        // Check the mode of the file actually opened, not of whatever the
        // path points to a moment earlier.
        let mut file = fs::File::open(path).map_err(read_err)?;
        let mode = file.metadata().map_err(read_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ConfigError::ApiKey(format!(
                "API key file {path} is accessible by group or others (mode {mode:04o}); \
                 restrict it with: chmod 600 {path}",
                path = path.display(),
                mode = mode & 0o7777,
            )));
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read_err)?;
        return ApiKey::from_text(
            &text,
            &format!("API key file {} (coax.api_key_file)", path.display()),
        );
    }

    Err(ConfigError::ApiKey(format!(
        "no API key: set {API_KEY_ENV}, or coax.api_key_file, \
         or provide the systemd credential {API_KEY_CREDENTIAL} (LoadCredential=)"
    )))
}
