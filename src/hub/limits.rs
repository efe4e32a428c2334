//! Rate limits and budgets: what one user (or one connection before it
//! signs in, or one address creating names) may ask of the server, so one
//! script cannot cost everyone. Sliding windows for sends, room switches,
//! room creations and deletions and new usernames; a token bucket that
//! prices every request. Kept by username, not by connection, so
//! reconnecting does not reset them.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::metrics::{Limited, Metrics};
use crate::protocol::{CheckedFrame, NameKey};

use super::FastMap;

/// Addresses whose new usernames are remembered at once; past this the
/// table is emptied (it only ever forgets, never refuses, so a flood of
/// addresses costs at most this much memory).
const MAX_TRACKED_ADDRESSES: usize = 4096;

/// The limits, as configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most messages one user may send in any one-second window.
    pub messages_per_second: u32,
    /// Most joins into another room one user may make in any 60 s window.
    pub room_switches_per_minute: u32,
    /// Request units one user (or connection before it signs in) earns per
    /// second; see [`cost`].
    pub requests_per_second: u32,
    /// Request units that may be spent at once after a quiet while.
    pub request_burst: u32,
    /// Rooms one user may create or delete in any 10-minute window.
    pub room_changes_per_10_minutes: u32,
    /// Usernames never seen before that one IP address may sign in with in
    /// any hour (each is a permanent row in the database).
    pub new_users_per_ip_per_hour: u32,
}

/// What a request costs from the request budget, in units: a page of
/// history costs by its size (2 units per 50 messages), everything else a
/// little, a room creation or deletion more. Sends have their own limit
/// and cost nothing here.
pub(super) fn cost(frame: &CheckedFrame) -> u32 {
    let page = |limit: &Result<u32, String>| limit.as_ref().map_or(1, |l| l / 25);
    match frame {
        CheckedFrame::Send { .. } => 0,
        CheckedFrame::Ping | CheckedFrame::Leave | CheckedFrame::SignOut => 1,
        // Counting unread messages reads an index.
        CheckedFrame::Read { .. } => 1,
        // Dropped, not refused, when over budget (it has no reply).
        CheckedFrame::Typing => 1,
        CheckedFrame::Hello { .. } => 2,
        CheckedFrame::Join { limit, .. } | CheckedFrame::History { limit, .. } => 1 + page(limit),
        CheckedFrame::CreateRoom { .. } | CheckedFrame::DeleteRoom { .. } => 5,
        // Edits and deletes also spend the message budget.
        CheckedFrame::Edit { .. } | CheckedFrame::DeleteMessage { .. } => 1,
        CheckedFrame::Search { limit, .. } => 1 + limit.as_ref().map_or(1, |l| l / 10),
    }
}

/// Most often one user's `typing` is relayed.
pub(super) const TYPING_EVERY: Duration = Duration::from_secs(2);

/// Bytes of replies that cost one more request unit: an 8 MB page of the
/// largest messages costs 512 units more (25 s of the default budget), a
/// page of 50 ordinary messages nothing more.
pub(super) const REPLY_BYTES_PER_UNIT: usize = 16 * 1024;

/// A token bucket of request units.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    units: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(settings: &Settings, now: Instant) -> Bucket {
        Bucket {
            units: f64::from(settings.request_burst),
            at: now,
        }
    }

    /// Spends `cost` units however many there are: the bucket may go below
    /// zero, and then refills from there.
    pub fn owe(&mut self, settings: &Settings, cost: u32, now: Instant) {
        self.refill(settings, now);
        self.units -= f64::from(cost);
    }

    fn refill(&mut self, settings: &Settings, now: Instant) {
        let rate = f64::from(settings.requests_per_second.max(1));
        let burst = f64::from(settings.request_burst);
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.units = (self.units + earned).min(burst);
        self.at = now;
    }

    /// Spends `cost` units, or says how long until they are there (nothing
    /// is spent then).
    pub fn spend(&mut self, settings: &Settings, cost: u32, now: Instant) -> Result<(), Duration> {
        self.refill(settings, now);
        let rate = f64::from(settings.requests_per_second.max(1));
        let cost = f64::from(cost);
        if self.units >= cost {
            self.units -= cost;
            return Ok(());
        }
        Err(Duration::from_secs_f64((cost - self.units) / rate))
    }
}

/// A refused attempt: the sentence for the client and how long to wait.
pub(super) struct Refusal {
    pub message: String,
    pub wait: Duration,
}

/// Sliding-window rate limits and the request budget of one user.
struct Rate {
    sends: VecDeque<Instant>,
    switches: VecDeque<Instant>,
    room_changes: VecDeque<Instant>,
    requests: Bucket,
    /// When a `typing` of theirs was last relayed.
    typing: Option<Instant>,
}

