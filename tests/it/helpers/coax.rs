//! A programmable stand-in for the Coax HTTP API.
//!
//! `CoaxStub` is a hand-written HTTP/1.1 server on a `tokio::net::TcpListener`
//! (no hyper/axum) so tests keep raw control over the connection: they can make
//! it reset, truncate a body, delay the status line, or never answer at all.
//!
//! * Every request other than `GET /health` is a *route request*: it is
//!   recorded (see [`CoaxStub::requests`]) and answered with the first matching
//!   reply pushed with [`CoaxStub::push_for`], else the next one pushed with
//!   [`CoaxStub::push`], else the reply of the chooser set with
//!   [`CoaxStub::set_chooser`] (if any), else the default reply
//!   ([`Reply::sent`] unless changed with [`CoaxStub::set_default`]).
//! * `GET /health` (or `HEAD /health`) is only counted and answered with the
//!   status set by [`CoaxStub::set_health`] (default 200).
//! * Connections are kept alive (reqwest pools them); each connection runs in
//!   its own task, and all of them are dropped by [`CoaxStub::stop`] or on drop.
//!
//! A request is recorded, and its reply chosen, as soon as the whole request
//! (head and body) has arrived, before any reply delay.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request head (request line + headers) accepted; larger gets a 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body accepted; larger gets a 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest single line (chunk size or trailer line) in a chunked body.
const MAX_LINE_BYTES: usize = 8 * 1024;

// ---------------------------------------------------------------------------
// Recorded requests
// ---------------------------------------------------------------------------

/// One request received by the stub (health checks are not recorded).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The request target as sent (origin form: path plus any `?query`).
    pub path: String,
    /// Header names are lower-cased; values are trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it was sent with `Transfer-Encoding: chunked`.
    pub body: Vec<u8>,
    /// When the full request (head and body) had arrived.
    pub received_at: DateTime<Utc>,
}

impl Recorded {
    /// First value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The token of an `Authorization: Bearer TOKEN` header, if any.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }

    /// The request path without any `?query`.
    pub fn path_only(&self) -> &str {
        split_query(&self.path).0
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON. Panics with the offending body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "CoaxStub: body of {} {} is not valid JSON ({e}); body was {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

// ---------------------------------------------------------------------------
// Scripted replies
// ---------------------------------------------------------------------------

/// What the stub does with the connection once a request has arrived (after
/// the reply's delay, if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Write the full response and keep the connection alive.
    Respond,
    /// Write the full response with `Connection: close`, then close.
    RespondAndClose,
    /// Write nothing; drop the connection with `SO_LINGER` 0 so the peer
    /// sees a TCP reset.
    Reset,
    /// Write the head with a `Content-Length` larger than the bytes that
    /// follow (half the body), then close cleanly.
    Truncated,
    /// Write the head and half the body, then go silent, keeping the
    /// connection open until the stub stops.
    StallBody,
    /// Write nothing and keep the connection open until the stub stops.
    Hang,
}

/// A scripted answer. Fields are public so tests can tweak them directly.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// Sent as `Content-Type` unless empty.
    pub content_type: String,
    /// Extra response headers, written after `Content-Type`/`Content-Length`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Time to wait before writing anything (or before resetting).
    pub delay: Duration,
    pub behaviour: Behaviour,
}

impl Reply {
    /// `code` with a JSON body.
    pub fn json(code: u16, value: Value) -> Reply {
        Reply {
            status: code,
            content_type: "application/json".to_owned(),
            headers: Vec::new(),
            body: serde_json::to_vec(&value).expect("serialising a serde_json::Value"),
            delay: Duration::ZERO,
            behaviour: Behaviour::Respond,
        }
    }

    /// 200 `{"success":true,"message":"Message sent successfully","body":{"enquiry":{"id":4242}}}`
    pub fn sent() -> Reply {
        Reply::json(
            200,
            json!({
                "success": true,
                "message": "Message sent successfully",
                "body": {"enquiry": {"id": 4242}}
            }),
        )
    }

    /// 200 `{"success":true,"message":"Sent review request!","body":{"enquiry":{"id":4242}}}`
    pub fn review_sent() -> Reply {
        Reply::json(
            200,
            json!({
                "success": true,
                "message": "Sent review request!",
                "body": {"enquiry": {"id": 4242}}
            }),
        )
    }

