//! Key material: the Ed25519 key that signs access tokens and the 256-bit master key from which
//! purpose-specific keys are derived (today the audit-chain key; data-encryption keys later).
//!
//! Keys come from configuration (`KASHO_JWT_SIGNING_KEY[_FILE]`, `KASHO_MASTER_KEY[_FILE]`).
//! In the embedded development mode, missing keys are generated into `<data_dir>/keys/` with
//! mode 0600 and a warning; in production a missing key stops start-up.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::hmac_sha256;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no {what} configured; in production set {env} (or {env}_FILE pointing at a file){hint}"
    )]
    Missing {
        what: &'static str,
        env: &'static str,
        hint: &'static str,
    },
    #[error("invalid {what} ({source_desc}): {reason}")]
    Invalid {
        what: &'static str,
        source_desc: String,
        reason: String,
    },
    #[error("cannot write generated key to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// The access-token signing key (Ed25519, PKCS#8).
pub struct JwtSigningKey {
    pkcs8: Zeroizing<Vec<u8>>,
    public: [u8; 32],
}

impl std::fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSigningKey([REDACTED])")
    }
}

impl JwtSigningKey {
    /// A new key, as PKCS#8 v1 (RFC 5208: the private key only), the form `openssl genpkey`
    /// writes and every standard tool reads (OpenSSL 3.0's `openssl pkey` and Python
    /// `cryptography` refuse aws-lc's PKCS#8 v2 with its embedded public key).
    pub fn generate() -> Result<Self, String> {
        let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|e| e.to_string())?;
        Self::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        use aws_lc_rs::signature::KeyPair;
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(der)
            .or_else(|_| aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der))
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        let mut public = [0u8; 32];
        let pk = pair.public_key().as_ref();
        if pk.len() != 32 {
            return Err("unexpected Ed25519 public key length".into());
        }
        public.copy_from_slice(pk);
        Ok(Self {
            pkcs8: Zeroizing::new(der.to_vec()),
            public,
        })
    }

    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("expected a PKCS#8 PEM block (BEGIN PRIVATE KEY): {e}"))?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    pub fn to_pem(&self) -> Zeroizing<String> {
        let b64 = Zeroizing::new(STANDARD.encode(self.pkcs8.as_slice()));
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        Zeroizing::new(out)
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }
}

/// The 256-bit master key. Everything else is derived from or wrapped by it.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    pub fn generate() -> Result<Self, String> {
        super::random_bytes::<32>()
            .map(|k| Self(Zeroizing::new(k)))
            .map_err(|e| e.to_string())
    }

    /// Standard base64 of exactly 32 bytes.
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(s.trim())
                .map_err(|_| "expected standard base64 of 32 random bytes".to_owned())?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("expected 32 bytes, got {}", bytes.len()))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_slice()))
    }

    /// A key for one purpose, so no two uses of the master key share key material.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        hmac_sha256(self.0.as_slice(), format!("kasho/{purpose}").as_bytes())
    }

    /// The root key's public fingerprint (64 bits of an HMAC under the key that wraps master
    /// key versions), recorded with each master key version and in `root_key_check`.
    pub fn root_id(&self) -> String {
        let wrap = self.derive(KEK_WRAP_PURPOSE);
        hex::encode(&hmac_sha256(&wrap, b"kasho/root-id")[..8])
    }

    /// The keyed check value recorded in the database at its first start: 256 bits only this
    /// root key reproduces (an HMAC under a key derived for this purpose alone), so a start with
    /// another root key is refused before it writes anything.
    pub fn check_value(&self) -> String {
        hex::encode(hmac_sha256(
            &self.derive("root-check/v1"),
            b"kasho/root-check",
        ))
    }
}

/// The purpose of the key derived from the root key that wraps master key versions.
pub const KEK_WRAP_PURPOSE: &str = "kek-wrap/v1";

/// Keys as loaded or generated at start-up.
#[derive(Debug)]
pub struct KeyMaterial {
    pub jwt: JwtSigningKey,
    pub master: MasterKey,
    /// Files this start-up generated (for the warning and for `config check`).
    pub generated: Vec<PathBuf>,
}

