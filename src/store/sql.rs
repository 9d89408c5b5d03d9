//! What is left of the whole-impl macro, waiting for the ledger's conversion: `impl_store!`
//! expands the `Store` trait's own methods for SQLite and PostgreSQL and the ledger's account and
//! money methods (with `create_tenant`, which opens the tenant's system accounts, and
//! `erase_customer`, which releases its holds). Money is posted only through `LedgerPort`
//! (`store::sqlite_writer`, `store::postgres::writer`). Every other aggregate is ordinary generic
//! code in its own module (see `store::backend`). Each backend type provides `pool`, `sealer`,
//! `begin_write()`, `ledger_port()` and `run_migrations()`.

// The audit helpers the ledger's SQL below (and the SQLite ledger writer) still name here.
pub(super) use super::audit::{chain_runs, next_record, opt_len, text_len};

macro_rules! impl_store {
    ($store:ty, $backend:literal, $lock:literal, $share:literal, $max_message:expr, $persist:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn migrate(&self) -> $crate::store::StoreResult<Vec<String>> {
                self.run_migrations().await
            }

            async fn ping(&self) -> $crate::store::StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            fn as_any(&self) -> &dyn std::any::Any {
                self
            }

            async fn create_tenant(
                &self,
                t: &$crate::store::NewTenant,
                manager: &$crate::store::NewUser,
                system_accounts: &[$crate::store::NewAccount],
                audit: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO tenants (id, slug, name, currencies, status, access_token_ttl_seconds, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'active', $5, $6, $6)",
                )
                .bind(t.id.as_str())
                .bind(&t.slug)
                .bind(&t.name)
                .bind(&t.currencies)
                .bind(t.access_token_ttl_seconds)
                .bind(t.created_at.as_micros())
                .execute(&mut *tx)
                .await?;
                $crate::store::users::insert_user_tx(&mut tx, manager, "invited").await?;
                for a in system_accounts {
                    $crate::store::accounts::insert_account_tx(&mut tx, a).await?;
                }
                self.append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            fn ledger(&self) -> &dyn $crate::store::LedgerPort {
                self.ledger_port()
            }

            // ---------------------------------------------------- data-subject rights

            async fn erase_customer(
                &self,
                tenant: &$crate::ids::TenantId,
                id: &str,
                linked: Option<&$crate::store::LinkedUser>,
                now: $crate::clock::Timestamp,
                audit: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<$crate::store::ErasureOutcome> {
                use $crate::store::ErasureOutcome;
                let t = tenant.as_str();
                let now = now.as_micros();
                let mut tx = self.begin_write().await?;
                // The customer's row first: every transaction that creates something for the
                // customer (an account, a KYC submission, a decision) locks it first too
                // (`lock_customer_tx`), so each either committed before (and is seen below) or
                // waits and then finds the customer erased.
                let customer: Option<(String, Option<String>)> = sqlx::query_as(concat!(
                    "SELECT status, user_id FROM customers WHERE tenant_id = $1 AND id = $2",
                    $lock
                ))
                .bind(t)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((status, user_id)) = customer else {
                    return Ok(ErasureOutcome::NotFound);
                };
                if status == "erased" {
                    return Ok(ErasureOutcome::AlreadyErased);
                }
                // Then the accounts, locked in id order like the ledger writer locks them, so
                // no movement can slip in between the checks and the closing (the ledger writer
                // never locks a customer row, so the order cannot deadlock with it).
                let accounts: Vec<(String,)> = sqlx::query_as(concat!(
                    "SELECT id FROM accounts WHERE tenant_id = $1 AND customer_id = $2 ORDER BY id",
                    $lock
                ))
                .bind(t)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                // The linked user must be as the caller planned from (who may affect it was
                // decided on its roles), read under the lock.
                let user_now: Option<(String,)> = match &user_id {
                    Some(u) => sqlx::query_as(concat!(
                        "SELECT roles FROM users WHERE tenant_id = $1 AND id = $2",
                        $lock
                    ))
                    .bind(t)
                    .bind(u)
                    .fetch_optional(&mut *tx)
                    .await?,
                    None => None,
                };
                let as_planned = match (&user_id, &user_now, linked) {
                    (None, _, None) => true,
                    (Some(u), Some((roles,)), Some(l)) => *u == l.id && *roles == l.roles,
                    _ => false,
                };
                if !as_planned {
                    tx.rollback().await?;
                    return Ok(ErasureOutcome::LinkedUserChanged);
                }
                let staff = linked.filter(|l| l.is_staff());
                // Holds past their expiry stop counting first (as every other write does).
                for (account,) in &accounts {
                    $crate::store::holds::expire_holds_tx(&mut tx, t, account, now).await?;
                }
                let balances: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
                    "SELECT id, currency, posted, pending_debits, pending_credits FROM accounts \
                     WHERE tenant_id = $1 AND customer_id = $2 ORDER BY id",
                )
                .bind(t)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                let holds: Vec<(String, String, Option<String>)> = sqlx::query_as(
                    "SELECT h.id, h.account_id, h.credit_account_id FROM holds h \
                     WHERE h.tenant_id = $1 AND h.status = 'active' AND h.expires_at > $3 \
                     AND (h.account_id IN (SELECT a.id FROM accounts a WHERE a.tenant_id = $1 AND a.customer_id = $2) \
                          OR h.credit_account_id IN (SELECT a.id FROM accounts a WHERE a.tenant_id = $1 AND a.customer_id = $2)) \
                     ORDER BY h.id",
                )
                .bind(t)
                .bind(id)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let mut blocked = Vec::new();
                for (account, currency, posted, debits, credits) in &balances {
                    if *posted != 0 {
                        blocked.push(format!("account {account} has a balance of {posted} {currency} minor units"));
                    }
                    if *debits != 0 {
                        blocked.push(format!("account {account} has {debits} {currency} minor units reserved by open holds"));
                    }
                    if *credits != 0 {
                        blocked.push(format!("account {account} has {credits} {currency} minor units of pending credits from open holds"));
                    }
                }
                for (hold, account, credit) in &holds {
                    let side = if accounts.iter().any(|(a,)| a == account) {
                        format!("on account {account}")
                    } else {
                        format!("towards account {}", credit.as_deref().unwrap_or(""))
                    };
                    blocked.push(format!("hold {hold} is still active {side}"));
                }
                if !blocked.is_empty() {
                    // Nothing of the erasure is kept, not even the expiry releases above (they
                    // are re-derived by the next write anyway).
                    tx.rollback().await?;
                    return Ok(ErasureOutcome::Blocked(blocked));
                }
                let closed: Vec<(String,)> = sqlx::query_as(
                    "UPDATE accounts SET status = 'closed', updated_at = $3 \
                     WHERE tenant_id = $1 AND customer_id = $2 AND status <> 'closed' RETURNING id",
                )
                .bind(t)
                .bind(id)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let lookups_deleted = sqlx::query("DELETE FROM customer_lookup WHERE tenant_id = $1 AND customer_id = $2")
                    .bind(t)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                // Crypto-shredding: every version loses its key material, so the ciphertexts
                // it sealed (here and in every backup) cannot be opened even with the master key.
                let keys_destroyed = sqlx::query(
                    "UPDATE data_keys SET status = 'destroyed', wrapped = NULL, retired_at = COALESCE(retired_at, $3) \
                     WHERE tenant_id = $1 AND owner = $2",
                )
                .bind(t)
                .bind(format!("customer:{id}"))
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                sqlx::query(
                    "UPDATE customers SET pii = NULL, external_ref = NULL, status = 'erased', erased_at = $3, updated_at = $3 \
                     WHERE tenant_id = $1 AND id = $2",
                )
                .bind(t)
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                // Staff notes about the customer and its KYC submissions: those sealed under
                // its key are shredded with it, and older ones sealed under the tenant's key
                // lose their text here. An empty note reads as gone (404) on every instance;
                // the rows stay (the audit chain names their ids). Notes about its accounts
                // (freezes, closures) are AML records the tenant keeps.
                sqlx::query(
                    "UPDATE staff_notes SET note = '' WHERE tenant_id = $1 AND note <> '' AND ( \
                        target_id = $2 \
                        OR target_id IN (SELECT k.id FROM kyc_submissions k WHERE k.tenant_id = $1 AND k.customer_id = $2))",
                )
                .bind(t)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                if let Some(l) = staff {
                    // Staff who bank with their employer: the login is theirs as an employee.
                    // It is unlinked and loses only its CUSTOMER role (its sessions end, as on
                    // any role change); everything else about it stays.
                    let roles: Vec<$crate::domain::authz::Role> =
                        $crate::domain::authz::roles_from_storage(&l.roles)
                            .into_iter()
                            .filter(|r| *r != $crate::domain::authz::Role::Customer)
                            .collect();
                    sqlx::query("UPDATE customers SET user_id = NULL WHERE tenant_id = $1 AND id = $2")
                        .bind(t)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE users SET roles = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2")
                        .bind(t)
                        .bind(&l.id)
                        .bind($crate::domain::authz::roles_to_storage(&roles))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = $3, revoked_reason = 'roles_changed' \
                         WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
                    )
                    .bind(t)
                    .bind(&l.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                } else if let Some(user) = &user_id {
                    // The login keeps its id (the audit trail names it) and nothing else: its
                    // email was sealed under its own key, destroyed here with the customer's
                    // (in every copy of the database), and its lookup hash goes.
                    sqlx::query(
                        "UPDATE data_keys SET status = 'destroyed', wrapped = NULL, retired_at = COALESCE(retired_at, $3) \
                         WHERE tenant_id = $1 AND owner = $2",
                    )
                    .bind(t)
                    .bind(format!("login:{user}"))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE users SET status = 'disabled', email = $3, email_hash = NULL, password_hash = '!erased', updated_at = $4 \
                         WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(t)
                    .bind(user)
                    .bind(format!("erased+{user}@invalid"))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = COALESCE(revoked_at, $3), \
                         revoked_reason = COALESCE(revoked_reason, 'customer_erased'), ip = NULL, user_agent = NULL, \
                         last_ip = NULL WHERE tenant_id = $1 AND user_id = $2",
                    )
                    .bind(t)
                    .bind(user)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    // The device facts of its sign-in challenges go the same way.
                    sqlx::query(
                        "UPDATE mfa_challenges SET ip = NULL, user_agent = NULL WHERE user_id = $1 \
                         AND (ip IS NOT NULL OR user_agent IS NOT NULL)",
                    )
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                    // Stored answers of its requests (sealed, but they may carry details).
                    sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND principal_id = $2")
                        .bind(t)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                }
                self.append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                let (user_id, user_unlinked) = match staff {
                    Some(l) => (None, Some(l.id.clone())),
                    None => (user_id, None),
                };
                Ok(ErasureOutcome::Erased {
                    accounts_closed: closed.into_iter().map(|(a,)| a).collect(),
                    user_id,
                    user_unlinked,
                    keys_destroyed,
                    lookups_deleted,
                })
            }

        }
    };
}

pub(super) use impl_store;
