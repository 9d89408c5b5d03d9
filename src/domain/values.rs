//! Validated value types ("parse, don't validate"): once one exists, it is valid.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// An email address, trimmed and lower-cased. Its `Debug` masks it (it is personal data).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim().to_ascii_lowercase();
        if s.is_empty() || s.len() > 254 {
            return Err("must be an email address of at most 254 characters".into());
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err("must be an email address".into());
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        let domain_ok = domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !(local_ok && domain_ok) {
            return Err("must be an email address".into());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `j***@example.com`: what logs and masked views show.
    pub fn masked(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => {
                let first = local.chars().next().unwrap_or('*');
                format!("{first}***@{domain}")
            }
            None => "***".into(),
        }
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.masked())
    }
}

/// Stored (inside sealed personal data) as the normalised address; read back through `parse`.
impl serde::Serialize for Email {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Email::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A tenant's URL-safe handle: 3 to 40 of `a-z`, `0-9` and `-`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = (3..=40).contains(&raw.len())
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && !raw.ends_with('-')
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must be 3 to 40 characters of a-z, 0-9 and '-', starting with a letter".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: 1 to 200 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.is_empty() || s.chars().count() > 200 || s.chars().any(char::is_control) {
            return Err("must be 1 to 200 characters without control characters".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Minimum and maximum password length (REFERENCE: at least 12; at least 128 allowed).
pub const PASSWORD_MIN_CHARS: usize = 12;
pub const PASSWORD_MAX_CHARS: usize = 128;

/// A candidate password that meets the length policy. It never prints.
pub struct NewPassword(SecretString);

impl NewPassword {
    pub fn parse(raw: SecretString) -> Result<Self, String> {
        let n = raw.expose_secret().chars().count();
        if n < PASSWORD_MIN_CHARS {
            return Err(format!(
                "must be at least {PASSWORD_MIN_CHARS} characters long"
            ));
        }
        if n > PASSWORD_MAX_CHARS {
            return Err(format!(
                "must be at most {PASSWORD_MAX_CHARS} characters long"
            ));
        }
        Ok(Self(raw))
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_normalises_and_masks() {
        let e = Email::parse("  Jane.Doe@Example.COM ").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(e.as_str(), "jane.doe@example.com");
        assert_eq!(e.masked(), "j***@example.com");
        assert!(!format!("{e:?}").contains("jane.doe"));
    }

    #[test]
    fn email_rejects_nonsense() {
        for bad in [
            "",
            "no-at",
            "a@b",
            "@example.com",
            "a..b@example.com",
            "a@-x.com",
            "a b@x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slug_rules() {
        assert!(Slug::parse("acme-pay").is_ok());
        for bad in ["ab", "Acme", "1acme", "acme-", "ac me", "acme_pay"] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_length_policy_counts_characters() {
        assert!(NewPassword::parse("short".into()).is_err());
        assert!(NewPassword::parse("ééééééééééé".into()).is_err());
        assert!(NewPassword::parse("correct horse battery".into()).is_ok());
        assert!(NewPassword::parse("x".repeat(129).into()).is_err());
        let p = NewPassword::parse("correct horse battery".into())
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(!format!("{p:?}").contains("horse"));
    }
}
