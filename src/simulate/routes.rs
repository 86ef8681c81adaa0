//! Which of the simulator's endpoints a request path names.
//!
//! The six Coax routes are matched against the same templates the daemon
//! fills in ([`Routes`]), so a simulator started with a deployment's custom
//! templates answers where that daemon sends. Matching splits the path on
//! `/` and borrows the placeholder segments; it allocates nothing per
//! request. It does not judge the captured channel or enquiry id: a bad one
//! is a 422 (decided in `answer`), not a 404.

use crate::config::Routes;
use crate::job::Kind;

/// An endpoint of the simulator, as counted in [`super::SimStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Route 1: `PUT /api/v2/message/send/{channel}`.
    Send,
    /// Route 2: `PUT /api/v2/message/{enquiry_id}/send/{channel}`.
    SendOnEnquiry,
    /// Route 3: `PUT /api/v2/message/schedule/{channel}`.
    Schedule,
    /// Route 4: `PUT /api/v2/message/{enquiry_id}/schedule/{channel}`.
    ScheduleOnEnquiry,
    /// Route 5: `PUT /api/v2/message/ask-for-review`.
    Review,
    /// Route 6: `PUT /api/v2/message/{enquiry_id}/ask-for-review`.
    ReviewOnEnquiry,
    /// `GET /health`.
    Health,
    /// Any other path.
    Unknown,
}

impl Route {
    pub const ALL: [Route; 8] = [
        Route::Send,
        Route::SendOnEnquiry,
        Route::Schedule,
        Route::ScheduleOnEnquiry,
        Route::Review,
        Route::ReviewOnEnquiry,
        Route::Health,
        Route::Unknown,
    ];

    /// The six Coax routes, in the order they are tried: routes without an
    /// enquiry id first, so that a literal segment such as `schedule` is never
    /// taken for an enquiry id.
    const API: [Route; 6] = [
        Route::Send,
        Route::Schedule,
        Route::Review,
        Route::SendOnEnquiry,
        Route::ScheduleOnEnquiry,
        Route::ReviewOnEnquiry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Route::Send => "send",
            Route::SendOnEnquiry => "send_on_enquiry",
            Route::Schedule => "schedule",
            Route::ScheduleOnEnquiry => "schedule_on_enquiry",
            Route::Review => "ask_for_review",
            Route::ReviewOnEnquiry => "ask_for_review_on_enquiry",
            Route::Health => "health",
            Route::Unknown => "unknown",
        }
    }

    /// The job kind and enquiry flavour whose body fields this route takes;
    /// `None` for `/health` and unknown paths.
    pub fn api(self) -> Option<(Kind, bool)> {
        match self {
            Route::Send => Some((Kind::Message, false)),
            Route::SendOnEnquiry => Some((Kind::Message, true)),
            Route::Schedule => Some((Kind::CoaxSchedule, false)),
            Route::ScheduleOnEnquiry => Some((Kind::CoaxSchedule, true)),
            Route::Review => Some((Kind::ReviewRequest, false)),
            Route::ReviewOnEnquiry => Some((Kind::ReviewRequest, true)),
            Route::Health | Route::Unknown => None,
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    fn template(self, routes: &Routes) -> &str {
        match self {
            Route::Send => &routes.message,
            Route::SendOnEnquiry => &routes.message_enquiry,
            Route::Schedule => &routes.coax_schedule,
            Route::ScheduleOnEnquiry => &routes.coax_schedule_enquiry,
            Route::Review => &routes.review_request,
            Route::ReviewOnEnquiry => &routes.review_request_enquiry,
            Route::Health | Route::Unknown => "",
        }
    }
}

/// One `/`-separated piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Channel,
    EnquiryId,
}

/// The placeholders a matched path filled in, borrowed from the path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Captures<'a> {
    pub channel: Option<&'a str>,
    pub enquiry_id: Option<&'a str>,
}

/// The six templates, split once at start-up.
#[derive(Debug, Clone)]
pub struct Table {
    routes: Vec<(Route, Vec<Segment>)>,
}

impl Table {
    pub fn new(routes: &Routes) -> Table {
        let routes = Route::API
            .iter()
            .map(|&route| {
                let segments = route
                    .template(routes)
                    .split('/')
                    .map(|s| match s {
                        "{channel}" => Segment::Channel,
                        "{enquiry_id}" => Segment::EnquiryId,
                        literal => Segment::Literal(literal.to_owned()),
                    })
                    .collect();
                (route, segments)
            })
            .collect();
        Table { routes }
    }

    /// The route `path` names, with its placeholders; [`Route::Unknown`]
    /// when none matches. The method is not considered here.
    pub fn find<'p>(&self, path: &'p str) -> (Route, Captures<'p>) {
        if path == "/health" {
            return (Route::Health, Captures::default());
        }
        for (route, segments) in &self.routes {
            if let Some(captures) = fill(segments, path) {
                return (*route, captures);
            }
        }
        (Route::Unknown, Captures::default())
    }
}

fn fill<'p>(segments: &[Segment], path: &'p str) -> Option<Captures<'p>> {
    let mut captures = Captures::default();
    let mut parts = path.split('/');
    for segment in segments {
        let part = parts.next()?;
        match segment {
            Segment::Literal(literal) if literal == part => {}
            Segment::Literal(_) => return None,
            Segment::Channel => captures.channel = Some(part),
            Segment::EnquiryId => captures.enquiry_id = Some(part),
        }
    }
    parts.next().is_none().then_some(captures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(path: &str) -> (Route, Captures<'_>) {
        Table::new(&Routes::default()).find(path)
    }

    #[test]
    fn the_six_routes_and_health_are_found() {
        let c = |channel, enquiry_id| Captures {
            channel,
            enquiry_id,
        };
        assert_eq!(
            find("/api/v2/message/send/sms"),
            (Route::Send, c(Some("sms"), None))
        );
        assert_eq!(
            find("/api/v2/message/42/send/sms"),
            (Route::SendOnEnquiry, c(Some("sms"), Some("42")))
        );
        assert_eq!(
            find("/api/v2/message/schedule/email"),
            (Route::Schedule, c(Some("email"), None))
        );
        assert_eq!(
            find("/api/v2/message/7/schedule/email"),
            (Route::ScheduleOnEnquiry, c(Some("email"), Some("7")))
        );
        assert_eq!(find("/api/v2/message/ask-for-review").0, Route::Review);
        assert_eq!(
            find("/api/v2/message/9/ask-for-review"),
            (Route::ReviewOnEnquiry, c(None, Some("9")))
        );
        assert_eq!(find("/health").0, Route::Health);
    }

    #[test]
    fn literals_win_over_enquiry_ids() {
        assert_eq!(
            find("/api/v2/message/schedule/ask-for-review").0,
            Route::Schedule
        );
    }

    #[test]
    fn other_paths_are_unknown() {
        for path in [
            "/",
            "/api/v2/message/send",
            "/api/v2/message/send/sms/extra",
            "/api/v1/message/send/sms",
            "/healthz",
        ] {
            assert_eq!(find(path).0, Route::Unknown, "{path}");
        }
    }

    #[test]
    fn bad_placeholders_still_match_so_they_can_be_named() {
        assert_eq!(
            find("/api/v2/message/abc/send/sms").1.enquiry_id,
            Some("abc")
        );
        assert_eq!(find("/api/v2/message/send/").1.channel, Some(""));
    }
}
