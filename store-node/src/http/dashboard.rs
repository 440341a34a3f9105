//! The segment dashboard of the HTTP listener, on when `[http] dashboard = true`:
//!
//! | path | answer |
//! |---|---|
//! | `GET /ui` | the page (HTML; its script and style at `/ui/app.js`, `/ui/style.css`) |
//! | `GET /ui/api/segments` | this node's [`SegmentsView`] (definitions, member counts, entries and exits, latency histograms) with `now_ms` and the configured `peers` |
//! | `GET /ui/api/why?user=U&segment=S` | the why-trace of one user and segment, from this node's copy ([`WhyReport`]) |
//! | `GET /ui/events` | the live feed of the transitions this node decides, as server-sent events |
//!
//! Guarantees:
//! - **The feed misses nothing it claims to send**: each SSE event is one published [`SegmentChange`]
//!   (event `change`, `id` = its seq in this node's change log, data = its JSON). A reconnecting
//!   `EventSource` sends `Last-Event-ID` and the stream resumes after it from the persisted log; `?tail=N`
//!   starts with the last N changes; a feed that falls behind the live broadcast re-reads the log. If
//!   retention dropped changes the stream was owed, a `gap` event says how many. A keep-alive comment
//!   every 15 s; the stream ends when the node shuts down.
//! - **Bounded**: a feed holds one page (at most 256 changes) at a time; member counts scan the profiles
//!   off the runtime threads; `user` and `segment` are checked against the limits before any lookup.
//! - **Cluster view without a second protocol**: each node decides and counts only its own users. The page
//!   reads `peers` (`[http] dashboard_peers`, the other nodes' HTTP origins; the dev cluster fills it in)
//!   and fetches the same endpoints from each, summing counts and merging feeds; the JSON and SSE answers
//!   carry `Access-Control-Allow-Origin: *` for that.
//!
//! Caveats: the pages carry user ids and feature values and ask for no key: the dashboard is off by default;
//! turn it on only on a listener that only operators reach (the dev cluster's is on loopback).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use featurestore::wire::segment::{ChangePage, SegmentChange, SegmentsView, WhyReport};
use featurestore::ErrorReply;
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::reply::ApiError;
use super::HttpState;
use crate::cluster::Cluster;

/// Most changes a feed reads from the log at once.
pub const FEED_PAGE: usize = 256;

/// Most changes `?tail=` replays.
pub const MAX_TAIL: u64 = 1000;

/// The interval of the feed's keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the dashboard reads: the cluster in a node ([`crate::cluster::Cluster`]), a fake in unit tests.
pub trait SegmentPages: Send + Sync + 'static {
    /// Definitions, counts and latencies of this node (scans the profiles: call off the runtime threads).
    fn view(&self) -> SegmentsView;
    /// Why `user` is or is not in `segment`, from this node's copy.
    fn why(&self, user: &str, segment: &str) -> Result<WhyReport, ErrorReply>;
    /// Published changes from seq `from`, at most `limit`.
    fn changes(&self, from: u64, limit: usize) -> ChangePage;
    /// The live broadcast of published changes.
    fn feed(&self) -> broadcast::Receiver<Arc<SegmentChange>>;
}

impl SegmentPages for Cluster {
    fn view(&self) -> SegmentsView {
        self.segments_view()
    }

    fn why(&self, user: &str, segment: &str) -> Result<WhyReport, ErrorReply> {
        Cluster::why(self, user, segment)
    }

    fn changes(&self, from: u64, limit: usize) -> ChangePage {
        self.segments().log.page(self.me(), from, limit, None)
    }

    fn feed(&self) -> broadcast::Receiver<Arc<SegmentChange>> {
        self.segments().log.feed()
    }
}

/// What the dashboard routes need besides [`HttpState`]'s limits.
#[derive(Clone)]
pub struct Dashboard {
    /// Where the data comes from.
    pub pages: Arc<dyn SegmentPages>,
    /// The other nodes' HTTP origins (`[http] dashboard_peers`).
    pub peers: Vec<String>,
    /// Ends every feed when the node shuts down.
    pub shutdown: CancellationToken,
}

