//! A few connections to PostgreSQL, shared by the daemon's store calls.
//!
//! At most `store.pool_size` connections are open at once; a call waits for
//! a free one. Each is made by [`super::connect`], so every connection of
//! the pool has the TLS, the password, the bounded handshake and the pinned
//! `search_path` that `export` and `import` have. A connection that has
//! broken (the server restarted, `pg_terminate_backend`) is dropped when it
//! comes back, and the next call makes a new one: a lost server costs the
//! calls made while it is away, each told [`StoreError::Unavailable`], and
//! nothing after it returns.
//!
//! A pool this small is written here rather than taken from a crate, so
//! that its connections are made by the same `connect` as the rest (whose
//! time limit covers TLS and authentication, and which pins the schema).

use super::{StoreError, connect};
use crate::config::PostgresConfig;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, IsolationLevel, Row, Statement, Transaction};

/// A connection and the statements prepared on it, by their text.
struct Conn {
    client: Client,
    prepared: Mutex<HashMap<String, Statement>>,
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    config: Arc<PostgresConfig>,
    idle: Arc<Mutex<Vec<Conn>>>,
    permits: Arc<Semaphore>,
}

/// A connection taken from the pool; it goes back when dropped, unless it
/// has broken.
pub struct Pooled {
    conn: Option<Conn>,
    idle: Arc<Mutex<Vec<Conn>>>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(config: PostgresConfig) -> Pool {
        let size = config.pool_size.max(1);
        Pool {
            config: Arc::new(config),
            idle: Arc::new(Mutex::new(Vec::with_capacity(size))),
            permits: Arc::new(Semaphore::new(size)),
        }
    }

    /// The config the pool connects with.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// A connection: an idle one that still works, or a new one.
    pub async fn get(&self) -> Result<Pooled, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let reused = loop {
            let next = match self.idle.lock() {
                Ok(mut idle) => idle.pop(),
                Err(poisoned) => poisoned.into_inner().pop(),
            };
            match next {
                Some(conn) if conn.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match reused {
            Some(conn) => conn,
            None => Conn {
                client: connect(&self.config).await?,
                prepared: Mutex::new(HashMap::new()),
            },
        };
        Ok(Pooled {
            conn: Some(conn),
            idle: self.idle.clone(),
            _permit: permit,
        })
    }

    /// Closes the idle connections (at shutdown).
    pub fn close(&self) {
        match self.idle.lock() {
            Ok(mut idle) => idle.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
    }
}

impl Pooled {
    fn conn(&mut self) -> &mut Conn {
        // Only Drop takes the connection out.
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }

    /// `sql` prepared on this connection, once: for statements sent in a
    /// pipeline, outside a [`Tx`].
    pub async fn prepared(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let conn = self.conn.as_ref().unwrap_or_else(|| unreachable!());
        self::prepared(&conn.prepared, &conn.client, sql).await
    }

    /// Starts a transaction at READ COMMITTED.
    pub async fn begin(&mut self) -> Result<Tx<'_>, tokio_postgres::Error> {
        self.begin_with(IsolationLevel::ReadCommitted, false).await
    }

    /// Starts a transaction at `level`, read-only or not.
    pub async fn begin_with(
        &mut self,
        level: IsolationLevel,
        read_only: bool,
    ) -> Result<Tx<'_>, tokio_postgres::Error> {
        let Conn { client, prepared } = self.conn();
        let tx = client
            .build_transaction()
            .isolation_level(level)
            .read_only(read_only)
            .start()
            .await?;
        Ok(Tx { tx, prepared })
    }
}

impl Deref for Pooled {
    type Target = Client;

    fn deref(&self) -> &Client {
        // Only Drop takes the connection out.
        &self.conn.as_ref().unwrap_or_else(|| unreachable!()).client
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.conn().client
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !conn.client.is_closed()
        {
            match self.idle.lock() {
                Ok(mut idle) => idle.push(conn),
                Err(poisoned) => poisoned.into_inner().push(conn),
            }
        }
    }
}

/// A transaction whose statements are prepared once per connection: the
/// server parses and plans each text once, and each later use is one
/// round trip instead of two.
pub struct Tx<'a> {
    tx: Transaction<'a>,
    prepared: &'a Mutex<HashMap<String, Statement>>,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        prepared(self.prepared, &self.tx, sql).await
    }

    pub async fn query(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.tx.query(&statement, params).await
    }

    pub async fn query_one(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Row, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.tx.query_one(&statement, params).await
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.tx.query_opt(&statement, params).await
    }

    pub async fn execute(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.tx.execute(&statement, params).await
    }

    pub async fn batch_execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.tx.batch_execute(sql).await
    }

    pub async fn commit(self) -> Result<(), tokio_postgres::Error> {
        self.tx.commit().await
    }

    /// The transaction itself, for what takes any client.
    pub fn inner(&self) -> &Transaction<'_> {
        &self.tx
    }
}

/// `sql` prepared on `client`'s connection, from its cache `cache` or now.
async fn prepared(
    cache: &Mutex<HashMap<String, Statement>>,
    client: &impl GenericClient,
    sql: &str,
) -> Result<Statement, tokio_postgres::Error> {
    let cached = match cache.lock() {
        Ok(prepared) => prepared.get(sql).cloned(),
        Err(poisoned) => poisoned.into_inner().get(sql).cloned(),
    };
    if let Some(statement) = cached {
        return Ok(statement);
    }
    let statement = client.prepare(sql).await?;
    let mut prepared = match cache.lock() {
        Ok(prepared) => prepared,
        Err(poisoned) => poisoned.into_inner(),
    };
    // Texts built with values in them would grow the cache without
    // bound; the store's are a fixed few, so a full cache is a bug to
    // survive, not to grow.
    if prepared.len() < MAX_PREPARED {
        prepared.insert(sql.to_owned(), statement.clone());
    }
    Ok(statement)
}

/// The most statements one connection keeps prepared.
const MAX_PREPARED: usize = 512;