    /// 200 `{"success":true,"message":"Campaign is paused, message not sent."}` (no `body`).
    pub fn paused() -> Reply {
        Reply::json(
            200,
            json!({"success": true, "message": "Campaign is paused, message not sent."}),
        )
    }

    /// 200 `{"success":false,"message":message}`.
    pub fn refused(message: &str) -> Reply {
        Reply::json(200, json!({"success": false, "message": message}))
    }

    /// `code` with `{"success":false,"message":"<reason phrase>"}`.
    pub fn status(code: u16) -> Reply {
        Reply::json(code, json!({"success": false, "message": reason(code)}))
    }

    /// `code` with an arbitrary body and content type (e.g. an HTML error page).
    pub fn raw(code: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: code,
            content_type: content_type.to_owned(),
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
            behaviour: Behaviour::Respond,
        }
    }

    /// Adds a response header (e.g. `Retry-After`). `Content-Type` replaces
    /// the reply's content type instead of adding a second one.
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        if name.eq_ignore_ascii_case("content-type") {
            self.content_type = value.to_owned();
        } else {
            self.headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// Waits `d` after the request arrived before writing anything.
    pub fn with_delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    /// Replaces the body, keeping status, content type and headers.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    /// Replaces what is done with the connection.
    pub fn with_behaviour(mut self, behaviour: Behaviour) -> Reply {
        self.behaviour = behaviour;
        self
    }

    /// Answers normally, then closes the connection (`Connection: close`).
    pub fn with_close(self) -> Reply {
        self.with_behaviour(Behaviour::RespondAndClose)
    }

    /// Reads the request, then drops the connection without answering; the
    /// peer sees a TCP reset.
    pub fn reset() -> Reply {
        Reply::sent().with_behaviour(Behaviour::Reset)
    }

    /// 200 whose `Content-Length` is larger than the bytes written (half of
    /// the [`Reply::sent`] body), then a clean close.
    pub fn truncated() -> Reply {
        Reply::sent().with_behaviour(Behaviour::Truncated)
    }

    /// 200 head and half of the [`Reply::sent`] body, then silence with the
    /// connection kept open (for body-read timeouts).
    pub fn stalled_body() -> Reply {
        Reply::sent().with_behaviour(Behaviour::StallBody)
    }

    /// Never answers; the connection stays open until the stub stops.
    pub fn hang() -> Reply {
        Reply::sent().with_behaviour(Behaviour::Hang)
    }
}

/// Standard reason phrase for `code` (`"Unknown Status"` if not known).
pub fn reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        511 => "Network Authentication Required",
        _ => "Unknown Status",
    }
}

fn health_reply(status: u16) -> Reply {
    Reply::json(
        status,
        json!({"success": (200..300).contains(&status), "message": "ok"}),
    )
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

/// Monotonic counters published through a `watch` channel so waiters wake up
/// without polling.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    /// Length of `State::requests`.
    requests: usize,
    health: usize,
    connections: usize,
}

/// Picks the reply to a route request that nothing scripted claimed; see
/// [`CoaxStub::set_chooser`].
pub type Chooser = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct State {
    routed: VecDeque<(String, Reply)>,
    queue: VecDeque<Reply>,
    chooser: Option<Chooser>,
    default: Reply,
    health: Reply,
    requests: Vec<Recorded>,
}

struct Shared {
    state: Mutex<State>,
    counts: watch::Sender<Counts>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a route request and picks its reply, atomically.
    fn record(&self, mut recorded: Recorded) -> Reply {
        let mut state = self.lock();
        // Stamped under the lock so arrival order and timestamps agree.
        recorded.received_at = Utc::now();
        let path = recorded.path.clone();
        state.requests.push(recorded);
        let n = state.requests.len();
        // Published under the state lock so the count never goes backwards.
        self.counts.send_modify(|c| c.requests = n);
        if let Some(i) = state
            .routed
            .iter()
            .position(|(needle, _)| path.contains(needle.as_str()))
        {
            return state.routed.remove(i).expect("index from position").1;
        }
        if let Some(reply) = state.queue.pop_front() {
            return reply;
        }
        match &state.chooser {
            Some(choose) => choose(state.requests.last().expect("just pushed")),
            None => state.default.clone(),
        }
    }

