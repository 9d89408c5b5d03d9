//! The keyring: the key hierarchy in use. It unwraps master key versions with the root key and
//! data keys with the master key versions, caches both in memory (zeroised on drop), reserves
//! encryptions against each data key's budget, and rotates:
//!
//! - [`Keyring::rotate_master`] adds a master key version and rewraps every data key under it;
//! - [`Keyring::rotate_data_key`] gives an owner (a tenant, a customer) a new data key version,
//!   after which [`Keyring::reencrypt`] moves its ciphertexts to it in batches and retires the
//!   old version;
//! - [`Keyring::run_pending`] finishes whatever is unfinished (an interrupted command, an
//!   automatic rotation), and is what the server runs in the background;
//! - [`Keyring::start_index_rotation`] and [`Keyring::finish_index_rotation`] bracket an
//!   explicit blind-index key rotation (`crate::service::customers::rotate_index` re-indexes in
//!   between). Index keys have no encryption budget and never rotate by themselves.
//!
//! Every step is a compare-and-swap on one row, so it can be interrupted at any point and
//! resumed, and runs safely beside a serving instance (or several): old versions stay readable
//! until nothing is sealed by them any more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::crypto::envelope::{
    Context, DataKey, Header, KeyBytes, blind_index, dek_label, is_ciphertext, kek_label,
};
use crate::crypto::keys::MasterKey;
use crate::domain::audit::{ActorType, NewAuditEvent, Outcome};
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;
use crate::store::keys::{DataKeyRecord, ENCRYPTED_COLUMNS, EncryptedColumn, MasterKeyRecord};
use crate::store::{Store, StoreError};

/// The key id platform-key ciphertexts carry (`kx1.platform.1.…`); no data key has it.
pub const PLATFORM_KEY_ID: &str = "platform";

/// Encryptions reserved from the database at a time (one UPDATE per block, not per value).
const RESERVATION_BLOCK: i64 = 16_384;

/// How long a retired key version keeps its material: a read that fetched a ciphertext just
/// before it was re-encrypted (or a data key just before it was rewrapped) still opens it.
pub const RETIREMENT_GRACE_SECONDS: i64 = 15 * 60;

/// Rows handled per rotation step.
const BATCH: i64 = 100;

/// Whose data a data key protects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyOwner {
    /// The tenant's own data (transfer details, stored answers).
    Tenant,
    /// The tenant's blind-index key (HMAC only: no encryption budget; rotated only by an
    /// explicit index rotation, which re-indexes every customer before the old version goes).
    Index,
    /// One customer's personal data; destroyed on erasure.
    Customer(String),
    /// A customer's login (`login:<user id>`): seals its email (and the mail addressed to it)
    /// from the login's creation, before it is linked to a customer; destroyed with the
    /// customer's key when the customer is erased.
    Login(String),
}

impl KeyOwner {
    pub fn as_storage(&self) -> String {
        match self {
            KeyOwner::Tenant => "tenant".into(),
            KeyOwner::Index => "index".into(),
            KeyOwner::Customer(id) => format!("customer:{id}"),
            KeyOwner::Login(id) => format!("login:{id}"),
        }
    }
}

/// An unwrapped data key version and when its row was last read.
/// An unwrapped data key version, when its row was last read, and whether it is a data
/// subject's (a customer's) key.
type CachedKey = (Arc<DataKey>, crate::clock::Timestamp, bool);

/// An active key version with encryptions reserved for this process.
struct Active {
    key: Arc<DataKey>,
    remaining: i64,
    /// After [`ACTIVE_TTL_SECONDS`] the version is checked again, so a rotation made by another
    /// process is followed within that time (well inside the retirement grace period).
    fetched_at: crate::clock::Timestamp,
}

/// How long a process keeps sealing under a data key version without asking the database.
pub const ACTIVE_TTL_SECONDS: i64 = 60;

pub struct Keyring {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The key that wraps master key versions, derived from the root key (`KASHO_MASTER_KEY`).
    root: KeyBytes,
    /// Seals the few values that belong to no tenant (platform admins' TOTP secrets): data
    /// keys are tenants' (`data_keys.tenant_id` names one), so this key is derived from the
    /// root key for that purpose alone, like the audit-chain key.
    platform: DataKey,
    root_id: String,
    rotate_after: i64,
    keks: RwLock<HashMap<i64, KeyBytes>>,
    /// Unwrapped data key versions and when their row was last read: after
    /// [`ACTIVE_TTL_SECONDS`] the row is read again. A customer's key (destroyed by an erasure,
    /// possibly on another instance) has its row read on every opening, so it stops opening
    /// everywhere as soon as the erasure commits; the cache only saves the unwrapping.
    deks: RwLock<HashMap<(String, i64), CachedKey>>,
    active: Mutex<HashMap<(String, String), Active>>,
    /// One refill at a time: when a block runs out under load, one task reserves the next
    /// while the others wait for it, instead of every task writing to the database at once.
    refill: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("root_id", &self.root_id)
            .finish_non_exhaustive()
    }
}

