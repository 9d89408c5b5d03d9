//! The verified-token and session cache (issue 15): what `auth::authenticate` and
//! `api_tokens::authenticate` read per request, remembered in process, with revocation that
//! reaches every instance within a second.
//!
//! - **Claims** of a verified access token, keyed by the token's SHA-256, so a token seen before
//!   costs a hash instead of a signature check. Claims never change; their time checks (`exp`,
//!   `nbf`) are made again on every use with the injected clock.
//! - **Session views** (session, user, tenant, policy) keyed by session id, and **API-token
//!   views** keyed by the secret's keyed hash. An entry only ever *admits* a request: whatever
//!   the cached view would refuse (revoked, expired, idle, disabled, suspended, outside an
//!   allow-list) is decided again on a fresh read, and that read's answer is the one given and
//!   audited. A cached `last_used_at` is never newer than the stored one (an entry is dropped
//!   when its instance touches the session), so the idle timeout admits nothing the database
//!   would refuse.
//! - **Invalidation.** Every write that changes what a request is judged by is announced by a
//!   trigger inside its own transaction (migration 0030): on PostgreSQL a `NOTIFY` on
//!   `kasho_auth_<schema>` naming the session, user, tenant or API token, delivered on commit to
//!   a listener task per instance; on SQLite a generation counter that each instance polls every
//!   100 ms (a second process may share the file: the tests' second instance, a CLI command).
//!   This instance's own writes also call [`SessionCache::forget_all`] as they return, so they
//!   are seen at once here.
//! - **Safety.** Entries are served only while the channel is proven live: on PostgreSQL the
//!   listener must have heard something (each instance notifies a `ping` every 200 ms) within
//!   the last second; on SQLite the last poll must be under half a second old. When it lapses or
//!   the connection is lost, everything is forgotten and every request reads the database until
//!   the channel is back. A read that raced with an invalidation is not remembered (a ticket
//!   taken before the read), and no entry is older than [`MAX_AGE`] whatever the channel says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::clock::Timestamp;
use crate::crypto::jwt::{AccessClaims, TokenError};
use crate::domain::security::SecurityPolicy;
use crate::store::api_tokens::ApiTokenAuthView;
use crate::store::{SessionView, Store};

/// The PostgreSQL channel the triggers of migration 0030 notify, followed by the schema of the
/// changed table (`kasho_auth_public`): schemas sharing a database do not hear each other.
pub const CHANNEL_PREFIX: &str = "kasho_auth_";
/// The payload of a liveness ping (never an id: ids carry a kind prefix).
const PING: &str = "ping";
/// The most entries of each kind; past it the kind is emptied and refilled.
pub const MAX_ENTRIES: usize = 10_000;
/// No entry is served older than this, whatever the channel says (the second line of defence).
pub const MAX_AGE: Duration = Duration::from_secs(5);
/// How often each PostgreSQL instance pings the channel.
const PING_EVERY: Duration = Duration::from_millis(200);
/// How long after the last message heard the PostgreSQL channel still counts as live.
const PG_LIVENESS: Duration = Duration::from_secs(1);
/// How often a SQLite instance reads the generation counter.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long after the last successful poll the SQLite channel still counts as live.
const SQLITE_LIVENESS: Duration = Duration::from_millis(500);
/// The wait before connecting the listener again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// A session's view as read, with its policy parsed once.
#[derive(Clone)]
pub struct SessionEntry {
    pub view: Arc<SessionView>,
    pub policy: Arc<SecurityPolicy>,
    loaded: Instant,
}

/// An API token's view as read, with its tenant's policy parsed once.
#[derive(Clone)]
pub struct ApiTokenEntry {
    pub view: Arc<ApiTokenAuthView>,
    pub policy: Arc<SecurityPolicy>,
    loaded: Instant,
}

/// What a change concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Session(String),
    User(String),
    Tenant(String),
    ApiToken(String),
    All,
}

impl Invalidation {
    /// Reads a notification's payload (`s:`, `u:`, `t:`, `k:` and an id; anything else is
    /// everything). `None` for a ping.
    pub fn parse(payload: &str) -> Option<Invalidation> {
        if payload == PING {
            return None;
        }
        let (kind, id) = payload.split_once(':').unwrap_or(("*", ""));
        let id = id.to_owned();
        Some(match kind {
            "s" => Invalidation::Session(id),
            "u" => Invalidation::User(id),
            "t" => Invalidation::Tenant(id),
            "k" => Invalidation::ApiToken(id),
            _ => Invalidation::All,
        })
    }
}

