//! Data-subject rights (GDPR Art. 15, 17 and 18): the export of everything held about a
//! customer, erasure by crypto-shredding, and the restriction of processing.
//!
//! - **Export** gathers the customer record and its opened personal data, its accounts, holds,
//!   transfers (details opened) and the audit records about it, paging through everything; a
//!   section larger than [`MAX_EXPORT_ITEMS`] is cut and named in `truncated`. The export is
//!   itself audited (`customer.export`) before anything is returned. It is the customer's copy,
//!   whoever asks for it: no staff notes, no staff ids, no compliance actions
//!   (`domain::disclosure`; tipping off).
//! - **Erasure** is one store transaction (`Store::erase_customer`): refused while any account
//!   holds money or has something pending; otherwise the accounts close, the blind indexes go,
//!   every version of the customer's data key loses its key material, the personal data and
//!   external reference are cleared and the linked login is pseudonymised, disabled and signed
//!   out. Ledger rows stay, under the customer's and accounts' random ids (the pseudonyms).
//!   Staff notes about the customer lose their text, and the development mailbox's files
//!   addressed to the customer (or its login) are removed once the erasure has committed.
//!   Erasure and every creation for the customer serialise on the customer's row
//!   (`lock_customer_tx` in the store), so nothing is created for an erased customer.
//!   When the linked login holds a staff role too (staff who bank with their employer), the
//!   erasure only unlinks it and takes away its CUSTOMER role; whoever erases must be able to
//!   manage that user directly (`users:write`, and every permission of its roles), or the
//!   erasure is refused and nothing changes.
//! - **Restriction** sets a flag that the ledger core checks, on the rows it locks, for every
//!   new money movement and hold (a reversal, a correction, stays allowed).
//!
//! Reasons are codes from fixed lists, never free text, so no personal data reaches the
//! tamper-evident (and therefore unerasable) audit chain through them.

use super::keys::KeyOwner;
use super::{AuditBuilder, Core, Principal, RequestMeta};
use crate::clock::Timestamp;
use crate::domain::audit::{AuditRecord, Outcome, chain_for};
use crate::domain::authz::{Permission, Scope, roles_from_storage};
use crate::domain::disclosure::{customer_actor, customer_audit_view};
use crate::error::{AppError, AppResult};
use crate::ids::{CustomerId, TenantId, UserId};
use crate::store::{
    AccountRecord, CustomerPrivacyRecord, ErasureOutcome, HoldRecord, LinkedUser, Page,
    PostedTransfer, TransferFilter,
};

/// The code of an erasure refused because money or holds remain; its audit record is written
/// by [`erase`] itself.
pub const ERASURE_BLOCKED: &str = "erasure_blocked";

/// Most items of one section (transfers, holds, audit events) in one export; a larger section
/// is cut at this size and named in [`CustomerExport::truncated`].
pub const MAX_EXPORT_ITEMS: usize = 10_000;

/// Rows read per store call while paging through a section.
const PAGE: u32 = 100;

/// Why a customer is erased (GDPR Art. 17(1)).
pub const ERASURE_REASONS: &[&str] = &[
    "data_subject_request",
    "consent_withdrawn",
    "no_longer_necessary",
    "objection",
    "unlawful_processing",
    "legal_obligation",
];

/// Why processing is restricted (GDPR Art. 18(1)).
pub const RESTRICTION_REASONS: &[&str] = &[
    "accuracy_contested",
    "unlawful_processing",
    "legal_claims",
    "objection_pending",
    "data_subject_request",
];

/// Why a restriction is lifted (GDPR Art. 18(3)).
pub const UNRESTRICTION_REASONS: &[&str] = &[
    "accuracy_verified",
    "objection_resolved",
    "legal_claims_concluded",
    "data_subject_request",
    "restricted_in_error",
];

fn reason_code(raw: &str, allowed: &'static [&'static str]) -> AppResult<&'static str> {
    allowed.iter().copied().find(|c| *c == raw).ok_or_else(|| {
        AppError::invalid("reason", format!("must be one of: {}", allowed.join(", ")))
    })
}

/// A customer's opened personal data. `Debug` never shows it.
pub struct Profile(pub serde_json::Value);

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Profile(<redacted>)")
    }
}

