//! Segregation of duties: one person must not be able to make and approve the same decision by
//! giving themselves a second identity or a second role.
//!
//! - No user holds a pair of roles its tenant's policy forbids together
//!   (`SecurityPolicy::forbidden_role_pairs`, which always lists MANAGER with
//!   COMPLIANCE_OFFICER): inviting or granting such a set is refused ([`check_role_pairs`]).
//!   Users who held a pair before the rule keep working, and are flagged at every start-up by
//!   a warning and a `forbidden_role_pair` security event ([`flag_forbidden_pairs`]) until a
//!   manager removes one of the roles.
//! - A KYC decision is refused when the decider was invited, re-invited or had its roles
//!   changed by the submitter within the last [`GRANT_COOLING_OFF_DAYS`] days
//!   ([`check_decider`]): the audit chain (written in the same transaction as every such
//!   change) is the record of who granted what to whom.

use std::collections::HashMap;

use super::{AuditBuilder, Core, Principal, RequestMeta, security};
use crate::domain::audit::{ActorType, NewAuditEvent, Outcome};
use crate::domain::authz::{Role, roles_from_storage};
use crate::domain::security::{SecurityEvent, SecurityPolicy};
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;

/// How long after inviting someone, or granting them roles, a submitter's KYC submissions may
/// not be decided by that person.
pub const GRANT_COOLING_OFF_DAYS: i64 = 30;

/// Refuses a set of roles holding a pair the caller's tenant forbids together, with a
/// `segregation_of_duties_refused` security event naming the pair.
pub async fn check_role_pairs(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    target: Option<&str>,
    roles: &[Role],
) -> AppResult<()> {
    let Some((a, b)) = actor.policy.forbidden_pair(roles) else {
        return Ok(());
    };
    let reason = format!("forbidden_role_pair:{a}+{b}");
    security::record(
        core,
        security::event(
            &AuditBuilder::new(core, meta, Some(actor)),
            actor.tenant_id.as_ref(),
            SecurityEvent::SegregationOfDutiesRefused,
            "user.roles.check",
            target.map(|t| ("user", t)),
            Outcome::Denied,
            Some(&reason),
        ),
    )
    .await;
    Err(AppError::Refused {
        code: "forbidden_role_pair",
        param: Some("roles".into()),
        message: format!(
            "one user may not hold both {a} and {b} (segregation of duties; the tenant's \
             security policy lists the forbidden pairs in forbidden_role_pairs)"
        ),
    })
}

/// Refuses a KYC decision by `actor` on a submission made by `submitted_by` when the submitter
/// invited the actor, re-sent its invitation or changed its roles within the last
/// [`GRANT_COOLING_OFF_DAYS`] days.
pub async fn check_decider(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    submission: &str,
    submitted_by: &str,
) -> AppResult<()> {
    let tenant = actor.tenant()?;
    let since = core
        .clock
        .now()
        .plus_seconds(-GRANT_COOLING_OFF_DAYS * 86_400);
    if !core
        .store
        .granted_recently(tenant, actor.user_id.as_str(), submitted_by, since)
        .await?
    {
        return Ok(());
    }
    security::record(
        core,
        security::event(
            &AuditBuilder::new(core, meta, Some(actor)),
            Some(tenant),
            SecurityEvent::SegregationOfDutiesRefused,
            "kyc.submission.decide",
            Some(("kyc_submission", submission)),
            Outcome::Denied,
            Some("decider_granted_by_submitter"),
        ),
    )
    .await;
    Err(AppError::Forbidden {
        code: "kyc_decider_granted_by_submitter",
        message: format!(
            "the submitter of this verification invited you or changed your roles within the \
             last {GRANT_COOLING_OFF_DAYS} days: another compliance officer must decide it"
        ),
    })
}

/// A user found holding a forbidden pair of roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlaggedUser {
    pub tenant_id: String,
    pub user_id: String,
    pub pair: (Role, Role),
}

/// The start-up check: every tenant user (not disabled) holding a pair of roles its tenant
/// forbids together is logged at `warn` and recorded as a `forbidden_role_pair` security event
/// in its tenant's chain. Reads only users with more than one role, in pages.
pub async fn flag_forbidden_pairs(core: &Core) -> AppResult<Vec<FlaggedUser>> {
    const PAGE: i64 = 500;
    let mut policies: HashMap<String, SecurityPolicy> = HashMap::new();
    let mut flagged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let users = core.store.multi_role_users(after.as_deref(), PAGE).await?;
        let Some(last) = users.last() else { break };
        after = Some(last.id.clone());
        for u in &users {
            let tenant = TenantId::from_trusted(u.tenant_id.clone());
            let policy = match policies.get(&u.tenant_id) {
                Some(p) => p,
                None => {
                    let p = security::policy(core, Some(&tenant)).await?;
                    policies.entry(u.tenant_id.clone()).or_insert(p)
                }
            };
            let Some(pair) = policy.forbidden_pair(&roles_from_storage(&u.roles)) else {
                continue;
            };
            flagged.push(FlaggedUser {
                tenant_id: u.tenant_id.clone(),
                user_id: u.id.clone(),
                pair,
            });
        }
        if users.len() < usize::try_from(PAGE).unwrap_or(usize::MAX) {
            break;
        }
    }
    let meta = RequestMeta::default();
    let audit = AuditBuilder::new(core, &meta, None);
    for f in &flagged {
        let tenant = TenantId::from_trusted(f.tenant_id.clone());
        let reason = format!("{}+{}", f.pair.0, f.pair.1);
        tracing::warn!(
            tenant_id = %f.tenant_id,
            user_id = %f.user_id,
            roles = %reason,
            "a user holds two roles that may not be held together (segregation of duties): \
             it keeps working, but a manager should remove one of them"
        );
        let ev = NewAuditEvent {
            actor_type: ActorType::System,
            ..security::event(
                &audit,
                Some(&tenant),
                SecurityEvent::ForbiddenRolePair,
                "user.roles.flag",
                Some(("user", &f.user_id)),
                Outcome::Failure,
                Some(&reason),
            )
        };
        super::audit::record(core, &ev).await;
    }
    Ok(flagged)
}