    fn health(&self) -> Reply {
        let state = self.lock();
        self.counts.send_modify(|c| c.health += 1);
        state.health.clone()
    }
}

struct Server {
    task: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

// ---------------------------------------------------------------------------
// The stub
// ---------------------------------------------------------------------------

/// A Coax stand-in listening on `127.0.0.1`. Stops on drop.
pub struct CoaxStub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<Server>>,
}

impl fmt::Debug for CoaxStub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoaxStub")
            .field("addr", &self.addr)
            .field("counts", &*self.shared.counts.borrow())
            .finish_non_exhaustive()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Lets `restart` re-bind the same port while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl CoaxStub {
    /// Starts a stub on `127.0.0.1` with an ephemeral port.
    pub async fn start() -> CoaxStub {
        CoaxStub::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a stub on a given address (e.g. a port a previous stub used).
    pub async fn start_on(addr: SocketAddr) -> CoaxStub {
        let listener =
            bind(addr).unwrap_or_else(|e| panic!("CoaxStub: cannot listen on {addr}: {e}"));
        let addr = listener.local_addr().expect("CoaxStub: local_addr");
        let (counts, _) = watch::channel(Counts::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                routed: VecDeque::new(),
                queue: VecDeque::new(),
                chooser: None,
                default: Reply::sent(),
                health: health_reply(200),
                requests: Vec::new(),
            }),
            counts,
        });
        let server = spawn_server(listener, shared.clone());
        CoaxStub {
            shared,
            addr,
            server: Mutex::new(Some(server)),
        }
    }

    /// `"http://127.0.0.1:PORT"`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base_url()` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Queues a reply for the next route request not claimed by `push_for`.
    pub fn push(&self, reply: Reply) {
        self.shared.lock().queue.push_back(reply);
    }

    /// Queues `reply` for the next request whose target contains
    /// `path_contains`. Checked, oldest first, before the general queue.
    pub fn push_for(&self, path_contains: &str, reply: Reply) {
        self.shared
            .lock()
            .routed
            .push_back((path_contains.to_owned(), reply));
    }

    /// Reply used when nothing scripted applies (initially [`Reply::sent`]).
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().default = reply;
    }

    /// Lets `choose` pick the reply to every route request that no `push_for`
    /// or `push` reply claims, instead of the default reply (e.g. random fault
    /// injection). It is called with the request as recorded (`received_at`
    /// set), under the stub's lock, in arrival order, so it must not call
    /// back into the stub; whatever it logs lines up with [`CoaxStub::requests`].
    pub fn set_chooser(&self, choose: Chooser) {
        self.shared.lock().chooser = Some(choose);
    }

    /// Removes the chooser: the default reply applies again.
    pub fn clear_chooser(&self) {
        self.shared.lock().chooser = None;
    }

    /// `GET /health` answers `status` with `{"success": <2xx>, "message": "ok"}`.
    pub fn set_health(&self, status: u16) {
        self.shared.lock().health = health_reply(status);
    }

    /// Full control over the health answer (e.g. `Reply::hang()`).
    pub fn set_health_reply(&self, reply: Reply) {
        self.shared.lock().health = reply;
    }

    /// Scripted replies (from `push` and `push_for`) not yet consumed.
    pub fn pending_replies(&self) -> usize {
        let state = self.shared.lock();
        state.queue.len() + state.routed.len()
    }

    /// Forgets all scripted replies not yet consumed.
    pub fn clear_replies(&self) {
        let mut state = self.shared.lock();
        state.queue.clear();
        state.routed.clear();
    }

    /// All non-health requests so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Non-health requests whose target contains `path_contains`.
    pub fn requests_to(&self, path_contains: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.path.contains(path_contains))
            .cloned()
            .collect()
    }

    pub fn last_request(&self) -> Option<Recorded> {
        self.shared.lock().requests.last().cloned()
    }

    /// Returns the recorded requests and forgets them (the count used by
    /// `wait_for_requests` restarts from 0).
    pub fn take_requests(&self) -> Vec<Recorded> {
        let mut state = self.shared.lock();
        let taken = std::mem::take(&mut state.requests);
        self.shared.counts.send_modify(|c| c.requests = 0);
        taken
    }

    pub fn health_checks(&self) -> usize {
        self.shared.counts.borrow().health
    }

    /// TCP connections accepted so far (shows whether keep-alive was used).
    pub fn connections(&self) -> usize {
        self.shared.counts.borrow().connections
    }

    /// Waits until at least `n` non-health requests have arrived and returns
    /// all of them. Panics after `timeout`, saying how many arrived.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        if self.wait_counts(timeout, |c| c.requests >= n).await {
            return self.requests();
        }
        let got = self.requests();
        let seen: Vec<String> = got
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        panic!(
            "CoaxStub: timed out after {timeout:?} waiting for {n} request(s); {} arrived: {seen:?}",
            got.len()
        );
    }

    /// Waits until at least `n` health checks have arrived and returns the
    /// count. Panics after `timeout`, saying how many arrived.
    pub async fn wait_for_health_checks(&self, n: usize, timeout: Duration) -> usize {
        if self.wait_counts(timeout, |c| c.health >= n).await {
            return self.health_checks();
        }
        panic!(
            "CoaxStub: timed out after {timeout:?} waiting for {n} health check(s); {} arrived",
            self.health_checks()
        );
    }

    async fn wait_counts(&self, timeout: Duration, done: impl FnMut(&Counts) -> bool) -> bool {
        let mut rx = self.shared.counts.subscribe();
        let wait = async move { rx.wait_for(done).await.is_ok() };
        // The sender lives in `self.shared`, so `wait_for` cannot see it closed.
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Stops accepting and drops every connection (hung ones included).
    /// Takes effect as soon as the runtime next runs the server task; use
    /// [`CoaxStub::shutdown`] to wait for it. Idempotent; also done on drop.
    pub fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(server) = server {
            let _ = server.stop.send(());
        }
    }

    /// Like [`CoaxStub::stop`], but returns once the listener and every
    /// connection are closed.
    pub async fn shutdown(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(server) = server {
            let _ = server.stop.send(());
            let _ = server.task.await;
        }
    }

    /// Shuts down (if running) and listens again on the same port, keeping
    /// recorded requests, scripted replies and counters.
    pub async fn restart(&self) {
        self.shutdown().await;
        let listener = bind(self.addr)
            .unwrap_or_else(|e| panic!("CoaxStub: cannot listen again on {}: {e}", self.addr));
        let server = spawn_server(listener, self.shared.clone());
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
    }
}