/// Every user's rate limits.
pub(super) struct Limits {
    pub settings: Settings,
    /// By user. Grows with the users seen since start-up (at most one entry
    /// each; the store keeps them all anyway, and new names are limited per
    /// address).
    rates: FastMap<NameKey, Rate>,
    /// New usernames signed in with, by address.
    new_users: FastMap<IpAddr, VecDeque<Instant>>,
    /// Wrong join codes sent, by address.
    wrong_codes: FastMap<IpAddr, VecDeque<Instant>>,
    /// Counts refusals by request type.
    metrics: Metrics,
}

impl Limits {
    pub fn new(settings: Settings, metrics: Metrics) -> Limits {
        Limits {
            settings,
            rates: FastMap::default(),
            new_users: FastMap::default(),
            wrong_codes: FastMap::default(),
            metrics,
        }
    }

    fn rate(&mut self, user: &NameKey, now: Instant) -> &mut Rate {
        // Looked up first, as every request and send comes here and the
        // entry API would copy the key each time; the second lookup of a
        // user seen before is cheaper than that copy and its free.
        if self.rates.contains_key(user) {
            return self.rates.get_mut(user).expect("BUG: just found");
        }
        let settings = &self.settings;
        self.rates.entry(user.clone()).or_insert_with(|| Rate {
            sends: VecDeque::new(),
            switches: VecDeque::new(),
            room_changes: VecDeque::new(),
            requests: Bucket::full(settings, now),
            typing: None,
        })
    }

    /// Whether a `typing` from `user` is relayed: at most one every
    /// [`TYPING_EVERY`]; the others are dropped.
    pub fn typing(&mut self, user: &NameKey, now: Instant) -> bool {
        let rate = self.rate(user, now);
        if rate
            .typing
            .is_some_and(|at| now.duration_since(at) < TYPING_EVERY)
        {
            return false;
        }
        rate.typing = Some(now);
        true
    }

    /// Spends `cost` request units of `user`'s budget, or refuses.
    pub fn request(&mut self, user: &NameKey, cost: u32, now: Instant) -> Result<(), Refusal> {
        let settings = self.settings.clone();
        self.rate(user, now)
            .requests
            .spend(&settings, cost, now)
            .map_err(over_budget)
            .inspect_err(|_| self.metrics.rate_limited(Limited::Budget))
    }

    /// Charges `user`'s request budget `units` after the fact (see
    /// [`Bucket::owe`]).
    pub fn owe(&mut self, user: &NameKey, units: u32, now: Instant) {
        let settings = self.settings.clone();
        self.rate(user, now).requests.owe(&settings, units, now);
    }

    /// Records a send by `user` now, or refuses it.
    pub fn send(&mut self, user: &NameKey, now: Instant) -> Result<(), Refusal> {
        let limit = self.settings.messages_per_second;
        let rate = self.rate(user, now);
        match over_limit(&mut rate.sends, now, Duration::from_secs(1), limit) {
            None => Ok(()),
            Some(wait) => Err(Refusal {
                message: format!(
                    "You are sending too fast (at most {limit} messages a second). Wait a moment."
                ),
                wait,
            }),
        }
        .inspect_err(|_| self.metrics.rate_limited(Limited::Send))
    }

    /// Takes back a send recorded at `at` that turned out to be a retry of
    /// a stored message (retries are never counted).
    pub fn refund_send(&mut self, user: &NameKey, at: Instant) {
        if let Some(rate) = self.rates.get_mut(user)
            && let Some(i) = rate.sends.iter().rposition(|t| *t == at)
        {
            rate.sends.remove(i);
        }
    }

    /// Records a join by `user` into a room they are not in, or refuses it.
    pub fn switch(&mut self, user: &NameKey, now: Instant) -> Result<(), Refusal> {
        let limit = self.settings.room_switches_per_minute;
        let rate = self.rate(user, now);
        match over_limit(&mut rate.switches, now, Duration::from_secs(60), limit) {
            None => Ok(()),
            Some(wait) => Err(Refusal {
                message: format!(
                    "You can switch rooms at most {limit} times a minute. Try again in {} s.",
                    wait.as_secs() + 1
                ),
                wait,
            }),
        }
        .inspect_err(|_| self.metrics.rate_limited(Limited::Join))
    }

    /// Records a room creation or deletion by `user`, or refuses it.
    pub fn room_change(&mut self, user: &NameKey, now: Instant) -> Result<(), Refusal> {
        let limit = self.settings.room_changes_per_10_minutes;
        let rate = self.rate(user, now);
        match over_limit(&mut rate.room_changes, now, Duration::from_secs(600), limit) {
            None => Ok(()),
            Some(wait) => Err(Refusal {
                message: format!(
                    "You can create or delete at most {limit} rooms in 10 minutes. \
                     Try again in {} min.",
                    wait.as_secs() / 60 + 1
                ),
                wait,
            }),
        }
        .inspect_err(|_| self.metrics.rate_limited(Limited::RoomChange))
    }

