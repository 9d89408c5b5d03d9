//! Storage of staff-only notes: free text a staff member attached to an action (a freeze, a
//! restriction, a KYC decision), sealed before it gets here (under the customer's data key when
//! the note is about the customer or its KYC submission, else the tenant's). A note emptied by
//! an erasure (`note = ''`) is never read back. A note
//! is inserted in the transaction of its action (by [`insert_staff_note_tx`], which the action's
//! store method calls), and only read back by id or by the
//! thing it is about. Implemented for both backends from the same SQL.

use async_trait::async_trait;

use sqlx::Transaction;

use super::backend::{Backend, Paged, SqlStore};
use super::{Page, StoreResult};
use crate::ids::TenantId;

/// A note as stored: `note` is a ciphertext (`kx1.…`, AAD row = `id`).
#[derive(Clone, sqlx::FromRow)]
pub struct StaffNoteRecord {
    pub id: String,
    pub tenant_id: String,
    pub target_type: String,
    pub target_id: String,
    pub action: String,
    pub reason_code: String,
    pub note: String,
    pub created_by: String,
    pub created_at: i64,
}

impl std::fmt::Debug for StaffNoteRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffNoteRecord")
            .field("id", &self.id)
            .field("target_id", &self.target_id)
            .field("action", &self.action)
            .field("reason_code", &self.reason_code)
            .finish_non_exhaustive()
    }
}

/// A note to insert with its action (already sealed).
#[derive(Clone)]
pub struct NewStaffNote {
    pub id: String,
    pub tenant_id: TenantId,
    pub target_type: &'static str,
    pub target_id: String,
    pub action: &'static str,
    pub reason_code: &'static str,
    pub note: String,
    pub created_by: String,
    pub created_at: i64,
}

impl std::fmt::Debug for NewStaffNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewStaffNote")
            .field("id", &self.id)
            .field("target_id", &self.target_id)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait NotesStore: Send + Sync {
    async fn staff_note(&self, tenant: &TenantId, id: &str)
    -> StoreResult<Option<StaffNoteRecord>>;
    /// The notes about `target_id`, oldest first, after `page.starting_after`.
    async fn list_staff_notes(
        &self,
        tenant: &TenantId,
        target_id: &str,
        page: &Page,
    ) -> StoreResult<Vec<StaffNoteRecord>>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> NotesStore for S {
    async fn staff_note(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<StaffNoteRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM staff_notes WHERE tenant_id = $1 AND id = $2 AND note <> ''",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn list_staff_notes(
        &self,
        tenant: &TenantId,
        target_id: &str,
        page: &Page,
    ) -> StoreResult<Vec<StaffNoteRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM staff_notes WHERE tenant_id = $1 AND target_id = $2 AND note <> '' \
             AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(target_id)
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }
}

/// Inserts `note` inside the transaction of the action it belongs to.
pub(super) async fn insert_staff_note_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    note: &NewStaffNote,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO staff_notes (id, tenant_id, target_type, target_id, action, reason_code, \
         note, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&note.id)
    .bind(note.tenant_id.as_str())
    .bind(note.target_type)
    .bind(&note.target_id)
    .bind(note.action)
    .bind(note.reason_code)
    .bind(&note.note)
    .bind(&note.created_by)
    .bind(note.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
