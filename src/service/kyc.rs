//! KYC use cases: the tenant's limits per tier and currency, the verification workflow
//! (submission with documents, the review queue, a one-time approval or rejection, document
//! download), and the limits a movement carries to the ledger core ([`movement_limits`]).
//!
//! Limit policy: a currency with no limit row at all in a tenant is unconfigured and no KYC
//! limit applies to it (the movement carries no limits and the writer reads nothing for them).
//! Once a currency has any row it fails closed: a customer whose tier has no row for it can
//! neither send nor receive in it. Reversals are never refused by KYC and do not count as
//! outgoing.
//!
//! Exactness: the ledger core applies the limits inside the posting transaction, to the tiers,
//! balances and running totals (`ledger_counters`) the writer loads under lock, and adds to the
//! totals in the same transaction; so a daily or monthly limit holds exactly however many
//! instances post. Replacing a currency's limits drops its running totals: the next movement
//! seeds them from the ledger again (they are kept only while the currency has limits).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;

use super::keys::KeyOwner;
use super::{AuditBuilder, Core, Listed, Principal, RequestMeta};
use crate::clock::Timestamp;
use crate::domain::audit::Outcome;
use crate::domain::authz::{Permission, Scope};
use crate::domain::currency::Currency;
use crate::domain::kyc::{
    self, ContentType, DocumentType, MAX_DOCUMENT_BYTES, MAX_DOCUMENTS, Tier, TierLimits,
};
use crate::domain::ledger::{KycLimits, TransferKind};
use crate::error::{AppError, AppResult};
use crate::ids::{CustomerId, KycDocumentId, KycSubmissionId, TenantId};
use crate::store::kyc::{
    DecideOutcome, KycDocumentMeta, KycLimitRecord, KycSubmissionRecord, NewKycDecision,
    NewKycDocument, NewKycSubmission,
};
use crate::store::{Page, StoreError};

/// How long a tenant's limits are cached. A change made through this instance applies at
/// once; other instances pick it up within this time.
const LIMITS_TTL: Duration = Duration::from_secs(10);

/// The refusal code of every KYC limit.
pub const LIMIT_CODE: &str = crate::domain::ledger::KYC_LIMIT_CODE;

/// A tenant's limits: currency → tier → figures. A currency absent here is unconfigured.
type TenantLimits = HashMap<String, Arc<KycLimits>>;

/// The KYC state of a process: the limits cache and the document uploads in progress.
#[derive(Default)]
pub struct KycGate {
    limits: RwLock<HashMap<String, (Instant, Arc<TenantLimits>)>>,
    uploads: UploadGate,
}

impl KycGate {
    fn cached(&self, tenant: &TenantId) -> Option<Arc<TenantLimits>> {
        let map = self.limits.read().ok()?;
        let (at, limits) = map.get(tenant.as_str())?;
        (at.elapsed() < LIMITS_TTL).then(|| limits.clone())
    }

    async fn limits_for(&self, core: &Core, tenant: &TenantId) -> AppResult<Arc<TenantLimits>> {
        if let Some(l) = self.cached(tenant) {
            return Ok(l);
        }
        let mut map: HashMap<String, KycLimits> = HashMap::new();
        for r in core.store.kyc_limits(tenant).await? {
            map.entry(r.currency.clone())
                .or_default()
                .tiers
                .insert(r.tier, figures(&r));
        }
        let limits: Arc<TenantLimits> =
            Arc::new(map.into_iter().map(|(c, l)| (c, Arc::new(l))).collect());
        if let Ok(mut m) = self.limits.write() {
            m.insert(tenant.to_string(), (Instant::now(), limits.clone()));
        }
        Ok(limits)
    }

    fn invalidate(&self, tenant: &TenantId) {
        if let Ok(mut m) = self.limits.write() {
            m.remove(tenant.as_str());
        }
    }
}

/// Most document uploads one credential (a session or an API token) may have in progress; the
/// next answers 429 `too_many_uploads` before its body is read.
pub const MAX_UPLOADS_PER_CREDENTIAL: usize = 2;

/// Most uploads whose body a process reads, decodes, seals and writes at once, whatever the
/// credentials; the others wait, with their body unread, until one finishes (or the request's
/// time limit). A maximum-size submission (about 27 MiB of base64) costs about 50 MiB while it
/// is in progress (see `http::large_json` and docs/SECURITY.md), so uploads never take much
/// more than 100 MiB of a process however many arrive.
pub const MAX_UPLOADS_IN_PROCESS: usize = 4;

