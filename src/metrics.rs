//! What an operator scrapes at `GET /metrics`: the server's counters,
//! gauges and histograms in the Prometheus text format (by the
//! `prometheus-client` crate), and who may read them.
//!
//! One [`Metrics`] per running server, never a global: tests run many
//! servers in one process. The parts that count each hold a clone (the hub,
//! the post, the connections, the page server); counting is an atomic add,
//! or a short lock for a histogram once per commit. No metric is labelled
//! by anything a client chooses (user or room names): every label value is
//! one of a fixed few, so a scrape stays small and cheap.
//!
//! A leaf module: it knows nothing of Parlor's other parts, which tell it
//! what happened through the methods below.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of a scrape: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A kind of request that a rate limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// `send`, over `--messages-per-second`.
    Send,
    /// `join` into another room, over `--room-switches-per-minute`.
    Join,
    /// `create_room` or `delete_room`, over `--room-changes-per-10-minutes`.
    RoomChange,
    /// `hello` with a new name, over `--new-users-per-ip-per-hour`.
    NewUser,
    /// Any request, over the request budget (`--requests-per-second`).
    Budget,
    /// `hello` from an address that sent too many wrong join codes.
    JoinCode,
}

impl Limited {
    const ALL: [Limited; 6] = [
        Limited::Send,
        Limited::Join,
        Limited::RoomChange,
        Limited::NewUser,
        Limited::Budget,
        Limited::JoinCode,
    ];

    fn label(self) -> RequestLabel {
        let request = match self {
            Limited::Send => "send",
            Limited::Join => "join",
            Limited::RoomChange => "room_change",
            Limited::NewUser => "new_user",
            Limited::Budget => "budget",
            Limited::JoinCode => "join_code",
        };
        RequestLabel { request }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    request: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// A running server's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    /// Every metric below, for encoding.
    registry: Registry,
    websockets_open: Gauge,
    users_signed_in: Gauge,
    messages_stored: Counter,
    commit_messages: Histogram,
    commit_seconds: Histogram,
    frames_sent: Counter,
    frames_queued: Counter,
    too_slow: Counter,
    rate_limited: Family<RequestLabel, Counter>,
    storage_errors: Counter,
    http_requests: Family<CodeLabel, Counter>,
}

impl Default for Metrics {
    /// Fresh metrics of a server started now.
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Fresh metrics of a server started now.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let build = Info::new(VersionLabel {
            version: env!("CARGO_PKG_VERSION"),
        });
        registry.register("parlor_build", "Parlor's version", build);
        let started: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        started.set(since_epoch.as_secs_f64());
        registry.register_with_unit(
            "process_start_time",
            "When the server started, in seconds since the Unix epoch",
            Unit::Seconds,
            started,
        );

