//! `store.backend` and the PostgreSQL store's keys: `store.url`,
//! `store.password_file`, `store.lease` and `store.pool_size`, and the
//! database password.
//!
//! With `backend = "sqlite"` (the default) the PostgreSQL keys are refused
//! by name rather than read and ignored. With `backend = "postgres"`,
//! `store.url` is required and `store.path` is refused: the queue is in the
//! database, and a path that is not used would only mislead.
//!
//! The password never appears in `store.url`: a URL holding one is refused,
//! naming the three places it may come from (see [`load_password`]), and the
//! message does not repeat it. [`DbPassword`] redacts itself in `Debug` and
//! has no `Display`, so a logged config or error cannot carry it.

use super::*;

/// Environment variable holding the database password; wins over the rest.
pub const DB_PASSWORD_ENV: &str = "COAX_SCHEDULER_DB_PASSWORD";
/// Name of the systemd credential (`LoadCredential=coax-db-password:...`).
pub const DB_PASSWORD_CREDENTIAL: &str = "coax-db-password";

/// `store.lease` when not given.
pub(super) const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// `store.pool_size` when not given.
pub(super) const DEFAULT_POOL_SIZE: usize = 8;
/// A pool far beyond any server's `max_connections` is a typo.
const MAX_POOL_SIZE: i64 = 1024;

/// The PostgreSQL store, with `store.backend = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `store.url` as parsed, without `sslmode` beyond what tokio-postgres
    /// knows (see [`PostgresConfig::tls`]) and never with a password.
    pub connect: tokio_postgres::Config,
    /// `sslmode` from `store.url`; when it names none, `require` if there
    /// is a password (so that it never goes in clear text to a server that
    /// declines TLS), else `prefer`, as libpq.
    pub tls: TlsMode,
    /// `sslrootcert` from `store.url`, resolved against the config's
    /// directory: the CA that signs the server's certificate, instead of
    /// the public web CAs.
    pub root_cert: Option<PathBuf>,
    /// From the environment, the systemd credential or `store.password_file`;
    /// none for trust or peer authentication.
    pub password: Option<DbPassword>,
    /// `store.lease`.
    pub lease: Duration,
    /// `store.pool_size`, at least 1.
    pub pool_size: usize,
}

impl PostgresConfig {
    /// Where the database is, for messages: user, hosts, ports and database
    /// name; never the password.
    pub fn describe(&self) -> String {
        let c = &self.connect;
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                tokio_postgres::config::Host::Unix(p) => format!("{}", p.display()),
            })
            .collect();
        format!(
            "postgres://{}@{}/{}",
            c.get_user().unwrap_or(""),
            hosts.join(","),
            c.get_dbname().or(c.get_user()).unwrap_or("")
        )
    }
}

/// `sslmode`, as libpq means it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, else plain; the certificate is not checked.
    Prefer,
    /// TLS, encrypting only: the certificate is not checked.
    Require,
    /// TLS with a certificate chain to a trusted CA, for any host name.
    VerifyCa,
    /// TLS with a trusted chain and the host name in the certificate.
    VerifyFull,
}

