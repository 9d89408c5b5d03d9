//! Readiness: whether this instance can serve (database reachable, migrations current, Redis
//! reachable when configured). Liveness (`/healthz`) needs nothing and lives in the HTTP layer.

use std::time::Duration;

use super::Core;

/// Each check is bounded: a hung dependency makes the probe fail, not hang.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(1);

/// The state of each dependency: `ok`, `unreachable`, `pending` (migrations not applied) or
/// `not_configured` (Redis).
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
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the database is unreachable");
                "unreachable"
            }
            Err(_) => {
                tracing::warn!("readiness: the database did not answer in time");
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
