//! Customers and their personal data: creation, reads (masked unless revealed), exact-match
//! search through blind indexes, and rectification.
//!
//! A customer's [`CustomerProfile`] is one JSON value sealed under the customer's own data key
//! (`customers.pii`, AAD row = the customer id), and so is its external reference
//! (`customers.external_ref`), so erasing the customer's key erases both everywhere. Its email, phone and national identifiers are also stored as blind indexes in
//! `customer_lookup` (HMAC under the tenant's per-field index key), which is how
//! `GET /v1/customers?email=…` finds a customer without decrypting anyone.
//!
//! Reads mask every value unless the record is revealed: to the customer itself (the user the
//! record is linked to), or to a holder of `customers:read_pii` who asks for it (`unmasked`).
//! Every revealed read writes a `customer.pii.read` audit record before the data is returned;
//! if that record cannot be written, nothing is returned.

use zeroize::Zeroizing;

use super::ledger::owner_filter;
use super::{AuditBuilder, Core, Listed, Principal, RequestMeta};
use crate::crypto::envelope::Context;
use crate::domain::audit::Outcome;
use crate::domain::authz::{Permission, Role, Scope, roles_from_storage};
use crate::domain::personal::{
    CustomerProfile, EMAIL_FIELD, FieldError, NationalId, NationalIdKind, PHONE_FIELD,
    ProfileInput, ProfileText,
};
use crate::domain::values::Email;
use crate::error::{AppError, AppResult};
use crate::ids::{CustomerId, TenantId, UserId};
use crate::service::keys::{IndexRotation, KeyOwner, Keyring};
use crate::store::keys::{CUSTOMER_EXTERNAL_REF, CUSTOMER_PII};
use crate::store::{
    CustomerLookup, CustomerRecord, NewCustomer, Page, Rectification, RectifyOutcome, StoreError,
};

/// The audit action of a revealed read.
pub const PII_READ: &str = "customer.pii.read";

/// Attempts at a rectification that keeps meeting concurrent changes.
const RECTIFY_ATTEMPTS: usize = 3;

/// What a new customer is created with.
pub struct NewCustomerInput {
    pub user_id: Option<String>,
    pub external_ref: Option<String>,
    pub profile: ProfileInput,
}

/// A customer with its personal data opened, and whether this caller may see it in full.
pub struct CustomerDetails {
    pub record: CustomerRecord,
    pub profile: Option<CustomerProfile>,
    pub revealed: bool,
}

impl CustomerDetails {
    /// The personal data as this caller may see it.
    pub fn profile_text(&self) -> Option<ProfileText> {
        self.profile.as_ref().map(|p| {
            if self.revealed {
                p.revealed()
            } else {
                p.masked()
            }
        })
    }
}

/// An exact-match search, as sent (at most one criterion).
#[derive(Default)]
pub struct SearchInput {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub national_id_type: Option<String>,
    pub national_id: Option<String>,
}

fn field_error(e: FieldError) -> AppError {
    AppError::Invalid {
        code: if e.missing {
            "parameter_missing"
        } else {
            "parameter_invalid"
        },
        param: Some(e.param),
        message: e.message,
    }
}

fn customer_erased() -> AppError {
    AppError::Unprocessable {
        code: "customer_erased",
        message: "this customer has been erased; its personal data can no longer be changed".into(),
    }
}

// ---------------------------------------------------------------- sealing

fn context<'a>(tenant: &'a str, id: &'a str) -> Context<'a> {
    CUSTOMER_PII.at(tenant, id)
}

async fn seal(
    core: &Core,
    tenant: &TenantId,
    id: &str,
    profile: &CustomerProfile,
) -> AppResult<String> {
    let json = Zeroizing::new(
        serde_json::to_vec(profile).map_err(|_| AppError::internal("profile serialisation"))?,
    );
    core.keyring
        .seal(
            tenant,
            &KeyOwner::Customer(id.to_owned()),
            CUSTOMER_PII,
            id,
            &json,
        )
        .await
}