impl TlsMode {
    fn parse(text: &str) -> Option<TlsMode> {
        Some(match text {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the server's certificate chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, TlsMode::VerifyCa | TlsMode::VerifyFull)
    }
}

/// The PostgreSQL keys as written; `toml::Value` so that, with SQLite,
/// any value is refused by its key's name rather than by its type.
pub(super) struct RawPostgresKeys {
    pub url: Option<toml::Value>,
    pub password_file: Option<toml::Value>,
    pub lease: Option<toml::Value>,
    pub pool_size: Option<toml::Value>,
}

/// The PostgreSQL store's settings before the password is read.
pub(super) struct Checked {
    connect: tokio_postgres::Config,
    /// `sslmode`, if `store.url` names one.
    tls: Option<TlsMode>,
    root_cert: Option<PathBuf>,
    password_file: Option<PathBuf>,
    lease: Duration,
    pool_size: usize,
}

/// Checks `store.backend` against the keys given. `Ok(None)` is SQLite;
/// `Err` holds the dotted key and the rest of the sentence.
pub(super) fn check_store(
    backend: RawBackend,
    keys: RawPostgresKeys,
    path_given: bool,
    dir: &Path,
) -> Result<Option<Checked>, (String, String)> {
    let err = |key: &str, message: String| (format!("store.{key}"), message);
    if backend == RawBackend::Sqlite {
        let given = [
            ("url", keys.url.is_some()),
            ("password_file", keys.password_file.is_some()),
            ("lease", keys.lease.is_some()),
            ("pool_size", keys.pool_size.is_some()),
        ];
        if let Some((key, _)) = given.into_iter().find(|(_, given)| *given) {
            return Err(err(
                key,
                r#"belongs to backend = "postgres"; remove it, or set backend = "postgres""#
                    .to_owned(),
            ));
        }
        return Ok(None);
    }
    if path_given {
        return Err(err(
            "path",
            r#"is the SQLite file, but backend = "postgres" keeps the queue in the database at store.url; remove it"#
                .to_owned(),
        ));
    }
    let url = match keys.url {
        None => {
            return Err(err(
                "url",
                r#"is required with backend = "postgres", e.g. url = "postgres://coax@db.internal:5432/coax?sslmode=verify-full""#
                    .to_owned(),
            ));
        }
        Some(toml::Value::String(text)) => text,
        Some(_) => return Err(err("url", "must be a string".to_owned())),
    };
    let (connect, tls, root_cert) = parse_url(&url, dir).map_err(|m| err("url", m))?;
    let password_file = match keys.password_file {
        None => None,
        Some(toml::Value::String(p)) if p.is_empty() => {
            return Err(err("password_file", "must not be empty".to_owned()));
        }
        Some(toml::Value::String(p)) => Some(dir.join(p)),
        Some(_) => return Err(err("password_file", "must be a path string".to_owned())),
    };
    let lease = match keys.lease {
        None => DEFAULT_LEASE,
        Some(toml::Value::String(text)) => humantime::parse_duration(&text)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                err(
                    "lease",
                    format!(r#"{text:?} is not a duration of at least 1s, such as "30s""#),
                )
            })?,
        Some(_) => {
            return Err(err(
                "lease",
                r#"must be a duration string such as "30s""#.to_owned(),
            ));
        }
    };
    let pool_size = match keys.pool_size {
        None => DEFAULT_POOL_SIZE,
        Some(toml::Value::Integer(n)) if (1..=MAX_POOL_SIZE).contains(&n) => n as usize,
        Some(other) => {
            return Err(err(
                "pool_size",
                format!("is {other}; it must be a whole number from 1 to {MAX_POOL_SIZE}"),
            ));
        }
    };
    Ok(Some(Checked {
        connect,
        tls,
        root_cert,
        password_file,
        lease,
        pool_size,
    }))
}

impl Checked {
    /// Reads the password and completes the config.
    pub(super) fn finish(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PostgresConfig, ConfigError> {
        let password = load_password(self.password_file.as_deref(), env)?;
        let tls = self.tls.unwrap_or(match password {
            Some(_) => TlsMode::Require,
            None => TlsMode::Prefer,
        });
        let mut connect = self.connect;
        connect.ssl_mode(match tls {
            TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
            TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(PostgresConfig {
            connect,
            tls,
            root_cert: self.root_cert,
            password,
            lease: self.lease,
            pool_size: self.pool_size,
        })
    }
}

/// Where a password may come from, for the message refusing one in the URL.
fn password_places() -> String {
    format!(
        "set {DB_PASSWORD_ENV}, pass the systemd credential {DB_PASSWORD_CREDENTIAL} \
         (LoadCredential=), or set store.password_file"
    )
}

/// Reads `store.url`: a `postgres://` URL without a password. `sslmode`
/// and `sslrootcert` are taken out here, since tokio-postgres knows neither
/// `verify-ca`/`verify-full` nor a root certificate; the rest is left to
/// tokio-postgres. No message repeats the URL, which may hold a password.
fn parse_url(
    url: &str,
    dir: &Path,
) -> Result<(tokio_postgres::Config, Option<TlsMode>, Option<PathBuf>), String> {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err(
            r#"must be a URL such as "postgres://coax@db.internal:5432/coax?sslmode=verify-full""#
                .to_owned(),
        );
    };
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, query),
        None => (rest, ""),
    };
    let authority = base.split('/').next().unwrap_or("");
    // Decoded first: `coax%3Asecret@` is a user and a password all the same.
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && percent_decode(userinfo).map_or(true, |user| user.contains(':'))
    {
        return Err(format!(
            "holds a password; take it out of the URL and {}",
            password_places()
        ));
    }
    let mut tls = None;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(key)?.as_str() {
            "password" => {
                return Err(format!(
                    "holds a password (?password=); take it out of the URL and {}",
                    password_places()
                ));
            }
            "sslmode" => {
                let value = percent_decode(value)?;
                tls = Some(TlsMode::parse(&value).ok_or_else(|| {
                    format!(
                        "has sslmode={value:?}; use disable, prefer, require, verify-ca or verify-full"
                    )
                })?);
            }
            "sslrootcert" => {
                let value = percent_decode(value)?;
                if value.is_empty() {
                    return Err("has an empty sslrootcert".to_owned());
                }
                root_cert = Some(dir.join(value));
            }
            _ => kept.push(pair),
        }
    }
    if root_cert.is_some() && !tls.is_some_and(TlsMode::verifies) {
        return Err(
            "has sslrootcert, which is used only to verify the server: add sslmode=verify-full (or verify-ca)"
                .to_owned(),
        );
    }
    let rebuilt = if kept.is_empty() {
        format!("postgres://{base}")
    } else {
        format!("postgres://{base}?{}", kept.join("&"))
    };
    let mut connect: tokio_postgres::Config = rebuilt
        .parse()
        .map_err(|e| format!("is not a valid PostgreSQL URL ({e})"))?;
    if connect.get_password().is_some() {
        return Err(format!(
            "holds a password; take it out of the URL and {}",
            password_places()
        ));
    }
    if connect.get_user().is_none() {
        return Err(
            "names no user; write it before the host, e.g. postgres://coax@db.internal/coax"
                .to_owned(),
        );
    }
    if connect.get_hosts().is_empty() {
        return Err("names no host, e.g. postgres://coax@db.internal/coax".to_owned());
    }
    if connect.get_application_name().is_none() {
        connect.application_name("coax-scheduler");
    }
    Ok((connect, tls, root_cert))
}

/// Decodes `%XX` escapes in a part of the URL.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "has a broken %-escape in its query".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "has a query value that is not UTF-8".to_owned())
}

mod password;

pub use password::DbPassword;
pub(super) use password::load_password;

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
