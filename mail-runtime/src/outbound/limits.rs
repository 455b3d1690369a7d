//! Rate limits on relayed mail: a sliding window of message times per key (one key per sender,
//! one for everybody).
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::RateConfig;

/// Counts relayed messages.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, VecDeque<Instant>>>,
    shared: std::sync::OnceLock<crate::store::postgres::Postgres>,
}

impl RateLimiter {
    /// Counts in the database from now on, for every replica (the PostgreSQL store); this
    /// process's own windows are used only while the database cannot be reached.
    pub fn share(&self, db: crate::store::postgres::Postgres) {
        let _ = self.shared.set(db);
    }

    /// Whether one more message fits every `(key, rate)` given; if it does, it is counted
    /// against all of them.
    pub fn take(&self, limits: &[(String, &RateConfig)]) -> bool {
        if let Some(db) = self.shared.get() {
            let asked = limits
                .iter()
                .map(|(key, rate)| {
                    (
                        key.clone(),
                        i64::from(rate.messages),
                        i64::try_from(rate.period_seconds).unwrap_or(i64::MAX),
                    )
                })
                .collect();
            match db.rate_take(asked) {
                Ok(fits) => return fits,
                Err(err) => {
                    tracing::warn!(error = %err, "rate limits count alone: the database is unavailable");
                }
            }
        }
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("rate lock");
        for (key, rate) in limits {
            let period = Duration::from_secs(rate.period_seconds);
            let window = windows.entry(key.clone()).or_default();
            while window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= period)
            {
                window.pop_front();
            }
            if window.len() >= rate.messages as usize {
                return false;
            }
        }
        for (key, _) in limits {
            windows.entry(key.clone()).or_default().push_back(now);
        }
        // Keys that went quiet are forgotten now and then.
        if windows.len() > 10_000 {
            windows.retain(|_, w| !w.is_empty());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_fills_and_other_keys_are_separate() {
        let limiter = RateLimiter::default();
        let two = RateConfig {
            messages: 2,
            period_seconds: 3600,
        };
        let total = RateConfig {
            messages: 3,
            period_seconds: 3600,
        };
        let take = |who: &str| limiter.take(&[(who.into(), &two), ("*".into(), &total)]);
        assert!(take("alice"));
        assert!(take("alice"));
        assert!(!take("alice"), "a third message in the window");
        assert!(take("bob"));
        assert!(!take("carol"), "the total is spent");
    }
}