/// Document uploads in progress: per credential, and the process-wide reading permits.
pub struct UploadGate {
    per_credential: Arc<Mutex<HashMap<String, usize>>>,
    reading: Arc<tokio::sync::Semaphore>,
}

impl Default for UploadGate {
    fn default() -> Self {
        Self {
            per_credential: Arc::default(),
            reading: Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS_IN_PROCESS)),
        }
    }
}

/// An upload's place among its credential's; released when dropped.
pub struct UploadSlot {
    per_credential: Arc<Mutex<HashMap<String, usize>>>,
    reading: Arc<tokio::sync::Semaphore>,
    key: String,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl UploadSlot {
    /// Waits for one of the process's reading permits (held until the slot is dropped).
    pub async fn admitted(&mut self) -> AppResult<()> {
        if self.permit.is_none() {
            let permit = self
                .reading
                .clone()
                .acquire_owned()
                .await
                .map_err(AppError::internal)?;
            self.permit = Some(permit);
        }
        Ok(())
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.per_credential.lock()
            && let Some(n) = m.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Takes one of the caller's credential's upload slots, or refuses with 429
/// `too_many_uploads` (with `Retry-After`) when it already has
/// [`MAX_UPLOADS_PER_CREDENTIAL`] in progress.
pub fn begin_upload(core: &Core, actor: &Principal) -> AppResult<UploadSlot> {
    let key = match &actor.credential {
        super::Credential::Session(s) => format!("ses:{s}"),
        super::Credential::ApiToken(t) => format!("tok:{t}"),
    };
    let gate = &core.kyc.uploads;
    let mut m = gate
        .per_credential
        .lock()
        .map_err(|_| AppError::internal("upload gate poisoned"))?;
    let n = m.entry(key.clone()).or_insert(0);
    if *n >= MAX_UPLOADS_PER_CREDENTIAL {
        return Err(AppError::TooManyAttempts {
            code: "too_many_uploads",
            message: format!(
                "this credential already has {MAX_UPLOADS_PER_CREDENTIAL} document uploads in progress; retry when one has finished"
            ),
            retry_after_seconds: 1,
        });
    }
    *n += 1;
    Ok(UploadSlot {
        per_credential: gate.per_credential.clone(),
        reading: gate.reading.clone(),
        key,
        permit: None,
    })
}

fn figures(r: &KycLimitRecord) -> TierLimits {
    TierLimits {
        max_single_transfer: r.max_single_transfer,
        daily_outgoing: r.daily_outgoing,
        monthly_outgoing: r.monthly_outgoing,
        max_balance: r.max_balance,
    }
}

/// The KYC limits a movement in `currency` carries to the ledger core: `None` when the tenant
/// has none for it (the hot path: a cache look-up and nothing else) or for a reversal.
pub async fn movement_limits(
    core: &Core,
    tenant: &TenantId,
    kind: TransferKind,
    currency: Currency,
) -> AppResult<Option<Arc<KycLimits>>> {
    if kind == TransferKind::Reversal {
        return Ok(None);
    }
    let limits = core.kyc.limits_for(core, tenant).await?;
    Ok(limits.get(currency.code()).cloned())
}

// ---------------------------------------------------------------- limits

/// One currency's limits as read back.
#[derive(Debug)]
pub struct CurrencyLimits {
    pub currency: String,
    /// False when no tier has a row: no KYC limit applies to this currency.
    pub configured: bool,
    pub tiers: Vec<KycLimitRecord>,
}

/// The tenant's limits for each of its currencies.
pub async fn get_limits(core: &Core, actor: &Principal) -> AppResult<Vec<CurrencyLimits>> {
    let tenant = actor.tenant()?;
    let t = core
        .store
        .get_tenant(tenant)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    let rows = core.store.kyc_limits(tenant).await?;
    Ok(t.currencies
        .split(',')
        .filter(|c| !c.is_empty())
        .map(|c| {
            let tiers: Vec<_> = rows.iter().filter(|r| r.currency == c).cloned().collect();
            CurrencyLimits {
                currency: c.to_owned(),
                configured: !tiers.is_empty(),
                tiers,
            }
        })
        .collect())
}

/// Replaces one currency's limits (every tier of it at once, so the table is validated as a
/// whole). A tier left out may not send or receive in that currency.
pub async fn put_limits(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    currency: &str,
    tiers: Vec<(i64, TierLimits)>,
) -> AppResult<CurrencyLimits> {
    let tenant = actor.tenant()?;
    let currency = Currency::parse(currency).map_err(|m| AppError::invalid("currency", m))?;
    let t = core
        .store
        .get_tenant(tenant)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    if !t.currencies.split(',').any(|c| c == currency.code()) {
        return Err(AppError::invalid(
            "currency",
            format!("this tenant does not hold {currency}"),
        ));
    }
    kyc::validate_tiers(&tiers).map_err(|(param, message)| AppError::invalid(param, message))?;
    let now = core.clock.now().as_micros();
    let mut rows: Vec<KycLimitRecord> = tiers
        .iter()
        .map(|(tier, l)| KycLimitRecord {
            tenant_id: tenant.to_string(),
            tier: *tier,
            currency: currency.code().to_owned(),
            max_single_transfer: l.max_single_transfer,
            daily_outgoing: l.daily_outgoing,
            monthly_outgoing: l.monthly_outgoing,
            max_balance: l.max_balance,
            updated_by: actor.user_id.to_string(),
            updated_at: now,
        })
        .collect();
    rows.sort_by_key(|r| r.tier);
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "kyc.limits.update",
        Some(("kyc_limits", currency.code())),
        Outcome::Success,
        None,
    );
    core.store
        .replace_kyc_limits(tenant, currency.code(), &rows, &[ev])
        .await?;
    core.kyc.invalidate(tenant);
    Ok(CurrencyLimits {
        currency: currency.code().to_owned(),
        configured: true,
        tiers: rows,
    })
}

// ---------------------------------------------------------------- verification

/// A document's content as the wire delivered it: decoded from base64 while the body was
/// parsed (the base64 text itself is never kept), or why it could not be.
pub enum UploadedContent {
    Decoded(zeroize::Zeroizing<Vec<u8>>),
    /// Longer than [`MAX_DOCUMENT_BYTES`] of base64 can be: not decoded at all.
    TooLarge,
    NotBase64,
}

impl std::fmt::Debug for UploadedContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Decoded(b) => write!(f, "Decoded({} bytes)", b.len()),
            Self::TooLarge => f.write_str("TooLarge"),
            Self::NotBase64 => f.write_str("NotBase64"),
        }
    }
}

