//! Storage of who may become whom: invitations (a user created without a password, its link's
//! digest and the email carrying it, written in one transaction), their acceptance (a
//! conditional update spending the link in the transaction that sets the password), the
//! break-glass requests that restore a tenant's administration, and the look-ups segregation of
//! duties needs. Implemented once for both backends (any
//! [`SqlStore`]).

use async_trait::async_trait;

use sqlx::Transaction;

use super::backend::{Backend, Paged, RowsAffected, SqlStore, for_update};
use super::mail::{self, NewOutboxMessage};
use super::{NewUser, Page, StoreResult, users};
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
use crate::ids::{TenantId, UserId};

/// An invitation link to store: only the SHA-256 digest of its token.
#[derive(Debug, Clone)]
pub struct NewInvitation {
    pub id: String,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub token_hash: String,
    /// `user`, `platform_admin`, `break_glass` or `console`.
    pub issued_by_type: &'static str,
    /// The user (or platform admin) who issued it; `None` at the console.
    pub issued_by: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// The user who issues it, as the request was authorised: re-checked in the transaction
    /// that stores the link (`None`: the platform, the console or break-glass).
    pub actor: Option<crate::store::ActorCheck>,
}

/// A user created by an invitation (stored with status `invited`, its `password_hash` one
/// nobody knows), its first link and the email carrying the link.
#[derive(Debug, Clone)]
pub struct NewInvite {
    pub user: NewUser,
    pub invitation: NewInvitation,
    pub message: NewOutboxMessage,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InvitationRecord {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub issued_by_type: String,
    pub issued_by: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub accepted_at: Option<i64>,
    pub invalidated_at: Option<i64>,
}

/// Accepting an invitation: the link spent, the password set and the user activated at once.
#[derive(Clone)]
pub struct Acceptance<'a> {
    pub invitation_id: &'a str,
    pub tenant: &'a TenantId,
    pub user: &'a UserId,
    pub password_hash: String,
    pub now: Timestamp,
}

/// A break-glass request to store.
#[derive(Debug, Clone)]
pub struct NewBreakGlass {
    pub id: String,
    pub tenant_id: TenantId,
    /// The new MANAGER's email (already normalised).
    pub email: String,
    pub requested_by: UserId,
    pub requested_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BreakGlassRecord {
    pub id: String,
    pub tenant_id: String,
    pub email: String,
    pub requested_by: String,
    pub requested_at: i64,
    pub expires_at: i64,
    /// `pending` or `approved` (a pending request past `expires_at` is expired).
    pub status: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<i64>,
    /// The MANAGER invited by the approval.
    pub user_id: Option<String>,
}

/// What an approval did, decided inside its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveOutcome {
    /// The MANAGER was invited (its invitation and email stored) and the request approved.
    Approved(BreakGlassRecord),
    NotFound,
    /// Approved before.
    AlreadyApproved,
    /// Past its 24 hours.
    Expired,
    /// The approver is the requester: two different platform admins are needed.
    SameAdmin,
}

/// A user of a tenant holding more than one role, for the start-up check of forbidden pairs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MultiRoleUser {
    pub id: String,
    pub tenant_id: String,
    pub roles: String,
    pub status: String,
}