/// Taken before a database read; the read's result is remembered only if nothing was
/// invalidated meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// How often the cache answered (for tests and `/metrics`-style inspection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests whose session or API token came from the cache.
    pub hits: u64,
    /// Requests that read the database (nothing cached, entry too old, channel down, or a
    /// cached refusal being confirmed).
    pub misses: u64,
    /// Verified tokens whose claims came from the cache.
    pub claims_hits: u64,
    /// Times the invalidation channel was found down (everything was forgotten each time).
    pub channel_losses: u64,
}

#[derive(Default)]
struct Entries {
    sessions: HashMap<String, SessionEntry>,
    api_tokens: HashMap<String, ApiTokenEntry>,
}

pub struct SessionCache {
    entries: Mutex<Entries>,
    claims: Mutex<HashMap<[u8; 32], Arc<AccessClaims>>>,
    /// Bumped (under the `entries` lock) by every invalidation.
    seq: AtomicU64,
    /// The channel counts as live until this many nanoseconds after `base`.
    live_until: AtomicU64,
    base: Instant,
    hits: AtomicU64,
    misses: AtomicU64,
    claims_hits: AtomicU64,
    channel_losses: AtomicU64,
    /// Dropped with the cache: the channel tasks stop.
    _stop: watch::Sender<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated in a way that matters
    // (every entry is whole); carry on with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SessionCache {
    fn new(stop: watch::Sender<()>) -> SessionCache {
        SessionCache {
            entries: Mutex::default(),
            claims: Mutex::default(),
            seq: AtomicU64::new(0),
            live_until: AtomicU64::new(0),
            base: Instant::now(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            claims_hits: AtomicU64::new(0),
            channel_losses: AtomicU64::new(0),
            _stop: stop,
        }
    }

    /// A cache that never serves sessions or API tokens (no channel): for stores with neither
    /// backend's channel.
    pub fn disabled() -> Arc<SessionCache> {
        Arc::new(SessionCache::new(watch::channel(()).0))
    }

    /// The cache for `store`, with its invalidation channel started (a listener and a pinger on
    /// PostgreSQL, a poller on SQLite). Needs a Tokio runtime.
    pub fn start(store: &Arc<dyn Store>) -> Arc<SessionCache> {
        let (stop, stopped) = watch::channel(());
        let cache = Arc::new(SessionCache::new(stop));
        let any = store.as_any();
        if let Some(pg) = any.downcast_ref::<crate::store::postgres::PgStore>() {
            tokio::spawn(listen(
                Arc::downgrade(&cache),
                pg.pool().clone(),
                stopped.clone(),
            ));
            tokio::spawn(ping(pg.pool().clone(), stopped));
        } else if let Some(lite) = any.downcast_ref::<crate::store::sqlite::SqliteStore>() {
            tokio::spawn(poll(Arc::downgrade(&cache), lite.pool().clone(), stopped));
        }
        cache
    }

    fn elapsed_nanos(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether entries may be served and remembered now.
    pub fn live(&self) -> bool {
        self.elapsed_nanos() < self.live_until.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            claims_hits: self.claims_hits.load(Ordering::Relaxed),
            channel_losses: self.channel_losses.load(Ordering::Relaxed),
        }
    }

    /// The claims of `token`: remembered ones (checked again against `now`), or `verify`'s
    /// answer, remembered when it is a success. A remembered token whose time check fails is
    /// verified again, so the refusal is exactly the verifier's.
    pub fn claims(
        &self,
        token: &str,
        now: Timestamp,
        verify: impl FnOnce() -> Result<AccessClaims, TokenError>,
    ) -> Result<Arc<AccessClaims>, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = lock(&self.claims).get(&key).cloned();
        if let Some(claims) = known
            && claims.valid_at(now).is_ok()
        {
            self.claims_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(claims);
        }
        let claims = Arc::new(verify()?);
        let mut map = lock(&self.claims);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(key, claims.clone());
        Ok(claims)
    }