impl Drop for CoaxStub {
    fn drop(&mut self) {
        let server = self
            .server
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(server) = server {
            // Aborting drops the accept loop's JoinSet, which aborts every
            // connection task; works even outside a runtime.
            server.task.abort();
        }
    }
}

fn spawn_server(listener: TcpListener, shared: Arc<Shared>) -> Server {
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, shared, stop_rx));
    Server { task, stop }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                // Accept errors (e.g. ECONNABORTED) only concern that connection.
                if let Ok((stream, _peer)) = accepted {
                    shared.counts.send_modify(|c| c.connections += 1);
                    conns.spawn(serve_connection(stream, shared.clone()));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

// ---------------------------------------------------------------------------
// HTTP/1.1 on one connection
// ---------------------------------------------------------------------------

/// Why a connection's request loop ends early.
enum Fail {
    /// The peer went away (or an I/O error): just drop the connection.
    Closed,
    /// Malformed or oversized request: answer with this status and close.
    Bad(u16),
}

impl From<std::io::Error> for Fail {
    fn from(_: std::io::Error) -> Fail {
        Fail::Closed
    }
}

struct RequestHead {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.version == "HTTP/1.0" {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }
}

fn split_query(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

fn parse_head(head: &[u8]) -> Option<RequestHead> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next().filter(|m| !m.is_empty())?.to_owned();
    let target = parts.next().filter(|t| !t.is_empty())?.to_owned();
    let version = parts
        .next()
        .filter(|v| v.starts_with("HTTP/1."))?
        .to_owned();
    if parts.next().is_some() {
        return None;
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Obsolete line folding: continuation of the previous value.
            let (_, value) = headers.last_mut()?;
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let (name, value) = line.split_once(':')?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return None;
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Some(RequestHead {
        method,
        target,
        version,
        headers,
    })
}

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet consumed (pipelined data is kept).
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes into `buf`; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next request head (without the final blank line), or `None` if the
    /// peer closed the connection between requests.
    async fn read_head(&mut self) -> Result<Option<Vec<u8>>, Fail> {
        let mut scanned = 0;
        loop {
            // Tolerate stray CRLFs between requests (RFC 9112 §2.2).
            let lead = self
                .buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            if lead > 0 {
                self.buf.drain(..lead);
                scanned = 0;
            }
            if let Some(pos) = find(&self.buf[scanned..], b"\r\n\r\n") {
                let end = scanned + pos;
                if end > MAX_HEAD_BYTES {
                    return Err(Fail::Bad(431));
                }
                let head = self.buf[..end].to_vec();
                self.buf.drain(..end + 4);
                return Ok(Some(head));
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(Fail::Bad(431));
            }
            scanned = self.buf.len().saturating_sub(3);
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Fail::Closed)
                };
            }
        }
    }

    async fn take_exact(&mut self, n: usize) -> Result<Vec<u8>, Fail> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(Fail::Closed);
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn take_line(&mut self) -> Result<Vec<u8>, Fail> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = find(&self.buf[scanned..], b"\r\n") {
                let end = scanned + pos;
                let line = self.buf[..end].to_vec();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(Fail::Bad(400));
            }
            scanned = self.buf.len().saturating_sub(1);
            if self.fill().await? == 0 {
                return Err(Fail::Closed);
            }
        }
    }

    async fn take_chunked(&mut self) -> Result<Vec<u8>, Fail> {
        let mut body = Vec::new();
        loop {
            let line = self.take_line().await?;
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| Fail::Bad(400))?;
            if size == 0 {
                // Trailer section: skip fields up to the blank line.
                while !self.take_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(Fail::Bad(413));
            }
            let data = self.take_exact(size).await?;
            body.extend_from_slice(&data);
            if self.take_exact(2).await? != b"\r\n" {
                return Err(Fail::Bad(400));
            }
        }
    }

    async fn read_body(&mut self, head: &RequestHead) -> Result<Vec<u8>, Fail> {
        if let Some(te) = head.header("transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(Fail::Bad(400));
            }
            return self.take_chunked().await;
        }
        let mut length: Option<usize> = None;
        for (_, value) in head.headers.iter().filter(|(n, _)| n == "content-length") {
            for part in value.split(',') {
                let n: usize = part.trim().parse().map_err(|_| Fail::Bad(400))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Fail::Bad(400));
                }
                length = Some(n);
            }
        }
        match length {
            None | Some(0) => Ok(Vec::new()),
            Some(n) if n > MAX_BODY_BYTES => Err(Fail::Bad(413)),
            Some(n) => self.take_exact(n).await,
        }
    }

    /// Writes `reply`; returns whether the connection may serve another request.
    async fn respond(&mut self, reply: &Reply, head_only: bool, keep_alive: bool) -> bool {
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        match reply.behaviour {
            Behaviour::Hang => std::future::pending::<()>().await,
            Behaviour::Reset => {
                // Nothing unread is left, so this close is a plain RST.
                let _ = self.stream.set_zero_linger();
                return false;
            }
            _ => {}
        }
        let user_connection = reply
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.to_ascii_lowercase());
        let close = !keep_alive
            || !matches!(reply.behaviour, Behaviour::Respond | Behaviour::StallBody)
            || user_connection.as_deref() == Some("close");

        let no_body = reply.status < 200 || reply.status == 204 || reply.status == 304;
        let partial = matches!(reply.behaviour, Behaviour::Truncated | Behaviour::StallBody);
        let declared = if partial {
            reply.body.len().max(1)
        } else {
            reply.body.len()
        };
        let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        if !no_body {
            if !reply.content_type.is_empty() {
                head.push_str(&format!("Content-Type: {}\r\n", reply.content_type));
            }
            head.push_str(&format!("Content-Length: {declared}\r\n"));
        }
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if close && user_connection.is_none() {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");

        let mut out = head.into_bytes();
        if !no_body && !head_only {
            let body = if partial {
                &reply.body[..reply.body.len() / 2]
            } else {
                &reply.body[..]
            };
            out.extend_from_slice(body);
        }
        if self.stream.write_all(&out).await.is_err() || self.stream.flush().await.is_err() {
            return false;
        }
        if reply.behaviour == Behaviour::StallBody {
            std::future::pending::<()>().await;
        }
        if close {
            let _ = self.stream.shutdown().await;
            return false;
        }
        true
    }

    /// Answers a malformed request with a bare status, then closes.
    async fn reject(&mut self, code: u16) {
        let reply = Reply::status(code).with_close();
        self.respond(&reply, false, false).await;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    loop {
        let head = match conn.read_head().await {
            Ok(Some(head)) => head,
            Ok(None) | Err(Fail::Closed) => return,
            Err(Fail::Bad(code)) => return conn.reject(code).await,
        };
        let Some(head) = parse_head(&head) else {
            return conn.reject(400).await;
        };
        let wants_continue = head.version == "HTTP/1.1" && head.has_token("expect", "100-continue");
        if wants_continue
            && conn
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let body = match conn.read_body(&head).await {
            Ok(body) => body,
            Err(Fail::Closed) => return,
            Err(Fail::Bad(code)) => return conn.reject(code).await,
        };
        let received_at = Utc::now();

        let is_head = head.method == "HEAD";
        let is_health =
            (head.method == "GET" || is_head) && split_query(&head.target).0 == "/health";
        let keep_alive = head.keep_alive();
        let reply = if is_health {
            shared.health()
        } else {
            shared.record(Recorded {
                method: head.method,
                path: head.target,
                headers: head.headers,
                body,
                received_at,
            })
        };
        if !conn.respond(&reply, is_head, keep_alive).await {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Self-tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const SMS: &str = "/api/v2/message/send/sms";
    const REVIEW: &str = "/api/v2/message/123/ask-for-review";

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client")
    }

    async fn put(client: &reqwest::Client, stub: &CoaxStub, path: &str) -> reqwest::Response {
        client
            .put(stub.url(path))
            .header("Authorization", "Bearer KEY")
            .header("Content-Type", "application/json")
            .body(r#"{"to":"+15550100","text":"hi"}"#)
            .send()
            .await
            .expect("request should succeed")
    }

    /// Bounds raw-socket steps so a server bug fails the test instead of hanging it.
    async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("raw socket step took more than 10s")
    }

    async fn body_json(resp: reqwest::Response) -> Value {
        let bytes = resp.bytes().await.expect("body");
        serde_json::from_slice(&bytes).expect("json body")
    }

    #[tokio::test]
    async fn sent_round_trip_records_request() {
        let stub = CoaxStub::start().await;
        let c = client();
        let resp = put(&c, &stub, SMS).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        let v = body_json(resp).await;
        assert_eq!(v["success"], true);
        assert_eq!(v["message"], "Message sent successfully");
        assert_eq!(v["body"]["enquiry"]["id"], 4242);

        let reqs = stub.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, SMS);
        assert_eq!(r.header("Authorization"), Some("Bearer KEY"));
        assert_eq!(r.header("authorization"), Some("Bearer KEY"));
        assert_eq!(r.bearer(), Some("KEY"));
        assert_eq!(r.header("x-missing"), None);
        assert!(r.headers.iter().all(|(n, _)| *n == n.to_ascii_lowercase()));
        assert_eq!(r.json(), json!({"to": "+15550100", "text": "hi"}));
        assert!(r.received_at <= Utc::now());
    }

    #[tokio::test]
    async fn keep_alive_serves_many_requests_on_one_connection() {
        let stub = CoaxStub::start().await;
        let c = client();
        for _ in 0..5 {
            let resp = put(&c, &stub, SMS).await;
            assert_eq!(body_json(resp).await["success"], true);
        }
        assert_eq!(stub.requests().len(), 5);
        assert_eq!(stub.connections(), 1);
    }

    #[tokio::test]
    async fn push_for_is_checked_before_the_general_queue() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::refused("Contact has opted out"));
        stub.push_for("ask-for-review", Reply::review_sent());
        stub.push_for("send/sms", Reply::paused());
        let c = client();

        let v = body_json(put(&c, &stub, REVIEW).await).await;
        assert_eq!(v["message"], "Sent review request!");
        let v = body_json(put(&c, &stub, SMS).await).await;
        assert_eq!(v["message"], "Campaign is paused, message not sent.");
        assert!(v.get("body").is_none());
        let v = body_json(put(&c, &stub, SMS).await).await;
        assert_eq!(
            v,
            json!({"success": false, "message": "Contact has opted out"})
        );
        let v = body_json(put(&c, &stub, SMS).await).await;
        assert_eq!(v["message"], "Message sent successfully");
        assert_eq!(stub.pending_replies(), 0);

        stub.set_default(Reply::status(503));
        let resp = put(&c, &stub, REVIEW).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(body_json(resp).await["message"], "Service Unavailable");
        assert_eq!(stub.requests_to("ask-for-review").len(), 2);
    }

    #[tokio::test]
    async fn chooser_picks_replies_after_scripts_and_before_the_default() {
        let stub = CoaxStub::start().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        stub.set_chooser(Arc::new(move |r: &Recorded| {
            log.lock().unwrap().push(r.path.clone());
            if r.path.contains("ask-for-review") {
                Reply::status(503)
            } else {
                Reply::refused("chosen")
            }
        }));
        stub.push(Reply::paused());
        let c = client();

        let v = body_json(put(&c, &stub, SMS).await).await;
        assert_eq!(v["message"], "Campaign is paused, message not sent.");
        assert!(seen.lock().unwrap().is_empty(), "a pushed reply wins");
        let v = body_json(put(&c, &stub, SMS).await).await;
        assert_eq!(v["message"], "chosen");
        assert_eq!(put(&c, &stub, REVIEW).await.status(), 503);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![SMS.to_owned(), REVIEW.to_owned()]
        );
        assert_eq!(stub.requests().len(), 3);

        stub.clear_chooser();
        let v = body_json(put(&c, &stub, REVIEW).await).await;
        assert_eq!(v["message"], "Message sent successfully");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn retry_after_header_is_sent() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::status(429).with_header("Retry-After", "7"));
        let resp = put(&client(), &stub, SMS).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"].to_str().unwrap(), "7");
        assert_eq!(
            body_json(resp).await,
            json!({"success": false, "message": "Too Many Requests"})
        );
    }

    #[tokio::test]
    async fn raw_html_body() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::raw(502, "text/html", "<html>Bad Gateway</html>"));
        let resp = put(&client(), &stub, SMS).await;
        assert_eq!(resp.status(), 502);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/html"
        );
        assert_eq!(resp.text().await.unwrap(), "<html>Bad Gateway</html>");
    }

    #[tokio::test]
    async fn reset_gives_a_client_error() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::reset());
        let c = client();
        let err = c
            .put(stub.url(SMS))
            .body("{}")
            .send()
            .await
            .expect_err("reset must fail the request");
        assert!(!err.is_timeout(), "{err:?}");
        assert_eq!(stub.requests().len(), 1, "the request is still recorded");
        // The next request uses a fresh connection and the default reply.
        let resp = put(&c, &stub, SMS).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(stub.connections(), 2);
    }

    #[tokio::test]
    async fn truncated_body_fails_on_read() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::truncated());
        let resp = put(&client(), &stub, SMS).await;
        assert_eq!(resp.status(), 200);
        let err = resp.bytes().await.expect_err("truncated body must fail");
        assert!(err.is_body() || err.is_decode(), "{err:?}");
    }

    #[tokio::test]
    async fn delay_triggers_client_timeout() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::sent().with_delay(Duration::from_secs(5)));
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = c
            .put(stub.url(SMS))
            .body("{}")
            .send()
            .await
            .expect_err("must time out");
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(stub.requests().len(), 1);
    }

    #[tokio::test]
    async fn stalled_body_triggers_client_timeout() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::stalled_body());
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let resp = c.put(stub.url(SMS)).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let err = resp.bytes().await.expect_err("must time out");
        assert!(err.is_timeout(), "{err:?}");
    }

    #[tokio::test]
    async fn hang_is_released_by_stop() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::hang());
        let url = stub.url(SMS);
        let pending = tokio::spawn(async move { client().put(url).body("{}").send().await });
        stub.wait_for_requests(1, Duration::from_secs(5)).await;
        stub.stop();
        let res = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("stop must release the hung request")
            .unwrap();
        assert!(res.is_err(), "{res:?}");
        // The listener was closed before the connections were dropped.
        assert!(client().get(stub.url("/health")).send().await.is_err());
        stub.stop(); // idempotent
        stub.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_waits_for_connections_to_close() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::hang());
        let mut s = TcpStream::connect(stub.addr()).await.unwrap();
        within(s.write_all(b"PUT /x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"))
            .await
            .unwrap();
        stub.wait_for_requests(1, Duration::from_secs(5)).await;
        stub.shutdown().await;
        let mut out = Vec::new();
        // Closed by the stub: EOF (or a reset), with nothing written.
        let _ = within(s.read_to_end(&mut out)).await;
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn restart_reuses_the_port() {
        let stub = CoaxStub::start().await;
        let c = client();
        put(&c, &stub, SMS).await;
        stub.restart().await;
        let resp = c.put(stub.url(SMS)).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(stub.requests().len(), 2);
    }

    #[tokio::test]
    async fn health_is_counted_not_recorded() {
        let stub = CoaxStub::start().await;
        stub.push(Reply::status(500));
        let c = client();
        let resp = c.get(stub.url("/health")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            body_json(resp).await,
            json!({"success": true, "message": "ok"})
        );
        stub.set_health(503);
        let resp = c.get(stub.url("/health")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(body_json(resp).await["success"], false);
        assert_eq!(
            stub.wait_for_health_checks(2, Duration::from_secs(1)).await,
            2
        );
        assert_eq!(stub.health_checks(), 2);
        assert!(stub.requests().is_empty());
        assert_eq!(stub.pending_replies(), 1, "health does not consume scripts");
    }

    #[tokio::test]
    async fn chunked_request_body_is_decoded() {
        let stub = CoaxStub::start().await;
        let mut s = TcpStream::connect(stub.addr()).await.unwrap();
        let req = "PUT /api/v2/message/send/sms HTTP/1.1\r\nHost: x\r\n\
                   Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                   4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\n";
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        within(s.read_to_end(&mut out)).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Connection: close\r\n"), "{out}");
        assert_eq!(stub.requests()[0].json(), json!({"a": 1}));
    }

    #[tokio::test]
    async fn oversized_head_is_rejected() {
        let stub = CoaxStub::start().await;
        let mut s = TcpStream::connect(stub.addr()).await.unwrap();
        let big = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES + 10)
        );
        // The server may close before reading everything; ignore write errors.
        let _ = within(s.write_all(big.as_bytes())).await;
        let mut out = Vec::new();
        let _ = within(s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(stub.requests().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wait_for_requests_across_concurrent_requests() {
        let stub = Arc::new(CoaxStub::start().await);
        let waiter = {
            let stub = stub.clone();
            tokio::spawn(async move { stub.wait_for_requests(6, Duration::from_secs(5)).await })
        };
        let c = client();
        let mut senders = JoinSet::new();
        for i in 0..6 {
            let c = c.clone();
            let url = stub.url(&format!("/api/v2/message/{i}/ask-for-review"));
            senders.spawn(async move { c.put(url).body("{}").send().await.unwrap().status() });
        }
        while let Some(status) = senders.join_next().await {
            assert_eq!(status.unwrap(), 200);
        }
        let got = waiter.await.unwrap();
        assert_eq!(got.len(), 6);
        assert!(got.windows(2).all(|w| w[0].received_at <= w[1].received_at));
        // Already satisfied: returns at once.
        assert_eq!(stub.wait_for_requests(3, Duration::ZERO).await.len(), 6);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for 2 request(s); 1 arrived")]
    async fn wait_for_requests_panics_with_count() {
        let stub = CoaxStub::start().await;
        put(&client(), &stub, SMS).await;
        stub.wait_for_requests(2, Duration::from_millis(50)).await;
    }
}
