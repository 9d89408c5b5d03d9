//! The audit log's records and its tamper evidence.
//!
//! Records form one hash chain per tenant (and one for the platform): record `n` carries
//! `prev_hash` = the hash of record `n-1` and its own `hash` = HMAC-SHA256(audit key,
//! prev_hash ‖ canonical encoding of record `n`). The audit key is derived from the master key,
//! so someone with write access to the database alone cannot recompute a consistent chain after
//! editing, deleting or reordering records. [`ChainVerifier`] walks a chain and names the first
//! record that does not fit.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::clock::Timestamp;
use crate::ids::TenantId;

/// The chain key of the platform's own records (tenant creation, platform-admin logins).
pub const PLATFORM_CHAIN: &str = "platform";

/// The hash a chain's first record points back to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorType {
    User,
    /// An API token (`actor_id` is the token's id; the token names its creator).
    ApiToken,
    System,
    Anonymous,
}

impl ActorType {
    pub const fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::ApiToken => "api_token",
            ActorType::System => "system",
            ActorType::Anonymous => "anonymous",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// An audit record about to be appended. Storage assigns `seq`, `prev_hash` and `hash`.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub tenant_id: Option<TenantId>,
    pub occurred_at: Timestamp,
    pub actor_type: ActorType,
    pub actor_id: Option<String>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: Outcome,
    /// A short machine-readable reason (an error code), never personal data.
    pub reason: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    /// Set when this record is a typed security event (`GET /v1/security-events`).
    pub security_event: Option<crate::domain::security::SecurityEvent>,
}

impl NewAuditEvent {
    /// This record, typed as a security event.
    pub fn security(self, event: crate::domain::security::SecurityEvent) -> Self {
        Self {
            security_event: Some(event),
            ..self
        }
    }
    /// The chain this record belongs to.
    pub fn chain(&self) -> String {
        chain_for(self.tenant_id.as_ref())
    }
}

pub fn chain_for(tenant: Option<&TenantId>) -> String {
    tenant.map_or_else(|| PLATFORM_CHAIN.to_owned(), |t| t.as_str().to_owned())
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: String,
    pub chain: String,
    pub seq: i64,
    pub tenant_id: Option<String>,
    pub occurred_at: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    /// The security event type, for records that are one.
    pub security_event: Option<String>,
}

/// Computes record hashes with the audit key.
#[derive(Clone)]
pub struct AuditSealer {
    key: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for AuditSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSealer([REDACTED])")
    }
}

impl AuditSealer {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key: zeroize::Zeroizing::new(key),
        }
    }

    /// The hash of `record` given the previous record's hash. Every field except `hash` is
    /// covered, each length-prefixed so no two records share an encoding.
    pub fn seal(&self, record: &AuditRecord) -> String {
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_ref()) {
            Ok(m) => m,
            // HMAC accepts keys of any length; this arm cannot be taken.
            Err(_) => return String::new(),
        };
        let mut field = |v: Option<&str>| match v {
            None => mac.update(&[0u8]),
            Some(s) => {
                mac.update(&[1u8]);
                mac.update(&(s.len() as u64).to_be_bytes());
                mac.update(s.as_bytes());
            }
        };
        field(Some("kasho-audit-v1"));
        field(Some(&record.prev_hash));
        field(Some(&record.id));
        field(Some(&record.chain));
        field(Some(&record.seq.to_string()));
        field(record.tenant_id.as_deref());
        field(Some(&record.occurred_at.to_string()));
        field(Some(&record.actor_type));
        field(record.actor_id.as_deref());
        field(Some(&record.action));
        field(record.target_type.as_deref());
        field(record.target_id.as_deref());
        field(Some(&record.outcome));
        field(record.reason.as_deref());
        field(record.ip.as_deref());
        field(record.request_id.as_deref());
        // Added later: covered only when present, so records written before it still verify
        // (every field is length-prefixed, so the tagged suffix cannot collide).
        if let Some(kind) = record.security_event.as_deref() {
            field(Some("security_event"));
            field(Some(kind));
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Where a chain starts after its oldest records were pruned: records up to `seq` are gone and
/// the record at `seq + 1` must carry `prev_hash == hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
    pub pruned_at: i64,
    /// [`AuditSealer::seal_checkpoint`] of the other fields.
    pub mac: String,
}