    /// Records a sign-in from `ip` with a username never seen before, or
    /// refuses it.
    pub fn new_user(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let limit = self.settings.new_users_per_ip_per_hour;
        let window = address_window(&mut self.new_users, ip, now);
        match over_limit(window, now, Duration::from_secs(3600), limit) {
            None => Ok(()),
            Some(wait) => Err(Refusal {
                message: format!(
                    "Too many new names were used from your address (at most {limit} an hour). \
                     Sign in with a name you used before, or try again in {} min.",
                    wait.as_secs() / 60 + 1
                ),
                wait,
            }),
        }
        .inspect_err(|_| self.metrics.rate_limited(Limited::NewUser))
    }

    /// Whether `ip` may try a join code now: refused once it has sent
    /// [`WRONG_CODES_PER_HOUR`] wrong ones in the last hour, so guessing a
    /// code takes years, not minutes.
    pub fn may_try_join_code(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let window = address_window(&mut self.wrong_codes, ip, now);
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
        {
            window.pop_front();
        }
        if window.len() < WRONG_CODES_PER_HOUR {
            return Ok(());
        }
        let wait = window.front().map_or(Duration::ZERO, |oldest| {
            Duration::from_secs(3600).saturating_sub(now.duration_since(*oldest))
        });
        self.metrics.rate_limited(Limited::JoinCode);
        Err(Refusal {
            message: format!(
                "Too many wrong join codes came from your address. Try again in {} min.",
                wait.as_secs() / 60 + 1
            ),
            wait,
        })
    }

    /// Records a wrong join code from `ip`.
    pub fn wrong_join_code(&mut self, ip: IpAddr, now: Instant) {
        address_window(&mut self.wrong_codes, ip, now).push_back(now);
    }
}

/// Wrong join codes one address may send in any hour.
pub(super) const WRONG_CODES_PER_HOUR: usize = 20;

/// The window of `ip` in a table of windows by address, making room when
/// the table is full: windows that have run out go first, and if that is
/// not enough, all of them (the table only ever forgets, so a flood of
/// addresses costs at most [`MAX_TRACKED_ADDRESSES`] windows).
fn address_window(
    table: &mut FastMap<IpAddr, VecDeque<Instant>>,
    ip: IpAddr,
    now: Instant,
) -> &mut VecDeque<Instant> {
    if table.len() >= MAX_TRACKED_ADDRESSES && !table.contains_key(&ip) {
        table.retain(|_, window| {
            window
                .back()
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(3600))
        });
        if table.len() >= MAX_TRACKED_ADDRESSES {
            table.clear();
        }
    }
    table.entry(ip).or_default()
}

/// The refusal of a request over its budget.
pub(super) fn over_budget(wait: Duration) -> Refusal {
    Refusal {
        message: "You are making requests too quickly. Wait a moment.".into(),
        wait,
    }
}

