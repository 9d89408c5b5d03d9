//! Request signing (version `v1`): the canonical request an API-token request is signed over,
//! its signature, and the header rules. Pure functions; the server (`service::api_tokens`) and
//! `kasho sign` both use them, so they cannot disagree.
//!
//! The canonical request is six lines joined by `\n` (no trailing newline):
//!
//! ```text
//! METHOD            upper case, e.g. POST
//! PATH              the request path exactly as sent, e.g. /v1/transfers (no query)
//! QUERY             the canonical query (below); empty when there is none
//! TIMESTAMP         the Kasho-Timestamp header: unix seconds, decimal
//! NONCE             the Kasho-Nonce header: 16-128 of A-Z a-z 0-9 - . _ ~
//! BODY_SHA256       lower-case hex SHA-256 of the body bytes (of the empty string if none)
//! ```
//!
//! The canonical query is built from the query AS THE SERVER READS IT: [`decode_query`] is the
//! one decoder of query strings, used by routing (`http::extract::ApiQuery`) and by signing
//! alike (`application/x-www-form-urlencoded`: split on `&`, empty parts dropped, each part
//! split on its first `=`, `+` is a space, `%XX` decoded, the bytes read as UTF-8 with invalid
//! sequences replaced by U+FFFD). Each decoded key and value is percent-encoded again with
//! every byte outside `A-Z a-z 0-9 - . _ ~` as `%XX` (upper-case hex), the pairs are sorted by
//! encoded key and then encoded value, and joined as `k=v` with `&`. So `q=a+b` and `q=a%20b`
//! (both read as `a b`) sign alike, and a literal plus must be sent as `%2B`.
//!
//! The signature: `Kasho-Signature: v1=<lower-case hex HMAC-SHA256(key = the token's signing
//! secret as UTF-8, message = the canonical request)>`. Several `v1=` values may be given,
//! comma separated; the request passes when one matches. (Tokens issued before signing
//! secrets existed sign with their bearer secret until their next rotation.)

use sha2::{Digest, Sha256};

/// How far a request's timestamp may be from the server's clock, either way.
pub const TOLERANCE_SECONDS: i64 = 300;
/// Nonce length bounds.
pub const NONCE_LEN: (usize, usize) = (16, 128);

pub const TIMESTAMP_HEADER: &str = "kasho-timestamp";
pub const NONCE_HEADER: &str = "kasho-nonce";
pub const SIGNATURE_HEADER: &str = "kasho-signature";

/// The parts of a request that are signed.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The raw query string (without `?`), if any.
    pub query: Option<&'a str>,
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub body: &'a [u8],
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// THE query decoder: routing and signing both read a query string through it, so what is
/// signed is what the server acts on (see the module docs).
pub fn decode_query(raw: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(raw.as_bytes())
}

/// Percent-encodes every byte outside the unreserved set, with upper-case hex.
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical form of a raw query string (see the module docs).
pub fn canonical_query(raw: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = decode_query(raw.unwrap_or(""))
        .map(|(k, v)| (percent_encode(k.as_bytes()), percent_encode(v.as_bytes())))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request (see the module docs).
pub fn canonical_request(p: &RequestParts<'_>) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        p.method.to_ascii_uppercase(),
        p.path,
        canonical_query(p.query),
        p.timestamp,
        p.nonce,
        hex::encode(Sha256::digest(p.body)),
    )
}

/// The lower-case hex signature of `canonical` under `secret` (the signing secret).
pub fn sign(secret: &str, canonical: &str) -> String {
    hex::encode(crate::crypto::hmac_sha256(
        secret.as_bytes(),
        canonical.as_bytes(),
    ))
}

/// The `Kasho-Signature` header value for one secret.
pub fn signature_header(secret: &str, canonical: &str) -> String {
    format!("v1={}", sign(secret, canonical))
}

/// Why a signed request's headers are not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// A header is missing (some but not all were sent).
    Missing(&'static str),
    /// The timestamp is not decimal unix seconds.
    BadTimestamp,
    /// The nonce is too short, too long, or has characters outside the allowed set.
    BadNonce,
    /// The signature header has no `v1=<64 hex>` value.
    BadSignature,
}

/// Parses a `Kasho-Timestamp` value.
pub fn parse_timestamp(s: &str) -> Result<i64, HeaderProblem> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderProblem::BadTimestamp);
    }
    s.parse().map_err(|_| HeaderProblem::BadTimestamp)
}

/// Checks a `Kasho-Nonce` value.
pub fn check_nonce(s: &str) -> Result<(), HeaderProblem> {
    if (NONCE_LEN.0..=NONCE_LEN.1).contains(&s.len()) && s.bytes().all(unreserved) {
        Ok(())
    } else {
        Err(HeaderProblem::BadNonce)
    }
}

