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
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    config: Arc<PostgresConfig>,
    idle: Arc<Mutex<Vec<Client>>>,
    permits: Arc<Semaphore>,
}

/// A connection taken from the pool; it goes back when dropped, unless it
/// has broken.
pub struct Pooled {
    client: Option<Client>,
    idle: Arc<Mutex<Vec<Client>>>,
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
                Some(client) if client.is_closed() => continue,
                other => break other,
            }
        };
        let client = match reused {
            Some(client) => client,
            None => connect(&self.config).await?,
        };
        Ok(Pooled {
            client: Some(client),
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

impl Deref for Pooled {
    type Target = Client;

    fn deref(&self) -> &Client {
        // Only Drop takes the client out.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            match self.idle.lock() {
                Ok(mut idle) => idle.push(client),
                Err(poisoned) => poisoned.into_inner().push(client),
            }
        }
    }
}
