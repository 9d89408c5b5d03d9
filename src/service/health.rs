//! Readiness: whether this instance can serve (database reachable and writing, migrations
//! current, Redis reachable when configured). Liveness (`/healthz`) needs nothing and lives in
//! the HTTP layer.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::Core;
use crate::clock::Timestamp;

/// How long after its last `storage_unavailable` answer the database still counts as failing
/// when no write has succeeded since. A full disk leaves `SELECT 1` answering, so the probe
/// alone would say ready; this says not ready. After the hold, with no new failure, the probe
/// decides again, so an instance taken out of rotation (and so sent no writes that could
/// succeed) is tried again rather than left out for good.
pub const STORAGE_FAILURE_HOLD_SECONDS: i64 = 30;

/// Whether storage has been failing: the time of the last `storage_unavailable` answer, cleared
/// by the next write that succeeds. Kept per instance (what its own connections see).
#[derive(Debug, Default)]
pub struct StorageHealth {
    /// Microseconds of the last failure not followed by a successful write; 0: none.
    failing_since_last: AtomicI64,
}

impl StorageHealth {
    /// A request was answered 503 `storage_unavailable`.
    pub fn failed(&self, now: Timestamp) {
        self.failing_since_last
            .store(now.as_micros().max(1), Ordering::Release);
    }

    /// A write succeeded: storage writes again.
    pub fn succeeded(&self) {
        if self.failing_since_last.load(Ordering::Acquire) != 0 {
            self.failing_since_last.store(0, Ordering::Release);
        }
    }

    /// Whether storage failed within the hold and has not written since.
    pub fn failing(&self, now: Timestamp) -> bool {
        let at = self.failing_since_last.load(Ordering::Acquire);
        at != 0 && Timestamp::from_micros(at).plus_seconds(STORAGE_FAILURE_HOLD_SECONDS) > now
    }
}

/// Each check is bounded: a hung dependency makes the probe fail, not hang.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(1);

/// The state of each dependency: `ok`, `unreachable`, `failing` (the database answers but
/// writes fail: [`StorageHealth`]), `pending` (migrations not applied) or `not_configured`
/// (Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub database: &'static str,
    pub migrations: &'static str,
    pub redis: &'static str,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.database == "ok"
            && self.migrations == "ok"
            && matches!(self.redis, "ok" | "not_configured")
    }
}

/// Runs the checks concurrently. Errors are logged, never returned to the caller.
pub async fn readiness(core: &Core) -> Readiness {
    let database = async {
        match tokio::time::timeout(DATABASE_TIMEOUT, core.store.ping()).await {
            Ok(Ok(())) if core.storage.failing(core.clock.now()) => {
                crate::warn_limited!(
                    "storage_unavailable",
                    "readiness: the database answers but writes are failing"
                );
                "failing"
            }
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                crate::warn_limited!(e, "readiness: the database is unreachable");
                "unreachable"
            }
            Err(_) => {
                crate::warn_limited!("timeout", "readiness: the database did not answer in time");
                "unreachable"
            }
        }
    };
    let migrations = async {
        match tokio::time::timeout(DATABASE_TIMEOUT, core.store.migrations_current()).await {
            Ok(Ok(true)) => "ok",
            Ok(Ok(false)) => {
                tracing::warn!("readiness: the database schema is not the one this binary embeds");
                "pending"
            }
            Ok(Err(_)) | Err(_) => "unreachable",
        }
    };
    // The limiter's own connection: readiness reports the Redis this instance actually uses.
    let redis = async {
        match core.limits.redis_reachable().await {
            None => "not_configured",
            Some(true) => "ok",
            Some(false) => {
                tracing::warn!("readiness: Redis did not answer PING in time");
                "unreachable"
            }
        }
    };
    let (database, migrations, redis) = tokio::join!(database, migrations, redis);
    Readiness {
        database,
        migrations,
        redis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_fails_until_a_write_succeeds_or_the_hold_passes() {
        let h = StorageHealth::default();
        let t0 = Timestamp::from_unix_seconds(1_000);
        assert!(!h.failing(t0));
        h.failed(t0);
        assert!(h.failing(t0));
        assert!(h.failing(t0.plus_seconds(STORAGE_FAILURE_HOLD_SECONDS - 1)));
        assert!(!h.failing(t0.plus_seconds(STORAGE_FAILURE_HOLD_SECONDS)));
        h.failed(t0);
        h.succeeded();
        assert!(!h.failing(t0));
    }
}
