//! Password strength rules (NIST 800-63B, REFERENCE "password length", "weak passwords"): a
//! length within the tenant's bounds, no composition rules, and refusal of passwords an
//! attacker would try early: ones built from the user's email or the tenant's name, ones on a
//! list of common breached passwords (also after lowercasing and stripping the digits and
//! symbols people pad them with), and ones zxcvbn rates below 3 ("safely unguessable",
//! more than 10^10 guesses) with the same personal inputs.
//!
//! Pure: no storage, no clock. History (`password_reused`) needs the stored hashes and is
//! checked by `service::passwords`. No message ever repeats the password.

use std::collections::HashSet;
use std::sync::LazyLock;

/// The common-password list (Django's, from breach corpora; see `common_passwords.NOTICE.md`).
const COMMON_PASSWORDS_TXT: &str = include_str!("common_passwords.txt");

static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    COMMON_PASSWORDS_TXT
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
});

/// The lowest zxcvbn score accepted (3: "safely unguessable", about 10^10 guesses).
pub const MIN_ZXCVBN_SCORE: u8 = 3;

/// Personal inputs shorter than this are not looked for inside a password (too many false
/// matches: "al", "sam").
const MIN_PERSONAL_TOKEN_CHARS: usize = 4;

/// Why a password is refused. Each names the rule broken; none carries the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weakness {
    TooShort {
        min: u32,
    },
    TooLong {
        max: u32,
    },
    /// Contains the user's email (or a part of it) or the tenant's name or slug.
    PersonalInfo,
    /// On the common-password list, as typed or once normalised.
    Common,
    /// zxcvbn scored it below [`MIN_ZXCVBN_SCORE`]; `feedback` is zxcvbn's advice.
    Weak {
        feedback: String,
    },
}

impl Weakness {
    /// The error code the API answers.
    pub const fn code(&self) -> &'static str {
        match self {
            Weakness::TooShort { .. } => "password_too_short",
            Weakness::TooLong { .. } => "password_too_long",
            Weakness::PersonalInfo => "password_contains_personal_info",
            Weakness::Common => "password_too_common",
            Weakness::Weak { .. } => "password_too_weak",
        }
    }

    /// A message for the user (never the password itself).
    pub fn message(&self) -> String {
        match self {
            Weakness::TooShort { min } => format!("must be at least {min} characters long"),
            Weakness::TooLong { max } => format!("must be at most {max} characters long"),
            Weakness::PersonalInfo => {
                "must not contain your email address, a part of it, or your organisation's name"
                    .into()
            }
            Weakness::Common => {
                "is one of the most common passwords (or a variant of one); choose another".into()
            }
            Weakness::Weak { feedback } => format!("is too easy to guess: {feedback}"),
        }
    }
}

/// What a new password must be checked against: the length bounds (from the tenant's policy)
/// and the personal inputs it may not be built from.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub min_length: u32,
    pub max_length: u32,
    /// The user's email.
    pub email: &'a str,
    /// Other inputs: the tenant's name and slug.
    pub context: &'a [&'a str],
}

/// Checks `password` against every strength rule; the first broken one is answered, in the
/// order length, personal information, common list, zxcvbn.
pub fn check(password: &str, rules: &Rules<'_>) -> Result<(), Weakness> {
    let n = password.chars().count();
    if n < rules.min_length as usize {
        return Err(Weakness::TooShort {
            min: rules.min_length,
        });
    }
    if n > rules.max_length as usize {
        return Err(Weakness::TooLong {
            max: rules.max_length,
        });
    }
    let inputs = personal_inputs(rules.email, rules.context);
    if contains_personal_info(password, &inputs) {
        return Err(Weakness::PersonalInfo);
    }
    if is_common(password) {
        return Err(Weakness::Common);
    }
    let mut refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    // The email's domain ("acme" of "ada@acme.example") informs zxcvbn but is not refused
    // outright: "gmail" inside a passphrase says little.
    let domain_label = rules
        .email
        .split_once('@')
        .and_then(|(_, d)| d.split('.').next())
        .unwrap_or("")
        .to_lowercase();
    if !domain_label.is_empty() {
        refs.push(&domain_label);
    }
    let estimate = zxcvbn::zxcvbn(password, &refs);
    if u8::from(estimate.score()) < MIN_ZXCVBN_SCORE {
        let feedback = estimate
            .feedback()
            .map(|f| f.to_string().trim().to_owned())
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "add another word or two; uncommon words are better".into());
        return Err(Weakness::Weak { feedback });
    }
    Ok(())
}

