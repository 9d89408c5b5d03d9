//! Staff-only notes and what a customer may be shown (tipping off).
//!
//! A staff action that carries a reason takes a code from a fixed list
//! (`domain::reasons`) and, optionally, a note: free text sealed here (under the customer's data
//! key when it is about the customer or its KYC submission, so erasure shreds it; under the
//! tenant's for an account's freeze or closure, an AML record the tenant keeps) and written in
//! the action's own transaction. The audit chain records the code and the note's id, never its
//! text. A note is read back only through [`get`] and [`list`], by a
//! caller holding `staff_notes:read` (the route table checks it), and every read is audited.
//!
//! [`customer_facing`] decides whether a read is the customer's own view: under the `Own`
//! scope (a CUSTOMER reading itself), or whenever the caller reads the customer record it is
//! itself linked to (a staff member who banks with its employer sees its own record as a
//! customer does). Customer views carry no notes, no staff ids and no compliance actions (see
//! `domain::disclosure`).

use super::{AuditBuilder, Core, Listed, Principal, RequestMeta};
use crate::domain::audit::Outcome;
use crate::domain::authz::{Permission, Scope};
use crate::domain::reasons::StaffNote;
use crate::error::{AppError, AppResult};
use crate::ids::{StaffNoteId, TenantId};
use crate::service::keys::KeyOwner;
use crate::store::Page;
use crate::store::keys::STAFF_NOTE;
use crate::store::notes::{NewStaffNote, StaffNoteRecord};

/// An optional note from the wire, checked (400 on `note` when it is blank, too long or has
/// control characters; the message never repeats it).
pub fn parse_note(raw: Option<&str>) -> AppResult<Option<StaffNote>> {
    raw.map(|r| StaffNote::parse(r).map_err(|m| AppError::invalid("note", m)))
        .transpose()
}

/// Seals `note` for `action` on `target` (`(type, id)`) by `actor`: the row its action's
/// transaction inserts. `None` when there is no note. A note about a data subject (`subject`:
/// the customer id) is sealed under that customer's data key, so erasing the customer shreds it
/// in every copy of the database; other notes under the tenant's key.
pub async fn seal(
    core: &Core,
    actor: &Principal,
    target: (&'static str, &str),
    subject: Option<&str>,
    action: &'static str,
    reason_code: &'static str,
    note: Option<&StaffNote>,
) -> AppResult<Option<NewStaffNote>> {
    let Some(note) = note else {
        return Ok(None);
    };
    let tenant = actor.tenant()?;
    let id = StaffNoteId::generate();
    let owner = subject.map_or(KeyOwner::Tenant, |c| KeyOwner::Customer(c.to_owned()));
    let sealed = core
        .keyring
        .seal(
            tenant,
            &owner,
            STAFF_NOTE,
            id.as_str(),
            note.expose().as_bytes(),
        )
        .await?;
    Ok(Some(NewStaffNote {
        id: id.to_string(),
        tenant_id: tenant.clone(),
        target_type: target.0,
        target_id: target.1.to_owned(),
        action,
        reason_code,
        note: sealed,
        created_by: actor.user_id.to_string(),
        created_at: core.clock.now().as_micros(),
    }))
}

/// A note opened for a reader. `Debug` never shows the text.
pub struct OpenedNote {
    pub record: StaffNoteRecord,
    pub text: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for OpenedNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedNote")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Opens a note; `None` when its customer was erased (its key destroyed): such a note no longer
/// exists for any reader.
async fn open(
    core: &Core,
    tenant: &TenantId,
    record: StaffNoteRecord,
) -> AppResult<Option<OpenedNote>> {
    if record.note.is_empty() {
        return Ok(None);
    }
    match core
        .keyring
        .open_text(&STAFF_NOTE.at(tenant.as_str(), &record.id), &record.note)
        .await
    {
        Ok(text) => Ok(Some(OpenedNote { record, text })),
        Err(e) if e.code() == "key_destroyed" => Ok(None),
        Err(e) => Err(e),
    }
}

/// One note, opened. The read is audited (`staff_note.read`) before anything is returned.
pub async fn get(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
) -> AppResult<OpenedNote> {
    let tenant = actor.tenant()?;
    let record = match StaffNoteId::parse(id) {
        Some(_) => core.store.staff_note(tenant, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("staff note"))?;
    let note = open(core, tenant, record)
        .await?
        .ok_or(AppError::NotFound("staff note"))?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "staff_note.read",
        Some(("staff_note", &note.record.id)),
        Outcome::Success,
        None,
    );
    core.store.append_audit(&ev).await?;
    Ok(note)
}

/// The notes about `target_id` (an account, customer or KYC submission id), oldest first,
/// opened. Audited (`staff_note.list`, naming the target) before anything is returned.
pub async fn list(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    target_id: &str,
    page: &Page,
) -> AppResult<Listed<OpenedNote>> {
    let tenant = actor.tenant()?;
    let rows = core.store.list_staff_notes(tenant, target_id, page).await?;
    let listed = Listed::from_rows(rows, page);
    let mut data = Vec::with_capacity(listed.data.len());
    for r in listed.data {
        if let Some(n) = open(core, tenant, r).await? {
            data.push(n);
        }
    }
    if let Some(first) = data.first() {
        let ev = AuditBuilder::new(core, meta, Some(actor)).own(
            "staff_note.list",
            Some((first.record.target_type.as_str(), target_id)),
            Outcome::Success,
            None,
        );
        core.store.append_audit(&ev).await?;
    }
    Ok(Listed {
        data,
        has_more: listed.has_more,
    })
}

/// Whether `actor` reads `customer`'s data as the customer itself: under the `Own` scope of
/// `perm`, or because it is the customer record `actor` is linked to.
pub async fn customer_facing(
    core: &Core,
    actor: &Principal,
    perm: Permission,
    customer: &str,
) -> AppResult<bool> {
    if actor.scope(perm)? == Scope::Own {
        return Ok(true);
    }
    let tenant = actor.tenant()?;
    Ok(core
        .store
        .customer_for_user(tenant, &actor.user_id)
        .await?
        .is_some_and(|c| c.id == customer))
}
