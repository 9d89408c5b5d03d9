//! ISO 4217 currencies Kasho accepts, with their minor-unit exponents (amounts are always
//! integers in minor units; the exponent says how many of them make one major unit).

use std::fmt;

/// (code, minor-unit exponent)
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("BWP", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("GHS", 2),
    ("HKD", 2),
    ("INR", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("MAD", 2),
    ("MXN", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("QAR", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("TZS", 2),
    ("UGX", 0),
    ("USD", 2),
    ("XAF", 0),
    ("XOF", 0),
    ("ZAR", 2),
    ("ZMW", 2),
];

/// The codes of every supported currency.
pub fn codes() -> impl Iterator<Item = &'static str> {
    CURRENCIES.iter().map(|(c, _)| *c)
}

/// A supported ISO 4217 currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(&'static str, u8);

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, String> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == raw)
            .map(|(c, e)| Currency(c, *e))
            .ok_or_else(|| format!("`{raw}` is not a supported ISO 4217 currency code"))
    }

    pub const fn code(self) -> &'static str {
        self.0
    }

    /// Minor units per major unit, as a power of ten (USD 2, JPY 0, KWD 3).
    pub const fn exponent(self) -> u8 {
        self.1
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Parses a non-empty list of distinct currencies, sorted.
pub fn parse_currency_list(raw: &[String]) -> Result<Vec<Currency>, String> {
    if raw.is_empty() {
        return Err("at least one currency is required".into());
    }
    let mut out = Vec::with_capacity(raw.len());
    for c in raw {
        let cur = Currency::parse(c)?;
        if !out.contains(&cur) {
            out.push(cur);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents_match_iso_4217() {
        for (code, exp) in [("USD", 2), ("JPY", 0), ("KWD", 3), ("BHD", 3), ("NGN", 2)] {
            assert_eq!(
                Currency::parse(code).map(Currency::exponent),
                Ok(exp),
                "{code}"
            );
        }
        assert!(Currency::parse("usd").is_err());
        assert!(Currency::parse("XXX").is_err());
    }
}