impl UploadedContent {
    /// Decodes standard base64, refusing (without decoding) anything longer than a
    /// [`MAX_DOCUMENT_BYTES`] document's encoding.
    pub fn from_base64(text: &str) -> Self {
        if text.len() > MAX_DOCUMENT_BYTES.div_ceil(3) * 4 {
            return Self::TooLarge;
        }
        match base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) {
            Ok(bytes) => Self::Decoded(zeroize::Zeroizing::new(bytes)),
            Err(_) => Self::NotBase64,
        }
    }
}

/// A document as uploaded: declared type and content type, and its content.
#[derive(Debug)]
pub struct DocumentInput {
    pub document_type: String,
    pub content_type: String,
    pub content: UploadedContent,
}

/// The cheap refusals of a submission, checked before its body is read: the customer must be
/// visible to the caller (404), not erased (422 `customer_erased`), not restricted (422
/// `processing_restricted`: verification is processing), and without a submission awaiting a
/// decision (409 `kyc_submission_open`). The caller's permission was checked by the route.
/// The insert checks erasure and the open submission again (a race between the two ends in
/// the same answers).
pub async fn check_submission_allowed(
    core: &Core,
    actor: &Principal,
    customer_id: &str,
) -> AppResult<crate::store::kyc::KycCustomer> {
    let tenant = actor.tenant()?;
    let customer = visible_customer(core, actor, customer_id, Permission::KycSubmit).await?;
    if customer.status != "active" {
        return Err(erased());
    }
    if core
        .store
        .customer_privacy(tenant, &customer.id)
        .await?
        .is_some_and(|c| c.processing_restricted != 0)
    {
        return Err(AppError::Unprocessable {
            code: "processing_restricted",
            message: "processing is restricted for this customer: no verification may be submitted"
                .into(),
        });
    }
    let page = Page {
        limit: 1,
        starting_after: None,
    };
    if !core
        .store
        .list_kyc_submissions(tenant, Some(&customer.id), Some("submitted"), &page)
        .await?
        .is_empty()
    {
        return Err(open_submission());
    }
    Ok(customer)
}

fn open_submission() -> AppError {
    AppError::Conflict {
        code: "kyc_submission_open",
        param: None,
        message: "the customer already has a submission awaiting a decision".into(),
    }
}