/// Seals a customer's external reference under its own data key (it can name the person in
/// the integrator's systems: erasure must shred it like the profile).
pub(super) async fn seal_external_ref(
    core: &Core,
    tenant: &TenantId,
    id: &str,
    external_ref: &str,
) -> AppResult<String> {
    core.keyring
        .seal(
            tenant,
            &KeyOwner::Customer(id.to_owned()),
            CUSTOMER_EXTERNAL_REF,
            id,
            external_ref.as_bytes(),
        )
        .await
}

/// The stored external reference opened (a value written before it was sealed reads as it
/// is); `None` for an erased customer or one whose key is destroyed.
pub(super) async fn open_external_ref(
    core: &Core,
    tenant: &str,
    id: &str,
    stored: Option<&str>,
) -> AppResult<Option<String>> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    match core
        .keyring
        .open_text(&CUSTOMER_EXTERNAL_REF.at(tenant, id), stored)
        .await
    {
        Ok(text) => Ok(Some(text.to_string())),
        Err(e) if e.code() == "key_destroyed" => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens a record's personal data, and its external reference in place. It must be a
/// ciphertext sealed for this very row: one copied from another customer's row (or anything
/// else) fails, as an internal error that names only the row.
async fn open(core: &Core, record: &mut CustomerRecord) -> AppResult<Option<CustomerProfile>> {
    if record.status == "erased" {
        record.external_ref = None;
        return Ok(None);
    }
    record.external_ref = open_external_ref(
        core,
        &record.tenant_id,
        &record.id,
        record.external_ref.as_deref(),
    )
    .await?;
    let Some(stored) = &record.pii else {
        return Ok(None);
    };
    let bytes = core
        .keyring
        .open(&context(&record.tenant_id, &record.id), stored)
        .await?;
    // The parser's message could quote a value: it is not passed on.
    serde_json::from_slice(&bytes).map(Some).map_err(|_| {
        AppError::internal(format!(
            "customers.pii row {}: the opened value is not a profile",
            record.id
        ))
    })
}

/// The blind-index rows of a profile, one per searchable value under each live index key
/// version, and those versions (which the write checks are still the live ones at commit).
async fn lookups(
    keyring: &Keyring,
    tenant: &TenantId,
    profile: Option<&CustomerProfile>,
) -> AppResult<(Vec<CustomerLookup>, Vec<i64>)> {
    let Some(profile) = profile else {
        return Ok((Vec::new(), Vec::new()));
    };
    let keys = keyring.index_keys(tenant).await?;
    let mut rows = Vec::new();
    for (field, value) in profile.lookups() {
        let value = Zeroizing::new(value);
        for (index_version, digest) in keys.digests(&field, &value) {
            rows.push(CustomerLookup {
                field: field.clone(),
                digest,
                index_version,
            });
        }
    }
    Ok((rows, keys.versions()))
}

/// Attempts at a customer write whose blind-index rows meet an index rotation.
const INDEX_ATTEMPTS: usize = 4;

/// Customers re-indexed per batch of an index rotation.
const REINDEX_BATCH: i64 = 100;

/// `kasho keys rotate-index`: a new index key version for `tenant`; every customer holding
/// personal data is re-indexed (its blind-index rows computed under every live version, in one
/// transaction that compare-and-swaps on its sealed profile), then the old versions are retired
/// in a transaction that first re-checks that no customer is left behind. Searches match every
/// live version throughout, so customers are found before, during and after, on every
/// instance. Resumable: run again after an interruption.
pub async fn rotate_index(
    store: &dyn crate::store::Store,
    keyring: &Keyring,
    tenant: &TenantId,
    progress: crate::service::keys::Progress<'_>,
) -> AppResult<IndexRotation> {
    let (version, resumed) = keyring.start_index_rotation(tenant).await?;
    let mut reindexed = 0u64;
    // A customer written meanwhile by an instance that had not yet seen the new version is
    // found by the recount and re-indexed in the next round (bounded; run again otherwise).
    for _ in 0..8 {
        let mut after: Option<String> = None;
        loop {
            let batch = store
                .customers_to_reindex(tenant.as_str(), version, after.as_deref(), REINDEX_BATCH)
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.id.clone());
            for c in &batch {
                let bytes = keyring
                    .open(&context(tenant.as_str(), &c.id), &c.pii)
                    .await?;
                let profile: CustomerProfile = serde_json::from_slice(&bytes).map_err(|_| {
                    AppError::internal(format!(
                        "customers.pii row {}: the opened value is not a profile",
                        c.id
                    ))
                })?;
                let (rows, versions) = lookups(keyring, tenant, Some(&profile)).await?;
                match store
                    .reindex_customer(tenant.as_str(), &c.id, &c.pii, &rows, &versions)
                    .await
                {
                    Ok(true) => {
                        reindexed += 1;
                        progress(reindexed, reindexed.max(1));
                    }
                    // Rectified (or erased) meanwhile: its writer indexed it; the recount
                    // decides.
                    Ok(false) | Err(StoreError::IndexKeyChanged) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if let Some(retired) = keyring
            .finish_index_rotation(tenant, version, reindexed)
            .await?
        {
            return Ok(IndexRotation {
                version,
                resumed,
                reindexed,
                retired,
            });
        }
    }
    Err(AppError::Conflict {
        code: "index_rotation_unfinished",
        param: None,
        message: "customers kept changing during the index rotation; run it again".into(),
    })
}

// ---------------------------------------------------------------- revealing

fn is_own(actor: &Principal, record: &CustomerRecord) -> bool {
    record.user_id.as_deref() == Some(actor.user_id.as_str())
}

/// Refuses `unmasked` to a caller who may not reveal other customers' data (a CUSTOMER, whose
/// scope only ever reaches its own record, is revealed its own record anyway). The refusal is
/// audited.
async fn check_unmask(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    unmasked: bool,
) -> AppResult<()> {
    let may = actor
        .permissions
        .scope(Permission::CustomersReadPii)
        .is_some()
        || actor.scope(Permission::CustomersRead)? == Scope::Own;
    if unmasked && !may {
        let ev = AuditBuilder::new(core, meta, Some(actor)).own(
            PII_READ,
            None,
            Outcome::Denied,
            Some(Permission::CustomersReadPii.as_str()),
        );
        super::audit::record(core, &ev).await;
        return Err(AppError::forbidden());
    }
    Ok(())
}

/// Opens each record and decides what the caller sees; records every revealed read (one audit
/// record per customer, in one transaction) before anything is returned.
async fn details(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    records: Vec<CustomerRecord>,
    unmasked: bool,
) -> AppResult<Vec<CustomerDetails>> {
    let may_unmask = actor
        .permissions
        .scope(Permission::CustomersReadPii)
        .is_some();
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let mut out = Vec::with_capacity(records.len());
    let mut reads = Vec::new();
    for mut record in records {
        let profile = open(core, &mut record).await?;
        let own = is_own(actor, &record);
        let revealed = profile.is_some() && (own || (unmasked && may_unmask));
        if revealed {
            reads.push(audit.own(
                PII_READ,
                Some(("customer", &record.id)),
                Outcome::Success,
                Some(if own {
                    "own record"
                } else {
                    Permission::CustomersReadPii.as_str()
                }),
            ));
        }
        out.push(CustomerDetails {
            record,
            profile,
            revealed,
        });
    }
    core.store.append_audits(&reads).await?;
    Ok(out)
}

// ---------------------------------------------------------------- use cases

pub async fn create(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: NewCustomerInput,
) -> AppResult<CustomerDetails> {
    let tenant = actor.tenant()?;
    let user = match input.user_id {
        None => None,
        Some(u) => {
            let id =
                UserId::parse(&u).ok_or_else(|| AppError::invalid("user_id", "no such user"))?;
            let user = core
                .store
                .get_user(Some(tenant), &id)
                .await?
                .ok_or_else(|| AppError::invalid("user_id", "no such user"))?;
            if !roles_from_storage(&user.roles).contains(&Role::Customer) {
                return Err(AppError::invalid(
                    "user_id",
                    "the linked user must hold the CUSTOMER role",
                ));
            }
            Some(id)
        }
    };
    if let Some(r) = &input.external_ref
        && (r.is_empty() || r.len() > 128 || r.chars().any(char::is_control))
    {
        return Err(AppError::invalid(
            "external_ref",
            "must be 1 to 128 characters without control characters",
        ));
    }
    let profile = input
        .profile
        .apply(None, core.clock.now())
        .map_err(field_error)?;
    let id = CustomerId::generate();
    let pii = match &profile {
        Some(p) => Some(seal(core, tenant, id.as_str(), p).await?),
        None => None,
    };
    let external_ref = match &input.external_ref {
        Some(r) => Some(seal_external_ref(core, tenant, id.as_str(), r).await?),
        None => None,
    };
    let fields = CustomerProfile::changed_fields(None, profile.as_ref());
    let reason = (!fields.is_empty()).then(|| format!("personal data: {}", fields.join(",")));
    let mut c = NewCustomer {
        id: id.clone(),
        tenant_id: tenant.clone(),
        user_id: user,
        external_ref,
        created_at: core.clock.now(),
        pii,
        lookups: Vec::new(),
        index_versions: Vec::new(),
    };
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "customer.create",
        Some(("customer", id.as_str())),
        Outcome::Success,
        reason.as_deref(),
    );
    let mut attempts = 0;
    loop {
        // Recomputed if an index rotation changed the live index versions meanwhile.
        (c.lookups, c.index_versions) = lookups(&core.keyring, tenant, profile.as_ref()).await?;
        attempts += 1;
        match core
            .store
            .create_customer(&c, std::slice::from_ref(&ev))
            .await
        {
            Ok(()) => break,
            Err(StoreError::IndexKeyChanged) if attempts < INDEX_ATTEMPTS => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(AppError::Conflict {
                    code: "customer_exists",
                    param: Some("user_id".into()),
                    message: "this user is already linked to a customer".into(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut record = core
        .store
        .get_customer(tenant, id.as_str())
        .await?
        .ok_or(AppError::NotFound("customer"))?;
    record.external_ref = input.external_ref;
    // The answer is masked like any read: the full values are one audited read away.
    Ok(CustomerDetails {
        record,
        profile,
        revealed: false,
    })
}

/// The record, as the caller's scope allows (another tenant's or another customer's is 404).
async fn scoped_record(core: &Core, actor: &Principal, id: &str) -> AppResult<CustomerRecord> {
    let owner = owner_filter(core, actor, Permission::CustomersRead).await?;
    if CustomerId::parse(id).is_none() || owner.as_deref().is_some_and(|o| o != id) {
        return Err(AppError::NotFound("customer"));
    }
    core.store
        .get_customer(actor.tenant()?, id)
        .await?
        .ok_or(AppError::NotFound("customer"))
}

pub async fn get(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    unmasked: bool,
) -> AppResult<CustomerDetails> {
    check_unmask(core, meta, actor, unmasked).await?;
    let record = scoped_record(core, actor, id).await?;
    details(core, meta, actor, vec![record], unmasked)
        .await?
        .pop()
        .ok_or(AppError::NotFound("customer"))
}

/// The blind-index look-up a search asks for: (field, normalised value).
fn search_key(s: SearchInput) -> AppResult<Option<(String, Zeroizing<String>)>> {
    let given = [
        s.email.is_some(),
        s.phone.is_some(),
        s.national_id.is_some() || s.national_id_type.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        let param = if s.national_id.is_some() || s.national_id_type.is_some() {
            "national_id"
        } else {
            "phone"
        };
        return Err(AppError::invalid(
            param,
            "search by one of email, phone or national_id at a time",
        ));
    }
    if let Some(e) = s.email {
        let e = Email::parse(&e).map_err(|m| AppError::invalid("email", m))?;
        return Ok(Some((
            EMAIL_FIELD.into(),
            Zeroizing::new(e.as_str().to_owned()),
        )));
    }
    if let Some(p) = s.phone {
        let p =
            crate::domain::personal::Phone::parse(&p).map_err(|m| AppError::invalid("phone", m))?;
        return Ok(Some((
            PHONE_FIELD.into(),
            Zeroizing::new(p.as_str().to_owned()),
        )));
    }
    match (s.national_id_type, s.national_id) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(AppError::Invalid {
            code: "parameter_missing",
            param: Some("national_id".into()),
            message: "`national_id` is required with `national_id_type`".into(),
        }),
        (None, Some(_)) => Err(AppError::Invalid {
            code: "parameter_missing",
            param: Some("national_id_type".into()),
            message: "`national_id_type` is required with `national_id`".into(),
        }),
        (Some(kind), Some(number)) => {
            let kind = NationalIdKind::parse(&kind)
                .map_err(|m| AppError::invalid("national_id_type", m))?;
            let id = NationalId::parse(kind, &number)
                .map_err(|m| AppError::invalid("national_id", m))?;
            Ok(Some((
                kind.index_field(),
                Zeroizing::new(id.number().to_owned()),
            )))
        }
    }
}

/// Whether `field` is one only holders of `customers:read_pii` may search by: every field but
/// the email (a phone or national id is shown masked to the last digits, so an exact-match
/// search by the missing digits would reveal it).
fn search_needs_read_pii(field: &str) -> bool {
    field != EMAIL_FIELD
}

/// Refuses a search the caller may not make: by phone or national id without
/// `customers:read_pii` (403, audited; a CUSTOMER, whose searches only ever reach its own
/// record, which it is shown in full, may), or past the caller's search budget when it does
/// not hold `customers:read_pii` (429, `service::budgets`).
async fn check_search(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    field: &str,
) -> AppResult<()> {
    let reads_pii = actor
        .permissions
        .scope(Permission::CustomersReadPii)
        .is_some();
    if reads_pii {
        return Ok(());
    }
    let only_own = actor.scope(Permission::CustomersRead)? == Scope::Own;
    if search_needs_read_pii(field) && !only_own {
        let ev = AuditBuilder::new(core, meta, Some(actor))
            .own(
                PII_READ,
                None,
                Outcome::Denied,
                Some(&format!(
                    "search:{field};{}",
                    Permission::CustomersReadPii.as_str()
                )),
            )
            .security(crate::domain::security::SecurityEvent::AuthorizationRefused);
        super::security::record(core, ev).await;
        return Err(AppError::Forbidden {
            code: "forbidden",
            message: format!(
                "searching by {} needs `{}`",
                if field == PHONE_FIELD {
                    "phone"
                } else {
                    "national id"
                },
                Permission::CustomersReadPii.as_str()
            ),
        });
    }
    super::budgets::take(core, meta, super::budgets::Budget::Searches, actor).await
}

/// Customers, newest first, or those matching one exact-match criterion. A CUSTOMER only ever
/// sees (or finds) its own record.
pub async fn list(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    search: SearchInput,
    page: &Page,
    unmasked: bool,
) -> AppResult<Listed<CustomerDetails>> {
    let key = search_key(search)?;
    check_unmask(core, meta, actor, unmasked).await?;
    if let Some((field, _)) = &key {
        check_search(core, meta, actor, field).await?;
    }
    let tenant = actor.tenant()?;
    let owner = owner_filter(core, actor, Permission::CustomersRead).await?;
    let rows = match &key {
        None => {
            core.store
                .list_customers(tenant, owner.as_deref(), page)
                .await?
        }
        Some((field, value)) => {
            // The live index versions are read from the database on every search, so every
            // instance follows an index rotation at once; a digest under each is matched.
            let digests: Vec<String> = core
                .keyring
                .index_keys(tenant)
                .await?
                .digests(field, value)
                .into_iter()
                .map(|(_, d)| d)
                .collect();
            core.store
                .search_customers(tenant, field, &digests, owner.as_deref(), page)
                .await?
        }
    };
    let listed = Listed::from_rows(rows, page);
    // A search by a personal-data value is a read of personal data, whatever it found: it
    // tells the caller whether someone with that value is a customer. Audited before the
    // answer (the field searched and what matched, never the value).
    if let Some((field, _)) = &key {
        let found: Vec<&str> = listed.data.iter().map(|r| r.id.as_str()).collect();
        let reason = format!(
            "search:{field};matches={}{}",
            found.len(),
            if listed.has_more { "+" } else { "" }
        );
        let ev = AuditBuilder::new(core, meta, Some(actor)).own(
            PII_READ,
            found.first().map(|id| ("customer", *id)),
            Outcome::Success,
            Some(&reason),
        );
        core.store.append_audit(&ev).await?;
    }
    let data = details(core, meta, actor, listed.data, unmasked).await?;
    Ok(Listed {
        data,
        has_more: listed.has_more,
    })
}

/// Rectifies any subset of a customer's personal data (staff only: see docs/SECURITY.md). The
/// new ciphertext and blind-index rows replace the old ones in one transaction with a
/// `customer.update` audit record naming the fields that changed, never their values.
pub async fn rectify(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    changes: ProfileInput,
) -> AppResult<CustomerDetails> {
    let tenant = actor.tenant()?;
    if actor.scope(Permission::CustomersWrite)? != Scope::All {
        return Err(AppError::forbidden());
    }
    if changes.is_empty() {
        return Err(AppError::Invalid {
            code: "parameter_missing",
            param: None,
            message: "name at least one field to change".into(),
        });
    }
    if CustomerId::parse(id).is_none() {
        return Err(AppError::NotFound("customer"));
    }
    for _ in 0..RECTIFY_ATTEMPTS {
        let mut record = core
            .store
            .get_customer(tenant, id)
            .await?
            .ok_or(AppError::NotFound("customer"))?;
        if record.status == "erased" {
            return Err(customer_erased());
        }
        let current = open(core, &mut record).await?;
        let next = changes
            .apply(current.as_ref(), core.clock.now())
            .map_err(field_error)?;
        let changed = CustomerProfile::changed_fields(current.as_ref(), next.as_ref());
        let audit = AuditBuilder::new(core, meta, Some(actor));
        if changed.is_empty() {
            let ev = audit.own(
                "customer.update",
                Some(("customer", id)),
                Outcome::Success,
                Some("no change"),
            );
            core.store.append_audit(&ev).await?;
            return Ok(CustomerDetails {
                record,
                profile: current,
                revealed: false,
            });
        }
        let pii = match &next {
            Some(p) => Some(seal(core, tenant, id, p).await?),
            None => None,
        };
        let (rows, index_versions) = lookups(&core.keyring, tenant, next.as_ref()).await?;
        let change = Rectification {
            tenant_id: tenant.clone(),
            id: id.to_owned(),
            expected_pii: record.pii.clone(),
            pii,
            lookups: rows,
            index_versions,
            now: core.clock.now(),
        };
        let reason = format!("fields: {}", changed.join(","));
        let ev = audit.own(
            "customer.update",
            Some(("customer", id)),
            Outcome::Success,
            Some(&reason),
        );
        let outcome = match core.store.rectify_customer(&change, &[ev]).await {
            // An index rotation changed the live versions: recompute and retry.
            Err(StoreError::IndexKeyChanged) => RectifyOutcome::Stale,
            other => other?,
        };
        match outcome {
            RectifyOutcome::Updated(mut record) => {
                record.external_ref = open_external_ref(
                    core,
                    &record.tenant_id,
                    &record.id,
                    record.external_ref.as_deref(),
                )
                .await?;
                return Ok(CustomerDetails {
                    record: *record,
                    profile: next,
                    revealed: false,
                });
            }
            RectifyOutcome::NotFound => return Err(AppError::NotFound("customer")),
            RectifyOutcome::Erased => return Err(customer_erased()),
            RectifyOutcome::Stale => continue,
        }
    }
    Err(AppError::Conflict {
        code: "customer_changed",
        param: None,
        message: "the customer's personal data kept changing meanwhile; retry".into(),
    })
}
