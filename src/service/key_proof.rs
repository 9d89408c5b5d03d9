//! The root key proven against the database before anything else happens (issue 14, item 1).
//!
//! A database remembers the root key it was initialised with (`root_key_check`: the root id, a
//! 256-bit keyed check value and the JWT signing key's id). Every command that opens the
//! database proves its keys against that row and against the seal of the newest record of an
//! audit chain, before it migrates or writes anything; a database created before the row
//! existed is proven by opening its active master key version and that audit seal instead, and
//! gets its row on the first start that passes ([`record`]).

use crate::crypto::constant_time_eq;
use crate::crypto::envelope::{KeyBytes, kek_label};
use crate::crypto::keys::{KEK_WRAP_PURPOSE, MasterKey};
use crate::domain::audit::AuditSealer;
use crate::store::keys::RootKeyCheck;
use crate::store::{Store, StoreError};

/// Why the configured keys are not the ones the database holds data under. Every message names
/// the problem and the fix; nothing has been written when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum KeyProofError {
    #[error(
        "wrong master key: this database was initialised with root key {expected}, but the \
         configured master key is root key {configured}. Nothing was written. Configure the key \
         that initialised this database (KASHO_MASTER_KEY_FILE, or <data_dir>/keys/master.key \
         in development)"
    )]
    WrongRoot {
        expected: String,
        configured: String,
    },
    #[error(
        "wrong master key: it has this database's root id ({root_id}) but not its check value, \
         so it is not the key that initialised it (or root_key_check was altered). Nothing was \
         written. Configure the key that initialised this database"
    )]
    CheckValue { root_id: String },
    #[error(
        "wrong master key: it cannot open master key version {version} of this database \
         ({reason}). Nothing was written. Configure the key that initialised this database \
         (KASHO_MASTER_KEY_FILE, or <data_dir>/keys/master.key in development)"
    )]
    MasterKey { version: i64, reason: String },
    #[error(
        "wrong master key: the newest record of audit chain `{chain}` (seq {seq}) was not sealed \
         by it. Nothing was written. Configure the key that sealed this database's audit log; if \
         the key is right, run `kasho audit verify`, the record may have been altered"
    )]
    AuditSeal { chain: String, seq: i64 },
    #[error(
        "wrong JWT signing key: this database's tokens are signed by key {expected}, but the \
         configured key is {configured} (every instance must sign with the same key). Nothing \
         was written. Configure the same KASHO_JWT_SIGNING_KEY_FILE as the other instances; if \
         you replaced the key on purpose, run `kasho keys adopt-jwt-key` (every access token \
         signed by the old key stops working)"
    )]
    WrongJwt {
        expected: String,
        configured: String,
    },
    #[error(
        "refusing to generate keys: the database already holds data sealed by a root key{root}, \
         and {dir} has no {what}. A new key could not open that data. Configure the keys that \
         initialised this database (KASHO_MASTER_KEY_FILE and KASHO_JWT_SIGNING_KEY_FILE, or copy \
         them into {dir}). Nothing was written"
    )]
    WouldGenerate {
        what: &'static str,
        dir: String,
        root: String,
    },
    #[error("cannot prove the keys against the database: {0}")]
    Store(#[from] StoreError),
}

/// The check row the configured keys would write.
pub fn expected_check(master: &MasterKey, jwt_kid: &str, now_micros: i64) -> RootKeyCheck {
    RootKeyCheck {
        root_id: master.root_id(),
        check_value: master.check_value(),
        jwt_kid: jwt_kid.to_owned(),
        created_at: now_micros,
    }
}

/// Whether the check row `stored` was written by these keys (`jwt_kid`: `None` when the JWT
/// key is being adopted, so only the root key is proven).
pub fn compare(
    stored: &RootKeyCheck,
    master: &MasterKey,
    jwt_kid: Option<&str>,
) -> Result<(), KeyProofError> {
    let configured = master.root_id();
    if stored.root_id != configured {
        return Err(KeyProofError::WrongRoot {
            expected: stored.root_id.clone(),
            configured,
        });
    }
    if !constant_time_eq(
        stored.check_value.as_bytes(),
        master.check_value().as_bytes(),
    ) {
        return Err(KeyProofError::CheckValue {
            root_id: stored.root_id.clone(),
        });
    }
    if let Some(kid) = jwt_kid
        && stored.jwt_kid != kid
    {
        return Err(KeyProofError::WrongJwt {
            expected: stored.jwt_kid.clone(),
            configured: kid.to_owned(),
        });
    }
    Ok(())
}