/// Everything held about a customer.
#[derive(Debug)]
pub struct CustomerExport {
    pub generated_at: Timestamp,
    pub customer: CustomerPrivacyRecord,
    /// `None` when no personal data is held (none given, or erased).
    pub profile: Option<Profile>,
    pub accounts: Vec<AccountRecord>,
    pub holds: Vec<HoldRecord>,
    pub transfers: Vec<PostedTransfer>,
    pub audit_events: Vec<AuditRecord>,
    /// The KYC tier and every verification step (documents by metadata; their contents are
    /// downloaded separately, audited).
    pub kyc: super::kyc::CustomerKyc,
    /// The linked user's id: audit records it made keep their IP address in the export, others
    /// (staff acting on the customer) do not.
    pub subject_user: Option<String>,
    /// Sections cut at [`MAX_EXPORT_ITEMS`].
    pub truncated: Vec<&'static str>,
}

/// What an erasure did.
#[derive(Debug)]
pub struct ErasureReport {
    pub customer_id: String,
    pub erased_at: Timestamp,
    pub accounts_closed: Vec<String>,
    pub user_disabled: Option<String>,
    /// A staff user that was linked to the customer: unlinked, its CUSTOMER role removed.
    pub user_unlinked: Option<String>,
    pub keys_destroyed: u64,
    pub lookups_deleted: u64,
}

/// The customer `id` of the caller's tenant, if `perm`'s scope lets the caller act on it
/// (under `Own`, only the customer record linked to the caller). 404 otherwise.
async fn reachable_customer(
    core: &Core,
    actor: &Principal,
    id: &str,
    perm: Permission,
) -> AppResult<CustomerPrivacyRecord> {
    let tenant = actor.tenant()?;
    if CustomerId::parse(id).is_none() {
        return Err(AppError::NotFound("customer"));
    }
    if actor.scope(perm)? == Scope::Own {
        let own = core.store.customer_for_user(tenant, &actor.user_id).await?;
        if own.is_none_or(|c| c.id != id) {
            return Err(AppError::NotFound("customer"));
        }
    }
    core.store
        .customer_privacy(tenant, id)
        .await?
        .ok_or(AppError::NotFound("customer"))
}

fn erased() -> AppError {
    AppError::Conflict {
        code: "customer_erased",
        param: None,
        message: "this customer has been erased".into(),
    }
}

// ---------------------------------------------------------------- export