impl AuditSealer {
    /// The seal of a checkpoint: HMAC-SHA256 (audit key) over its fields, with its own version
    /// tag so a checkpoint's seal can never pass for a record's. Without the master key, nobody
    /// can write a checkpoint that hides deleted records.
    pub fn seal_checkpoint(&self, chain: &str, seq: i64, hash: &str, pruned_at: i64) -> String {
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_ref()) {
            Ok(m) => m,
            // HMAC accepts keys of any length; this arm cannot be taken.
            Err(_) => return String::new(),
        };
        for v in [
            "kasho-audit-checkpoint-v1",
            chain,
            &seq.to_string(),
            hash,
            &pruned_at.to_string(),
        ] {
            mac.update(&(v.len() as u64).to_be_bytes());
            mac.update(v.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `cp` carries its genuine seal (constant-time comparison).
    pub fn checkpoint_is_genuine(&self, cp: &AuditCheckpoint) -> bool {
        let expected = self.seal_checkpoint(&cp.chain, cp.seq, &cp.hash, cp.pruned_at);
        bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            cp.mac.as_bytes(),
        ))
    }
}

/// Why a chain failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "record {id} (seq {seq}) follows seq {expected_prev}: a record is missing or out of order"
    )]
    Gap {
        id: String,
        seq: i64,
        expected_prev: i64,
    },
    #[error(
        "record {id} (seq {seq}) does not point at the previous record's hash: records were removed or reordered"
    )]
    BrokenLink { id: String, seq: i64 },
    #[error("record {id} (seq {seq}) does not match its hash: it was altered")]
    Altered { id: String, seq: i64 },
    #[error(
        "chain ends at seq {last_seq} but its head says seq {head_seq}: records were removed from the end"
    )]
    Truncated { last_seq: i64, head_seq: i64 },
    #[error("the chain's head hash does not match its last record")]
    HeadMismatch,
    #[error(
        "the chain's pruning checkpoint (seq {seq}) does not match its seal: it was forged or altered"
    )]
    CheckpointAltered { seq: i64 },
    #[error("a pruning checkpoint (seq {seq}) exists but the chain's head is missing")]
    HeadMissing { seq: i64 },
}

/// Walks one chain in `seq` order.
pub struct ChainVerifier<'a> {
    sealer: &'a AuditSealer,
    last_seq: i64,
    last_hash: String,
}

impl<'a> ChainVerifier<'a> {
    pub fn new(sealer: &'a AuditSealer) -> Self {
        Self {
            sealer,
            last_seq: 0,
            last_hash: GENESIS_HASH.to_owned(),
        }
    }

    /// Starts after a pruning checkpoint: the next record must be `seq + 1` and point at `hash`.
    /// The caller checks the checkpoint's seal first ([`AuditSealer::seal_checkpoint`]).
    pub fn resume(sealer: &'a AuditSealer, seq: i64, hash: &str) -> Self {
        Self {
            sealer,
            last_seq: seq,
            last_hash: hash.to_owned(),
        }
    }

    /// The seq and hash of the last record accepted (the start, before any).
    pub fn position(&self) -> (i64, &str) {
        (self.last_seq, &self.last_hash)
    }

