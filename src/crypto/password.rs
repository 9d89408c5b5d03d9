//! Password hashing with Argon2id, run on the blocking pool behind a semaphore so a burst of
//! logins can neither stall the async runtime nor exhaust memory. Unknown accounts are checked
//! against a dummy hash with the same parameters, so they cost the same time as a wrong password.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl HashParams {
    /// OWASP's minimum for Argon2id: m=19 MiB, t=2, p=1. The production floor.
    pub const OWASP_MINIMUM: HashParams = HashParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    pub fn meets_minimum(&self) -> bool {
        self.memory_kib >= Self::OWASP_MINIMUM.memory_kib
            && self.iterations >= Self::OWASP_MINIMUM.iterations
            && self.parallelism >= Self::OWASP_MINIMUM.parallelism
    }

    fn argon2(&self) -> Result<Argon2<'static>, String> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| format!("invalid Argon2 parameters: {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{0}")]
    Params(String),
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct PasswordHasher {
    params: HashParams,
    permits: Arc<Semaphore>,
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// `max_concurrent` bounds simultaneous hashes (each takes `memory_kib` of memory).
    pub fn new(params: HashParams, max_concurrent: usize) -> Result<Self, HashError> {
        let argon = params.argon2().map_err(HashError::Params)?;
        let dummy = argon
            .hash_password(b"kasho dummy password for unknown accounts")
            .map_err(|e| HashError::Failed(e.to_string()))?
            .to_string();
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            dummy_hash: dummy.into(),
        })
    }

    pub fn params(&self) -> HashParams {
        self.params
    }

    /// A PHC string (`$argon2id$v=19$m=…`) with a fresh 16-byte salt.
    pub async fn hash(&self, password: &SecretString) -> Result<String, HashError> {
        let params = self.params;
        let pw = password.clone();
        self.run(move || {
            let argon = params.argon2().map_err(HashError::Params)?;
            argon
                .hash_password(pw.expose_secret().as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| HashError::Failed(e.to_string()))
        })
        .await
    }

    /// Whether `password` matches `stored`. With `stored = None` (no such account) the dummy
    /// hash is checked instead and the answer is `false`, at the same cost.
    pub async fn verify(&self, password: &SecretString, stored: Option<&str>) -> bool {
        let (hash, real): (Arc<str>, bool) = match stored {
            Some(h) => (Arc::from(h), true),
            None => (self.dummy_hash.clone(), false),
        };
        let pw = password.clone();
        let params = self.params;
        let ok = self
            .run(move || {
                let argon = params.argon2().map_err(HashError::Params)?;
                Ok(argon
                    .verify_password(pw.expose_secret().as_bytes(), hash.as_ref())
                    .is_ok())
            })
            .await
            .unwrap_or(false);
        ok && real
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError::Failed(e.to_string()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| HashError::Failed(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashParams = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[tokio::test]
    async fn hash_then_verify() {
        let h = PasswordHasher::new(CHEAP, 2).unwrap_or_else(|e| unreachable!("{e}"));
        let pw: SecretString = "correct horse battery".into();
        let stored = h.hash(&pw).await.unwrap_or_default();
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{stored}"
        );
        assert!(h.verify(&pw, Some(&stored)).await);
        assert!(!h.verify(&"wrong horse battery".into(), Some(&stored)).await);
        assert!(!h.verify(&pw, None).await);
        assert!(!h.verify(&pw, Some("not a phc string")).await);
    }

    #[test]
    fn owasp_floor() {
        assert!(HashParams::OWASP_MINIMUM.meets_minimum());
        assert!(!CHEAP.meets_minimum());
    }
}
