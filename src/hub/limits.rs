//! Rate limits: sliding windows per user for sends and room switches. Kept
//! by username, not by connection, so reconnecting does not reset them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::metrics::{Limited, Metrics};
use crate::protocol::NameKey;

/// A refused attempt: the sentence for the client and how long to wait.
pub(super) struct Refusal {
    pub message: String,
    pub wait: Duration,
}

/// Sliding-window rate limits of one user.
#[derive(Default)]
struct Rate {
    sends: VecDeque<Instant>,
    switches: VecDeque<Instant>,
}

/// Every user's rate limits.
pub(super) struct Limits {
    /// Most messages one user may send in any one-second window.
    pub messages_per_second: u32,
    /// Most joins into another room one user may make in any 60 s window.
    pub room_switches_per_minute: u32,
    /// By user. Grows with the users seen since start-up (at most one entry
    /// each; the store keeps them all anyway).
    rates: HashMap<NameKey, Rate>,
    /// Counts refusals by request type.
    metrics: Metrics,
}

impl Limits {
    pub fn new(
        messages_per_second: u32,
        room_switches_per_minute: u32,
        metrics: Metrics,
    ) -> Limits {
        Limits {
            messages_per_second,
            room_switches_per_minute,
            rates: HashMap::new(),
            metrics,
        }
    }

    /// Records a send by `user` now, or refuses it.
    pub fn send(&mut self, user: &NameKey, now: Instant) -> Result<(), Refusal> {
        let limit = self.messages_per_second;
        let rate = self.rates.entry(user.clone()).or_default();
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

    /// Records a join by `user` into a room they are not in, or refuses it.
    pub fn switch(&mut self, user: &NameKey, now: Instant) -> Result<(), Refusal> {
        let limit = self.room_switches_per_minute;
        let rate = self.rates.entry(user.clone()).or_default();
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

    #[test]
    fn a_window_refuses_past_its_limit_until_the_oldest_attempt_expires() {
        let mut limits = Limits::new(2, 1, Metrics::default());
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
        // Others and other kinds of request have windows of their own.
        assert!(limits.send(&NameKey::of("bob"), t0).is_ok());
        assert!(limits.switch(&alice, t0).is_ok());
        assert!(limits.switch(&alice, t0 + Duration::from_secs(59)).is_err());
        assert!(limits.switch(&alice, t0 + Duration::from_secs(60)).is_ok());
    }
}
