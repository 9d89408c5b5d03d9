//! Readiness: whether this instance can serve (database reachable, migrations current, Redis
//! reachable when configured). Liveness (`/healthz`) needs nothing and lives in the HTTP layer.

use std::time::Duration;

use super::Core;

/// Each check is bounded: a hung dependency makes the probe fail, not hang.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(1);
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

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
    let redis = async {
        let Some(client) = &core.redis else {
            return "not_configured";
        };
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(REDIS_TIMEOUT, ping).await {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(error_kind = ?e.kind(), "readiness: Redis is unreachable");
                "unreachable"
            }
            Err(_) => {
                tracing::warn!("readiness: Redis did not answer PING within 500 ms");
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
