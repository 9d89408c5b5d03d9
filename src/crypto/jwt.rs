//! Access tokens: EdDSA-signed JWTs with a `kid`, published as a JWKS.
//!
//! Verification trusts nothing in the token's header: the algorithm is pinned to EdDSA, the
//! key is looked up by `kid` in Kasho's own key set only, `typ` must be `at+jwt`, and any
//! embedded or remote key reference (`jwk`, `jku`, `x5u`, `x5c`) or `crit` header makes the token
//! invalid. Expiry and not-before are checked against the injected clock with 60 s of leeway.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys::JwtSigningKey;
use crate::clock::Timestamp;

/// Allowed clock skew between Kasho instances and token consumers.
pub const LEEWAY_SECONDS: i64 = 60;

/// The access token's `typ` header (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The tenant id; absent for platform admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// The session id: logout and refresh-reuse revoke it.
    pub sid: String,
    pub roles: Vec<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is invalid")]
    Invalid,
    #[error("the access token has expired")]
    Expired,
}

/// Signs and verifies access tokens.
pub struct TokenKeys {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    jwks: serde_json::Value,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The key id: the first 16 bytes of SHA-256 over the public key, hex.
pub fn key_id(public: &[u8; 32]) -> String {
    super::sha256_hex(public)[..32].to_owned()
}

impl TokenKeys {
    pub fn new(key: &JwtSigningKey, issuer: &str, audience: &str) -> Result<Self, String> {
        let kid = key_id(key.public_key());
        let x = URL_SAFE_NO_PAD.encode(key.public_key());
        let decoding = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
        let jwks = serde_json::json!({
            "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig" }]
        });
        Ok(Self {
            encoding: EncodingKey::from_ed_der(key.pkcs8_der()),
            decoding: HashMap::from([(kid.clone(), decoding)]),
            kid,
            jwks,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public keys, as served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }

    pub fn verify(&self, token: &str, now: Timestamp) -> Result<AccessClaims, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let embedded_key = header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
            || header.crit.is_some();
        if header.alg != Algorithm::EdDSA
            || header.typ.as_deref() != Some(ACCESS_TOKEN_TYP)
            || embedded_key
        {
            return Err(TokenError::Invalid);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.decoding.get(kid))
            .ok_or(TokenError::Invalid)?;

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &validation)
            .map_err(|_| TokenError::Invalid)?;
        let claims = data.claims;
        claims.valid_at(now)?;
        Ok(claims)
    }
}

impl AccessClaims {
    /// The time-dependent part of [`TokenKeys::verify`]: not yet valid (`nbf`, `iat` beyond the
    /// leeway) or expired. A verified token's claims remembered by the session cache are
    /// checked again with this on every use.
    pub fn valid_at(&self, now: Timestamp) -> Result<(), TokenError> {
        let now_s = now.unix_seconds();
        if self.nbf > now_s + LEEWAY_SECONDS || self.iat > now_s + LEEWAY_SECONDS {
            return Err(TokenError::Invalid);
        }
        if self.exp <= now_s - LEEWAY_SECONDS {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        let k = JwtSigningKey::generate().unwrap_or_else(|e| unreachable!("{e}"));
        TokenKeys::new(&k, "kasho", "kasho-api").unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: "kasho".into(),
            aud: "kasho-api".into(),
            sub: "usr_1".into(),
            tid: Some("ten_1".into()),
            sid: "ses_1".into(),
            roles: vec!["MANAGER".into()],
            iat: now,
            nbf: now,
            exp: now + 3600,
            jti: "tok_1".into(),
        }
    }

    #[test]
    fn sign_verify_and_expiry() {
        let k = keys();
        let now = Timestamp::from_unix_seconds(1_800_000_000);
        let t = k.sign(&claims(now.unix_seconds())).unwrap_or_default();
        assert_eq!(k.verify(&t, now), Ok(claims(now.unix_seconds())));
        assert_eq!(
            k.verify(&t, now.plus_seconds(3600 + 30)).map(|_| ()),
            Ok(())
        );
        assert_eq!(
            k.verify(&t, now.plus_seconds(3600 + 61)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            k.verify(&t, now.plus_seconds(-120)),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn another_keys_token_is_refused() {
        let now = Timestamp::from_unix_seconds(1_800_000_000);
        let t = keys().sign(&claims(now.unix_seconds())).unwrap_or_default();
        assert_eq!(keys().verify(&t, now), Err(TokenError::Invalid));
    }
}