/// The export of everything held about customer `id` (Art. 15 and 20). Audited as
/// `customer.export` before it is returned.
pub async fn export(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
) -> AppResult<CustomerExport> {
    let mut customer = reachable_customer(core, actor, id, Permission::CustomersExport).await?;
    let tenant = actor.tenant()?;
    let mut truncated = Vec::new();
    customer.external_ref = super::customers::open_external_ref(
        core,
        tenant.as_str(),
        &customer.id,
        customer.external_ref.as_deref(),
    )
    .await?;

    let profile = match customer.pii.as_deref() {
        None => None,
        Some(stored) => {
            let col = crate::store::keys::CUSTOMER_PII;
            let ctx = col.at(tenant.as_str(), &customer.id);
            let text = core.keyring.open_text(&ctx, stored).await?;
            Some(Profile(serde_json::from_str(&text).map_err(|_| {
                AppError::internal("customer personal data is not JSON")
            })?))
        }
    };

    let now = core.clock.now();
    let mut accounts = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = Page {
            limit: PAGE,
            starting_after: after.clone(),
        };
        let rows = core
            .store
            .list_accounts(tenant, Some(&customer.id), false, &page)
            .await?;
        let more = rows.len() > PAGE as usize;
        for mut a in rows.into_iter().take(PAGE as usize) {
            after = Some(a.id.clone());
            // Holds past their expiry no longer count (as every account read shows).
            let (debits, credits) = core.store.expired_holds(tenant, &a.id, now).await?;
            a.pending_debits -= debits;
            a.pending_credits -= credits;
            accounts.push(a);
        }
        if !more {
            break;
        }
    }

    let mut holds = Vec::new();
    'accounts: for a in &accounts {
        let mut after: Option<String> = None;
        loop {
            let page = Page {
                limit: PAGE,
                starting_after: after.clone(),
            };
            let rows = core.store.list_holds(tenant, &a.id, &page).await?;
            let more = rows.len() > PAGE as usize;
            for mut h in rows.into_iter().take(PAGE as usize) {
                if holds.len() == MAX_EXPORT_ITEMS {
                    truncated.push("holds");
                    break 'accounts;
                }
                after = Some(h.id.clone());
                if h.status == "active" && h.expires_at <= now.as_micros() {
                    h.status = "expired".into();
                }
                holds.push(h);
            }
            if !more {
                break;
            }
        }
    }

    let mut transfers = Vec::new();
    let filter = TransferFilter {
        customer_id: Some(customer.id.clone()),
        ..TransferFilter::default()
    };
    let mut after: Option<String> = None;
    'transfers: loop {
        let page = Page {
            limit: PAGE,
            starting_after: after.clone(),
        };
        let rows = core.store.list_transfers(tenant, &filter, &page).await?;
        let more = rows.len() > PAGE as usize;
        for t in rows.into_iter().take(PAGE as usize) {
            if transfers.len() == MAX_EXPORT_ITEMS {
                truncated.push("transfers");
                break 'transfers;
            }
            after = Some(t.id.clone());
            let Some(mut p) = core.store.get_transfer(tenant, &t.id).await? else {
                continue;
            };
            super::ledger::open_details(core, &mut p).await?;
            // Staff ids are not the customer's to see (tipping off).
            p.transfer.created_by =
                customer_actor(p.transfer.created_by.take(), customer.user_id.as_deref());
            transfers.push(p);
        }
        if !more {
            break;
        }
    }

    let chain = chain_for(Some(tenant));
    let mut audit_events = Vec::new();
    let mut after_seq = 0;
    loop {
        let batch = core
            .store
            .audit_about_customer(
                &chain,
                tenant,
                &customer.id,
                customer.user_id.as_deref(),
                after_seq,
                500,
            )
            .await?;
        let Some(last) = batch.last() else { break };
        after_seq = last.seq;
        // The customer's copy: no compliance actions, no staff ids (see `domain::disclosure`).
        // Records in the chain are filtered here, never rewritten.
        let batch: Vec<AuditRecord> = batch
            .into_iter()
            .filter_map(|r| customer_audit_view(r, customer.user_id.as_deref()))
            .collect();
        let room = MAX_EXPORT_ITEMS - audit_events.len();
        if batch.len() > room {
            audit_events.extend(batch.into_iter().take(room));
            truncated.push("audit_events");
            break;
        }
        audit_events.extend(batch);
    }

    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "customer.export",
        Some(("customer", &customer.id)),
        Outcome::Success,
        (!truncated.is_empty()).then_some("truncated"),
    );
    // No disclosure without its audit record.
    core.store.append_audit(&ev).await?;

    let kyc = super::kyc::customer_kyc_for_export(core, tenant, &customer.id).await?;
    Ok(CustomerExport {
        generated_at: now,
        kyc,
        subject_user: customer.user_id.clone(),
        customer,
        profile,
        accounts,
        holds,
        transfers,
        audit_events,
        truncated,
    })
}

// ---------------------------------------------------------------- erasure

