//! Rate-limited logging of repeated errors. When storage fails, every request fails the same
//! way: logging each one wrote 16,000 identical ERROR lines in 25 seconds, drowning everything
//! else (and filling the disk further). A line of a given kind (its message and error text) is
//! written the first time; identical ones within [`INTERVAL`] after it are counted, not written;
//! the next one after the interval is written with `suppressed = N`, the number left out in
//! between. A kind that stops recurring has its count written as a summary line ("N identical
//! log lines suppressed") by the next limited log call of any kind once its interval has passed.
//!
//! The interval is measured on the monotonic clock: it is about the log's volume, not about
//! business time.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// At most one line of each kind per interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Kinds remembered at once; beyond this the oldest-quiet ones are forgotten (their pending
/// counts are reported first).
const MAX_KINDS: usize = 1024;

#[derive(Debug)]
struct Kind {
    /// When the last line of this kind was written.
    logged_at: Instant,
    /// Lines of this kind left out since then.
    suppressed: u64,
}

/// The state of every kind seen recently.
#[derive(Debug, Default)]
pub struct LogLimiter {
    kinds: Mutex<HashMap<String, Kind>>,
}

/// What to do with one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Write this line, with this many identical lines reported as left out before it; `None`:
    /// leave it out (it is counted).
    pub write: Option<u64>,
    /// Other kinds whose interval ended with lines left out: (kind, count) for summary lines.
    pub summaries: Vec<(String, u64)>,
}

impl LogLimiter {
    /// Decides about one line of `kind` at `now`.
    pub fn decide(&self, kind: &str, now: Instant) -> Decision {
        let Ok(mut kinds) = self.kinds.lock() else {
            // A poisoned lock must not silence the log.
            return Decision {
                write: Some(0),
                summaries: Vec::new(),
            };
        };
        let mut summaries = Vec::new();
        // Report and forget the kinds whose interval is over.
        kinds.retain(|k, v| {
            if k != kind && now.saturating_duration_since(v.logged_at) >= INTERVAL {
                if v.suppressed > 0 {
                    summaries.push((k.clone(), v.suppressed));
                }
                return false;
            }
            true
        });
        let write = match kinds.get_mut(kind) {
            Some(v) if now.saturating_duration_since(v.logged_at) < INTERVAL => {
                v.suppressed += 1;
                None
            }
            Some(v) => {
                let n = v.suppressed;
                *v = Kind {
                    logged_at: now,
                    suppressed: 0,
                };
                Some(n)
            }
            None => {
                if kinds.len() >= MAX_KINDS {
                    for (k, v) in kinds.drain() {
                        if v.suppressed > 0 {
                            summaries.push((k, v.suppressed));
                        }
                    }
                }
                kinds.insert(
                    kind.to_owned(),
                    Kind {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        };
        Decision { write, summaries }
    }
}

/// The process's limiter: the log is one per process.
static LIMITER: LazyLock<LogLimiter> = LazyLock::new(LogLimiter::default);

/// Whether to write a line of `kind` now: `Some(n)` to write it (reporting `n` identical lines
/// left out before it), `None` to leave it out. Summaries of other kinds that went quiet are
/// written here.
pub fn admit(kind: &str) -> Option<u64> {
    let d = LIMITER.decide(kind, Instant::now());
    for (kind, n) in d.summaries {
        tracing::warn!(kind = %kind, suppressed = n, "{n} identical log lines suppressed");
    }
    d.write
}

/// `tracing::error!` for lines that can repeat: the first of a kind is written, identical ones
/// within [`INTERVAL`] are counted and reported with the next one written
/// (`suppressed = N`). The kind is the message plus the `error` value.
#[macro_export]
macro_rules! error_limited {
    ($error:expr, $($rest:tt)+) => {{
        let error = $error.to_string();
        if let Some(suppressed) = $crate::log_limit::admit(&format!("{}: {}", stringify!($($rest)+), error)) {
            tracing::error!(error = %error, suppressed, $($rest)+);
        }
    }};
}

/// `tracing::warn!`, limited like [`error_limited!`].
#[macro_export]
macro_rules! warn_limited {
    ($error:expr, $($rest:tt)+) => {{
        let error = $error.to_string();
        if let Some(suppressed) = $crate::log_limit::admit(&format!("{}: {}", stringify!($($rest)+), error)) {
            tracing::warn!(error = %error, suppressed, $($rest)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_a_kind_is_written_then_one_per_interval_with_the_count_left_out() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.decide("full", t0).write, Some(0));
        for i in 1..1000 {
            assert_eq!(
                l.decide("full", t0 + Duration::from_millis(i)).write,
                None,
                "line {i}"
            );
        }
        // Another kind is not held back by the first.
        assert_eq!(l.decide("other", t0).write, Some(0));
        assert_eq!(l.decide("full", t0 + INTERVAL).write, Some(999));
        assert_eq!(
            l.decide("full", t0 + INTERVAL + Duration::from_secs(1))
                .write,
            None
        );
    }

    #[test]
    fn a_kind_that_went_quiet_is_summed_up_by_the_next_line_of_any_kind() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        l.decide("full", t0);
        l.decide("full", t0);
        l.decide("full", t0);
        let d = l.decide("other", t0 + INTERVAL);
        assert_eq!(d.write, Some(0));
        assert_eq!(d.summaries, vec![("full".to_owned(), 2)]);
        // Reported once: the kind starts afresh.
        assert_eq!(l.decide("full", t0 + INTERVAL).write, Some(0));
    }
}