/// What a master key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRotation {
    pub version: i64,
    pub resumed: bool,
    pub rewrapped: u64,
    pub retired: Vec<i64>,
    /// Versions left `retiring` because a data key was still wrapped under them when retirement
    /// re-checked (run the rotation again, or let the server's background pass finish).
    pub still_retiring: Vec<i64>,
}

/// What an index key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRotation {
    pub version: i64,
    pub resumed: bool,
    pub reindexed: u64,
    pub retired: Vec<i64>,
}

/// A tenant's live blind-index key versions, oldest first (one; two while an index rotation
/// runs). Writes store a digest under each, searches match any.
#[derive(Debug, Clone)]
pub struct IndexKeys(Vec<Arc<DataKey>>);

impl IndexKeys {
    /// The versions, oldest first (what a customer write checks is still live at commit).
    pub fn versions(&self) -> Vec<i64> {
        self.0.iter().map(|k| k.version).collect()
    }

    /// `(version, digest)` of `normalised` for `field` under each live version.
    pub fn digests(&self, field: &str, normalised: &str) -> Vec<(i64, String)> {
        self.0
            .iter()
            .map(|k| (k.version, blind_index(&k.key, field, normalised)))
            .collect()
    }
}

/// What a tenant key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRotation {
    pub version: i64,
    pub reencrypted: u64,
    pub legacy_sealed: u64,
    pub retired: Vec<i64>,
}

fn internal(e: impl std::fmt::Display) -> AppError {
    AppError::internal(e)
}

/// Progress of a long operation: `(done, total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