/// A submission with its documents (metadata only), as its reader may see it: the record's
/// staff-only fields (decider, reason codes, note, legacy reason) are moved into `decision`,
/// or dropped, by [`disclose`]; render `submitted_by` and `decision` from here, not from the
/// record.
#[derive(Debug)]
pub struct SubmissionView {
    pub submission: KycSubmissionRecord,
    /// Who submitted: `None` for a customer reader when it was not the customer's own user.
    pub submitted_by: Option<String>,
    pub decision: Option<DecisionFacts>,
    pub documents: Vec<KycDocumentMeta>,
}

/// A decision as its reader may see it. A customer gets the decision, the tier, the time and
/// the customer-facing code only; the rest is `None` for it.
#[derive(Debug)]
pub struct DecisionFacts {
    /// `approved` or `rejected`.
    pub decision: String,
    pub tier_after: i64,
    pub decided_at: i64,
    /// A rejection's customer-facing code.
    pub customer_reason_code: Option<String>,
    /// Staff only: the staff's code, the note's id, the decider.
    pub reason_code: Option<String>,
    pub note_id: Option<String>,
    pub decided_by: Option<String>,
    /// Staff holding `staff_notes:read` only: the free-text reason of a decision made before
    /// reasons became codes.
    pub legacy_reason: Option<String>,
}

/// Who reads a submission.
#[derive(Debug, Clone)]
enum Reader {
    /// The customer itself (its own user id, when it has a login).
    Customer { own_user: Option<String> },
    /// Staff; `notes` when it holds `staff_notes:read`.
    Staff { notes: bool },
}

impl Reader {
    /// The reader `actor` is for `customer`'s submissions under `perm`.
    async fn of(
        core: &Core,
        actor: &Principal,
        perm: Permission,
        customer: &str,
    ) -> AppResult<Reader> {
        if super::staff_notes::customer_facing(core, actor, perm, customer).await? {
            return Ok(Reader::Customer {
                own_user: Some(actor.user_id.to_string()),
            });
        }
        Ok(Reader::Staff {
            notes: actor
                .permissions
                .scope(Permission::StaffNotesRead)
                .is_some(),
        })
    }
}

/// `s` with its documents, as `reader` may see it.
async fn disclose(
    core: &Core,
    tenant: &TenantId,
    mut s: KycSubmissionRecord,
    documents: Vec<KycDocumentMeta>,
    reader: &Reader,
) -> AppResult<SubmissionView> {
    let legacy = s.reason.take();
    let reason_code = s.reason_code.take();
    let note_id = s.note_id.take();
    let decided_by = s.decided_by.take();
    let customer_code = s.customer_code.take();
    let decision = match (decided_by.is_some(), s.decided_at) {
        (true, Some(at)) => Some(DecisionFacts {
            decision: s.status.clone(),
            tier_after: s.tier_after.unwrap_or(s.tier_at_submission),
            decided_at: at,
            customer_reason_code: customer_code,
            reason_code: None,
            note_id: None,
            decided_by: None,
            legacy_reason: None,
        }),
        _ => None,
    };
    let (submitted_by, decision) = match reader {
        Reader::Customer { own_user } => {
            let by = crate::domain::disclosure::customer_actor(
                Some(s.submitted_by.clone()),
                own_user.as_deref(),
            );
            (by, decision)
        }
        Reader::Staff { notes } => {
            let legacy_reason = match (notes, legacy) {
                (true, Some(stored)) => open_legacy_reason(core, tenant, &s.id, &stored).await?,
                _ => None,
            };
            let decision = decision.map(|d| DecisionFacts {
                reason_code,
                note_id,
                decided_by,
                legacy_reason,
                ..d
            });
            (Some(s.submitted_by.clone()), decision)
        }
    };
    Ok(SubmissionView {
        submission: s,
        submitted_by,
        decision,
        documents,
    })
}

/// A customer's KYC: current tier and every submission with its decision, newest first.
#[derive(Debug)]
pub struct CustomerKyc {
    pub customer_id: String,
    pub tier: i64,
    pub status: String,
    pub history: Vec<SubmissionView>,
}