#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Creates the user (status `invited`), its invitation and the email in one transaction,
    /// with `audit`. `Conflict` when the email is taken in the tenant.
    async fn invite_user(&self, invite: &NewInvite, audit: &[NewAuditEvent]) -> StoreResult<()>;
    /// The invitation with this digest, live or not.
    async fn invitation_by_hash(&self, token_hash: &str) -> StoreResult<Option<InvitationRecord>>;
    /// Spends a live invitation, sets the user's password and activates it (only a user still
    /// `invited`), with `audit`, in one transaction. `false`: the link was no longer live or
    /// the user no longer invited, and nothing changed.
    async fn accept_invitation(
        &self,
        acceptance: &Acceptance<'_>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;
    /// Stores a new link for a user still `invited`, invalidating its older live links, and
    /// the email carrying it when there is one (none when the link is shown at the console),
    /// with `audit`. `false`: the user is not invited (any more), and nothing changed.
    async fn reissue_invitation(
        &self,
        invitation: &NewInvitation,
        message: Option<&NewOutboxMessage>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;
    /// Whether `granter` invited `grantee`, re-sent its invitation or changed its roles (a
    /// successful `user.create`, `user.reinvite` or `user.roles.update` in the tenant's audit
    /// chain) at or after `since`.
    async fn granted_recently(
        &self,
        tenant: &TenantId,
        grantee: &str,
        granter: &str,
        since: Timestamp,
    ) -> StoreResult<bool>;
    /// Tenant users (not disabled) holding more than one role, by id after `after`.
    async fn multi_role_users(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<MultiRoleUser>>;
    /// Active platform admins.
    async fn count_platform_admins(&self) -> StoreResult<i64>;
    async fn create_break_glass(
        &self,
        request: &NewBreakGlass,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    async fn get_break_glass(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<BreakGlassRecord>>;
    /// A tenant's requests, newest first.
    async fn list_break_glass(
        &self,
        tenant: &TenantId,
        page: &Page,
    ) -> StoreResult<Vec<BreakGlassRecord>>;
    /// Approves a pending, unexpired request by another platform admin than its requester and
    /// invites its MANAGER, with `audit`, in one transaction (the request row locked). Any
    /// other outcome changes nothing. `Conflict` when the email is taken in the tenant.
    async fn approve_break_glass(
        &self,
        tenant: &TenantId,
        id: &str,
        approver: &UserId,
        invite: &NewInvite,
        audit: &[NewAuditEvent],
    ) -> StoreResult<ApproveOutcome>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> IdentityStore for S {
    async fn invite_user(&self, invite: &NewInvite, audit: &[NewAuditEvent]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let i = &invite.invitation;
        Self::authorise_change_tx(
            &mut tx,
            Some(&i.tenant_id),
            i.actor.as_ref(),
            i.created_at.as_micros(),
        )
        .await?;
        insert_invite_tx(&mut tx, invite).await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn invitation_by_hash(&self, token_hash: &str) -> StoreResult<Option<InvitationRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, user_id, issued_by_type, issued_by, created_at, expires_at, \
             accepted_at, invalidated_at FROM user_invitations WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn accept_invitation(
        &self,
        a: &Acceptance<'_>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let now = a.now.as_micros();
        let mut tx = self.begin_write().await?;
        // Of two concurrent acceptances of one link, one spends it; the other changes
        // nothing.
        let spent = sqlx::query(
            "UPDATE user_invitations SET accepted_at = $3 WHERE id = $1 AND user_id = $2 \
             AND accepted_at IS NULL AND invalidated_at IS NULL AND expires_at > $3",
        )
        .bind(a.invitation_id)
        .bind(a.user.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if spent != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let activated = sqlx::query(
            "UPDATE users SET status = 'active', password_hash = $3, password_changed_at = $4, \
             updated_at = $4 WHERE tenant_id = $1 AND id = $2 AND status = 'invited'",
        )
        .bind(a.tenant.as_str())
        .bind(a.user.as_str())
        .bind(&a.password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if activated != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Any other link of this user is dead from now on.
        sqlx::query(
            "UPDATE user_invitations SET invalidated_at = $2 \
             WHERE user_id = $1 AND accepted_at IS NULL AND invalidated_at IS NULL",
        )
        .bind(a.user.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn reissue_invitation(
        &self,
        invitation: &NewInvitation,
        message: Option<&NewOutboxMessage>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        Self::authorise_change_tx(
            &mut tx,
            Some(&invitation.tenant_id),
            invitation.actor.as_ref(),
            invitation.created_at.as_micros(),
        )
        .await?;
        let invited: Option<(String,)> = sqlx::query_as(for_update!(
            B,
            "SELECT id FROM users WHERE tenant_id = $1 AND id = $2 AND status = 'invited'"
        ))
        .bind(invitation.tenant_id.as_str())
        .bind(invitation.user_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if invited.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE user_invitations SET invalidated_at = $2 \
             WHERE user_id = $1 AND accepted_at IS NULL AND invalidated_at IS NULL",
        )
        .bind(invitation.user_id.as_str())
        .bind(invitation.created_at.as_micros())
        .execute(&mut *tx)
        .await?;
        insert_invitation_tx(&mut tx, invitation).await?;
        if let Some(m) = message {
            mail::insert_mail_tx(&mut tx, m).await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn granted_recently(
        &self,
        tenant: &TenantId,
        grantee: &str,
        granter: &str,
        since: Timestamp,
    ) -> StoreResult<bool> {
        let row: Option<(i32,)> = sqlx::query_as(
            "SELECT 1 FROM audit_events WHERE chain = $1 AND target_type = 'user' \
             AND target_id = $2 AND occurred_at >= $4 AND actor_type = 'user' AND actor_id = $3 \
             AND outcome = 'success' \
             AND action IN ('user.create', 'user.reinvite', 'user.roles.update') LIMIT 1",
        )
        .bind(tenant.as_str())
        .bind(grantee)
        .bind(granter)
        .bind(since.as_micros())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    async fn multi_role_users(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<MultiRoleUser>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, roles, status FROM users WHERE tenant_id IS NOT NULL \
             AND status <> 'disabled' AND roles LIKE '%,%' AND ($1 IS NULL OR id > $1) \
             ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    async fn count_platform_admins(&self) -> StoreResult<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM users WHERE tenant_id IS NULL AND status = 'active' \
             AND roles = 'PLATFORM_ADMIN'",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    async fn create_break_glass(
        &self,
        r: &NewBreakGlass,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO break_glass_requests (id, tenant_id, email, requested_by, requested_at, \
             expires_at, status) VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
        )
        .bind(&r.id)
        .bind(r.tenant_id.as_str())
        .bind(&r.email)
        .bind(r.requested_by.as_str())
        .bind(r.requested_at.as_micros())
        .bind(r.expires_at.as_micros())
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_break_glass(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<BreakGlassRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM break_glass_requests WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn list_break_glass(
        &self,
        tenant: &TenantId,
        page: &Page,
    ) -> StoreResult<Vec<BreakGlassRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM break_glass_requests WHERE tenant_id = $1 \
             AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(tenant.as_str())
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }

    async fn approve_break_glass(
        &self,
        tenant: &TenantId,
        id: &str,
        approver: &UserId,
        invite: &NewInvite,
        audit: &[NewAuditEvent],
    ) -> StoreResult<ApproveOutcome> {
        use ApproveOutcome;
        let now = invite.invitation.created_at.as_micros();
        let mut tx = self.begin_write().await?;
        let row: Option<BreakGlassRecord> = sqlx::query_as(for_update!(
            B,
            "SELECT * FROM break_glass_requests WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match &row {
            None => Some(ApproveOutcome::NotFound),
            Some(r) if r.status != "pending" => Some(ApproveOutcome::AlreadyApproved),
            Some(r) if r.expires_at <= now => Some(ApproveOutcome::Expired),
            Some(r) if r.requested_by == approver.as_str() => Some(ApproveOutcome::SameAdmin),
            Some(_) => None,
        };
        if let Some(outcome) = outcome {
            tx.rollback().await?;
            return Ok(outcome);
        }
        insert_invite_tx(&mut tx, invite).await?;
        let approved: BreakGlassRecord = sqlx::query_as(
            "UPDATE break_glass_requests SET status = 'approved', approved_by = $3, \
             approved_at = $4, user_id = $5 WHERE tenant_id = $1 AND id = $2 RETURNING *",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(approver.as_str())
        .bind(now)
        .bind(invite.user.id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(ApproveOutcome::Approved(approved))
    }
}

/// Inserts an invited user, its invitation and its email inside `tx`.
async fn insert_invite_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    invite: &NewInvite,
) -> StoreResult<()> {
    users::insert_user_tx(tx, &invite.user, "invited").await?;
    insert_invitation_tx(tx, &invite.invitation).await?;
    mail::insert_mail_tx(tx, &invite.message).await
}

async fn insert_invitation_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    i: &NewInvitation,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO user_invitations (id, tenant_id, user_id, token_hash, issued_by_type, \
         issued_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&i.id)
    .bind(i.tenant_id.as_str())
    .bind(i.user_id.as_str())
    .bind(&i.token_hash)
    .bind(i.issued_by_type)
    .bind(i.issued_by.as_deref())
    .bind(i.created_at.as_micros())
    .bind(i.expires_at.as_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
