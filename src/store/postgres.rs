//! The PostgreSQL store: the queue several nodes share ([`Queue`], its
//! operations in the submodules, its connections in [`pool`]), connecting
//! ([`connect`], with TLS in [`tls`]), the schema and its migrations
//! ([`schema`]), `export` and `import` ([`transfer`]), and turning the
//! client library's errors into [`StoreError`]s an operator can act on.
//!
//! What several nodes need is in the schema beside SQLite's tables and
//! columns:
//! - `jobs.node` and `jobs.lease_until`: the node that claimed a `sending`
//!   job and until when (milliseconds since the epoch) the claim holds
//!   without a renewal; `jobs_by_lease` finds the expired claims of dead
//!   nodes. The claim itself goes by `jobs_by_state_due (state, due_at, id)`
//!   with `FOR UPDATE SKIP LOCKED`.
//! - `nodes (name, started_at, last_heartbeat, in_flight)`: one row per
//!   live daemon, for `stats` and for telling a dead node from a slow one.
//! - `pauses (kind, until_at, reason, node)`: a 429 (`kind = 'rate_limit'`)
//!   or auth pause that every node honours.
//! - `job_tags_by_job`: PostgreSQL checks the foreign key of `job_tags` on
//!   every delete of a job, which without it would scan the tags.
//!
//! SQLite's per-state counts (`state_counts`) and its deferred count in
//! `meta` are not mirrored: counter rows that every claim updates would
//! serialise the nodes' transactions on one row. Schema version 2 counts
//! by appending rows to `job_counts` instead (see `counts.rs`). `meta`
//! keeps the other integers (the calendar's fingerprint).
//!
//! Advisory lock keys start with "Coax" in ASCII (`0x436f6178_xxxxxxxx`):
//! `..._00000001` while migrating (see [`schema::MIGRATION_LOCK`]),
//! `..._00000002` held shared by each running daemon and exclusively by
//! `import`, `..._00000003` in each step of a prune, `..._00000004` while
//! folding `job_counts`, `..._00000005` while spending the shared rate
//! limit; and per node name, `(0x436f6178, hashtext(name))`.
//!
//! The password is handed to the client library and nowhere else: no error
//! or log line here formats the config, only [`PostgresConfig::describe`].

mod chain;
mod counts;
mod deferral;
mod delivery;
mod delivery_rows;
mod group;
mod group_finish;
mod jobs;
mod listing;
mod planner;
mod pool;
mod queue;
mod schedules;
pub mod schema;
mod shared;
mod tls;
pub mod transfer;
mod upkeep;
mod view;

use super::StoreError;
use crate::config::PostgresConfig;
pub use queue::Queue;
pub use schema::{SCHEMA_VERSION, migrate};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// Opens one connection, with the password and TLS that the config says,
/// and drives it on a task of the current runtime.
pub async fn connect(config: &PostgresConfig) -> Result<Client, StoreError> {
    connect_with(config, None).await
}