/// The customer `id` as the caller may see it under `perm` (404 otherwise).
async fn visible_customer(
    core: &Core,
    actor: &Principal,
    id: &str,
    perm: Permission,
) -> AppResult<crate::store::kyc::KycCustomer> {
    let tenant = actor.tenant()?;
    if CustomerId::parse(id).is_none() {
        return Err(AppError::NotFound("customer"));
    }
    if actor.scope(perm)? == Scope::Own {
        let own = core.store.customer_for_user(tenant, &actor.user_id).await?;
        if own.map(|c| c.id).as_deref() != Some(id) {
            return Err(AppError::NotFound("customer"));
        }
    }
    core.store
        .kyc_customer(tenant, id)
        .await?
        .ok_or(AppError::NotFound("customer"))
}

fn erased() -> AppError {
    AppError::Unprocessable {
        code: "customer_erased",
        message: "the customer's personal data has been erased".into(),
    }
}

/// Submits identity documents for a higher tier, for a `customer` that passed
/// [`check_submission_allowed`]. Each document's declared content type must match its bytes
/// (PDF, PNG, JPEG) and be at most 5 MiB; every document is checked before any is sealed. Each
/// is then sealed under the customer's data key, its plaintext dropped as soon as it is sealed.
/// The submission, each document and their audit records are written in one transaction.
pub async fn submit(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    customer: crate::store::kyc::KycCustomer,
    requested_tier: i64,
    documents: Vec<DocumentInput>,
) -> AppResult<SubmissionView> {
    let tenant = actor.tenant()?;
    let tier = Tier::parse(requested_tier).map_err(|m| AppError::invalid("requested_tier", m))?;
    if tier.get() <= customer.kyc_tier {
        return Err(AppError::invalid(
            "requested_tier",
            format!(
                "must be above the customer's current tier ({})",
                customer.kyc_tier
            ),
        ));
    }
    if documents.is_empty() || documents.len() > MAX_DOCUMENTS {
        return Err(AppError::invalid(
            "documents",
            format!("between 1 and {MAX_DOCUMENTS} documents are required"),
        ));
    }
    let mut parsed = Vec::with_capacity(documents.len());
    for (i, d) in documents.into_iter().enumerate() {
        let doc_type = DocumentType::parse(&d.document_type)
            .map_err(|m| AppError::invalid(format!("documents[{i}].document_type"), m))?;
        let declared = ContentType::parse(&d.content_type)
            .map_err(|m| AppError::invalid(format!("documents[{i}].content_type"), m))?;
        let param = format!("documents[{i}].content");
        let bytes = match d.content {
            UploadedContent::Decoded(b) => b,
            UploadedContent::TooLarge => {
                return Err(AppError::invalid(param, "a document may be at most 5 MiB"));
            }
            UploadedContent::NotBase64 => {
                return Err(AppError::invalid(param, "must be standard base64"));
            }
        };
        if bytes.is_empty() {
            return Err(AppError::invalid(param, "the document is empty"));
        }
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(AppError::invalid(param, "a document may be at most 5 MiB"));
        }
        match ContentType::sniff(&bytes) {
            Some(actual) if actual == declared => {}
            Some(actual) => {
                return Err(AppError::invalid(
                    format!("documents[{i}].content_type"),
                    format!(
                        "declared {} but the content is {}",
                        declared.as_str(),
                        actual.as_str()
                    ),
                ));
            }
            None => {
                return Err(AppError::invalid(
                    format!("documents[{i}].content_type"),
                    format!(
                        "declared {} but the content is not a PDF, PNG or JPEG file",
                        declared.as_str()
                    ),
                ));
            }
        }
        parsed.push((doc_type, declared, bytes));
    }
    let id = KycSubmissionId::generate();
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let mut events = vec![audit.own(
        "kyc.submission.create",
        Some(("kyc_submission", id.as_str())),
        Outcome::Success,
        Some(&format!("requested_tier={}", tier.get())),
    )];
    let owner = KeyOwner::Customer(customer.id.clone());
    let col = crate::store::keys::KYC_DOCUMENT_CONTENT;
    let mut docs = Vec::with_capacity(parsed.len());
    // Consumed one by one: each plaintext is dropped (and zeroed) once sealed.
    for (doc_type, content_type, bytes) in parsed {
        let doc_id = KycDocumentId::generate();
        // Erased meanwhile (its key destroyed): the same answer as the store's own check.
        let content = match core
            .keyring
            .seal(tenant, &owner, col, doc_id.as_str(), &bytes)
            .await
        {
            Err(e) if e.code() == "key_destroyed" => return Err(erased()),
            other => other?,
        };
        events.push(audit.own(
            "kyc.document.upload",
            Some(("kyc_document", doc_id.as_str())),
            Outcome::Success,
            Some(doc_type.as_str()),
        ));
        docs.push(NewKycDocument {
            id: doc_id.to_string(),
            document_type: doc_type.as_str(),
            content_type: content_type.as_str(),
            size_bytes: i64::try_from(bytes.len()).map_err(AppError::internal)?,
            sha256: crate::crypto::sha256_hex(&bytes),
            content,
        });
    }
    let s = NewKycSubmission {
        id: id.to_string(),
        tenant_id: tenant.clone(),
        customer_id: customer.id.clone(),
        requested_tier: tier.get(),
        tier_at_submission: customer.kyc_tier,
        submitted_by: actor.user_id.to_string(),
        submitted_at: now.as_micros(),
    };
    // The answer is what was written, not a read after the commit: an erasure committed just
    // after would hide it from every read (it committed first, so it was durable: 201).
    let metas: Vec<KycDocumentMeta> = docs
        .iter()
        .map(|d| KycDocumentMeta {
            id: d.id.clone(),
            tenant_id: tenant.to_string(),
            submission_id: s.id.clone(),
            customer_id: s.customer_id.clone(),
            document_type: d.document_type.to_owned(),
            content_type: d.content_type.to_owned(),
            size_bytes: d.size_bytes,
            sha256: d.sha256.clone(),
            created_at: s.submitted_at,
        })
        .collect();
    match core.store.create_kyc_submission(&s, docs, &events).await {
        Ok(true) => {}
        Ok(false) => return Err(erased()),
        Err(StoreError::Conflict { .. }) => return Err(open_submission()),
        Err(e) => return Err(e.into()),
    }
    let record = KycSubmissionRecord {
        id: s.id,
        tenant_id: tenant.to_string(),
        customer_id: s.customer_id,
        requested_tier: s.requested_tier,
        tier_at_submission: s.tier_at_submission,
        status: "submitted".into(),
        submitted_by: s.submitted_by,
        submitted_at: s.submitted_at,
        tier_after: None,
        reason: None,
        reason_code: None,
        customer_code: None,
        note_id: None,
        decided_by: None,
        decided_at: None,
    };
    let reader = Reader::of(core, actor, Permission::KycSubmit, &customer.id).await?;
    disclose(core, tenant, record, metas, &reader).await
}

