//! Envelope encryption: the pure cryptography behind the key hierarchy (no storage, no async).
//!
//! - The **root key** (`KASHO_MASTER_KEY`) never leaves configuration. It wraps the
//!   **master key-encryption keys** (KEKs), which are random, versioned and stored wrapped in the
//!   database, so a new master-key version can be added and every data key rewrapped while the
//!   server keeps serving.
//! - A KEK wraps **data-encryption keys** (DEKs): one per tenant, one per customer (destroyed on
//!   erasure), one blind-index key per tenant. DEKs are versioned too.
//! - A DEK seals values with AES-256-GCM and a random 96-bit nonce. A ciphertext names its key and
//!   version (`kx1.<key id>.<version>.<base64url(nonce | ciphertext | tag)>`), and its AAD binds
//!   tenant, table, column and row (and the key id and version), so a ciphertext copied into
//!   another row or column, or relabelled with another key, fails to open.
//!
//! AES-256-GCM comes from aws-lc-rs, already in the tree for JWT signatures and TLS (see
//! docs/ARCHITECTURE.md for why it replaces the `aes-gcm` crate named in the stack).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use super::{hmac_sha256, random_bytes};

/// The tag every ciphertext starts with (format version 1).
pub const CIPHERTEXT_TAG: &str = "kx1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    /// Wrong key, tampered ciphertext, or a ciphertext moved to another row, column or tenant.
    #[error("ciphertext does not open under its key and context")]
    Unauthentic,
    #[error("the operating system's random generator failed")]
    Random,
}

/// 256 bits of key material that zeroises itself on drop and never prints.
#[derive(Clone)]
pub struct KeyBytes(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes([REDACTED])")
    }
}

impl KeyBytes {
    pub fn generate() -> Result<Self, CryptoError> {
        random_bytes::<32>()
            .map(|k| Self(Zeroizing::new(k)))
            .map_err(|_| CryptoError::Random)
    }

    pub fn from_array(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::Malformed)?;
        Ok(Self::from_array(arr))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> Result<LessSafeKey, CryptoError> {
        UnboundKey::new(&AES_256_GCM, self.0.as_slice())
            .map(LessSafeKey::new)
            .map_err(|_| CryptoError::Malformed)
    }

    /// AES-256-GCM with a fresh random nonce: `nonce | ciphertext | tag`. Encrypts in place in
    /// the one buffer it returns (a large document is not copied twice).
    pub fn seal_raw(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes = random_bytes::<NONCE_LEN>().map_err(|_| CryptoError::Random)?;
        let key = self.aead()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(plaintext);
        match key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        ) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(out)
            }
            Err(_) => {
                // The buffer still holds the plaintext.
                out.iter_mut().for_each(|b| *b = 0);
                Err(CryptoError::Unauthentic)
            }
        }
    }

    pub fn open_raw(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let mut in_out = Zeroizing::new(body.to_vec());
        let len = self
            .aead()?
            .open_in_place(nonce, Aad::from(aad), in_out.as_mut_slice())
            .map_err(|_| CryptoError::Unauthentic)?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }

    /// Wraps another key under this one, bound to `label` (what the wrapped key is and whose).
    pub fn wrap(&self, label: &str, key: &KeyBytes) -> Result<String, CryptoError> {
        self.seal_raw(label.as_bytes(), key.expose())
            .map(|v| URL_SAFE_NO_PAD.encode(v))
    }

    pub fn unwrap_key(&self, label: &str, wrapped: &str) -> Result<KeyBytes, CryptoError> {
        let raw = URL_SAFE_NO_PAD
            .decode(wrapped)
            .map_err(|_| CryptoError::Malformed)?;
        let opened = self.open_raw(label.as_bytes(), &raw)?;
        KeyBytes::from_slice(&opened)
    }

    /// HMAC-SHA256 under this key.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        hmac_sha256(self.0.as_slice(), data)
    }
}

/// The label a KEK version is wrapped under (by the root key).
pub fn kek_label(version: i64) -> String {
    format!("kasho/kek/{version}")
}

/// The label a DEK version is wrapped under (by a KEK): binds the key to its id, version and
/// owner, so a wrapped key copied onto another row does not unwrap.
pub fn dek_label(key_id: &str, version: i64, tenant: &str, owner: &str) -> String {
    format!("kasho/dek/{key_id}/{version}/{tenant}/{owner}")
}

