//! A Coax stand-in on loopback: the six message routes and `GET /health`,
//! answering as ../shared/coax-api.md describes, with faults on demand.
//!
//! It serves the demo, the benchmarks and people trying an integration
//! without a Coax account. This module owns the HTTP server (hyper, HTTP/1.1
//! with keep-alive), the options and the counters; what each request is
//! answered lives in [`answer`] and which route a path names in [`routes`].
//! It does not share state with the daemon: the two meet only over HTTP.
//!
//! [`serve`] runs on a listener until a shutdown future completes, so a test
//! or a benchmark can start it in-process; [`Simulator::start`] does that on
//! its own task and hands back the address and the counters. The hot path
//! takes no lock: counters are atomics, the fault draw is a thread-local
//! random number, and the options are read-only after start.

mod answer;
mod command;
mod routes;
mod stats;

pub use answer::{PAUSED_MESSAGE, REVIEW_MESSAGE, SENT_MESSAGE};
pub use command::{SimArgs, run};
pub use routes::Route;
pub use stats::{Reply, SimStats};

use crate::config::Routes;
use answer::{Answer, Behaviour};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Map, Value};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// The largest request body read; Coax bodies are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long requests in flight may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the simulator behaves. `SimOptions::default()` is a healthy Coax
/// that accepts any Bearer token and answers at once.
#[derive(Clone)]
pub struct SimOptions {
    /// The key to require as `Authorization: Bearer KEY`; with `None`, any
    /// Bearer token is accepted (a missing one is still a 401).
    pub api_key: Option<String>,
    /// Added before every answer.
    pub latency: Duration,
    /// Up to this much more, uniformly at random, added to `latency`.
    pub jitter: Duration,
    /// The fraction in [0, 1] of route requests answered 503.
    pub fail_rate: f64,
    /// A `campaign_id` (compared as text) whose sends answer "Campaign is
    /// paused, message not sent." with no body.
    pub paused_campaign: Option<String>,
    /// Phones, emails or enquiry ids whose first request answers 503; the
    /// next one succeeds. Makes a retry happen exactly once, on purpose.
    pub fail_first_for: Vec<String>,
    /// The route templates to answer on, as in the daemon's config.
    pub routes: Routes,
    /// Called for each route request whose body is a JSON object.
    pub on_arrival: Option<ArrivalHook>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            api_key: None,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            fail_rate: 0.0,
            paused_campaign: None,
            fail_first_for: Vec::new(),
            routes: Routes::default(),
            on_arrival: None,
        }
    }
}

impl SimOptions {
    /// Refuses options that cannot be served.
    pub fn check(&self) -> Result<(), SimError> {
        if (0.0..=1.0).contains(&self.fail_rate) {
            Ok(())
        } else {
            Err(SimError::FailRate(self.fail_rate))
        }
    }
}

impl fmt::Debug for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimOptions")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("latency", &self.latency)
            .field("jitter", &self.jitter)
            .field("fail_rate", &self.fail_rate)
            .field("paused_campaign", &self.paused_campaign)
            .field("fail_first_for", &self.fail_first_for)
            .field("on_arrival", &self.on_arrival.is_some())
            .finish_non_exhaustive()
    }
}

/// A request as it arrived, for a watcher such as a lateness benchmark.
#[derive(Debug)]
pub struct Arrival<'a> {
    /// When the request's head was read, before any injected latency.
    pub received_at: SystemTime,
    pub route: Route,
    pub channel: Option<&'a str>,
    pub enquiry_id: Option<&'a str>,
    pub body: &'a Map<String, Value>,
    /// What the request is being answered.
    pub reply: Reply,
}

/// A callback run on every request's task for each [`Arrival`]. It runs on
/// the hot path: keep it short and free of shared locks.
#[derive(Clone)]
pub struct ArrivalHook(Arc<dyn Fn(&Arrival<'_>) + Send + Sync>);

impl ArrivalHook {
    pub fn new(hook: impl Fn(&Arrival<'_>) + Send + Sync + 'static) -> ArrivalHook {
        ArrivalHook(Arc::new(hook))
    }
}

/// Why the simulator could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot read the listening address: {0}")]
    LocalAddr(std::io::Error),
    #[error("fail rate {0} is not a fraction between 0 and 1")]
    FailRate(f64),
    #[error("the simulator task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What every connection shares.
struct Shared {
    behaviour: Behaviour,
    stats: Arc<SimStats>,
}

/// Serves `listener` until `shutdown` completes, then lets requests in
/// flight finish (up to 5 s) and closes idle keep-alive connections.
pub async fn serve(
    listener: TcpListener,
    options: SimOptions,
    stats: Arc<SimStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimError> {
    let shared = Arc::new(Shared {
        behaviour: Behaviour::new(options)?,
        stats,
    });
    let mut http = http1::Builder::new();
    // The timer lets hyper bound how long a request head may take.
    http.timer(TokioTimer::new()).keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Answers are small and written whole; Nagle would only
                    // hold them back waiting for the client's ACK.
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after 5s; closing their connections");
    }
    connections.shutdown().await;
    Ok(())
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let received_at = SystemTime::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let behaviour = &shared.behaviour;
    let (route, captures) = behaviour.find(path);
    let answer = match behaviour.before_body(route, &parts.method) {
        Some(answer) => answer,
        None => {
            let body = Limited::new(body, MAX_BODY_BYTES).collect().await;
            let bytes = body.ok().map(|b| b.to_bytes());
            let authorization = parts.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
            behaviour.answer_put(
                route,
                captures,
                authorization,
                bytes.as_deref(),
                received_at,
            )
        }
    };
    let delay = behaviour.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    shared.stats.record(route, answer.reply);
    let status = answer.reply.status();
    tracing::info!(
        method = %parts.method,
        path,
        status,
        latency_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        "simulated Coax answered"
    );
    Ok(response(answer))
}

fn response(answer: Answer) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(answer.reply.status()).unwrap_or(StatusCode::OK);
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(allow) = answer.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// A simulator running on its own task.
pub struct Simulator {
    addr: SocketAddr,
    stats: Arc<SimStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), SimError>>,
}

impl Simulator {
    /// Binds `addr` (such as `127.0.0.1:0` for a free port) and starts
    /// serving. Must be called inside a tokio runtime. Dropping the
    /// returned value stops the simulator too, without waiting.
    pub async fn start(
        addr: impl ToSocketAddrs + fmt::Display,
        options: SimOptions,
    ) -> Result<Simulator, SimError> {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        Simulator::spawn(listener, options)
    }

    /// Starts serving an already bound listener.
    pub fn spawn(listener: TcpListener, options: SimOptions) -> Result<Simulator, SimError> {
        let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
        // Checked here so that bad options fail the caller, not the task.
        options.check()?;
        let stats = Arc::new(SimStats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, options, stats.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(Simulator {
            addr,
            stats,
            stop: Some(stop),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the daemon's `coax.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Arc<SimStats> {
        self.stats.clone()
    }

    /// Stops accepting, lets requests in flight finish, and waits.
    pub async fn stop(mut self) -> Result<(), SimError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}