/// Opens the sealed free-text reason of a decision made before reasons became codes. Once the
/// customer's key is destroyed (erasure) it reads as absent; the decision itself is kept.
async fn open_legacy_reason(
    core: &Core,
    tenant: &TenantId,
    submission: &str,
    stored: &str,
) -> AppResult<Option<String>> {
    let col = crate::store::keys::KYC_DECISION_REASON;
    let ctx = col.at(tenant.as_str(), submission);
    match core.keyring.open_text(&ctx, stored).await {
        Ok(text) => Ok(Some(text.to_string())),
        Err(e) if e.code() == "key_destroyed" => Ok(None),
        Err(e) => Err(e),
    }
}

async fn submission_view(
    core: &Core,
    tenant: &TenantId,
    id: &str,
    reader: &Reader,
) -> AppResult<SubmissionView> {
    let submission = core
        .store
        .get_kyc_submission(tenant, id)
        .await?
        .ok_or(AppError::NotFound("kyc submission"))?;
    let documents = core
        .store
        .list_kyc_documents(tenant, Some(id), None)
        .await?;
    disclose(core, tenant, submission, documents, reader).await
}

/// A customer's tier and full verification history (documents by metadata only). An erased
/// customer's KYC no longer exists: 404, on every instance from the erasure's commit (the
/// status is read from the database on every request, like a session).
pub async fn customer_kyc(core: &Core, actor: &Principal, id: &str) -> AppResult<CustomerKyc> {
    let tenant = actor.tenant()?;
    let customer = visible_customer(core, actor, id, Permission::KycRead).await?;
    if customer.status == "erased" {
        return Err(AppError::NotFound("customer kyc"));
    }
    let reader = Reader::of(core, actor, Permission::KycRead, &customer.id).await?;
    kyc_history(core, tenant, customer, &reader).await
}

/// A customer's KYC history for its data-subject export: as the customer sees it, whoever
/// asked for the export (it is the customer's copy).
pub async fn customer_kyc_for_export(
    core: &Core,
    tenant: &crate::ids::TenantId,
    id: &str,
) -> AppResult<CustomerKyc> {
    let customer = core
        .store
        .kyc_customer(tenant, id)
        .await?
        .ok_or(AppError::NotFound("customer"))?;
    let reader = Reader::Customer {
        own_user: customer.user_id.clone(),
    };
    kyc_history(core, tenant, customer, &reader).await
}