/// [`connect`], passing the channel name of each notification the
/// connection receives (after `LISTEN`) to `notices`.
pub async fn connect_listening(
    config: &PostgresConfig,
    notices: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Client, StoreError> {
    connect_with(config, Some(notices)).await
}

async fn connect_with(
    config: &PostgresConfig,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<Client, StoreError> {
    let mut pg = config.connect.clone();
    if let Some(password) = &config.password {
        pg.password(password.expose());
    }
    let target = config.describe();
    let failed = |e: tokio_postgres::Error| {
        let mut error = pg_error("connecting")(e);
        if let StoreError::Postgres { detail, .. } | StoreError::Unavailable { detail, .. } =
            &mut error
        {
            *detail = format!("{target}: {detail}");
        }
        error
    };
    // tokio-postgres's connect_timeout bounds each TCP connect only; a
    // server that accepts and then says nothing would be waited on for ever.
    let limit = pg.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT);
    let silent = || StoreError::Unavailable {
        during: "connecting",
        detail: format!(
            "{target}: no answer within {} (connect_timeout in store.url sets this limit)",
            humantime::format_duration(limit)
        ),
    };
    let connector = tls::connector(config.tls, config.root_cert.as_deref())?;
    let client = tokio::time::timeout(limit, async {
        match connector {
            None => {
                let (client, connection) =
                    pg.connect(tokio_postgres::NoTls).await.map_err(failed)?;
                tokio::spawn(drive(connection, target.clone(), notices));
                Ok::<_, StoreError>(client)
            }
            Some(tls) => {
                let (client, connection) = pg.connect(tls).await.map_err(failed)?;
                tokio::spawn(drive(connection, target.clone(), notices));
                Ok(client)
            }
        }
    })
    .await
    .map_err(|_| silent())??;
    pin_schema(&client).await?;
    Ok(client)
}

/// Builds what the connection's TLS needs (reading `sslrootcert`), without
/// connecting: what `check-config` can check of the server's side.
pub fn check_tls(config: &PostgresConfig) -> Result<(), StoreError> {
    tls::connector(config.tls, config.root_cert.as_deref()).map(drop)
}

/// How long connecting (TCP, TLS and authentication) may take when
/// `store.url` sets no `connect_timeout`.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps every name this connection uses in one schema: the first of the
/// role's `search_path` that exists, where its tables are created. Without
/// this, a table of the same name in a later schema (another application's
/// `jobs` in `public`, another queue's `coax_schema`) would be found, or
/// written to, in its place.
async fn pin_schema(client: &Client) -> Result<(), StoreError> {
    let during = "choosing the schema";
    let schema: Option<String> = client
        .query_one(
            "SELECT set_config('search_path', quote_ident(current_schema()), false), current_schema()",
            &[],
        )
        .await
        .map_err(pg_error(during))?
        .try_get(1)
        .map_err(pg_error(during))?;
    match schema {
        Some(_) => Ok(()),
        None => Err(StoreError::Postgres {
            during,
            detail: "no schema on the role's search_path exists to hold the queue; create one \
                     (CREATE SCHEMA coax AUTHORIZATION <role>) or set search_path"
                .to_owned(),
        }),
    }
}

/// Runs a connection until it ends, passing on notifications to
/// `notices`; a broken one is logged once here and each call on its client
/// fails with [`StoreError::Unavailable`].
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    target: String,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ended = loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                if let Some(notices) = &notices {
                    let _ = notices.send(n.channel().to_owned());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    if let Some(e) = ended {
        tracing::warn!(database = %target, "connection to PostgreSQL ended: {}", describe(&e));
    }
}

/// Maps a client error to a [`StoreError`]: [`StoreError::Unavailable`]
/// when the server or the connection failed (so that callers treat it as
/// an outage), [`StoreError::Postgres`] otherwise.
pub fn pg_error(during: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| {
        let detail = describe(&e);
        if is_outage(&e) {
            StoreError::Unavailable { during, detail }
        } else {
            StoreError::Postgres { during, detail }
        }
    }
}

/// Whether the server or the way to it failed, rather than this statement.
fn is_outage(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 53: insufficient resources;
            // 57P0x: the server shutting down, crashed or starting.
            class == "08"
                || class == "53"
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
        // No SQLSTATE: the server did not answer. The library tells its
        // kinds apart only in words; these are the network's failures
        // (refused, reset, timed out), not a TLS or authentication refusal.
        None => matches!(
            e.to_string().as_str(),
            "error connecting to server"
                | "error communicating with the server"
                | "timeout waiting for server"
        ),
    }
}

/// The server's words, with a hint for the failures an operator meets
/// first. The password is never part of these: the server does not repeat
/// it, and the client library does not print it.
fn describe(e: &tokio_postgres::Error) -> String {
    let hint = match e.code() {
        Some(c) if *c == SqlState::INVALID_PASSWORD => Some(
            "the password was refused: check COAX_SCHEDULER_DB_PASSWORD, the systemd \
             credential coax-db-password or store.password_file, and the user in store.url",
        ),
        Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => Some(
            "the server refused this user, host or TLS setting (pg_hba.conf), or a password \
             is needed and none was given",
        ),
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            Some("create the database first, or fix its name in store.url")
        }
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            Some("grant the user in store.url the rights it needs on the queue's tables")
        }
        _ => None,
    };
    let mut text = match e.as_db_error() {
        Some(db) => {
            let mut t = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                t.push_str(&format!(" ({detail})"));
            }
            t
        }
        None => {
            // The library's own text names what failed ("error connecting
            // to server", "error performing TLS handshake"); its source says
            // why.
            let mut t = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !t.contains(&cause_text) {
                    t.push_str(&format!(": {cause_text}"));
                }
                source = cause.source();
            }
            t
        }
    };
    if let Some(hint) = hint {
        text.push_str("; ");
        text.push_str(hint);
    }
    text
}