/// The `/ui` routes (answering 404 until [`HttpState::set_dashboard`] is called).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/style.css", get(style))
        .route("/ui/api/segments", get(segments))
        .route("/ui/api/why", get(why))
        .route("/ui/events", get(events))
}

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

fn dashboard(state: &HttpState) -> Result<Dashboard, ApiError> {
    state.inner.dashboard.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the dashboard is off on this node ([http] dashboard = true turns it on)",
        )
    })
}

fn asset(state: &HttpState, content_type: &'static str, body: &'static str) -> Response {
    if let Err(e) = dashboard(state) {
        return e.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src *; img-src 'self' data:",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn page(State(state): State<HttpState>) -> Response {
    asset(&state, "text/html; charset=utf-8", PAGE)
}

async fn script(State(state): State<HttpState>) -> Response {
    asset(&state, "text/javascript; charset=utf-8", SCRIPT)
}

async fn style(State(state): State<HttpState>) -> Response {
    asset(&state, "text/css; charset=utf-8", STYLE)
}

/// JSON readable from the other nodes' pages.
fn shared(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

async fn segments(State(state): State<HttpState>) -> Response {
    let board = match dashboard(&state) {
        Ok(board) => board,
        Err(e) => return e.into_response(),
    };
    let pages = board.pages.clone();
    match tokio::task::spawn_blocking(move || pages.view()).await {
        Ok(view) => shared(
            axum::Json(serde_json::json!({
                "now_ms": crate::clock::now_ms(),
                "peers": board.peers,
                "view": view,
            }))
            .into_response(),
        ),
        Err(_) => shared(
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "counting the segments failed",
            )
            .into_response(),
        ),
    }
}

/// The value of `name` in a query string (the first one), decoded.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn why(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let answer = (|| {
        let board = dashboard(&state)?;
        let (Some(user), Some(segment)) = (
            param(query.as_deref(), "user"),
            param(query.as_deref(), "segment"),
        ) else {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give ?user=USER&segment=SEGMENT",
            ));
        };
        let limits = &state.inner.limits;
        if user.is_empty() || user.len() > limits.max_key_bytes {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("user must be 1 to {} bytes", limits.max_key_bytes),
            ));
        }
        if segment.is_empty() || segment.len() > limits.max_feature_name_bytes {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "segment must be 1 to {} bytes",
                    limits.max_feature_name_bytes
                ),
            ));
        }
        board
            .pages
            .why(&user, &segment)
            .map_err(|reply| ApiError::new(StatusCode::NOT_FOUND, "not_found", reply.message))
    })();
    shared(match answer {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => e.into_response(),
    })
}

async fn events(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let board = match dashboard(&state) {
        Ok(board) => board,
        Err(e) => return shared(e.into_response()),
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // `?tail=N`: start with the last N changes (at most [`MAX_TAIL`]); without it, only new ones.
    let tail = param(query.as_deref(), "tail")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_TAIL);
    let feed = Feed::start(board, resume, tail);
    shared(
        Sse::new(feed.into_stream())
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response(),
    )
}

/// One SSE client's position: what it was sent last, what is read from the log and not yet sent.
struct Feed {
    board: Dashboard,
    rx: broadcast::Receiver<Arc<SegmentChange>>,
    /// The next seq owed to the client.
    cursor: u64,
    /// Read from the log, not sent yet.
    backlog: std::collections::VecDeque<SegmentChange>,
    /// Reading from the log (at start, after a lag) rather than from the broadcast.
    catching_up: bool,
}

/// What the feed sends next.
enum Next {
    Change(Box<SegmentChange>),
    Gap { from: u64, to: u64 },
    End,
}