    /// Taken before reading what will be remembered.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.seq.load(Ordering::Acquire))
    }

    /// The remembered view of session `id`, if the channel is live and it is young enough.
    pub fn session(&self, id: &str) -> Option<SessionEntry> {
        if !self.live() {
            return None;
        }
        let mut entries = lock(&self.entries);
        let entry = entries.sessions.get(id)?;
        if entry.loaded.elapsed() >= MAX_AGE {
            entries.sessions.remove(id);
            return None;
        }
        Some(entry.clone())
    }

    /// Remembers a session view read after `ticket` was taken (unless something was
    /// invalidated since, or the channel is down).
    pub fn put_session(&self, ticket: Ticket, view: SessionView, policy: Arc<SecurityPolicy>) {
        let mut entries = lock(&self.entries);
        if !self.live() || self.seq.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if entries.sessions.len() >= MAX_ENTRIES {
            entries.sessions.clear();
        }
        entries.sessions.insert(
            view.session_id.clone(),
            SessionEntry {
                view: Arc::new(view),
                policy,
                loaded: Instant::now(),
            },
        );
    }

    pub fn forget_session(&self, id: &str) {
        lock(&self.entries).sessions.remove(id);
    }

    /// The remembered view of the API-token secret whose keyed hash is `hash`.
    pub fn api_token(&self, hash: &str) -> Option<ApiTokenEntry> {
        if !self.live() {
            return None;
        }
        let mut entries = lock(&self.entries);
        let entry = entries.api_tokens.get(hash)?;
        if entry.loaded.elapsed() >= MAX_AGE {
            entries.api_tokens.remove(hash);
            return None;
        }
        Some(entry.clone())
    }

    pub fn put_api_token(
        &self,
        ticket: Ticket,
        hash: String,
        view: ApiTokenAuthView,
        policy: Arc<SecurityPolicy>,
    ) {
        let mut entries = lock(&self.entries);
        if !self.live() || self.seq.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if entries.api_tokens.len() >= MAX_ENTRIES {
            entries.api_tokens.clear();
        }
        entries.api_tokens.insert(
            hash,
            ApiTokenEntry {
                view: Arc::new(view),
                policy,
                loaded: Instant::now(),
            },
        );
    }

    pub fn forget_api_token(&self, hash: &str) {
        lock(&self.entries).api_tokens.remove(hash);
    }

    /// Counts a request answered from the cache (`true`) or the database.
    pub fn count(&self, hit: bool) {
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets what `what` concerns; a read in flight is not remembered afterwards.
    pub fn invalidate(&self, what: &Invalidation) {
        let mut entries = lock(&self.entries);
        self.seq.fetch_add(1, Ordering::AcqRel);
        match what {
            Invalidation::Session(id) => {
                entries.sessions.remove(id);
            }
            Invalidation::User(id) => {
                entries.sessions.retain(|_, e| &e.view.user_id != id);
                entries.api_tokens.retain(|_, e| &e.view.user_id != id);
            }
            Invalidation::Tenant(id) => {
                entries
                    .sessions
                    .retain(|_, e| e.view.tenant_id.as_ref() != Some(id));
                entries.api_tokens.retain(|_, e| &e.view.tenant_id != id);
            }
            Invalidation::ApiToken(id) => {
                entries.api_tokens.retain(|_, e| &e.view.id != id);
            }
            Invalidation::All => {
                entries.sessions.clear();
                entries.api_tokens.clear();
            }
        }
    }

    /// Called by this instance's own writes to sessions, users, tenants, policies and API
    /// tokens as they return (committed or not): they are seen here at once, before the
    /// channel reports them.
    pub fn forget_all(&self) {
        self.invalidate(&Invalidation::All);
    }

    /// Awaits `write` (a change to sessions, users, tenants, policies or API tokens), then
    /// [`forget_all`](Self::forget_all), whatever its answer (a commit whose answer was lost
    /// may have happened).
    pub async fn after<T>(&self, write: impl std::future::Future<Output = T>) -> T {
        let answer = write.await;
        self.forget_all();
        answer
    }

    /// The channel was heard from: live for `window` more. After a lapse, everything is
    /// forgotten first (what was missed meanwhile is unknown).
    fn heard(&self, window: Duration) {
        let now = self.elapsed_nanos();
        if now >= self.live_until.load(Ordering::Acquire) {
            // Not live until the store below: nothing is remembered in between.
            self.invalidate(&Invalidation::All);
        }
        let until = now.saturating_add(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX));
        self.live_until.store(until, Ordering::Release);
    }

    /// The channel is down: nothing is served or remembered until it is heard from again.
    fn lost(&self) {
        self.live_until.store(0, Ordering::Release);
        self.channel_losses.fetch_add(1, Ordering::Relaxed);
        self.invalidate(&Invalidation::All);
    }
}

