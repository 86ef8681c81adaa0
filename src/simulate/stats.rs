//! What the simulator has answered, counted per route and per kind of reply.
//!
//! Counters are plain atomics in a fixed table, so a request costs one
//! relaxed increment and no lock, however many connections are served. They
//! are read while the simulator runs (by a test, the demo or a benchmark);
//! the figures are consistent per counter, not across counters.

use super::routes::Route;
use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of answer the simulator gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// 200, `success: true`, the route's success message and an enquiry.
    Sent,
    /// 200, `success: true`, "Campaign is paused, message not sent.", no body.
    Paused,
    /// 200 from `GET /health`.
    Healthy,
    /// 401: the Bearer token is missing or wrong.
    Unauthorized,
    /// 404: no such route.
    NotFound,
    /// 405: a known path with the wrong method.
    WrongMethod,
    /// 413: the body is larger than the simulator reads.
    TooLarge,
    /// 422: a body that is not a JSON object, an unknown field, or a bad
    /// channel or enquiry id.
    Invalid,
    /// 503, injected by `fail_rate` or `fail_first_for`.
    Unavailable,
}

impl Reply {
    pub const ALL: [Reply; 9] = [
        Reply::Sent,
        Reply::Paused,
        Reply::Healthy,
        Reply::Unauthorized,
        Reply::NotFound,
        Reply::WrongMethod,
        Reply::TooLarge,
        Reply::Invalid,
        Reply::Unavailable,
    ];

    /// The HTTP status this reply is sent with.
    pub fn status(self) -> u16 {
        match self {
            Reply::Sent | Reply::Paused | Reply::Healthy => 200,
            Reply::Unauthorized => 401,
            Reply::NotFound => 404,
            Reply::WrongMethod => 405,
            Reply::TooLarge => 413,
            Reply::Invalid => 422,
            Reply::Unavailable => 503,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const ROUTES: usize = Route::ALL.len();
const REPLIES: usize = Reply::ALL.len();

/// Request counters, shared between the simulator and whoever watches it.
#[derive(Debug)]
pub struct SimStats {
    counts: [[AtomicU64; REPLIES]; ROUTES],
}

impl Default for SimStats {
    fn default() -> Self {
        SimStats {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl SimStats {
    pub(super) fn record(&self, route: Route, reply: Reply) {
        self.counts[route.index()][reply.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests to `route` that got `reply`.
    pub fn count(&self, route: Route, reply: Reply) -> u64 {
        self.counts[route.index()][reply.index()].load(Ordering::Relaxed)
    }

    /// Requests to `route`, whatever the answer.
    pub fn route_total(&self, route: Route) -> u64 {
        Reply::ALL.iter().map(|&r| self.count(route, r)).sum()
    }

    /// Requests on any route that got `reply`.
    pub fn reply_total(&self, reply: Reply) -> u64 {
        Route::ALL.iter().map(|&r| self.count(r, reply)).sum()
    }

    /// Every request answered so far.
    pub fn total(&self) -> u64 {
        Route::ALL.iter().map(|&r| self.route_total(r)).sum()
    }

    /// The non-zero counters, route by route.
    pub fn nonzero(&self) -> Vec<(Route, Reply, u64)> {
        Route::ALL
            .iter()
            .flat_map(|&route| Reply::ALL.iter().map(move |&reply| (route, reply)))
            .map(|(route, reply)| (route, reply, self.count(route, reply)))
            .filter(|(_, _, n)| *n > 0)
            .collect()
    }

    /// "12 requests: 10 × 200, 1 × 422, 1 × 503", for people.
    pub fn summary(&self) -> String {
        let mut statuses: Vec<(u16, u64)> = Vec::new();
        for reply in Reply::ALL {
            let n = self.reply_total(reply);
            if n == 0 {
                continue;
            }
            match statuses.iter_mut().find(|(s, _)| *s == reply.status()) {
                Some((_, total)) => *total += n,
                None => statuses.push((reply.status(), n)),
            }
        }
        statuses.sort_unstable();
        let parts: Vec<String> = statuses
            .iter()
            .map(|(status, n)| format!("{n} × {status}"))
            .collect();
        format!("{} requests: {}", self.total(), parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_reply_has_its_own_slot() {
        for (i, route) in Route::ALL.iter().enumerate() {
            assert_eq!(route.index(), i, "{route:?}");
        }
        for (i, reply) in Reply::ALL.iter().enumerate() {
            assert_eq!(reply.index(), i, "{reply:?}");
        }
    }

    #[test]
    fn counts_add_up_by_route_and_by_status() {
        let stats = SimStats::default();
        stats.record(Route::Send, Reply::Sent);
        stats.record(Route::Send, Reply::Sent);
        stats.record(Route::Send, Reply::Paused);
        stats.record(Route::Review, Reply::Unavailable);
        stats.record(Route::Unknown, Reply::NotFound);
        assert_eq!(stats.count(Route::Send, Reply::Sent), 2);
        assert_eq!(stats.route_total(Route::Send), 3);
        assert_eq!(stats.reply_total(Reply::Unavailable), 1);
        assert_eq!(stats.total(), 5);
        assert_eq!(stats.nonzero().len(), 4);
        assert_eq!(stats.summary(), "5 requests: 3 × 200, 1 × 404, 1 × 503");
    }
}