impl Keyring {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        root: &MasterKey,
        rotate_after: i64,
    ) -> Self {
        let platform = DataKey {
            id: PLATFORM_KEY_ID.to_owned(),
            version: 1,
            key: KeyBytes::from_array(root.derive("platform-data/v1")),
        };
        let root_id = root.root_id();
        let root = KeyBytes::from_array(root.derive(crate::crypto::keys::KEK_WRAP_PURPOSE));
        Self {
            store,
            clock,
            root,
            platform,
            root_id,
            rotate_after: rotate_after.max(2),
            keks: RwLock::new(HashMap::new()),
            deks: RwLock::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            refill: tokio::sync::Mutex::new(()),
        }
    }

    /// Encryptions reserved per database round trip: small enough that a version never goes
    /// far past its budget.
    fn block(&self) -> i64 {
        (self.rotate_after / 4).clamp(1, RESERVATION_BLOCK)
    }

    fn root_key(&self) -> &KeyBytes {
        &self.root
    }

    fn audit(
        &self,
        tenant: Option<&str>,
        action: &str,
        target: &str,
        reason: String,
    ) -> NewAuditEvent {
        NewAuditEvent {
            tenant_id: tenant.map(|t| TenantId::from_trusted(t.to_owned())),
            occurred_at: self.clock.now(),
            actor_type: ActorType::System,
            actor_id: None,
            action: action.to_owned(),
            target_type: Some("key".into()),
            target_id: Some(target.to_owned()),
            outcome: Outcome::Success,
            reason: Some(reason),
            ip: None,
            request_id: None,
            security_event: None,
        }
    }

    // ------------------------------------------------------------ master key versions

    /// The active master key version, creating version 1 on first use.
    async fn active_kek(&self) -> AppResult<(i64, KeyBytes)> {
        let keys = self.store.master_keys().await?;
        if let Some(k) = keys.iter().rev().find(|k| k.status == "active") {
            return Ok((k.version, self.open_kek(k)?));
        }
        if !keys.is_empty() {
            return Err(internal("no active master key version"));
        }
        let kek = KeyBytes::generate().map_err(internal)?;
        let record = MasterKeyRecord {
            version: 1,
            root_id: self.root_id.clone(),
            wrapped: Some(
                self.root_key()
                    .wrap(&kek_label(1), &kek)
                    .map_err(internal)?,
            ),
            status: "active".into(),
            created_at: self.clock.now().as_micros(),
            retired_at: None,
        };
        let ev = self.audit(
            None,
            "key.master.create",
            "master:1",
            "first master key version".into(),
        );
        match self.store.add_master_key(&record, false, &[ev]).await {
            Ok(()) => {
                self.cache_kek(1, kek.clone());
                Ok((1, kek))
            }
            // Another process created it first: use theirs.
            Err(StoreError::Conflict { .. }) => Box::pin(self.active_kek()).await,
            Err(e) => Err(e.into()),
        }
    }

    fn cache_kek(&self, version: i64, key: KeyBytes) {
        if let Ok(mut m) = self.keks.write() {
            m.insert(version, key);
        }
    }

    fn open_kek(&self, k: &MasterKeyRecord) -> AppResult<KeyBytes> {
        if let Some(key) = self
            .keks
            .read()
            .ok()
            .and_then(|m| m.get(&k.version).cloned())
        {
            return Ok(key);
        }
        let wrapped = k
            .wrapped
            .as_deref()
            .ok_or_else(|| internal(format!("master key version {} is retired", k.version)))?;
        if k.root_id != self.root_id {
            return Err(internal(format!(
                "master key version {} was wrapped by another root key ({}); this instance has {}",
                k.version, k.root_id, self.root_id
            )));
        }
        let key = self
            .root_key()
            .unwrap_key(&kek_label(k.version), wrapped)
            .map_err(|e| internal(format!("master key version {}: {e}", k.version)))?;
        self.cache_kek(k.version, key.clone());
        Ok(key)
    }

    async fn kek(&self, version: i64) -> AppResult<KeyBytes> {
        if let Some(key) = self.keks.read().ok().and_then(|m| m.get(&version).cloned()) {
            return Ok(key);
        }
        let keys = self.store.master_keys().await?;
        let k = keys
            .iter()
            .find(|k| k.version == version)
            .ok_or_else(|| internal(format!("no master key version {version}")))?;
        self.open_kek(k)
    }

    // ------------------------------------------------------------ data keys

    /// A cached data key version whose row was read within the TTL.
    fn cached_dek(&self, id: &str, version: i64) -> Option<(Arc<DataKey>, bool)> {
        let now = self.clock.now();
        let m = self.deks.read().ok()?;
        let (k, at, subject) = m.get(&(id.to_owned(), version))?;
        (at.plus_seconds(ACTIVE_TTL_SECONDS) > now).then(|| (k.clone(), *subject))
    }

    fn cache_dek(&self, dek: &Arc<DataKey>, owner: &str) {
        if let Ok(mut m) = self.deks.write() {
            m.insert(
                (dek.id.clone(), dek.version),
                (
                    dek.clone(),
                    self.clock.now(),
                    owner.starts_with("customer:") || owner.starts_with("login:"),
                ),
            );
        }
    }

    async fn open_dek(&self, r: &DataKeyRecord) -> AppResult<Arc<DataKey>> {
        let cache_key = (r.id.clone(), r.version);
        let Some(wrapped) = r.wrapped.as_deref() else {
            // Destroyed (an erasure) or retired and purged: forget it here too.
            if let Ok(mut m) = self.deks.write() {
                m.remove(&cache_key);
            }
            return Err(AppError::Unprocessable {
                code: "key_destroyed",
                message: "the data key for this record no longer exists".into(),
            });
        };
        if let Some((k, _)) = self.cached_dek(&r.id, r.version) {
            return Ok(k);
        }
        let kek = self.kek(r.kek_version).await?;
        let key = kek
            .unwrap_key(
                &dek_label(&r.id, r.version, &r.tenant_id, &r.owner),
                wrapped,
            )
            .map_err(|e| internal(format!("data key {} v{}: {e}", r.id, r.version)))?;
        let dek = Arc::new(DataKey {
            id: r.id.clone(),
            version: r.version,
            key,
        });
        self.cache_dek(&dek, &r.owner);
        Ok(dek)
    }

    /// A new data key version for `owner` (version 1, or the next one when rotating).
    async fn new_version(
        &self,
        tenant: &str,
        owner: &str,
        previous: Option<(&DataKeyRecord, &'static str)>,
        reserve: i64,
    ) -> AppResult<Option<Arc<DataKey>>> {
        let replace = previous.map(|(_, status)| status);
        let previous = previous.map(|(p, _)| p);
        let (kek_version, kek) = self.active_kek().await?;
        let id = previous.map_or_else(
            || format!("dek_{}", uuid::Uuid::now_v7().simple()),
            |p| p.id.clone(),
        );
        let version = previous.map_or(1, |p| p.version + 1);
        let key = KeyBytes::generate().map_err(internal)?;
        let record = DataKeyRecord {
            id: id.clone(),
            version,
            tenant_id: tenant.to_owned(),
            owner: owner.to_owned(),
            kek_version,
            wrapped: Some(
                kek.wrap(&dek_label(&id, version, tenant, owner), &key)
                    .map_err(internal)?,
            ),
            status: "active".into(),
            encryptions: reserve,
            created_at: self.clock.now().as_micros(),
            retired_at: None,
        };
        let ev = self.audit(
            Some(tenant),
            if previous.is_some() {
                "key.data.rotate"
            } else {
                "key.data.create"
            },
            &format!("{id}/{version}"),
            format!("data key for {}", owner.split(':').next().unwrap_or(owner)),
        );
        match self.store.insert_data_key(&record, replace, &[ev]).await {
            Ok(true) => {}
            // Another process created or rotated it first.
            Ok(false) | Err(StoreError::Conflict { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let dek = Arc::new(DataKey { id, version, key });
        self.cache_dek(&dek, owner);
        Ok(Some(dek))
    }

    /// The owner's active key with `n` encryptions reserved for the caller. Creates the first
    /// version on first use; rotates when the version's budget is spent. Refuses with
    /// `key_destroyed` for an owner whose keys were destroyed (an erased customer).
    pub async fn encryption_key(
        &self,
        tenant: &TenantId,
        owner: &KeyOwner,
        n: i64,
    ) -> AppResult<Arc<DataKey>> {
        if *owner == KeyOwner::Index {
            // Index keys compute HMACs only: they have no encryption budget to reserve from.
            return Err(internal("the index key seals nothing"));
        }
        let slot = (tenant.to_string(), owner.as_storage());
        if let Some(k) = self.take_cached(&slot, n, true) {
            return Ok(k);
        }
        let _refill = self.refill.lock().await;
        let now = self.clock.now();
        // Another task may have refilled meanwhile; or the cached version only needs its
        // status checked again (cheap: a read, and the reserved budget is kept).
        if let Some(k) = self.take_cached(&slot, n, true) {
            return Ok(k);
        }
        let stale = self.active.lock().ok().and_then(|m| {
            m.get(&slot)
                .map(|a| (a.key.id.clone(), a.key.version, a.remaining))
        });
        if let Some((id, version, remaining)) = stale
            && remaining >= n
        {
            match self.store.data_key(&id, version).await? {
                Some(r) if r.status == "active" => {
                    if let Ok(mut m) = self.active.lock()
                        && let Some(a) = m.get_mut(&slot)
                    {
                        a.fetched_at = now;
                    }
                    if let Some(k) = self.take_cached(&slot, n, false) {
                        return Ok(k);
                    }
                }
                _ => {
                    if let Ok(mut m) = self.active.lock() {
                        m.remove(&slot);
                    }
                }
            }
        }
        for _ in 0..8 {
            let latest = self.store.latest_data_key(&slot.0, &slot.1).await?;
            let (key, remaining) = match &latest {
                Some(r) if r.status == "destroyed" => {
                    return Err(AppError::Unprocessable {
                        code: "key_destroyed",
                        message: "this data subject has been erased".into(),
                    });
                }
                Some(r) if r.status == "active" => {
                    let block = self.block().max(n);
                    match self
                        .store
                        .reserve_encryptions(&r.id, r.version, block)
                        .await?
                    {
                        None => continue,
                        Some(total) if total > self.rotate_after => {
                            // Spent: start the next version (the old one is re-encrypted away
                            // from in the background).
                            match self
                                .new_version(&slot.0, &slot.1, Some((r, "spent")), block)
                                .await?
                            {
                                Some(k) => (k, block - n),
                                None => continue,
                            }
                        }
                        Some(_) => (self.open_dek(r).await?, block - n),
                    }
                }
                // No key yet (or only retired versions, which cannot happen without an active
                // successor).
                _ => match self
                    .new_version(&slot.0, &slot.1, None, self.block().max(n))
                    .await?
                {
                    Some(k) => (k, self.block().max(n) - n),
                    None => continue,
                },
            };
            if let Ok(mut m) = self.active.lock() {
                m.insert(
                    slot,
                    Active {
                        key: key.clone(),
                        remaining,
                        fetched_at: now,
                    },
                );
            }
            return Ok(key);
        }
        Err(internal("could not obtain an active data key"))
    }

    /// The cached active key with `n` encryptions taken from its reserved budget, if it has
    /// enough (and, with `fresh`, was checked within [`ACTIVE_TTL_SECONDS`]).
    fn take_cached(&self, slot: &(String, String), n: i64, fresh: bool) -> Option<Arc<DataKey>> {
        let now = self.clock.now();
        let mut m = self.active.lock().ok()?;
        let a = m.get_mut(slot)?;
        if a.remaining < n || (fresh && a.fetched_at.plus_seconds(ACTIVE_TTL_SECONDS) <= now) {
            return None;
        }
        a.remaining -= n;
        Some(a.key.clone())
    }

    /// Seals `plaintext` under the owner's active key for `row` of a registered encrypted
    /// column (only columns rotation knows can be sealed into).
    pub async fn seal(
        &self,
        tenant: &TenantId,
        owner: &KeyOwner,
        col: EncryptedColumn,
        row: &str,
        plaintext: &[u8],
    ) -> AppResult<String> {
        let key = self.encryption_key(tenant, owner, 1).await?;
        key.seal(&col.at(tenant.as_str(), row), plaintext)
            .map_err(internal)
    }

    /// Seals a value that belongs to no tenant (a platform admin's) for `row` of a registered
    /// column, under the platform key (AAD tenant is empty).
    pub fn seal_platform(
        &self,
        col: EncryptedColumn,
        row: &str,
        plaintext: &[u8],
    ) -> AppResult<String> {
        self.platform
            .seal(&col.at("", row), plaintext)
            .map_err(internal)
    }

    /// Opens what [`Keyring::seal_platform`] sealed at `row` of `col`.
    pub fn open_platform(
        &self,
        col: EncryptedColumn,
        row: &str,
        ciphertext: &str,
    ) -> AppResult<Zeroizing<Vec<u8>>> {
        self.platform
            .open(&col.at("", row), ciphertext)
            .map_err(|e| internal(format!("{}.{} row {row}: {e}", col.table, col.column)))
    }

    /// Opens a ciphertext stored at `ctx`, whichever key version sealed it. The key must belong
    /// to the same tenant.
    pub async fn open(&self, ctx: &Context<'_>, ciphertext: &str) -> AppResult<Zeroizing<Vec<u8>>> {
        let header = Header::parse(ciphertext).map_err(internal)?;
        let cached = self.cached_dek(header.key_id, header.version);
        let key = match cached {
            // A data subject's key is checked against its row on every use (one primary-key
            // read, as a session is on every request): an erasure committed by any instance
            // stops it opening here at once. `open_dek` reuses the unwrapped key while the row
            // still holds it.
            Some((k, false)) => k,
            _ => {
                let r = self
                    .store
                    .data_key(header.key_id, header.version)
                    .await?
                    .ok_or_else(|| internal("ciphertext names an unknown data key"))?;
                if r.tenant_id != ctx.tenant {
                    return Err(internal("ciphertext names another tenant's data key"));
                }
                self.open_dek(&r).await?
            }
        };
        key.open(ctx, ciphertext)
            .map_err(|e| internal(format!("{}.{} row {}: {e}", ctx.table, ctx.column, ctx.row)))
    }

    /// A stored value that may predate encryption: ciphertexts are opened, legacy plaintext is
    /// returned as it is (rotation encrypts it).
    pub async fn open_text(&self, ctx: &Context<'_>, stored: &str) -> AppResult<Zeroizing<String>> {
        if !is_ciphertext(stored) {
            return Ok(Zeroizing::new(stored.to_owned()));
        }
        let bytes = self.open(ctx, stored).await?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| internal("decrypted value is not UTF-8"))
    }

    /// The tenant's live index keys, read from the database on every call (one indexed query;
    /// the unwrapped keys are cached), so that every instance follows an index rotation at
    /// once. Index keys only compute HMACs: they reserve no encryptions and are never rotated
    /// automatically, only by [`Keyring::start_index_rotation`]. Creates version 1 on first use.
    pub async fn index_keys(&self, tenant: &TenantId) -> AppResult<IndexKeys> {
        let owner = KeyOwner::Index.as_storage();
        for _ in 0..8 {
            let live = self.store.index_keys(tenant.as_str()).await?;
            if live.is_empty() {
                if let Some(k) = self.new_version(tenant.as_str(), &owner, None, 0).await? {
                    return Ok(IndexKeys(vec![k]));
                }
                continue;
            }
            let mut keys = Vec::with_capacity(live.len());
            for r in &live {
                keys.push(self.open_dek(r).await?);
            }
            return Ok(IndexKeys(keys));
        }
        Err(internal("could not obtain the tenant's index key"))
    }

    /// The blind index of `normalised` for `field` in `tenant` under its newest live index
    /// version.
    pub async fn blind_index(
        &self,
        tenant: &TenantId,
        field: &str,
        normalised: &str,
    ) -> AppResult<String> {
        self.index_keys(tenant)
            .await?
            .digests(field, normalised)
            .pop()
            .map(|(_, d)| d)
            .ok_or_else(|| internal("no index key"))
    }

    /// Starts (or resumes) an index key rotation: a new index version becomes active and the
    /// current one `spent`, both live (written and searched) until every customer is
    /// re-indexed under the new one ([`crate::service::customers::reindex`]), which then retires
    /// the old versions with [`Keyring::finish_index_rotation`]. Returns the new version and
    /// whether an unfinished rotation was resumed.
    pub async fn start_index_rotation(&self, tenant: &TenantId) -> AppResult<(i64, bool)> {
        let owner = KeyOwner::Index.as_storage();
        let live = self.store.index_keys(tenant.as_str()).await?;
        match live.as_slice() {
            [] => {
                let keys = self.index_keys(tenant).await?;
                Ok((keys.versions().last().copied().unwrap_or(1), false))
            }
            [.., newest] if live.len() > 1 => Ok((newest.version, true)),
            [.., newest] => match self
                .new_version(tenant.as_str(), &owner, Some((newest, "spent")), 0)
                .await?
            {
                Some(k) => Ok((k.version, false)),
                None => Err(AppError::Conflict {
                    code: "index_rotation_running",
                    param: None,
                    message: "another process rotated this tenant's index key meanwhile; run again"
                        .into(),
                }),
            },
        }
    }

    /// Retires the index versions below `newest` if no customer is left to re-index under it
    /// (checked in the retiring transaction); `None` if one is.
    pub async fn finish_index_rotation(
        &self,
        tenant: &TenantId,
        newest: i64,
        reindexed: u64,
    ) -> AppResult<Option<Vec<i64>>> {
        let ev = self.audit(
            Some(tenant.as_str()),
            "key.index.retire",
            &format!("index:{newest}"),
            format!("{reindexed} customers re-indexed under index key version {newest}"),
        );
        Ok(self
            .store
            .retire_index_versions(tenant.as_str(), newest, self.clock.now(), &[ev])
            .await?)
    }

    /// Forgets cached keys of `owner` (after their destruction).
    pub fn forget(&self, tenant: &TenantId, owner: &KeyOwner) {
        let slot = (tenant.to_string(), owner.as_storage());
        if let Ok(mut m) = self.active.lock() {
            m.remove(&slot);
        }
        if let KeyOwner::Customer(_) | KeyOwner::Login(_) = owner
            && let Ok(mut m) = self.deks.write()
        {
            // Key ids are unique per owner, but the cache is keyed by id: drop every version
            // whose id the active map no longer knows. Simplest and safe: clear the cache.
            m.clear();
        }
    }

    // ------------------------------------------------------------ rotation

    /// Adds a master key version and rewraps every data key under it, then retires the old
    /// versions. Resumes an unfinished rotation instead of starting another.
    pub async fn rotate_master(&self, progress: Progress<'_>) -> AppResult<MasterRotation> {
        let keys = self.store.master_keys().await?;
        // Before anything changes: this root key must open the active version (and every
        // retiring one whose data keys are still to be rewrapped). A wrong root key stops here,
        // leaving the key hierarchy as it was.
        for k in keys
            .iter()
            .filter(|k| k.status == "active" || (k.status == "retiring" && k.wrapped.is_some()))
        {
            self.open_kek(k)?;
        }
        let resumed = keys.iter().any(|k| k.status == "retiring");
        let version = if resumed || keys.is_empty() {
            self.active_kek().await?.0
        } else {
            let version = keys.iter().map(|k| k.version).max().unwrap_or(0) + 1;
            let kek = KeyBytes::generate().map_err(internal)?;
            let record = MasterKeyRecord {
                version,
                root_id: self.root_id.clone(),
                wrapped: Some(
                    self.root_key()
                        .wrap(&kek_label(version), &kek)
                        .map_err(internal)?,
                ),
                status: "active".into(),
                created_at: self.clock.now().as_micros(),
                retired_at: None,
            };
            let ev = self.audit(
                None,
                "key.master.rotate",
                &format!("master:{version}"),
                format!("master key version {version} added"),
            );
            self.store.add_master_key(&record, true, &[ev]).await?;
            self.cache_kek(version, kek);
            version
        };
        let mut rewrapped = self.rewrap_all(version, progress).await?;
        let mut retired = self.retire_masters().await?;
        // A version still wrapping a data key (one created under it while the rewrap ran) is
        // not retired: rewrap again, a few times, then leave it `retiring` for the next run.
        for _ in 0..3 {
            if self.retiring_masters().await?.is_empty() {
                break;
            }
            rewrapped += self.rewrap_all(version, progress).await?;
            retired.extend(self.retire_masters().await?);
        }
        let still_retiring = self.retiring_masters().await?;
        Ok(MasterRotation {
            version,
            resumed,
            rewrapped,
            retired,
            still_retiring,
        })
    }

    async fn retiring_masters(&self) -> AppResult<Vec<i64>> {
        Ok(self
            .store
            .master_keys()
            .await?
            .into_iter()
            .filter(|k| k.status == "retiring")
            .map(|k| k.version)
            .collect())
    }

    async fn rewrap_all(&self, version: i64, progress: Progress<'_>) -> AppResult<u64> {
        let new_kek = self.kek(version).await?;
        let total = self.count_not_under(version).await?;
        let mut done = 0u64;
        progress(done, total);
        loop {
            let batch = self.store.data_keys_not_under(version, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for r in &batch {
                let Some(wrapped) = r.wrapped.as_deref() else {
                    continue;
                };
                let label = dek_label(&r.id, r.version, &r.tenant_id, &r.owner);
                let old = self.kek(r.kek_version).await?;
                let key = old
                    .unwrap_key(&label, wrapped)
                    .map_err(|e| internal(format!("data key {} v{}: {e}", r.id, r.version)))?;
                let rewrapped = new_kek.wrap(&label, &key).map_err(internal)?;
                self.store
                    .rewrap_data_key(&r.id, r.version, r.kek_version, version, &rewrapped)
                    .await?;
                done += 1;
                progress(done, total.max(done));
            }
        }
        Ok(done)
    }

    async fn count_not_under(&self, version: i64) -> AppResult<u64> {
        // Counting by paging keeps the store interface small; data keys number in the
        // thousands, not billions.
        let n = self
            .store
            .data_keys_not_under(version, i64::MAX)
            .await?
            .len();
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    async fn retire_masters(&self) -> AppResult<Vec<i64>> {
        let mut retired = Vec::new();
        for k in self.store.master_keys().await? {
            if k.status != "retiring" {
                continue;
            }
            let ev = self.audit(
                None,
                "key.master.retire",
                &format!("master:{}", k.version),
                "no data key is wrapped by it any more".into(),
            );
            if self
                .store
                .retire_master_key(k.version, self.clock.now(), &[ev])
                .await?
            {
                retired.push(k.version);
            }
        }
        Ok(retired)
    }

    /// Starts a new data key version for `owner`; returns it. The previous version becomes
    /// `retiring` until [`Keyring::reencrypt`] has moved its ciphertexts.
    pub async fn rotate_data_key(&self, tenant: &TenantId, owner: &KeyOwner) -> AppResult<i64> {
        let slot = (tenant.to_string(), owner.as_storage());
        for _ in 0..8 {
            let latest = self.store.latest_data_key(&slot.0, &slot.1).await?;
            match &latest {
                Some(r) if r.status == "destroyed" => {
                    return Err(AppError::Unprocessable {
                        code: "key_destroyed",
                        message: "this data subject has been erased".into(),
                    });
                }
                Some(r) if r.status == "active" => {
                    if let Some(k) = self
                        .new_version(&slot.0, &slot.1, Some((r, "retiring")), 0)
                        .await?
                    {
                        if let Ok(mut m) = self.active.lock() {
                            m.remove(&slot);
                        }
                        return Ok(k.version);
                    }
                }
                _ => {
                    if let Some(k) = self.new_version(&slot.0, &slot.1, None, 0).await? {
                        return Ok(k.version);
                    }
                }
            }
        }
        Err(internal("could not rotate the data key"))
    }

    /// How many stored values a data key version seals, across every encrypted column.
    async fn sealed_under(&self, k: &DataKeyRecord) -> AppResult<u64> {
        let prefix = Header::prefix(&k.id, k.version);
        let mut total = 0u64;
        for col in ENCRYPTED_COLUMNS {
            let n = self.store.count_encrypted(*col, &prefix).await?;
            total += u64::try_from(n).unwrap_or(0);
        }
        Ok(total)
    }

    /// Re-encrypts every value sealed by a retiring data key version under its owner's active
    /// version, in batches, then retires it once a recount finds nothing left under it.
    /// Returns how many values moved.
    pub async fn reencrypt(&self, old: &DataKeyRecord, progress: Progress<'_>) -> AppResult<u64> {
        let prefix = Header::prefix(&old.id, old.version);
        let total = self.sealed_under(old).await?;
        let mut done = 0u64;
        progress(done, total);
        let tenant = TenantId::from_trusted(old.tenant_id.clone());
        let owner = owner_from_storage(&old.owner);
        // Requests that took the old version just before the rotation may still seal under it:
        // go round until a recount finds nothing (bounded; the background pass retries).
        for _ in 0..4 {
            for col in ENCRYPTED_COLUMNS {
                let base = done;
                done += self
                    .move_column(*col, &tenant, &owner, Some(&prefix), &mut |d| {
                        progress(base + d, total.max(base + d));
                    })
                    .await?;
            }
            if self.sealed_under(old).await? == 0 {
                break;
            }
        }
        if self.sealed_under(old).await? > 0 {
            return Ok(done);
        }
        let ev = self.audit(
            Some(&old.tenant_id),
            "key.data.retire",
            &format!("{}/{}", old.id, old.version),
            format!("{done} values re-encrypted"),
        );
        self.store
            .retire_data_key(&old.id, old.version, self.clock.now(), &[ev])
            .await?;
        Ok(done)
    }

    /// Seals legacy plaintext values of a tenant's tenant-key columns (data written before
    /// encryption existed).
    pub async fn encrypt_legacy(&self, tenant: &TenantId) -> AppResult<u64> {
        let mut done = 0;
        for col in [
            crate::store::keys::TRANSFER_DETAILS,
            crate::store::keys::IDEMPOTENCY_RESPONSES,
        ] {
            done += self
                .move_column(col, tenant, &KeyOwner::Tenant, None, &mut |_| {})
                .await?;
        }
        Ok(done)
    }

    async fn move_column(
        &self,
        col: EncryptedColumn,
        tenant: &TenantId,
        owner: &KeyOwner,
        prefix: Option<&str>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> AppResult<u64> {
        let mut after: Option<String> = None;
        let mut done = 0u64;
        loop {
            let batch = self
                .store
                .encrypted_values(col, tenant.as_str(), prefix, after.as_deref(), BATCH)
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.row_key.clone());
            for v in &batch {
                let ctx = col.at(tenant.as_str(), &v.row_key);
                let plain = if prefix.is_some() {
                    self.open(&ctx, &v.stored).await?
                } else {
                    legacy_plaintext(col, &v.stored)?
                };
                let key = self.encryption_key(tenant, owner, 1).await?;
                let sealed = key.seal(&ctx, &plain).map_err(internal)?;
                // A value rewritten meanwhile (rectified, or moved by another worker) is left
                // to whoever rewrote it.
                if self
                    .store
                    .replace_encrypted(col, tenant.as_str(), &v.row_key, &v.stored, &sealed)
                    .await?
                {
                    done += 1;
                    progress(done);
                }
            }
        }
        Ok(done)
    }

    /// Rotates a tenant's data key and re-encrypts its data under the new version in batches
    /// (also sealing any legacy plaintext), then retires the old version. Safe to run while
    /// the server serves; resumable (run it again, or let the server's background task finish).
    pub async fn rotate_tenant(
        &self,
        tenant: &TenantId,
        progress: Progress<'_>,
    ) -> AppResult<TenantRotation> {
        let version = self.rotate_data_key(tenant, &KeyOwner::Tenant).await?;
        let mut moved = 0;
        let mut retired = Vec::new();
        // The version just replaced, and any whose budget ran out earlier: after an operator's
        // rotation nothing stays sealed under an older version.
        let mut old_versions = self
            .store
            .data_keys_with_status("retiring", i64::MAX)
            .await?;
        old_versions.extend(self.store.data_keys_with_status("spent", i64::MAX).await?);
        for old in old_versions {
            if old.tenant_id == tenant.as_str() && old.owner == KeyOwner::Tenant.as_storage() {
                moved += self.reencrypt(&old, progress).await?;
                retired.push(old.version);
            }
        }
        let legacy = self.encrypt_legacy(tenant).await?;
        Ok(TenantRotation {
            version,
            reencrypted: moved,
            legacy_sealed: legacy,
            retired,
        })
    }

    /// Finishes unfinished work: rewraps data keys left under a retiring master key version,
    /// and re-encrypts away from retiring data key versions (an operator's rotation). A `spent`
    /// version (its budget ran out) needs no re-encryption: it keeps opening what it sealed.
    /// Returns how many items moved.
    pub async fn run_pending(&self) -> AppResult<u64> {
        let mut moved = 0;
        let masters = self.store.master_keys().await?;
        if masters.iter().any(|k| k.status == "retiring") {
            let (version, _) = self.active_kek().await?;
            moved += self.rewrap_all(version, &|_, _| {}).await?;
            self.retire_masters().await?;
        }
        // Key material of versions retired more than the grace period ago goes for good, once
        // it is certain nothing is sealed under them (a request already holding the old version
        // when it was retired may have sealed a value after the re-encryption passed by: such a
        // version goes back to `retiring` and is moved again below).
        let before = self.clock.now().plus_seconds(-RETIREMENT_GRACE_SECONDS);
        let mut datas = 0;
        for k in self.store.retired_data_keys(before).await? {
            if self.sealed_under(&k).await? == 0 {
                datas += u64::from(self.store.purge_data_key(&k.id, k.version).await?);
            } else {
                tracing::warn!(key = %k.id, version = k.version, "a retired data key still seals values; re-encrypting again");
                self.store.reopen_data_key(&k.id, k.version).await?;
            }
        }
        let masters = self.store.purge_retired_masters(before).await?;
        if masters + datas > 0 {
            // Drop them from memory too (the next use reloads what is still live).
            if let Ok(mut m) = self.keks.write() {
                m.clear();
            }
            if let Ok(mut m) = self.deks.write() {
                m.clear();
            }
            moved += masters + datas;
        }
        // Re-encrypting spends encryptions too, so it can itself start a newer version: go
        // round until nothing is retiring (bounded; the server comes back a minute later).
        for _ in 0..16 {
            let retiring = self.store.data_keys_with_status("retiring", BATCH).await?;
            if retiring.is_empty() {
                break;
            }
            for old in retiring {
                moved += self.reencrypt(&old, &|_, _| {}).await?;
            }
        }
        Ok(moved)
    }
}

/// What a legacy plaintext value becomes before it is sealed: the form the column's readers
/// expect of a ciphertext. A transfer's details column held a bare description before
/// encryption; sealed, it holds the details as JSON.
fn legacy_plaintext(col: EncryptedColumn, stored: &str) -> AppResult<Zeroizing<Vec<u8>>> {
    if col == crate::store::keys::TRANSFER_DETAILS {
        let details = crate::domain::ledger::TransferDetails::described(stored.to_owned());
        return serde_json::to_vec(&details)
            .map(Zeroizing::new)
            .map_err(internal);
    }
    Ok(Zeroizing::new(stored.as_bytes().to_vec()))
}

fn owner_from_storage(s: &str) -> KeyOwner {
    match s {
        "tenant" => KeyOwner::Tenant,
        "index" => KeyOwner::Index,
        other => match other.strip_prefix("login:") {
            Some(id) => KeyOwner::Login(id.to_owned()),
            None => KeyOwner::Customer(other.strip_prefix("customer:").unwrap_or(other).to_owned()),
        },
    }
}