/// The `v1` signatures of a `Kasho-Signature` value (lower-cased hex, each 64 digits).
pub fn parse_signatures(s: &str) -> Result<Vec<String>, HeaderProblem> {
    let sigs: Vec<String> = s
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .map(str::to_ascii_lowercase)
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    if sigs.is_empty() || sigs.len() > 5 {
        Err(HeaderProblem::BadSignature)
    } else {
        Ok(sigs)
    }
}

/// Whether any of `signatures` is the signature of `canonical` under `secret` (each compared
/// in constant time).
pub fn verify(secret: &str, canonical: &str, signatures: &[String]) -> bool {
    let expected = sign(secret, canonical);
    signatures.iter().fold(false, |ok, s| {
        crate::crypto::constant_time_eq(s.as_bytes(), expected.as_bytes()) | ok
    })
}

/// Whether a request timestamp is within the tolerance of `now` (both unix seconds).
pub fn within_tolerance(timestamp: i64, now: i64) -> bool {
    (now - timestamp).abs() <= TOLERANCE_SECONDS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/API.md ("Request signing"; the integration suite also
    /// recomputes it from the document itself): if this changes, the docs must.
    pub const VECTOR_SECRET: &str = "kasho_sig_Zm9yIGRvY3VtZW50YXRpb24gb25seSwgbmV2ZXIgdXNl";

    #[test]
    fn documented_test_vector() {
        let body =
            br#"{"from_account":"acc_1","to_account":"acc_2","amount":1500,"currency":"USD"}"#;
        let parts = RequestParts {
            method: "post",
            path: "/v1/transfers",
            query: Some("b=2&a=1&a=0&q=x+y%2Bz"),
            timestamp: "1767225600",
            nonce: "3f9a1c0e7b2d4a68",
            body,
        };
        let canonical = canonical_request(&parts);
        assert_eq!(
            canonical,
            "POST\n/v1/transfers\na=0&a=1&b=2&q=x%20y%2Bz\n1767225600\n3f9a1c0e7b2d4a68\n\
             b4e96353a9c7a3eda784c0bb6bcc1cc55ce72f13d64316d941b1fd630d8ce41b"
        );
        assert_eq!(
            signature_header(VECTOR_SECRET, &canonical),
            "v1=9f1bdb0745fa66d14894bf22059fcf3b75acf6fcd7cb49fe7b5b3022121041ab"
        );
    }

    #[test]
    fn query_is_decoded_as_the_server_reads_it_then_reencoded_and_sorted() {
        assert_eq!(canonical_query(None), "");
        assert_eq!(canonical_query(Some("")), "");
        // `+` is a space, as routing reads it; a literal plus is %2B.
        assert_eq!(
            canonical_query(Some("z=1&&a=%7e&a=b c&flag&q=%2f+x%2B")),
            "a=b%20c&a=~&flag=&q=%2F%20x%2B&z=1"
        );
        assert_eq!(
            canonical_query(Some("q=a+b")),
            canonical_query(Some("q=a%20b"))
        );
        assert_ne!(
            canonical_query(Some("q=a+b")),
            canonical_query(Some("q=a%2Bb"))
        );
        // Invalid UTF-8 reads (and so signs) as U+FFFD; a stray % stays literal.
        assert_eq!(canonical_query(Some("k=%ff%zz")), "k=%EF%BF%BD%25zz");
        // Routing sees exactly the decoded pairs.
        let routed: Vec<(String, String)> = decode_query("q=a+b&limit=5")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            routed,
            vec![("q".into(), "a b".into()), ("limit".into(), "5".into())]
        );
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(parse_timestamp("1767225600"), Ok(1_767_225_600));
        assert!(parse_timestamp("-5").is_err());
        assert!(parse_timestamp("1.5").is_err());
        assert!(parse_timestamp("").is_err());
        assert!(check_nonce("0123456789abcdef").is_ok());
        assert!(check_nonce("short").is_err());
        assert!(check_nonce("0123456789abcdef\nX").is_err());
        assert!(check_nonce(&"a".repeat(129)).is_err());
        let sig = "a".repeat(64);
        assert_eq!(
            parse_signatures(&format!("v1={sig}, v1={}", "B".repeat(64))),
            Ok(vec![sig.clone(), "b".repeat(64)])
        );
        assert!(parse_signatures("v2=abc").is_err());
        assert!(parse_signatures(&format!("v1={}", "a".repeat(63))).is_err());
    }

    #[test]
    fn verification_accepts_any_matching_value_and_nothing_else() {
        let c = "GET\n/v1/me\n\n1\n0123456789abcdef\n";
        let good = sign("kasho_secret", c);
        assert!(verify("kasho_secret", c, &["0".repeat(64), good.clone()]));
        assert!(!verify("kasho_other", c, std::slice::from_ref(&good)));
        assert!(!verify("kasho_secret", "GET\n/v1/me", &[good]));
        assert!(within_tolerance(1000, 1300));
        assert!(within_tolerance(1300, 1000));
        assert!(!within_tolerance(1000, 1301));
    }
}
