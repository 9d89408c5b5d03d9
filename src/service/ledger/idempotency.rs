//! Idempotency keys: the in-process in-flight claim, the key's fingerprint, and replays of a
//! stored outcome.

use super::*;

/// Idempotency keys of requests being processed in this process (for 409 while in flight).
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<String>>);

pub(super) struct InFlightGuard<'a> {
    set: &'a InFlight,
    key: String,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.0.lock() {
            s.remove(&self.key);
        }
    }
}

impl InFlight {
    pub(super) fn claim(&self, key: String) -> Option<InFlightGuard<'_>> {
        // The lock is released before a guard can exist: a guard's drop takes it again.
        let inserted = self.0.lock().ok()?.insert(key.clone());
        inserted.then(|| InFlightGuard { set: self, key })
    }

    /// Claims `key` for this tenant and principal, or 409 `idempotency_key_in_flight` while
    /// another request of this process holds it.
    pub(super) fn claim_key(
        &self,
        tenant: &TenantId,
        principal: &str,
        key: &IdempotencyKey,
    ) -> AppResult<InFlightGuard<'_>> {
        self.claim(format!("{tenant}/{principal}/{}", key.key))
            .ok_or_else(in_flight)
    }
}

/// An `Idempotency-Key` and the fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

impl IdempotencyKey {
    pub fn parse(raw: &str, request_hash: String) -> AppResult<Self> {
        if raw.is_empty() || raw.len() > 255 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AppError::invalid(
                "Idempotency-Key",
                "must be 1 to 255 printable ASCII characters",
            ));
        }
        Ok(Self {
            key: raw.to_owned(),
            request_hash,
        })
    }
}

/// A stored answer, read back for a replay.
pub(super) enum StoredAnswer {
    Transfer(Box<PostedTransfer>),
    Hold(Box<crate::store::HoldRecord>),
    Refused(Refusal),
    /// An older version's rendered body.
    Body {
        status: u16,
        body: String,
    },
}

impl StoredAnswer {
    /// The answer to a retried money movement.
    pub(super) fn into_movement(self) -> AppResult<MovementOutcome> {
        match self {
            StoredAnswer::Transfer(p) => Ok(MovementOutcome::Replayed(p)),
            StoredAnswer::Refused(r) => Ok(MovementOutcome::ReplayedRefusal(r)),
            StoredAnswer::Body { status, body } => {
                Ok(MovementOutcome::ReplayedBody { status, body })
            }
            // A movement a check sent to review.
            StoredAnswer::Hold(hold) => Ok(MovementOutcome::Reviewed {
                hold,
                replayed: true,
            }),
        }
    }
}

pub(super) async fn replay(
    core: &Core,
    tenant: &TenantId,
    principal: &str,
    k: &IdempotencyKey,
) -> AppResult<Option<MovementOutcome>> {
    match stored(core, tenant, principal, k).await? {
        Some(a) => a.into_movement().map(Some),
        None => Ok(None),
    }
}

/// The live stored answer to `k`, if any.
pub(super) async fn stored(
    core: &Core,
    tenant: &TenantId,
    principal: &str,
    k: &IdempotencyKey,
) -> AppResult<Option<StoredAnswer>> {
    let Some(stored) = core
        .store
        .get_idempotency(tenant, principal, &k.key, core.clock.now())
        .await?
    else {
        return Ok(None);
    };
    stored_answer(core, tenant, principal, stored, k)
        .await
        .map(Some)
}

/// The stored answer to a key, if the request is the same one; 422 if the key was used with a
/// different request. A stored outcome is resolved here: the transfer or hold it names is read
/// back (a hold as it was created), a refusal is returned as it was.
pub(super) async fn stored_answer(
    core: &Core,
    tenant: &TenantId,
    principal: &str,
    stored: crate::store::IdempotencyRecord,
    k: &IdempotencyKey,
) -> AppResult<StoredAnswer> {
    if !crate::crypto::constant_time_eq(stored.request_hash.as_bytes(), k.request_hash.as_bytes()) {
        return Err(AppError::Unprocessable {
            code: "idempotency_key_reused",
            message: "this idempotency key was used with a different request".into(),
        });
    }
    // Bodies rendered by older versions were sealed under the tenant's data key (they could
    // carry transfer details); `keys encrypt-legacy` may have sealed stored outcomes too.
    let body = if crate::crypto::envelope::is_ciphertext(&stored.response_body) {
        let row = format!("{principal}/{}", k.key);
        let col = crate::store::keys::IDEMPOTENCY_RESPONSES;
        let ctx = col.at(tenant.as_str(), &row);
        core.keyring
            .open_text(&ctx, &stored.response_body)
            .await?
            .to_string()
    } else {
        stored.response_body
    };
    let outcome = match StoredOutcome::decode(&body) {
        Some(o) => o,
        None if body.starts_with(OUTCOME_PREFIX) => {
            return Err(AppError::internal(
                "a stored outcome this version cannot read",
            ));
        }
        None => return legacy_answer(core, tenant, &stored.response_status, body).await,
    };
    match outcome {
        StoredOutcome::Transfer(id) => {
            let mut p =
                core.store.get_transfer(tenant, &id).await?.ok_or_else(|| {
                    AppError::internal("the transfer of a stored answer is missing")
                })?;
            open_details(core, &mut p).await?;
            Ok(StoredAnswer::Transfer(Box::new(p)))
        }
        StoredOutcome::Hold(id) => {
            let h = core
                .store
                .get_hold(tenant, &id)
                .await?
                .ok_or_else(|| AppError::internal("the hold of a stored answer is missing"))?;
            Ok(StoredAnswer::Hold(Box::new(as_created(h))))
        }
        StoredOutcome::Refused(r) => Ok(StoredAnswer::Refused(r)),
    }
}

/// A body rendered and stored by an older version: a success naming a transfer is read back
/// (and rendered for the replaying credential, as then); anything else is answered as stored.
pub(super) async fn legacy_answer(
    core: &Core,
    tenant: &TenantId,
    status: &i64,
    body: String,
) -> AppResult<StoredAnswer> {
    let status = u16::try_from(*status).unwrap_or(500);
    if (200..300).contains(&status) {
        let id = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        if let Some(id) = id.filter(|id| TransferId::parse(id).is_some())
            && let Some(mut p) = core.store.get_transfer(tenant, &id).await?
            && open_details(core, &mut p).await.is_ok()
        {
            return Ok(StoredAnswer::Transfer(Box::new(p)));
        }
    }
    Ok(StoredAnswer::Body { status, body })
}

/// A hold as its creation answered it: active, nothing captured (its creation facts never
/// change; its status does).
pub(super) fn as_created(mut h: crate::store::HoldRecord) -> crate::store::HoldRecord {
    h.status = "active".into();
    h.captured_transfer_id = None;
    h.updated_at = h.created_at;
    h
}

pub(super) fn in_flight() -> AppError {
    AppError::Conflict {
        code: "idempotency_key_in_flight",
        param: None,
        message: "a request with this idempotency key is still being processed; retry later".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn an_in_flight_key_is_held_until_its_guard_drops() {
        let set = InFlight::default();
        let first = set.claim("k".into());
        assert!(first.is_some());
        // A second claim fails without disturbing the first (and without deadlocking).
        assert!(set.claim("k".into()).is_none());
        assert!(set.claim("k".into()).is_none());
        drop(first);
        assert!(set.claim("k".into()).is_some());
    }
}