        let websockets_open = Gauge::default();
        registry.register(
            "parlor_websockets_open",
            "WebSocket connections open (handshake done, reader still running), signed in or not",
            websockets_open.clone(),
        );
        let users_signed_in = Gauge::default();
        registry.register(
            "parlor_users_signed_in",
            "Distinct users signed in",
            users_signed_in.clone(),
        );
        let messages_stored = Counter::default();
        registry.register(
            "parlor_messages_stored",
            "Chat messages durably committed (retries of a stored message are not counted again)",
            messages_stored.clone(),
        );
        // A commit holds one batch of sends: at most 1,024.
        let commit_messages = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "parlor_commit_messages",
            "Messages per group commit (one transaction, one fsync)",
            commit_messages.clone(),
        );
        // From 125 µs to 1 s: a commit on a quiet SSD takes about a
        // millisecond, fsync included; a struggling disk takes far longer.
        let commit_seconds = Histogram::new(exponential_buckets(0.000_125, 2.0, 14));
        registry.register_with_unit(
            "parlor_commit_duration",
            "Time to store one group commit, fsync included, failed commits too",
            Unit::Seconds,
            commit_seconds.clone(),
        );
        let frames_sent = Counter::default();
        registry.register(
            "parlor_frames_sent",
            "Frames handed to connections (replies, broadcasts, history), sent at once or queued",
            frames_sent.clone(),
        );
        let frames_queued = Counter::default();
        registry.register(
            "parlor_frames_queued",
            "Frames that waited in a connection's outbox for its writer thread, because the \
             socket was full or the connection uses TLS",
            frames_queued.clone(),
        );
        let too_slow = Counter::default();
        registry.register(
            "parlor_connections_too_slow",
            "Connections closed because their outbox filled up (the client stopped reading)",
            too_slow.clone(),
        );
        let rate_limited = Family::<RequestLabel, Counter>::default();
        registry.register(
            "parlor_rate_limited",
            "Requests refused by a rate limit, by request type",
            rate_limited.clone(),
        );
        // Every series exists from the start, so a rate() over it works
        // before the first refusal.
        for kind in Limited::ALL {
            drop(rate_limited.get_or_create(&kind.label()));
        }
        let storage_errors = Counter::default();
        registry.register(
            "parlor_storage_errors",
            "Failed database reads and writes (a failed group commit counts once)",
            storage_errors.clone(),
        );
        let http_requests = Family::<CodeLabel, Counter>::default();
        registry.register(
            "parlor_http_requests",
            "HTTP requests answered on the page port, by status code",
            http_requests.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            websockets_open,
            users_signed_in,
            messages_stored,
            commit_messages,
            commit_seconds,
            frames_sent,
            frames_queued,
            too_slow,
            rate_limited,
            storage_errors,
            http_requests,
        }))
    }

    /// A WebSocket connection is open until the returned value is dropped.
    pub fn websocket_opened(&self) -> OpenWebSocket {
        self.0.websockets_open.inc();
        OpenWebSocket(self.clone())
    }

    /// How many distinct users are signed in now.
    pub fn set_users_signed_in(&self, users: usize) {
        self.0.users_signed_in.set(gauge_value(users));
    }

    /// A group commit of `messages` took `took`; with `stored` false it
    /// failed and stored nothing.
    pub fn committed(&self, messages: usize, took: Duration, stored: bool) {
        self.0.commit_messages.observe(messages as f64);
        self.0.commit_seconds.observe(took.as_secs_f64());
        if stored {
            self.0.messages_stored.inc_by(messages as u64);
        } else {
            self.storage_error();
        }
    }

    /// A database read or write failed.
    pub fn storage_error(&self) {
        self.0.storage_errors.inc();
    }

    /// `frames` frames went to a connection, `queued` of them through its
    /// outbox's queue.
    pub fn frames_sent(&self, frames: usize, queued: usize) {
        self.0.frames_sent.inc_by(frames as u64);
        self.0.frames_queued.inc_by(queued as u64);
    }

    /// A connection was closed for not reading.
    pub fn too_slow(&self) {
        self.0.too_slow.inc();
    }

    /// A rate limit refused a request.
    pub fn rate_limited(&self, kind: Limited) {
        self.0.rate_limited.get_or_create(&kind.label()).inc();
    }

    /// The page port answered a request with this status.
    pub fn http_response(&self, code: u16) {
        self.0
            .http_requests
            .get_or_create(&CodeLabel { code })
            .inc();
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.0.registry)
            .expect("BUG: writing to a String cannot fail");
        text
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An open WebSocket, counted until dropped.
pub struct OpenWebSocket(Metrics);

impl Drop for OpenWebSocket {
    fn drop(&mut self) {
        self.0.0.websockets_open.dec();
    }
}