/// Where keys come from.
pub struct KeySources<'a> {
    pub jwt_pem: Option<(&'a SecretString, String)>,
    pub master_b64: Option<(&'a SecretString, String)>,
    pub data_dir: &'a Path,
    /// May missing keys be generated? (embedded development mode only)
    pub may_generate: bool,
}

pub const JWT_KEY_FILE: &str = "jwt-signing-key.pem";
pub const MASTER_KEY_FILE: &str = "master.key";

impl KeyMaterial {
    pub fn load(src: &KeySources<'_>) -> Result<Self, KeyError> {
        let mut generated = Vec::new();
        let keys_dir = src.data_dir.join("keys");

        let jwt = match &src.jwt_pem {
            Some((pem, origin)) => {
                JwtSigningKey::from_pem(pem.expose_secret()).map_err(|reason| {
                    KeyError::Invalid {
                        what: "JWT signing key",
                        source_desc: origin.clone(),
                        reason,
                    }
                })?
            }
            None => {
                let path = keys_dir.join(JWT_KEY_FILE);
                if path.exists() {
                    let pem = read_secret_file(&path, "JWT signing key")?;
                    JwtSigningKey::from_pem(&pem).map_err(|reason| KeyError::Invalid {
                        what: "JWT signing key",
                        source_desc: path.display().to_string(),
                        reason,
                    })?
                } else if src.may_generate {
                    let key = JwtSigningKey::generate().map_err(|reason| KeyError::Invalid {
                        what: "JWT signing key",
                        source_desc: "generator".into(),
                        reason,
                    })?;
                    write_secret_file(&path, key.to_pem().as_bytes())?;
                    generated.push(path);
                    key
                } else {
                    return Err(KeyError::Missing {
                        what: "JWT signing key",
                        env: "KASHO_JWT_SIGNING_KEY",
                        hint: " (an Ed25519 PKCS#8 PEM; `openssl genpkey -algorithm ed25519` makes one)",
                    });
                }
            }
        };

        let master = match &src.master_b64 {
            Some((b64, origin)) => {
                MasterKey::from_base64(b64.expose_secret()).map_err(|reason| KeyError::Invalid {
                    what: "master key",
                    source_desc: origin.clone(),
                    reason,
                })?
            }
            None => {
                let path = keys_dir.join(MASTER_KEY_FILE);
                if path.exists() {
                    let b64 = read_secret_file(&path, "master key")?;
                    MasterKey::from_base64(&b64).map_err(|reason| KeyError::Invalid {
                        what: "master key",
                        source_desc: path.display().to_string(),
                        reason,
                    })?
                } else if src.may_generate {
                    let key = MasterKey::generate().map_err(|reason| KeyError::Invalid {
                        what: "master key",
                        source_desc: "generator".into(),
                        reason,
                    })?;
                    let mut text = key.to_base64();
                    text.push('\n');
                    write_secret_file(&path, text.as_bytes())?;
                    generated.push(path);
                    key
                } else {
                    return Err(KeyError::Missing {
                        what: "master key",
                        env: "KASHO_MASTER_KEY",
                        hint: " (32 random bytes, base64: `openssl rand -base64 32`)",
                    });
                }
            }
        };

        Ok(Self {
            jwt,
            master,
            generated,
        })
    }
}

fn read_secret_file(path: &Path, what: &'static str) -> Result<Zeroizing<String>, KeyError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| KeyError::Invalid {
            what,
            source_desc: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Creates a directory (and missing parents) readable by the owner only (mode 0700 on Unix).
/// Existing directories keep their mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Creates `path` with mode 0600 (never world-readable, not even for an instant).
fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    let err = |e: std::io::Error| KeyError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_are_private() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let src = KeySources {
            jwt_pem: None,
            master_b64: None,
            data_dir: dir.path(),
            may_generate: true,
        };
        let first = KeyMaterial::load(&src).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(first.generated.len(), 2);
        #[cfg(unix)]
        for p in &first.generated {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(p)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        let again = KeyMaterial::load(&src).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(again.generated.is_empty());
        assert_eq!(first.jwt.public_key(), again.jwt.public_key());
        assert_eq!(first.master.derive("x"), again.master.derive("x"));
        assert!(!format!("{first:?}").contains(&*first.master.to_base64()));
    }

    #[test]
    fn production_refuses_missing_keys() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let src = KeySources {
            jwt_pem: None,
            master_b64: None,
            data_dir: dir.path(),
            may_generate: false,
        };
        let err = KeyMaterial::load(&src)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("KASHO_JWT_SIGNING_KEY"), "{err}");
    }
}