/// Lowercase letters and digits only: "Ada.Lovelace-1" → "adalovelace1".
fn alphanumeric_lower(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The personal inputs, lowercased: the email, its local part and the local part's pieces
/// ("ada.lovelace" → "ada", "lovelace"), and each context string with its words.
fn personal_inputs(email: &str, context: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let email = email.trim().to_lowercase();
    if !email.is_empty() {
        out.push(email.clone());
    }
    let local = email.split_once('@').map_or(email.as_str(), |(l, _)| l);
    let mut parts: Vec<&str> = vec![local];
    parts.extend(context.iter().copied());
    for part in parts {
        let part = part.trim().to_lowercase();
        if part.is_empty() {
            continue;
        }
        out.push(part.clone());
        let words: Vec<&str> = part
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        if words.len() > 1 {
            out.extend(words.iter().map(|w| (*w).to_owned()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether the password (letters and digits, lowercased) contains one of the inputs (the same
/// way) of at least [`MIN_PERSONAL_TOKEN_CHARS`] characters.
fn contains_personal_info(password: &str, inputs: &[String]) -> bool {
    let haystack = alphanumeric_lower(password);
    inputs
        .iter()
        .map(|i| alphanumeric_lower(i))
        .filter(|i| i.chars().count() >= MIN_PERSONAL_TOKEN_CHARS)
        .any(|i| haystack.contains(&i))
}

/// Whether the password, or a normalised variant of it, is on the common list. Variants:
/// lowercased; without spaces; without the digits and symbols around it ("Password123!" →
/// "password"); and with both.
pub fn is_common(password: &str) -> bool {
    let lower = password.trim().to_lowercase();
    let no_spaces: String = lower.chars().filter(|c| !c.is_whitespace()).collect();
    let strip = |s: &str| -> String { s.trim_matches(|c: char| !c.is_alphabetic()).to_owned() };
    let candidates = [
        lower.clone(),
        no_spaces.clone(),
        strip(&lower),
        strip(&no_spaces),
    ];
    candidates
        .iter()
        .filter(|c| !c.is_empty())
        .any(|c| COMMON_PASSWORDS.contains(c.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules<'a>(email: &'a str, context: &'a [&'a str]) -> Rules<'a> {
        Rules {
            min_length: 12,
            max_length: 128,
            email,
            context,
        }
    }

    fn code(password: &str) -> Option<&'static str> {
        check(
            password,
            &rules("ada.lovelace@example.com", &["Acme Pay", "acme-pay"]),
        )
        .err()
        .map(|w| w.code())
    }

    #[test]
    fn the_list_is_embedded_and_lowercase() {
        assert!(COMMON_PASSWORDS.len() > 19_000);
        assert!(COMMON_PASSWORDS.contains("password"));
        assert!(COMMON_PASSWORDS.contains("123456"));
        assert!(
            COMMON_PASSWORDS
                .iter()
                .all(|p| p.to_lowercase() == *p && p.trim() == *p)
        );
    }

    #[test]
    fn lengths_follow_the_policy_counting_characters_not_bytes() {
        assert_eq!(code("short"), Some("password_too_short"));
        // 11 two-byte characters are 22 bytes but still too short.
        assert_eq!(code(&"é".repeat(11)), Some("password_too_short"));
        assert_eq!(code(&"x".repeat(129)), Some("password_too_long"));
        let r = Rules {
            min_length: 16,
            ..rules("a@b.example", &[])
        };
        assert_eq!(
            check("quartz mango ferry", &r).map_err(|w| w.code()),
            Ok(())
        );
        assert_eq!(
            check("quartz mango f", &r),
            Err(Weakness::TooShort { min: 16 })
        );
        let long = "vivid otter climbs amber staircase ".repeat(4);
        let r = Rules {
            max_length: 200,
            ..rules("a@b.example", &[])
        };
        assert_eq!(check(&long, &r), Ok(()));
    }

    #[test]
    fn common_passwords_are_refused_with_their_usual_disguises() {
        for p in [
            "password1234",
            "Password1234",
            "PASSWORD123456!",
            "!!qwertyuiop!!",
            "1234567890qwerty",
            "iloveyou2026!!",
            "pass word 1234",
            "00000000000000",
        ] {
            assert!(
                matches!(code(p), Some("password_too_common" | "password_too_weak")),
                "{p}: {:?}",
                code(p)
            );
        }
        assert!(is_common("Password1234"));
        assert!(is_common("  DRAGON2026!! "));
        assert!(is_common("pass word"));
        assert!(!is_common("vivid otter climbs amber"));
    }

    #[test]
    fn passwords_built_from_the_email_or_the_tenant_are_refused() {
        for p in [
            "ada.lovelace@example.com",
            "lovelace lovelace 99",
            "my name is ADA-LOVELACE",
            "Lovelace_Forever_2026",
            "acme pay is the best bank",
            "AcmePay!AcmePay!",
        ] {
            assert_eq!(code(p), Some("password_contains_personal_info"), "{p}");
        }
        // Short pieces ("ada") are not looked for: too many innocent matches.
        assert_eq!(code("canada geese fly south in autumn"), None);
    }

    #[test]
    fn weak_passwords_get_zxcvbn_feedback_and_never_the_password() {
        let err = check("aaaaaaaaaaaaaaaa", &rules("x@y.example", &[]))
            .err()
            .unwrap_or_else(|| unreachable!("accepted"));
        assert_eq!(err.code(), "password_too_weak");
        let Weakness::Weak { feedback } = &err else {
            unreachable!("{err:?}")
        };
        assert!(!feedback.is_empty());
        assert!(!err.message().contains("aaaa"));
        assert_eq!(code("abcdefghijklmnop"), Some("password_too_weak"));
        assert_eq!(code("bcdefghijklmnopq"), Some("password_too_weak"));
        // A keyboard walk on the list is answered as common (the list comes first).
        assert_eq!(code("qazwsxedcrfvtgb"), Some("password_too_common"));
    }

    #[test]
    fn strong_passphrases_pass() {
        for p in [
            "vivid otter climbs amber staircase",
            "Tr4vel-Quokka-Lantern-9",
            "marmalade cobalt whisper tundra",
            "xK7#mP2$vL9@qR4!",
            // The test suite's password, and the README walkthrough's.
            "correct horse battery staple",
            "platform admin passphrase 2026",
            "manager passphrase 2026",
            "compliance passphrase 2026",
        ] {
            assert_eq!(code(p), None, "{p}");
        }
    }

    #[test]
    fn personal_inputs_split_the_email_and_names() {
        let inputs = personal_inputs("Ada.Lovelace@Example.com", &["Acme Pay"]);
        for want in [
            "ada.lovelace@example.com",
            "ada.lovelace",
            "lovelace",
            "acme pay",
            "acme",
        ] {
            assert!(inputs.iter().any(|i| i == want), "{want}: {inputs:?}");
        }
    }
}