impl Feed {
    fn start(board: Dashboard, resume: Option<u64>, tail: u64) -> Feed {
        // Subscribe before reading the log, so nothing published in between is missed (duplicates are
        // skipped by seq).
        let rx = board.pages.feed();
        let next = board.pages.changes(u64::MAX, 0).next;
        let cursor = match resume {
            Some(last) => last.saturating_add(1),
            None => next.saturating_sub(tail),
        };
        Feed {
            board,
            rx,
            cursor,
            backlog: Default::default(),
            catching_up: true,
        }
    }

    async fn next(&mut self) -> Next {
        loop {
            if let Some(change) = self.backlog.pop_front() {
                if change.seq >= self.cursor {
                    self.cursor = change.seq + 1;
                    return Next::Change(Box::new(change));
                }
                continue;
            }
            if self.catching_up {
                let page = self.board.pages.changes(self.cursor, FEED_PAGE);
                if page.oldest > self.cursor {
                    let gap = Next::Gap {
                        from: self.cursor,
                        to: page.oldest,
                    };
                    self.cursor = page.oldest;
                    return gap;
                }
                if page.changes.is_empty() {
                    self.catching_up = false;
                    self.cursor = self.cursor.max(page.next);
                } else {
                    self.backlog.extend(page.changes);
                }
                continue;
            }
            tokio::select! {
                received = self.rx.recv() => match received {
                    Ok(change) => {
                        if change.seq >= self.cursor {
                            self.cursor = change.seq + 1;
                            return Next::Change(Box::new((*change).clone()));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                    Err(broadcast::error::RecvError::Closed) => return Next::End,
                },
                () = self.board.shutdown.cancelled() => return Next::End,
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        stream::unfold(self, |mut feed| async move {
            let event = match feed.next().await {
                Next::End => return None,
                Next::Change(change) => {
                    let id = change.seq.to_string();
                    match Event::default().event("change").id(id).json_data(&*change) {
                        Ok(event) => event,
                        Err(error) => Event::default()
                            .event("error")
                            .data(format!("change {} not encodable: {error}", change.seq)),
                    }
                }
                Next::Gap { from, to } => Event::default()
                    .event("gap")
                    .id(to.saturating_sub(1).to_string())
                    .data(format!(
                        "{{\"from\":{from},\"to\":{to},\"missed\":{}}}",
                        to - from
                    )),
            };
            Some((Ok(event), feed))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use featurestore::crdt::flag::FlagDot;
    use featurestore::hlc::Actor;
    use featurestore::segment::{ChangeEvent, Transition, Why};
    use featurestore::NodeId;

    use super::*;

    /// A change log in memory: retained changes (seqs may start above 1), and the broadcast.
    struct FakeLog {
        retained: Mutex<Vec<SegmentChange>>,
        next: Mutex<u64>,
        live: broadcast::Sender<Arc<SegmentChange>>,
    }

    fn change(seq: u64) -> SegmentChange {
        let n1 = NodeId::new("n1").expect("valid");
        SegmentChange {
            seq,
            owner: n1.clone(),
            ring_version: 1,
            accepted_ms: None,
            deadline_ms: None,
            change: ChangeEvent {
                user: format!("u{seq}"),
                segment: "s".into(),
                kind: Transition::Entered,
                at_ms: seq,
                event_time_ms: None,
                why: Why::default(),
                dot: FlagDot {
                    actor: Actor::new(n1, 1),
                    counter: seq,
                },
                resolves: Vec::new(),
            },
        }
    }

    impl FakeLog {
        fn new(seqs: std::ops::RangeInclusive<u64>) -> Arc<FakeLog> {
            let next = seqs.end() + 1;
            Arc::new(FakeLog {
                retained: Mutex::new(seqs.map(change).collect()),
                next: Mutex::new(next),
                live: broadcast::channel(4).0,
            })
        }

        /// Publishes the next change: retained, then broadcast.
        fn publish(&self) -> u64 {
            let mut next = self.next.lock().expect("lock");
            let c = change(*next);
            *next += 1;
            self.retained.lock().expect("lock").push(c.clone());
            let _ = self.live.send(Arc::new(c.clone()));
            c.seq
        }
    }

    impl SegmentPages for FakeLog {
        fn view(&self) -> SegmentsView {
            SegmentsView::default()
        }
        fn why(&self, _: &str, _: &str) -> Result<WhyReport, ErrorReply> {
            Err(ErrorReply {
                code: featurestore::ErrorCode::InvalidRequest,
                message: "no".into(),
            })
        }
        fn changes(&self, from: u64, limit: usize) -> ChangePage {
            let retained = self.retained.lock().expect("lock");
            let next = *self.next.lock().expect("lock");
            let oldest = retained.first().map_or(next, |c| c.seq);
            let changes: Vec<SegmentChange> = retained
                .iter()
                .filter(|c| c.seq >= from)
                .take(limit)
                .cloned()
                .collect();
            ChangePage {
                node: None,
                next: changes
                    .last()
                    .map_or(from.max(oldest).min(next), |c| c.seq + 1),
                changes,
                oldest,
            }
        }
        fn feed(&self) -> broadcast::Receiver<Arc<SegmentChange>> {
            self.live.subscribe()
        }
    }

    fn feed(log: &Arc<FakeLog>, resume: Option<u64>, tail: u64) -> Feed {
        let board = Dashboard {
            pages: log.clone(),
            peers: Vec::new(),
            shutdown: CancellationToken::new(),
        };
        Feed::start(board, resume, tail)
    }

    async fn seq_of(feed: &mut Feed) -> u64 {
        match tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
            Ok(Next::Change(c)) => c.seq,
            Ok(Next::Gap { from, to }) => panic!("a gap {from}..{to}"),
            Ok(Next::End) => panic!("the feed ended"),
            Err(_) => panic!("nothing sent"),
        }
    }

    #[tokio::test]
    async fn a_resumed_feed_sends_the_log_after_its_id_then_live_changes_each_once() {
        let log = FakeLog::new(1..=5);
        let mut f = feed(&log, Some(2), 0);
        for expected in 3..=5 {
            assert_eq!(seq_of(&mut f).await, expected);
        }
        // Published after the subscription: from the broadcast, once (the log read saw it too).
        let six = log.publish();
        assert_eq!(seq_of(&mut f).await, six);
        let seven = log.publish();
        assert_eq!(seq_of(&mut f).await, seven);
    }

    #[tokio::test]
    async fn a_tail_starts_with_the_last_changes_and_no_tail_with_new_ones() {
        let log = FakeLog::new(1..=5);
        let mut tailed = feed(&log, None, 2);
        let mut fresh = feed(&log, None, 0);
        assert_eq!(seq_of(&mut tailed).await, 4);
        assert_eq!(seq_of(&mut tailed).await, 5);
        let six = log.publish();
        assert_eq!(seq_of(&mut fresh).await, six);
        assert_eq!(seq_of(&mut tailed).await, six);
    }

    #[tokio::test]
    async fn a_feed_behind_retention_reports_the_gap_and_one_that_lags_rereads_the_log() {
        let log = FakeLog::new(10..=12);
        let mut f = feed(&log, Some(3), 0);
        match f.next().await {
            Next::Gap { from, to } => assert_eq!((from, to), (4, 10)),
            _ => panic!("no gap reported"),
        }
        assert_eq!(seq_of(&mut f).await, 10);
        assert_eq!(seq_of(&mut f).await, 11);
        assert_eq!(seq_of(&mut f).await, 12);
        // More than the broadcast holds (4) while the client is not reading: it lags and re-reads the log,
        // so nothing is skipped.
        for _ in 0..10 {
            log.publish();
        }
        for expected in 13..=22 {
            assert_eq!(seq_of(&mut f).await, expected);
        }
    }

    #[tokio::test]
    async fn the_feed_ends_at_shutdown() {
        let log = FakeLog::new(1..=1);
        let mut f = feed(&log, None, 0);
        f.board.shutdown.cancel();
        assert!(matches!(f.next().await, Next::End));
    }
}