/// Where a value lives: the AAD of its ciphertext.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub tenant: &'a str,
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl Context<'_> {
    fn aad(&self, key_id: &str, version: i64) -> Vec<u8> {
        // Length-prefixed fields: no two contexts share an encoding.
        let mut aad = Vec::with_capacity(96);
        for part in [
            CIPHERTEXT_TAG,
            key_id,
            &version.to_string(),
            self.tenant,
            self.table,
            self.column,
            self.row,
        ] {
            aad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// A data-encryption key version, unwrapped.
#[derive(Debug, Clone)]
pub struct DataKey {
    pub id: String,
    pub version: i64,
    pub key: KeyBytes,
}

impl DataKey {
    /// Seals `plaintext` for the place `ctx` names.
    pub fn seal(&self, ctx: &Context<'_>, plaintext: &[u8]) -> Result<String, CryptoError> {
        let sealed = self
            .key
            .seal_raw(&ctx.aad(&self.id, self.version), plaintext)?;
        // Encoded straight into the result (no intermediate copy of a large value).
        let mut text = format!("{CIPHERTEXT_TAG}.{}.{}.", self.id, self.version);
        text.reserve(sealed.len().div_ceil(3) * 4);
        URL_SAFE_NO_PAD.encode_string(&sealed, &mut text);
        Ok(text)
    }

    /// Opens a ciphertext this key version sealed for `ctx`.
    pub fn open(
        &self,
        ctx: &Context<'_>,
        ciphertext: &str,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let header = Header::parse(ciphertext)?;
        if header.key_id != self.id || header.version != self.version {
            return Err(CryptoError::Unauthentic);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(header.body)
            .map_err(|_| CryptoError::Malformed)?;
        self.key.open_raw(&ctx.aad(&self.id, self.version), &raw)
    }
}

/// The readable part of a ciphertext: which key version sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub key_id: &'a str,
    pub version: i64,
    body: &'a str,
}

impl<'a> Header<'a> {
    pub fn parse(ciphertext: &'a str) -> Result<Self, CryptoError> {
        let mut parts = ciphertext.splitn(4, '.');
        let (Some(tag), Some(key_id), Some(version), Some(body)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed);
        };
        if tag != CIPHERTEXT_TAG || key_id.is_empty() {
            return Err(CryptoError::Malformed);
        }
        let version = version.parse().map_err(|_| CryptoError::Malformed)?;
        Ok(Self {
            key_id,
            version,
            body,
        })
    }

    /// The prefix every ciphertext of this key version starts with (for finding them).
    pub fn prefix(key_id: &str, version: i64) -> String {
        format!("{CIPHERTEXT_TAG}.{key_id}.{version}.")
    }
}

/// Whether a stored value is a ciphertext (rather than a legacy plaintext).
pub fn is_ciphertext(value: &str) -> bool {
    Header::parse(value).is_ok()
}

/// A blind index: `HMAC(field key, normalised value)`, hex. The field key is derived from the
/// tenant's index key and the field name, so equal values in two tenants or two fields never
/// share an index entry.
pub fn blind_index(index_key: &KeyBytes, field: &str, normalised: &str) -> String {
    let field_key = KeyBytes::from_array(index_key.mac(format!("kasho/blind/{field}").as_bytes()));
    hex::encode(field_key.mac(normalised.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, version: i64) -> DataKey {
        DataKey {
            id: id.into(),
            version,
            key: KeyBytes::generate().unwrap_or_else(|e| unreachable!("{e}")),
        }
    }

    const CTX: Context<'static> = Context {
        tenant: "ten_a",
        table: "customers",
        column: "pii",
        row: "cus_1",
    };

    #[test]
    fn sealed_values_open_only_in_their_place() {
        let k = key("dek_1", 1);
        let ct = k.seal(&CTX, b"Ada Lovelace").unwrap_or_default();
        assert!(ct.starts_with("kx1.dek_1.1."));
        assert!(!ct.contains("Ada"));
        assert_eq!(
            k.open(&CTX, &ct).map(|p| p.to_vec()),
            Ok(b"Ada Lovelace".to_vec())
        );
        // Random nonces: the same value never seals the same way twice.
        assert_ne!(ct, k.seal(&CTX, b"Ada Lovelace").unwrap_or_default());
        for other in [
            Context {
                row: "cus_2",
                ..CTX
            },
            Context {
                column: "details",
                ..CTX
            },
            Context {
                table: "transfers",
                ..CTX
            },
            Context {
                tenant: "ten_b",
                ..CTX
            },
        ] {
            assert_eq!(k.open(&other, &ct).err(), Some(CryptoError::Unauthentic));
        }
        // Another key, or the header relabelled to another version, does not open it.
        assert!(key("dek_1", 1).open(&CTX, &ct).is_err());
        let relabelled = ct.replacen("kx1.dek_1.1.", "kx1.dek_1.2.", 1);
        assert!(key("dek_1", 2).open(&CTX, &relabelled).is_err());
        // A flipped bit fails authentication.
        let mut bytes = ct.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap_or_default();
        assert!(k.open(&CTX, &tampered).is_err());
    }

    #[test]
    fn wrapped_keys_unwrap_only_with_their_label() {
        let kek = KeyBytes::generate().unwrap_or_else(|e| unreachable!("{e}"));
        let dek = KeyBytes::generate().unwrap_or_else(|e| unreachable!("{e}"));
        let label = dek_label("dek_1", 1, "ten_a", "customer:cus_1");
        let wrapped = kek.wrap(&label, &dek).unwrap_or_default();
        let back = kek.unwrap_key(&label, &wrapped).map(|k| *k.expose());
        assert_eq!(back, Ok(*dek.expose()));
        let elsewhere = dek_label("dek_1", 1, "ten_a", "customer:cus_2");
        assert!(kek.unwrap_key(&elsewhere, &wrapped).is_err());
        assert!(!format!("{dek:?}").contains(&hex::encode(dek.expose())));
    }

    #[test]
    fn headers_parse_and_blind_indexes_separate_fields() {
        let h = Header::parse("kx1.dek_9.42.AAAA").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((h.key_id, h.version), ("dek_9", 42));
        assert!(Header::parse("plain text").is_err());
        assert!(Header::parse("kx1.dek_9.x.AAAA").is_err());
        assert!(!is_ciphertext("a description"));
        let ik = KeyBytes::generate().unwrap_or_else(|e| unreachable!("{e}"));
        let a = blind_index(&ik, "email", "ada@example.com");
        assert_eq!(a, blind_index(&ik, "email", "ada@example.com"));
        assert_ne!(a, blind_index(&ik, "phone", "ada@example.com"));
        let other = KeyBytes::generate().unwrap_or_else(|e| unreachable!("{e}"));
        assert_ne!(a, blind_index(&other, "email", "ada@example.com"));
    }
}