async fn kyc_history(
    core: &Core,
    tenant: &crate::ids::TenantId,
    customer: crate::store::kyc::KycCustomer,
    reader: &Reader,
) -> AppResult<CustomerKyc> {
    let mut submissions = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = Page {
            limit: 100,
            starting_after: after.clone(),
        };
        let rows = core
            .store
            .list_kyc_submissions(tenant, Some(&customer.id), None, &page)
            .await?;
        let more = rows.len() > 100;
        submissions.extend(rows.into_iter().take(100));
        if !more {
            break;
        }
        after = submissions.last().map(|s| s.id.clone());
    }
    let mut documents = core
        .store
        .list_kyc_documents(tenant, None, Some(&customer.id))
        .await?;
    let mut history = Vec::with_capacity(submissions.len());
    for s in submissions {
        let (mine, rest): (Vec<_>, Vec<_>) =
            documents.drain(..).partition(|d| d.submission_id == s.id);
        documents = rest;
        history.push(disclose(core, tenant, s, mine, reader).await?);
    }
    Ok(CustomerKyc {
        customer_id: customer.id,
        tier: customer.kyc_tier,
        status: customer.status,
        history,
    })
}

/// The review queue (or any status), newest first. A caller with `Own` scope sees only its
/// own customer's submissions.
pub async fn list_submissions(
    core: &Core,
    actor: &Principal,
    status: Option<&str>,
    page: &Page,
) -> AppResult<Listed<SubmissionView>> {
    let tenant = actor.tenant()?;
    if let Some(s) = status
        && !["submitted", "approved", "rejected"].contains(&s)
    {
        return Err(AppError::invalid(
            "status",
            "must be one of submitted, approved, rejected",
        ));
    }
    let owner = match actor.scope(Permission::KycRead)? {
        Scope::All => None,
        Scope::Own => Some(
            core.store
                .customer_for_user(tenant, &actor.user_id)
                .await?
                .map_or_else(|| "cus_none".to_owned(), |c| c.id),
        ),
    };
    let rows = core
        .store
        .list_kyc_submissions(tenant, owner.as_deref(), status, page)
        .await?;
    let listed = Listed::from_rows(rows, page);
    // A staff member's own customer record reads as the customer's (see `staff_notes`).
    let own_customer = match &owner {
        Some(o) => Some(o.clone()),
        None => core
            .store
            .customer_for_user(tenant, &actor.user_id)
            .await?
            .map(|c| c.id),
    };
    let staff = Reader::Staff {
        notes: actor
            .permissions
            .scope(Permission::StaffNotesRead)
            .is_some(),
    };
    let customer = Reader::Customer {
        own_user: Some(actor.user_id.to_string()),
    };
    let mut data = Vec::with_capacity(listed.data.len());
    for s in listed.data {
        let documents = core
            .store
            .list_kyc_documents(tenant, Some(&s.id), None)
            .await?;
        let reader = if own_customer.as_deref() == Some(s.customer_id.as_str()) {
            &customer
        } else {
            &staff
        };
        data.push(disclose(core, tenant, s, documents, reader).await?);
    }
    Ok(Listed {
        data,
        has_more: listed.has_more,
    })
}

/// An approval (with the tier it grants) or a rejection (with its reason code), each with an
/// optional staff-only note.
pub enum Decision {
    Approve {
        tier: i64,
        note: Option<String>,
    },
    Reject {
        reason: String,
        note: Option<String>,
    },
}