/// Erases customer `id` (Art. 17) by crypto-shredding. 422 `erasure_blocked` (nothing changed)
/// while an account holds money or has something pending; 409 `customer_erased` the second time.
pub async fn erase(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    reason: &str,
) -> AppResult<ErasureReport> {
    let reason = reason_code(reason, ERASURE_REASONS)?;
    let customer = reachable_customer(core, actor, id, Permission::CustomersErase).await?;
    if customer.status == "erased" {
        return Err(erased());
    }
    let tenant = actor.tenant()?;
    let owner = KeyOwner::Customer(customer.id.clone());
    // Make sure the customer has a data key row, so that once it is destroyed nothing can
    // ever be sealed for this customer again (sealing refuses with `key_destroyed`).
    match core.keyring.encryption_key(tenant, &owner, 0).await {
        Ok(_) => {}
        Err(AppError::Unprocessable {
            code: "key_destroyed",
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let mut events = vec![audit.own(
        "customer.erase",
        Some(("customer", &customer.id)),
        Outcome::Success,
        Some(reason),
    )];
    // What happens to the linked login is decided on its roles as read here; the store erases
    // only if they are still these.
    let linked_user = match &customer.user_id {
        Some(u) => {
            core.store
                .get_user(Some(tenant), &UserId::from_trusted(u.clone()))
                .await?
        }
        None => None,
    };
    // The addresses whose development mailbox files go with the erasure: the profile's email
    // and the linked login's (unless it is a staff login, which stays).
    let mut addresses = profile_email(core, tenant, &customer).await;
    let mut linked = None;
    if let Some(u) = linked_user {
        let l = LinkedUser {
            id: u.id.clone(),
            roles: u.roles.clone(),
        };
        // Opened before its key goes; one that cannot be opened leaves only its files.
        if !l.is_staff()
            && let Ok(email) = super::users::email_of(core, &u).await
        {
            addresses.push(email.to_ascii_lowercase());
        }
        linked = Some(l);
    }
    if let Some(l) = &linked {
        if l.is_staff() {
            check_may_manage(actor, l)?;
            events.push(audit.own(
                "user.roles.update",
                Some(("user", &l.id)),
                Outcome::Success,
                Some("customer_erased"),
            ));
        } else {
            events.push(audit.own(
                "user.disable",
                Some(("user", &l.id)),
                Outcome::Success,
                Some("customer_erased"),
            ));
        }
    }
    let now = core.clock.now();
    let outcome = core
        .session_cache
        .after(
            core.store
                .erase_customer(tenant, &customer.id, linked.as_ref(), now, &events),
        )
        .await?;
    match outcome {
        ErasureOutcome::Erased {
            accounts_closed,
            user_id,
            user_unlinked,
            keys_destroyed,
            lookups_deleted,
        } => {
            core.keyring.forget(tenant, &owner);
            if let Some(u) = &user_id {
                core.keyring
                    .forget(tenant, &super::users::login_owner(u.as_str()));
            }
            super::mail::remove_mailbox_files(core, &addresses).await;
            Ok(ErasureReport {
                customer_id: customer.id,
                erased_at: now,
                accounts_closed,
                user_disabled: user_id,
                user_unlinked,
                keys_destroyed,
                lookups_deleted,
            })
        }
        ErasureOutcome::Blocked(reasons) => {
            // The refusal is recorded against the customer (the HTTP layer then skips its own
            // generic record), in a transaction of its own since the erasure's rolled back.
            let mut ev = events.swap_remove(0);
            ev.outcome = Outcome::Failure;
            ev.reason = Some(ERASURE_BLOCKED.to_owned());
            super::audit::record(core, &ev).await;
            Err(AppError::Unprocessable {
                code: ERASURE_BLOCKED,
                message: format!(
                    "the customer cannot be erased yet: {}; settle, withdraw or void first",
                    reasons.join("; ")
                ),
            })
        }
        ErasureOutcome::AlreadyErased => Err(erased()),
        ErasureOutcome::NotFound => Err(AppError::NotFound("customer")),
        ErasureOutcome::LinkedUserChanged => Err(AppError::Conflict {
            code: "linked_user_changed",
            param: None,
            message: "the customer's linked user changed during the erasure; nothing was \
                      erased, try again"
                .into(),
        }),
    }
}

/// The email of `customer`'s profile, lower-cased, if it has one that still opens.
async fn profile_email(
    core: &Core,
    tenant: &TenantId,
    customer: &CustomerPrivacyRecord,
) -> Vec<String> {
    let Some(stored) = customer.pii.as_deref() else {
        return Vec::new();
    };
    let ctx = crate::store::keys::CUSTOMER_PII.at(tenant.as_str(), &customer.id);
    let Ok(text) = core.keyring.open_text(&ctx, stored).await else {
        return Vec::new();
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("email").and_then(|e| e.as_str()).map(str::to_owned))
        .map(|e| vec![e.to_ascii_lowercase()])
        .unwrap_or_default()
}

/// Seals, under each customer's own data key, the identifiers stored in clear before issue 14
/// (customers' external references). Runs at every start (`kasho serve`); a value rewritten
/// meanwhile is left as it is (compare-and-swap). Returns how many values it sealed.
pub async fn seal_legacy_identifiers(core: &Core) -> AppResult<u64> {
    let col = crate::store::keys::CUSTOMER_EXTERNAL_REF;
    let mut sealed = 0u64;
    let mut after_tenant: Option<String> = None;
    loop {
        let page = Page {
            limit: PAGE,
            starting_after: after_tenant.clone(),
        };
        let tenants = core.store.list_tenants(&page).await?;
        let more = tenants.len() > PAGE as usize;
        for t in tenants.into_iter().take(PAGE as usize) {
            after_tenant = Some(t.id.clone());
            let tenant = TenantId::from_trusted(t.id.clone());
            let mut after: Option<String> = None;
            loop {
                let batch = core
                    .store
                    .encrypted_values(col, tenant.as_str(), None, after.as_deref(), 100)
                    .await?;
                let Some(last) = batch.last() else { break };
                after = Some(last.row_key.clone());
                for v in &batch {
                    let ciphertext = match super::customers::seal_external_ref(
                        core, &tenant, &v.row_key, &v.stored,
                    )
                    .await
                    {
                        Ok(c) => c,
                        // An erased customer keeps no reference: nothing to seal.
                        Err(e) if e.code() == "key_destroyed" => continue,
                        Err(e) => return Err(e),
                    };
                    if core
                        .store
                        .replace_encrypted(col, tenant.as_str(), &v.row_key, &v.stored, &ciphertext)
                        .await?
                    {
                        sealed += 1;
                    }
                }
            }
        }
        if !more {
            break;
        }
    }
    Ok(sealed)
}

// ---------------------------------------------------------------- a customer's sessions

/// The customer whose data subject a session of `user` belongs to: a login holding only the
/// CUSTOMER role and linked to a customer record. Its sessions' device facts are the
/// customer's personal data: sealed under its key, or kept as a keyed hash.
async fn session_subject(
    core: &Core,
    tenant: Option<&TenantId>,
    user: &UserId,
    roles: &[crate::domain::authz::Role],
) -> AppResult<Option<String>> {
    let customer_only = !roles.is_empty()
        && roles
            .iter()
            .all(|r| *r == crate::domain::authz::Role::Customer);
    match tenant {
        Some(t) if customer_only => Ok(core.store.customer_for_user(t, user).await?.map(|c| c.id)),
        _ => Ok(None),
    }
}

/// The sign-in address and user agent to store for a new session `session` of `user`: sealed
/// under the customer's key for a customer's login (so an erasure shreds them in every copy of
/// the database), as they are for staff.
pub async fn session_device_facts(
    core: &Core,
    meta: &RequestMeta,
    tenant: Option<&TenantId>,
    user: &UserId,
    roles: &[crate::domain::authz::Role],
    session: &str,
) -> AppResult<(Option<String>, Option<String>)> {
    let (Some(t), Some(customer)) = (tenant, session_subject(core, tenant, user, roles).await?)
    else {
        return Ok((meta.ip.clone(), meta.user_agent.clone()));
    };
    let owner = KeyOwner::Customer(customer);
    let mut sealed = [None, None];
    for (slot, (value, col)) in sealed.iter_mut().zip([
        (&meta.ip, crate::store::keys::SESSION_IP),
        (&meta.user_agent, crate::store::keys::SESSION_USER_AGENT),
    ]) {
        if let Some(v) = value {
            *slot = Some(
                core.keyring
                    .seal(t, &owner, col, session, v.as_bytes())
                    .await?,
            );
        }
    }
    let [ip, user_agent] = sealed;
    Ok((ip, user_agent))
}

/// The form in which a request's address is compared with, and written as, a session's last
/// address: for a session of a login holding only the CUSTOMER role, a keyed hash under the
/// tenant's index key (`h1.` and hex; no clear address of a customer is stored); as it is
/// otherwise (the staff allow-list needs the address itself).
pub async fn session_address(
    core: &Core,
    tenant: Option<&TenantId>,
    roles: &[crate::domain::authz::Role],
    ip: Option<&str>,
) -> AppResult<Option<String>> {
    let customer_only = !roles.is_empty()
        && roles
            .iter()
            .all(|r| *r == crate::domain::authz::Role::Customer);
    match (tenant, ip) {
        (Some(t), Some(ip)) if customer_only => Ok(Some(format!(
            "h1.{}",
            core.keyring.blind_index(t, "session_ip", ip).await?
        ))),
        _ => Ok(ip.map(str::to_owned)),
    }
}

/// Opens a session's stored address or user agent for its owner's list: a sealed value under
/// its customer's key (absent once the key is destroyed), a keyed hash as absent, a clear value
/// as it is.
pub async fn open_session_fact(
    core: &Core,
    tenant: Option<&str>,
    session: &str,
    col: crate::store::keys::EncryptedColumn,
    stored: Option<String>,
) -> AppResult<Option<String>> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    if stored.starts_with("h1.") {
        return Ok(None);
    }
    let Some(t) = tenant else {
        return Ok(Some(stored));
    };
    match core.keyring.open_text(&col.at(t, session), &stored).await {
        Ok(text) => Ok(Some(text.to_string())),
        Err(e @ AppError::StorageUnavailable(_)) => Err(e),
        // The key destroyed (an erasure), or a staff session's clear user agent that merely
        // looks like a ciphertext: nothing to show.
        Err(_) => Ok(None),
    }
}

/// Erasing a customer linked to a staff user changes that user (it loses its CUSTOMER role):
/// only someone who could make that change directly may do it: who holds `users:write` over
/// the whole tenant and every permission the user's roles carry, and is not that user.
fn check_may_manage(actor: &Principal, linked: &LinkedUser) -> AppResult<()> {
    let manages_users = actor.permissions.scope(Permission::UsersWrite) == Some(Scope::All);
    let covered = super::users::check_grantable(actor, &roles_from_storage(&linked.roles)).is_ok();
    if manages_users && covered && linked.id != actor.user_id.as_str() {
        return Ok(());
    }
    Err(AppError::Forbidden {
        code: "linked_user_not_manageable",
        message: "this customer's login is also a staff user, which the erasure would change \
                  (it loses its CUSTOMER role); only a user who may manage that staff user \
                  (a MANAGER, not the user itself) can erase this customer"
            .into(),
    })
}

// ---------------------------------------------------------------- restriction

/// Sets (`restricted`) or lifts the restriction of processing of customer `id` (Art. 18).
/// Idempotent: restricting a restricted customer answers its state again (and is audited).
/// An optional staff-only note is sealed and written with it; the audit record carries the
/// reason code and the note's id only.
pub async fn set_restriction(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    restricted: bool,
    reason: &str,
    note: Option<&str>,
) -> AppResult<CustomerPrivacyRecord> {
    let reason = reason_code(
        reason,
        if restricted {
            RESTRICTION_REASONS
        } else {
            UNRESTRICTION_REASONS
        },
    )?;
    let note = super::staff_notes::parse_note(note)?;
    let customer = reachable_customer(core, actor, id, Permission::CustomersRestrict).await?;
    if customer.status == "erased" {
        return Err(erased());
    }
    let action = if restricted {
        "customer.restrict"
    } else {
        "customer.unrestrict"
    };
    let sealed = super::staff_notes::seal(
        core,
        actor,
        ("customer", &customer.id),
        Some(&customer.id),
        action,
        reason,
        note.as_ref(),
    )
    .await?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        action,
        Some(("customer", &customer.id)),
        Outcome::Success,
        Some(&crate::domain::reasons::audit_reason(
            reason,
            sealed.as_ref().map(|n| n.id.as_str()),
        )),
    );
    core.store
        .set_processing_restricted(
            actor.tenant()?,
            &customer.id,
            restricted,
            core.clock.now(),
            &[ev],
            sealed.as_ref(),
        )
        .await?
        // Erased meanwhile.
        .ok_or_else(erased)
}

/// Refuses to open an account for an erased customer (422 `customer_erased`).
pub async fn refuse_if_erased(core: &Core, tenant: &TenantId, customer: &str) -> AppResult<()> {
    match core.store.customer_privacy(tenant, customer).await? {
        Some(c) if c.status == "erased" => Err(AppError::Unprocessable {
            code: "customer_erased",
            message: "this customer has been erased".into(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_codes_from_their_own_list() {
        assert_eq!(
            reason_code("data_subject_request", ERASURE_REASONS).ok(),
            Some("data_subject_request")
        );
        // A lifting reason does not restrict, free text never passes, and the error names the
        // field without echoing what was sent.
        assert!(reason_code("accuracy_verified", RESTRICTION_REASONS).is_err());
        let refused = reason_code("Ada asked by phone", ERASURE_REASONS);
        assert!(
            matches!(&refused, Err(AppError::Invalid { param: Some(p), message, .. })
                if p == "reason" && !message.contains("Ada")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_profile_never_prints() {
        let p = Profile(serde_json::json!({ "name": "Ada Lovelace" }));
        assert!(!format!("{p:?}").contains("Ada"));
    }
}