    pub fn push(&mut self, r: &AuditRecord) -> Result<(), ChainError> {
        if r.seq != self.last_seq + 1 {
            return Err(ChainError::Gap {
                id: r.id.clone(),
                seq: r.seq,
                expected_prev: self.last_seq,
            });
        }
        if r.prev_hash != self.last_hash {
            return Err(ChainError::BrokenLink {
                id: r.id.clone(),
                seq: r.seq,
            });
        }
        let expected = self.sealer.seal(r);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            r.hash.as_bytes(),
        )) {
            return Err(ChainError::Altered {
                id: r.id.clone(),
                seq: r.seq,
            });
        }
        self.last_seq = r.seq;
        self.last_hash = r.hash.clone();
        Ok(())
    }

    /// Checks the end of the walk against the chain's stored head.
    pub fn finish(self, head_seq: i64, head_hash: &str) -> Result<i64, ChainError> {
        if head_seq != self.last_seq {
            return Err(ChainError::Truncated {
                last_seq: self.last_seq,
                head_seq,
            });
        }
        if head_hash != self.last_hash {
            return Err(ChainError::HeadMismatch);
        }
        Ok(self.last_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(sealer: &AuditSealer, n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    id: format!("aud_{seq}"),
                    chain: "platform".into(),
                    seq,
                    tenant_id: None,
                    occurred_at: seq * 1000,
                    actor_type: "system".into(),
                    actor_id: None,
                    action: "test.event".into(),
                    target_type: None,
                    target_id: Some(format!("t{seq}")),
                    outcome: "success".into(),
                    reason: None,
                    ip: None,
                    request_id: None,
                    prev_hash: prev.clone(),
                    hash: String::new(),
                    security_event: None,
                };
                r.hash = sealer.seal(&r);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn verify(
        sealer: &AuditSealer,
        rs: &[AuditRecord],
        head: (i64, &str),
    ) -> Result<i64, ChainError> {
        let mut v = ChainVerifier::new(sealer);
        for r in rs {
            v.push(r)?;
        }
        v.finish(head.0, head.1)
    }

    #[test]
    fn intact_chain_verifies_and_any_tampering_is_named() {
        let s = AuditSealer::new([7; 32]);
        let rs = chain(&s, 5);
        let head = (5, rs[4].hash.as_str());
        assert_eq!(verify(&s, &rs, head), Ok(5));

        let mut altered = rs.clone();
        altered[2].action = "test.other".into();
        assert!(matches!(
            verify(&s, &altered, head),
            Err(ChainError::Altered { seq: 3, .. })
        ));

        let mut deleted = rs.clone();
        deleted.remove(1);
        assert!(matches!(
            verify(&s, &deleted, head),
            Err(ChainError::Gap { seq: 3, .. })
        ));

        let mut swapped = rs.clone();
        swapped.swap(1, 2);
        assert!(verify(&s, &swapped, head).is_err());

        assert!(matches!(
            verify(&s, &rs[..4], head),
            Err(ChainError::Truncated { .. })
        ));

        // A chain re-sealed with another key does not verify.
        let other = AuditSealer::new([8; 32]);
        assert!(verify(&other, &rs, head).is_err());
    }

    #[test]
    fn a_chain_resumes_from_a_sealed_checkpoint() {
        let s = AuditSealer::new([7; 32]);
        let rs = chain(&s, 6);
        let head = (6, rs[5].hash.as_str());
        // Records 1..=3 pruned: verification starts after record 3.
        let cp = AuditCheckpoint {
            chain: "platform".into(),
            seq: 3,
            hash: rs[2].hash.clone(),
            pruned_at: 99,
            mac: s.seal_checkpoint("platform", 3, &rs[2].hash, 99),
        };
        assert!(s.checkpoint_is_genuine(&cp));
        let mut v = ChainVerifier::resume(&s, cp.seq, &cp.hash);
        for r in &rs[3..] {
            assert_eq!(v.push(r), Ok(()));
        }
        assert_eq!(v.finish(head.0, head.1), Ok(6));

        // Without the checkpoint, the pruned chain is a gap at its first record.
        assert!(matches!(
            verify(&s, &rs[3..], head),
            Err(ChainError::Gap { seq: 4, .. })
        ));
        // A checkpoint moved further (to hide record 4) no longer matches its seal, and one
        // sealed with another key is refused too.
        let moved = AuditCheckpoint {
            seq: 4,
            hash: rs[3].hash.clone(),
            ..cp.clone()
        };
        assert!(!s.checkpoint_is_genuine(&moved));
        let foreign = AuditCheckpoint {
            mac: AuditSealer::new([8; 32]).seal_checkpoint("platform", 3, &rs[2].hash, 99),
            ..cp.clone()
        };
        assert!(!s.checkpoint_is_genuine(&foreign));
        // A record altered after the checkpoint is still found.
        let mut altered = rs[3..].to_vec();
        altered[1].action = "test.other".into();
        let mut v = ChainVerifier::resume(&s, cp.seq, &cp.hash);
        assert_eq!(v.push(&altered[0]), Ok(()));
        assert!(matches!(
            v.push(&altered[1]),
            Err(ChainError::Altered { seq: 5, .. })
        ));
        // A checkpoint pointing at the wrong hash breaks the link to the first kept record.
        let mut v = ChainVerifier::resume(&s, 3, &rs[1].hash);
        assert!(matches!(
            v.push(&rs[3]),
            Err(ChainError::BrokenLink { seq: 4, .. })
        ));
    }
}