/// Decides a submission once. The decider may not be the one who submitted it, nor the
/// customer it is about, nor someone the submitter invited or granted roles within the last
/// 30 days (`service::duties`). A rejection's reason is a code (`domain::reasons::KycRejection`);
/// the customer is shown its customer-facing code only. A note is sealed under the tenant's key,
/// staff-only, and written in the decision's transaction; the audit record carries the codes
/// and the note's id.
pub async fn decide(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    decision: Decision,
) -> AppResult<SubmissionView> {
    use crate::domain::reasons::{KYC_APPROVAL_CODE, KycRejection, ReasonCode, audit_reason};
    let tenant = actor.tenant()?;
    let submission = match KycSubmissionId::parse(id) {
        Some(_) => core.store.get_kyc_submission(tenant, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("kyc submission"))?;
    let (status, tier, code, customer_code, note, action, audit_code) = match decision {
        Decision::Approve { tier, note } => {
            let tier = Tier::parse(tier).map_err(|m| AppError::invalid("tier", m))?;
            if tier.get() == 0 {
                return Err(AppError::invalid(
                    "tier",
                    "an approval grants a tier from 1 to 3; reject to keep the current tier",
                ));
            }
            (
                "approved",
                Some(tier.get()),
                KYC_APPROVAL_CODE,
                None,
                note,
                "kyc.submission.approve",
                format!("tier={}", tier.get()),
            )
        }
        Decision::Reject { reason, note } => {
            let code = KycRejection::parse(&reason).map_err(|m| AppError::invalid("reason", m))?;
            (
                "rejected",
                None,
                code.as_str(),
                Some(code.customer_code().as_str()),
                note,
                "kyc.submission.reject",
                code.as_str().to_owned(),
            )
        }
    };
    let note = super::staff_notes::parse_note(note.as_deref())?;
    let own = core.store.customer_for_user(tenant, &actor.user_id).await?;
    if submission.submitted_by == actor.user_id.as_str()
        || own.is_some_and(|c| c.id == submission.customer_id)
    {
        return Err(AppError::Forbidden {
            code: "kyc_self_decision",
            message: "you cannot decide a submission you made or one about yourself".into(),
        });
    }
    if submission.status != "submitted" {
        return Err(already_decided());
    }
    // Segregation of duties: not someone the submitter recently invited or granted roles.
    super::duties::check_decider(core, meta, actor, &submission.id, &submission.submitted_by)
        .await?;
    let sealed = super::staff_notes::seal(
        core,
        actor,
        ("kyc_submission", &submission.id),
        Some(&submission.customer_id),
        action,
        code,
        note.as_ref(),
    )
    .await?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        action,
        Some(("kyc_submission", &submission.id)),
        Outcome::Success,
        Some(&audit_reason(
            &audit_code,
            sealed.as_ref().map(|n| n.id.as_str()),
        )),
    );
    let d = NewKycDecision {
        submission_id: submission.id.clone(),
        tenant_id: tenant.clone(),
        decision: status,
        tier,
        reason_code: code,
        customer_code,
        note: sealed,
        decided_by: actor.user_id.to_string(),
        decided_at: core.clock.now().as_micros(),
    };
    match core.store.decide_kyc_submission(&d, &[ev]).await? {
        DecideOutcome::Decided => {
            let reader = Reader::Staff {
                notes: actor
                    .permissions
                    .scope(Permission::StaffNotesRead)
                    .is_some(),
            };
            submission_view(core, tenant, &submission.id, &reader).await
        }
        DecideOutcome::AlreadyDecided => Err(already_decided()),
        DecideOutcome::CustomerUnavailable => Err(erased()),
    }
}

fn already_decided() -> AppError {
    AppError::Conflict {
        code: "kyc_already_decided",
        param: None,
        message: "this submission has already been decided".into(),
    }
}

/// A downloaded document: its metadata and the plaintext content.
pub struct Download {
    pub meta: KycDocumentMeta,
    pub content: zeroize::Zeroizing<Vec<u8>>,
}

/// Opens a document for a compliance officer. The read of personal data is audited before the
/// content is returned; if the audit record cannot be written, nothing is returned.
pub async fn download(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
) -> AppResult<Download> {
    let tenant = actor.tenant()?;
    let doc = match KycDocumentId::parse(id) {
        Some(_) => core.store.get_kyc_document(tenant, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("kyc document"))?;
    // An erased customer's documents no longer exist (the store reads only customers that are
    // not erased, and the customer's key is checked against its row on every use): 404 on
    // every instance from the erasure's commit.
    let col = crate::store::keys::KYC_DOCUMENT_CONTENT;
    let content = core
        .keyring
        .open(&col.at(tenant.as_str(), &doc.meta.id), &doc.content)
        .await?;
    if crate::crypto::sha256_hex(&content) != doc.meta.sha256 {
        return Err(AppError::internal(format!(
            "kyc document {} does not match its digest",
            doc.meta.id
        )));
    }
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "kyc.document.read",
        Some(("kyc_document", &doc.meta.id)),
        Outcome::Success,
        Some("pii_read"),
    );
    core.store.append_audit(&ev).await?;
    Ok(Download {
        meta: doc.meta,
        content,
    })
}

/// When a submission or decision happened, for views.
pub fn at(micros: i64) -> String {
    Timestamp::from_micros(micros).to_rfc3339()
}
