//! The metrics endpoint: `GET /metrics` and `GET /health` over HTTP/1.1, on
//! a TCP address or a Unix socket path (`[metrics] listen`).
//!
//! It is built so that a scraper can never hold the daemon: at most
//! [`MAX_CONNECTIONS`] connections (one more is closed at once), a request
//! head of at most 8 KiB that must arrive within [`HEAD_TIMEOUT`], a
//! connection that lives at most [`CONNECTION_LIFETIME`], and a store read
//! bounded by [`STORE_TIMEOUT`]. Only GET is served (405 otherwise), on
//! those two paths (404 otherwise), and nothing served names a customer,
//! a message or a key.

use super::scrape;
use crate::config::{Config, MetricsListen};
use crate::dispatch::Handle;
use crate::socket::SocketError;
use crate::store::Store;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

/// Connections served at once; Prometheus uses one per target.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a request head may take to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open, keep-alive included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a scrape waits for the store before answering 503.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (hyper's smallest buffer).
const MAX_HEAD_BYTES: usize = 8192;
/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr} (metrics.listen): {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot listen for metrics (metrics.listen): {0}")]
    Socket(#[from] SocketError),
    #[error("cannot set up the metrics recorder: {0}")]
    Recorder(String),
}

/// The endpoint while it runs; does nothing when metrics are off.
pub struct Exporter {
    running: Option<Running>,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    socket: Option<PathBuf>,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// What every request needs.
struct Shared {
    handle: PrometheusHandle,
    store: Store,
    dispatch: Handle,
}

impl Exporter {
    /// Installs the recorder and starts serving `[metrics] listen`, if set.
    pub async fn start(
        config: &Config,
        store: &Store,
        dispatch: &Handle,
    ) -> Result<Exporter, MetricsError> {
        let Some(listen) = &config.metrics.listen else {
            return Ok(Exporter { running: None });
        };
        let shared = config.store.postgres.is_some();
        let handle = super::install(shared.then_some(config.node.name.as_str()))?;
        let (listener, socket) = match listen {
            MetricsListen::Tcp(addr) => {
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| MetricsError::Bind {
                            addr: addr.to_string(),
                            source,
                        })?;
                (Listener::Tcp(listener), None)
            }
            MetricsListen::Unix(path) => (
                Listener::Unix(crate::socket::bind(path, config.socket.mode)?),
                Some(path.clone()),
            ),
        };
        tracing::info!(listen = %describe(listen), "serving metrics on /metrics and /health");
        let shared = Arc::new(Shared {
            handle,
            store: store.clone(),
            dispatch: dispatch.clone(),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, shared, stopped));
        Ok(Exporter {
            running: Some(Running { stop, task, socket }),
        })
    }

    /// Stops accepting, ends the connections and removes a Unix socket.
    pub async fn stop(self) {
        let Some(running) = self.running else {
            return;
        };
        let _ = running.stop.send(());
        if let Err(e) = running.task.await {
            tracing::error!(error = %e, "the metrics endpoint failed");
        }
        if let Some(path) = running.socket {
            crate::socket::remove(&path);
        }
    }
}

fn describe(listen: &MetricsListen) -> String {
    match listen {
        MetricsListen::Tcp(addr) => addr.to_string(),
        MetricsListen::Unix(path) => path.display().to_string(),
    }
}

async fn serve(listener: Listener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = upkeep.tick() => shared.handle.run_upkeep(),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = accept(&listener) => {
                let Some(io) = accepted else {
                    // Out of descriptors, typically; give the system a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // One over the limit is closed at once: dropping it is the answer.
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::debug!("metrics connection refused: too many connections");
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    connection(io, shared).await;
                    drop(permit);
                });
            }
        }
    }
    connections.shutdown().await;
}

/// A connection of either kind, boxed so one server loop serves both.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn accept(listener: &Listener) -> Option<Box<dyn Io>> {
    let accepted: std::io::Result<Box<dyn Io>> = match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Io>),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Io>),
    };
    match accepted {
        Ok(io) => Some(io),
        Err(e) => {
            tracing::warn!(error = %e, "cannot accept a metrics connection");
            None
        }
    }
}

async fn connection(io: Box<dyn Io>, shared: Arc<Shared>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let service = service_fn(move |request| answer(shared.clone(), request));
    let served = http.serve_connection(TokioIo::new(io), service);
    match tokio::time::timeout(CONNECTION_LIFETIME, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended with an error"),
        Err(_) => tracing::debug!("metrics connection closed after its lifetime"),
    }
}

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT_FORMAT, "only GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(response);
    }
    Ok(match request.uri().path() {
        "/metrics" => metrics(&shared).await,
        "/health" => {
            let (status, body) = scrape::health(&shared.dispatch);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            reply(status, "application/json", format!("{body}\n"))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT_FORMAT,
            "not found: try /metrics or /health\n",
        ),
    })
}

async fn metrics(shared: &Shared) -> Response<Full<Bytes>> {
    match tokio::time::timeout(STORE_TIMEOUT, scrape::view(&shared.store, &shared.dispatch)).await {
        Ok(Ok(view)) => {
            super::set_queue_gauges(&view);
            reply(StatusCode::OK, TEXT_FORMAT, shared.handle.render())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the queue for /metrics");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT_FORMAT,
                format!("cannot read the queue: {e}\n"),
            )
        }
        Err(_) => {
            tracing::warn!("the store did not answer /metrics within 5s");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT_FORMAT,
                "the store did not answer in time\n",
            )
        }
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