/// Waits for `stop` (the cache dropped) or `d`; `false` when stopped.
async fn pause(stop: &mut watch::Receiver<()>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// The channel of the schema `pool`'s connections use (where the migrations put the tables).
async fn channel(pool: &sqlx::PgPool) -> Result<String, sqlx::Error> {
    let (schema,): (String,) = sqlx::query_as("SELECT current_schema()")
        .fetch_one(pool)
        .await?;
    Ok(format!("{CHANNEL_PREFIX}{schema}"))
}

/// PostgreSQL: listens on the schema's channel and applies what it hears; reconnects after a
/// loss, with the cache bypassed meanwhile.
async fn listen(cache: Weak<SessionCache>, pool: sqlx::PgPool, mut stop: watch::Receiver<()>) {
    loop {
        match cache.upgrade() {
            Some(c) => c.lost(),
            None => return,
        }
        let connect = async {
            let channel = channel(&pool).await?;
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            // A lost connection is reported (`Ok(None)`), never silently replaced.
            listener.eager_reconnect(false);
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            r = connect => r,
            _ = stop.changed() => return,
        };
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "session cache: cannot listen for invalidations; the cache is bypassed");
                if !pause(&mut stop, RECONNECT_AFTER).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let received = tokio::select! {
                r = listener.try_recv() => r,
                _ = stop.changed() => return,
            };
            match received {
                Ok(Some(note)) => {
                    let Some(c) = cache.upgrade() else { return };
                    if let Some(what) = Invalidation::parse(note.payload()) {
                        c.invalidate(&what);
                    }
                    c.heard(PG_LIVENESS);
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        "session cache: the invalidation channel was lost; the cache is bypassed until it is back"
                    );
                    break;
                }
            }
        }
        if !pause(&mut stop, RECONNECT_AFTER / 5).await {
            return;
        }
    }
}

/// PostgreSQL: proves the channel end to end every [`PING_EVERY`] (every listener of the
/// schema hears every instance's pings).
async fn ping(pool: sqlx::PgPool, mut stop: watch::Receiver<()>) {
    let mut known: Option<String> = None;
    loop {
        let sent = async {
            let channel = match &known {
                Some(c) => c.clone(),
                None => known.insert(channel(&pool).await?).clone(),
            };
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(PING)
                .execute(&pool)
                .await
        };
        tokio::select! {
            _ = tokio::time::timeout(PING_EVERY * 2, sent) => {}
            _ = stop.changed() => return,
        }
        if !pause(&mut stop, PING_EVERY).await {
            return;
        }
    }
}

/// SQLite: reads the generation counter every [`POLL_EVERY`]; a change forgets everything, a
/// failed read bypasses the cache until a read succeeds.
async fn poll(cache: Weak<SessionCache>, pool: sqlx::SqlitePool, mut stop: watch::Receiver<()>) {
    let mut last: Option<i64> = None;
    loop {
        let read = sqlx::query_as::<_, (i64,)>("SELECT n FROM auth_generation WHERE id = 1")
            .fetch_one(&pool);
        let read = tokio::select! {
            r = tokio::time::timeout(SQLITE_LIVENESS, read) => r,
            _ = stop.changed() => return,
        };
        let Some(c) = cache.upgrade() else { return };
        match read {
            Ok(Ok((n,))) => {
                if last != Some(n) {
                    c.invalidate(&Invalidation::All);
                    last = Some(n);
                }
                c.heard(SQLITE_LIVENESS);
            }
            _ => {
                if last.is_some() {
                    tracing::warn!(
                        "session cache: cannot read the invalidation counter; the cache is bypassed"
                    );
                }
                c.lost();
                last = None;
            }
        }
        drop(c);
        if !pause(&mut stop, POLL_EVERY).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_what_changed() {
        assert_eq!(Invalidation::parse("ping"), None);
        assert_eq!(
            Invalidation::parse("s:ses_1"),
            Some(Invalidation::Session("ses_1".into()))
        );
        assert_eq!(
            Invalidation::parse("u:usr_1"),
            Some(Invalidation::User("usr_1".into()))
        );
        assert_eq!(
            Invalidation::parse("t:ten_1"),
            Some(Invalidation::Tenant("ten_1".into()))
        );
        assert_eq!(
            Invalidation::parse("k:tok_1"),
            Some(Invalidation::ApiToken("tok_1".into()))
        );
        assert_eq!(Invalidation::parse("*"), Some(Invalidation::All));
        assert_eq!(Invalidation::parse("???"), Some(Invalidation::All));
    }
}