/// Records an attempt in a sliding window and says how long to wait if the
/// attempt is over the limit (the attempt is then not recorded).
fn over_limit(
    window: &mut VecDeque<Instant>,
    now: Instant,
    span: Duration,
    limit: u32,
) -> Option<Duration> {
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= span)
    {
        window.pop_front();
    }
    if window.len() >= limit as usize {
        let oldest = window.front().map_or(now, |t| *t);
        return Some(span - now.duration_since(oldest));
    }
    window.push_back(now);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(messages_per_second: u32, room_switches_per_minute: u32) -> Settings {
        Settings {
            messages_per_second,
            room_switches_per_minute,
            requests_per_second: 10,
            request_burst: 20,
            room_changes_per_10_minutes: 2,
            new_users_per_ip_per_hour: 2,
        }
    }

    #[test]
    fn every_request_spends_from_a_bucket_that_refills_at_its_rate() {
        let mut limits = Limits::new(settings(10, 5), Metrics::default());
        let alice = NameKey::of("alice");
        let t0 = Instant::now();
        // A burst of 20 units: ten pings and a page of 200 (9 units).
        for _ in 0..10 {
            assert!(limits.request(&alice, 1, t0).is_ok());
        }
        assert!(limits.request(&alice, 9, t0).is_ok());
        let refused = limits
            .request(&alice, 2, t0)
            .expect_err("the bucket holds 1 unit");
        assert_eq!(refused.wait, Duration::from_millis(100));
        // 10 units a second come back.
        assert!(
            limits
                .request(&alice, 2, t0 + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            limits
                .request(&alice, 5, t0 + Duration::from_millis(200))
                .is_err()
        );
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        assert!(limits.request(&alice, 20, later).is_ok());
        assert!(limits.request(&alice, 1, later).is_err());
        // Others have budgets of their own.
        assert!(limits.request(&NameKey::of("bob"), 20, t0).is_ok());
    }

    #[test]
    fn large_replies_put_the_budget_below_zero_and_the_next_request_waits() {
        let mut limits = Limits::new(settings(10, 5), Metrics::default());
        let alice = NameKey::of("alice");
        let t0 = Instant::now();
        assert!(limits.request(&alice, 1, t0).is_ok());
        // An 8 MB page came back: 19 units left, 29 owed.
        limits.owe(&alice, 29, t0);
        let refused = limits
            .request(&alice, 1, t0)
            .expect_err("a user in debt waits");
        assert_eq!(refused.wait, Duration::from_millis(1100));
        assert!(
            limits
                .request(&alice, 1, t0 + Duration::from_millis(1100))
                .is_ok()
        );
    }

    #[test]
    fn pages_cost_by_their_size() {
        let frame = |text: &str| crate::protocol::parse_request(text).unwrap().check().frame;
        assert_eq!(cost(&frame(r#"{"type":"ping"}"#)), 1);
        assert_eq!(cost(&frame(r#"{"type":"history","room":"g"}"#)), 3);
        assert_eq!(
            cost(&frame(r#"{"type":"join","room":"g","limit":500}"#)),
            21
        );
        assert_eq!(cost(&frame(r#"{"type":"send","id":"a","text":"b"}"#)), 0);
        assert_eq!(cost(&frame(r#"{"type":"create_room","room":"r"}"#)), 5);
        assert_eq!(cost(&frame(r#"{"type":"search","query":"q"}"#)), 6);
        assert_eq!(
            cost(&frame(r#"{"type":"search","query":"q","limit":100}"#)),
            11
        );
        assert_eq!(
            cost(&frame(r#"{"type":"search","query":"q","limit":1}"#)),
            1
        );
        assert_eq!(cost(&frame(r#"{"type":"edit","seq":1,"text":"t"}"#)), 1);
        assert_eq!(cost(&frame(r#"{"type":"delete_message","seq":1}"#)), 1);
    }

    #[test]
    fn room_changes_and_new_names_per_address_are_windows() {
        let mut limits = Limits::new(settings(10, 5), Metrics::default());
        let alice = NameKey::of("alice");
        let t0 = Instant::now();
        assert!(limits.room_change(&alice, t0).is_ok());
        assert!(limits.room_change(&alice, t0).is_ok());
        assert!(limits.room_change(&alice, t0).is_err());
        assert!(
            limits
                .room_change(&alice, t0 + Duration::from_secs(600))
                .is_ok()
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.new_user(ip, t0).is_ok());
        assert!(limits.new_user(ip, t0).is_ok());
        let refused = limits.new_user(ip, t0).expect_err("a third new name");
        assert!(
            refused.message.contains("at most 2 an hour"),
            "{}",
            refused.message
        );
        assert!(limits.new_user("192.0.2.2".parse().unwrap(), t0).is_ok());
        assert!(limits.new_user(ip, t0 + Duration::from_secs(3600)).is_ok());
    }

    #[test]
    fn a_window_refuses_past_its_limit_until_the_oldest_attempt_expires() {
        let mut limits = Limits::new(settings(2, 1), Metrics::default());
        let alice = NameKey::of("alice");
        let t0 = Instant::now();
        assert!(limits.send(&alice, t0).is_ok());
        assert!(limits.send(&alice, t0 + Duration::from_millis(100)).is_ok());
        let refused = limits
            .send(&alice, t0 + Duration::from_millis(400))
            .expect_err("the third send in a second is refused");
        assert_eq!(refused.wait, Duration::from_millis(600));
        assert!(refused.message.contains("at most 2 messages a second"));
        // A refused attempt is not recorded: the window frees at t0 + 1 s.
        assert!(limits.send(&alice, t0 + Duration::from_secs(1)).is_ok());
        // A send taken back frees its place at once.
        let t1 = t0 + Duration::from_millis(1050);
        assert!(limits.send(&alice, t1).is_err());
        limits.refund_send(&alice, t0 + Duration::from_secs(1));
        assert!(limits.send(&alice, t1).is_ok());
        // Others and other kinds of request have windows of their own.
        assert!(limits.send(&NameKey::of("bob"), t0).is_ok());
        assert!(limits.switch(&alice, t0).is_ok());
        assert!(limits.switch(&alice, t0 + Duration::from_secs(59)).is_err());
        assert!(limits.switch(&alice, t0 + Duration::from_secs(60)).is_ok());
    }
}
