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
//!   starts with the last N changes. A feed reads only from the log by its cursor, woken by the log's
//!   published watermark (never from a broadcast of changes, which writes of different users publish out
//!   of seq order), so it sends every change once, in seq order. If retention dropped changes the stream
//!   was owed, a `gap` event says how many. A keep-alive comment
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
use tokio::sync::watch;
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
    /// The highest seq below which every change is published; changes when one is.
    fn watermark(&self) -> watch::Receiver<u64>;
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

    fn watermark(&self) -> watch::Receiver<u64> {
        self.segments().log.watermark()
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
    /// The log's watermark: wakes the feed when changes are published.
    watermark: watch::Receiver<u64>,
    /// The next seq owed to the client.
    cursor: u64,
    /// Read from the log, not sent yet.
    backlog: std::collections::VecDeque<SegmentChange>,
}

/// What the feed sends next.
enum Next {
    Change(Box<SegmentChange>),
    Gap { from: u64, to: u64 },
    End,
}

impl Feed {
    fn start(board: Dashboard, resume: Option<u64>, tail: u64) -> Feed {
        let watermark = board.pages.watermark();
        // A cursor past the end is brought back to the first change not yet published.
        let next = board.pages.changes(u64::MAX, 0).next;
        let cursor = match resume {
            Some(last) => last.saturating_add(1),
            None => next.saturating_sub(tail),
        };
        Feed {
            board,
            watermark,
            cursor,
            backlog: Default::default(),
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
            // Marked seen before the read: a change published after it wakes the wait below.
            self.watermark.borrow_and_update();
            let page = self.board.pages.changes(self.cursor, FEED_PAGE);
            if page.oldest > self.cursor {
                let gap = Next::Gap {
                    from: self.cursor,
                    to: page.oldest,
                };
                self.cursor = page.oldest;
                return gap;
            }
            if !page.changes.is_empty() {
                self.backlog.extend(page.changes);
                continue;
            }
            self.cursor = self.cursor.max(page.next);
            tokio::select! {
                changed = self.watermark.changed() => {
                    if changed.is_err() {
                        return Next::End;
                    }
                }
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
    use featurestore::crdt::flag::FlagDot;
    use featurestore::hlc::Actor;
    use featurestore::segment::{ChangeEvent, Transition, Why};
    use featurestore::NodeId;

    use super::*;
    use crate::metrics::Metrics;
    use crate::segments::log::{now_us, ChangeLog, Fence};
    use crate::storage::{MemoryStorage, Storage};

    /// A real change log on memory storage, as the dashboard reads it.
    struct Log(ChangeLog);

    fn change(user: &str) -> ChangeEvent {
        ChangeEvent {
            user: user.into(),
            segment: "s".into(),
            kind: Transition::Entered,
            at_ms: 1,
            event_time_ms: None,
            why: Why::default(),
            dot: FlagDot {
                actor: Actor::new(NodeId::new("n1").expect("valid"), 1),
                counter: 1,
            },
            resolves: Vec::new(),
        }
    }

    impl Log {
        /// A log keeping `keep` changes, with `published` published.
        fn new(keep: usize, published: usize) -> Arc<Log> {
            let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
            let log =
                Log(ChangeLog::open(storage, Arc::new(Metrics::default()), keep).expect("opens"));
            for _ in 0..published {
                log.publish();
            }
            Arc::new(log)
        }

        /// Stages one change (a write in flight).
        fn stage(&self) -> Vec<Arc<SegmentChange>> {
            let fence = Fence {
                owner: NodeId::new("n1").expect("valid"),
                ring_version: 1,
                accepted_us: Some(now_us()),
                deadline_ms: None,
            };
            self.0.stage(&[change("u")], &fence).expect("stages")
        }

        /// Stages and publishes one change.
        fn publish(&self) -> u64 {
            let staged = self.stage();
            self.0.publish(&staged, None);
            staged[0].seq
        }
    }

    impl SegmentPages for Log {
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
            let n1 = NodeId::new("n1").expect("valid");
            self.0.page(&n1, from, limit, None)
        }
        fn watermark(&self) -> watch::Receiver<u64> {
            self.0.watermark()
        }
    }

    fn feed(log: &Arc<Log>, resume: Option<u64>, tail: u64) -> Feed {
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

    async fn nothing_sent(feed: &mut Feed) -> bool {
        tokio::time::timeout(Duration::from_millis(50), feed.next())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_resumed_feed_sends_the_log_after_its_id_then_live_changes_each_once() {
        let log = Log::new(100, 5);
        let mut f = feed(&log, Some(2), 0);
        for expected in 3..=5 {
            assert_eq!(seq_of(&mut f).await, expected);
        }
        let six = log.publish();
        assert_eq!(seq_of(&mut f).await, six);
        let seven = log.publish();
        assert_eq!(seq_of(&mut f).await, seven);
        assert!(nothing_sent(&mut f).await, "each change once");
    }

    #[tokio::test]
    async fn a_tail_starts_with_the_last_changes_and_no_tail_with_new_ones() {
        let log = Log::new(100, 5);
        let mut tailed = feed(&log, None, 2);
        let mut fresh = feed(&log, None, 0);
        assert_eq!(seq_of(&mut tailed).await, 4);
        assert_eq!(seq_of(&mut tailed).await, 5);
        let six = log.publish();
        assert_eq!(seq_of(&mut fresh).await, six);
        assert_eq!(seq_of(&mut tailed).await, six);
    }

    /// Writes of different users finish out of order: a change published before an earlier one still in
    /// flight is held back until that one settles, and the feed then sends both, in order. (A feed that
    /// took changes from a broadcast in publish order sent 2 and then dropped 1 as already passed; one
    /// opened while 1 was in flight started after it.)
    #[tokio::test]
    async fn changes_published_out_of_order_are_sent_in_seq_order_none_skipped() {
        let log = Log::new(100, 0);
        let first = log.stage();
        let mut opened_in_flight = feed(&log, None, 0);
        let second = log.stage();
        let mut f = feed(&log, Some(0), 0);
        log.0.publish(&second, None);
        assert!(nothing_sent(&mut f).await, "2 waits for 1");
        log.0.publish(&first, None);
        assert_eq!(seq_of(&mut f).await, 1);
        assert_eq!(seq_of(&mut f).await, 2);
        assert_eq!(seq_of(&mut opened_in_flight).await, 1);
        assert_eq!(seq_of(&mut opened_in_flight).await, 2);
        // A withdrawn change (its profile was not stored) is never sent and holds nothing back.
        let withdrawn = log.stage();
        let after = log.stage();
        log.0.publish(&after, None);
        log.0.withdraw(&withdrawn);
        assert_eq!(seq_of(&mut f).await, after[0].seq);
        assert!(nothing_sent(&mut f).await);
    }

    #[tokio::test]
    async fn a_feed_behind_retention_reports_the_gap_and_one_behind_by_pages_misses_nothing() {
        let log = Log::new(3, 12);
        let mut f = feed(&log, Some(3), 0);
        match f.next().await {
            Next::Gap { from, to } => assert_eq!((from, to), (4, 10)),
            _ => panic!("no gap reported"),
        }
        assert_eq!(seq_of(&mut f).await, 10);
        assert_eq!(seq_of(&mut f).await, 11);
        assert_eq!(seq_of(&mut f).await, 12);
        // More than a page published while the client is not reading: all sent, in order.
        let log = Log::new(1000, 0);
        let mut f = feed(&log, None, 0);
        for _ in 0..FEED_PAGE + 10 {
            log.publish();
        }
        for expected in 1..=(FEED_PAGE as u64 + 10) {
            assert_eq!(seq_of(&mut f).await, expected);
        }
    }

    #[tokio::test]
    async fn the_feed_ends_at_shutdown() {
        let log = Log::new(10, 1);
        let mut f = feed(&log, None, 0);
        f.board.shutdown.cancel();
        assert!(matches!(f.next().await, Next::End));
    }
}