/// Proves the configured keys against the database, reading only: the check row (when there is
/// one), else every master key version that still has key material must have this root id and
/// the active one must open; and the newest record of one audit chain must carry this key's
/// seal. Tolerates a database not migrated yet (a table that does not exist proves nothing
/// either way).
pub async fn prove(
    store: &dyn Store,
    master: &MasterKey,
    jwt_kid: Option<&str>,
    sealer: &AuditSealer,
) -> Result<(), KeyProofError> {
    match store.root_key_check().await? {
        Some(stored) => compare(&stored, master, jwt_kid)?,
        None if store.table_exists("master_keys").await? => {
            let wrap = KeyBytes::from_array(master.derive(KEK_WRAP_PURPOSE));
            let configured = master.root_id();
            for k in store.master_keys().await? {
                let Some(wrapped) = k.wrapped.as_deref() else {
                    continue;
                };
                if k.root_id != configured {
                    return Err(KeyProofError::WrongRoot {
                        expected: k.root_id,
                        configured,
                    });
                }
                if k.status == "active" {
                    wrap.unwrap_key(&kek_label(k.version), wrapped)
                        .map_err(|e| KeyProofError::MasterKey {
                            version: k.version,
                            reason: e.to_string(),
                        })?;
                }
            }
        }
        None => {}
    }
    prove_audit_seal(store, sealer).await
}

/// The newest record of the platform chain (or, without one, of the first chain) must carry
/// this key's seal.
async fn prove_audit_seal(store: &dyn Store, sealer: &AuditSealer) -> Result<(), KeyProofError> {
    if !store.table_exists("audit_heads").await? {
        return Ok(());
    }
    let heads = store.audit_heads().await?;
    let Some(head) = heads
        .iter()
        .find(|h| h.chain == crate::domain::audit::PLATFORM_CHAIN)
        .or_else(|| heads.first())
    else {
        return Ok(());
    };
    if head.seq < 1 {
        return Ok(());
    }
    let records = store
        .audit_chain_after(&head.chain, head.seq - 1, 1)
        .await?;
    // A head whose record is missing is for `kasho audit verify` to report (truncation).
    let Some(record) = records.first().filter(|r| r.seq == head.seq) else {
        return Ok(());
    };
    if !constant_time_eq(sealer.seal(record).as_bytes(), record.hash.as_bytes()) {
        return Err(KeyProofError::AuditSeal {
            chain: head.chain.clone(),
            seq: head.seq,
        });
    }
    Ok(())
}

/// After [`prove`] and the migrations: writes the check row if the database has none (a new
/// database, or one created before the row existed), then compares what is stored (another
/// process may have written its row first, with other keys).
pub async fn record(
    store: &dyn Store,
    master: &MasterKey,
    jwt_kid: &str,
    now_micros: i64,
) -> Result<(), KeyProofError> {
    if !store.table_exists("root_key_check").await? {
        return Ok(());
    }
    let stored = match store.root_key_check().await? {
        Some(stored) => stored,
        None => {
            store
                .record_root_key_check(&expected_check(master, jwt_kid, now_micros))
                .await?
        }
    };
    compare(&stored, master, Some(jwt_kid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_root_key_or_jwt_key_does_not_compare() {
        let a = MasterKey::generate().unwrap_or_else(|e| unreachable!("{e}"));
        let b = MasterKey::generate().unwrap_or_else(|e| unreachable!("{e}"));
        let stored = expected_check(&a, "kid-a", 0);
        assert!(compare(&stored, &a, Some("kid-a")).is_ok());
        assert!(compare(&stored, &a, None).is_ok());
        assert!(matches!(
            compare(&stored, &b, Some("kid-a")),
            Err(KeyProofError::WrongRoot { .. })
        ));
        assert!(matches!(
            compare(&stored, &a, Some("kid-b")),
            Err(KeyProofError::WrongJwt { .. })
        ));
        let forged = RootKeyCheck {
            check_value: b.check_value(),
            ..stored
        };
        assert!(matches!(
            compare(&forged, &a, Some("kid-a")),
            Err(KeyProofError::CheckValue { .. })
        ));
        // The check value is not the root id, and neither reveals the key.
        assert_ne!(a.check_value(), a.root_id());
        assert!(
            !a.check_value()
                .contains(&hex::encode(a.derive("root-check/v1")))
        );
    }
}