/// An address range given as `ADDR/PREFIX` (CIDR) or as one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange(IpNet);

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<IpRange, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(IpRange(net.trunc()));
        }
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(IpRange(IpNet::from(ip.to_canonical()))),
            Err(_) => Err(format!(
                "{s:?} is not an address range; write it as 10.0.0.0/8, 192.0.2.7 or fd00::/8"
            )),
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl IpRange {
    /// Whether `ip` is in the range; an IPv4 address written as IPv6
    /// (`::ffff:192.0.2.7`, as a dual-stack listener sees it) counts as
    /// the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

/// Who may read `/metrics`: clients whose address is in one of these
/// ranges. The metrics tell how busy the server is and when; they are not
/// for everyone who can load the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeAccess(Vec<IpRange>);

impl ScrapeAccess {
    /// Loopback clients only (`127.0.0.0/8` and `::1`): the default.
    pub fn loopback() -> ScrapeAccess {
        let loopback = ["127.0.0.0/8", "::1/128"]
            .map(|s| s.parse().expect("BUG: written as valid CIDR"))
            .to_vec();
        ScrapeAccess(loopback)
    }

    /// Clients in these ranges only (loopback too only if one of them
    /// holds it).
    pub fn ranges(ranges: Vec<IpRange>) -> ScrapeAccess {
        ScrapeAccess(ranges)
    }

    /// Whether a client at `ip` may scrape.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_as_cidr_or_one_address() {
        let lan: IpRange = "10.0.0.0/8".parse().unwrap();
        assert!(lan.contains(ip("10.200.3.4")));
        assert!(!lan.contains(ip("11.0.0.1")));
        // Host bits are ignored: this is 192.168.1.0/24.
        let net: IpRange = " 192.168.1.77/24 ".parse().unwrap();
        assert_eq!(net.to_string(), "192.168.1.0/24");
        assert!(net.contains(ip("192.168.1.1")));
        let one: IpRange = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        let v6: IpRange = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        let v6_host: IpRange = "2001:db8::5".parse().unwrap();
        assert_eq!(v6_host.to_string(), "2001:db8::5/128");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "::1/129",
            "example.org",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "1.2.3.4/8/8",
        ] {
            let error = bad.parse::<IpRange>().unwrap_err();
            assert!(error.contains("not an address range"), "{bad}: {error}");
        }
    }

    #[test]
    fn ipv4_clients_seen_through_a_dual_stack_socket_match_ipv4_ranges() {
        let lan: IpRange = "10.0.0.0/8".parse().unwrap();
        assert!(lan.contains(ip("::ffff:10.1.2.3")));
        let mapped: IpRange = "::ffff:10.1.2.3".parse().unwrap();
        assert!(mapped.contains(ip("10.1.2.3")));
        assert!(ScrapeAccess::loopback().allows(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn only_loopback_by_default_and_only_the_ranges_given_otherwise() {
        let default = ScrapeAccess::loopback();
        assert!(default.allows(ip("127.0.0.1")));
        assert!(default.allows(ip("127.8.9.10")));
        assert!(default.allows(ip("::1")));
        assert!(!default.allows(ip("192.168.1.2")));
        assert!(!default.allows(ip("::2")));
        let given =
            ScrapeAccess::ranges(vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        assert!(given.allows(ip("10.9.9.9")));
        assert!(given.allows(ip("::1")));
        assert!(!given.allows(ip("127.0.0.1")));
        assert!(!ScrapeAccess::ranges(Vec::new()).allows(ip("127.0.0.1")));
    }

    #[test]
    fn the_scrape_names_follow_the_conventions_and_counts_move() {
        let metrics = Metrics::new();
        let open = metrics.websocket_opened();
        metrics.set_users_signed_in(3);
        metrics.committed(4, Duration::from_micros(900), true);
        metrics.committed(2, Duration::from_millis(3), false);
        metrics.frames_sent(5, 2);
        metrics.too_slow();
        metrics.rate_limited(Limited::Send);
        metrics.http_response(200);
        metrics.http_response(200);
        metrics.http_response(403);
        let text = metrics.encode();
        for line in [
            "parlor_build_info{version=\"",
            "# TYPE process_start_time_seconds gauge",
            "parlor_websockets_open 1\n",
            "parlor_users_signed_in 3\n",
            "parlor_messages_stored_total 4\n",
            "parlor_commit_messages_count 2\n",
            "parlor_commit_messages_sum 6.0\n",
            "parlor_commit_duration_seconds_count 2\n",
            "parlor_commit_duration_seconds_bucket{le=\"0.001\"} 1\n",
            "parlor_storage_errors_total 1\n",
            "parlor_frames_sent_total 5\n",
            "parlor_frames_queued_total 2\n",
            "parlor_connections_too_slow_total 1\n",
            "parlor_rate_limited_total{request=\"send\"} 1\n",
            "parlor_rate_limited_total{request=\"join\"} 0\n",
            "parlor_http_requests_total{code=\"200\"} 2\n",
            "parlor_http_requests_total{code=\"403\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        drop(open);
        assert!(metrics.encode().contains("parlor_websockets_open 0\n"));
        // Another server's metrics are its own.
        assert!(
            Metrics::new()
                .encode()
                .contains("parlor_messages_stored_total 0\n")
        );
    }
}
