//! KYC rules: tiers, per-tier limits and the arithmetic that applies them, document types and
//! the content sniffing that checks a declared type. No I/O; the service feeds it totals read
//! from storage.
//!
//! Limits are per tenant, tier and currency (amounts are minor units of one currency). Each of
//! the four figures is optional: `None` means no limit for that figure. Outgoing totals are
//! counted per customer account (one per customer and currency) over the UTC day and the UTC
//! calendar month of the movement.

use std::fmt;

/// The highest KYC tier.
pub const MAX_TIER: i64 = 3;

/// The largest limit accepted (far below i64 overflow when added to any balance or total).
pub const MAX_LIMIT: i64 = 1_000_000_000_000_000_000;

/// A KYC tier, 0 (unverified) to 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tier(i64);

impl Tier {
    pub fn parse(v: i64) -> Result<Self, String> {
        if (0..=MAX_TIER).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("must be a tier from 0 to {MAX_TIER}"))
        }
    }

    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The four figures of one tier in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierLimits {
    pub max_single_transfer: Option<i64>,
    pub daily_outgoing: Option<i64>,
    pub monthly_outgoing: Option<i64>,
    pub max_balance: Option<i64>,
}

/// Which limit a movement would break. The names are the API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxSingleTransfer,
    DailyOutgoing,
    MonthlyOutgoing,
    MaxBalance,
    /// The currency is configured but the customer's tier has no row for it.
    CurrencyNotPermitted,
}

impl Limit {
    pub const fn as_str(self) -> &'static str {
        match self {
            Limit::MaxSingleTransfer => "max_single_transfer",
            Limit::DailyOutgoing => "daily_outgoing",
            Limit::MonthlyOutgoing => "monthly_outgoing",
            Limit::MaxBalance => "max_balance",
            Limit::CurrencyNotPermitted => "currency_not_permitted",
        }
    }
}

/// A refused movement: the limit, its figure (if it has one) and what the movement would reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breach {
    pub limit: Limit,
    pub figure: Option<i64>,
    pub would_reach: i64,
}

/// What an account has already sent (posted, plus movements this process has checked and not
/// yet settled) in the movement's UTC day and month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub today: i64,
    pub this_month: i64,
}

/// Checks an outgoing amount against a tier's figures: the single-transfer ceiling, then the
/// daily total, then the monthly total.
pub fn check_outgoing(limits: &TierLimits, used: Outgoing, amount: i64) -> Result<(), Breach> {
    if let Some(max) = limits.max_single_transfer
        && amount > max
    {
        return Err(Breach {
            limit: Limit::MaxSingleTransfer,
            figure: Some(max),
            would_reach: amount,
        });
    }
    for (limit, figure, used) in [
        (Limit::DailyOutgoing, limits.daily_outgoing, used.today),
        (
            Limit::MonthlyOutgoing,
            limits.monthly_outgoing,
            used.this_month,
        ),
    ] {
        let total = used.saturating_add(amount);
        if let Some(max) = figure
            && total > max
        {
            return Err(Breach {
                limit,
                figure: Some(max),
                would_reach: total,
            });
        }
    }
    Ok(())
}

/// Checks an incoming amount against the tier's balance ceiling.
pub fn check_incoming(limits: &TierLimits, balance: i64, amount: i64) -> Result<(), Breach> {
    let after = balance.saturating_add(amount);
    match limits.max_balance {
        Some(max) if after > max => Err(Breach {
            limit: Limit::MaxBalance,
            figure: Some(max),
            would_reach: after,
        }),
        _ => Ok(()),
    }
}

const DAY_MICROS: i64 = 86_400_000_000;

/// The start of the UTC day holding `micros` (microseconds since the Unix epoch).
pub fn utc_day_start(micros: i64) -> i64 {
    micros.div_euclid(DAY_MICROS) * DAY_MICROS
}

/// The start of the UTC calendar month holding `micros`.
pub fn utc_month_start(micros: i64) -> i64 {
    // Days since the epoch → civil date (Howard Hinnant's algorithm), then back to day 1.
    let days = micros.div_euclid(DAY_MICROS);
    let (y, m, _) = civil_from_days(days);
    days_from_civil(y, m, 1) * DAY_MICROS
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Validates one currency's table of tiers. Each error names the parameter at fault
/// (`tiers[i].<figure>`). Rules: figures are 0 to [`MAX_LIMIT`]; a tier appears once;
/// `daily_outgoing <= monthly_outgoing`; a higher tier is never stricter than a lower one
/// (each figure at least the lower tier's, and unlimited if the lower tier is unlimited).
pub fn validate_tiers(tiers: &[(i64, TierLimits)]) -> Result<(), (String, String)> {
    if tiers.is_empty() || tiers.len() > 4 {
        return Err(("tiers".into(), "name between one and four tiers".into()));
    }
    for (i, (tier, l)) in tiers.iter().enumerate() {
        Tier::parse(*tier).map_err(|m| (format!("tiers[{i}].tier"), m))?;
        if tiers[..i].iter().any(|(t, _)| t == tier) {
            return Err((
                format!("tiers[{i}].tier"),
                "each tier may appear once".into(),
            ));
        }
        for (name, v) in figures(l) {
            if let Some(v) = v
                && !(0..=MAX_LIMIT).contains(&v)
            {
                return Err((
                    format!("tiers[{i}].{name}"),
                    format!("must be between 0 and {MAX_LIMIT} minor units, or null for no limit"),
                ));
            }
        }
        if let (Some(d), Some(m)) = (l.daily_outgoing, l.monthly_outgoing)
            && d > m
        {
            return Err((
                format!("tiers[{i}].daily_outgoing"),
                "must not exceed monthly_outgoing".into(),
            ));
        }
    }
    for (i, (tier, l)) in tiers.iter().enumerate() {
        for (lower_tier, lower) in tiers.iter().filter(|(t, _)| t < tier) {
            for ((name, mine), (_, theirs)) in figures(l).into_iter().zip(figures(lower)) {
                let stricter = match (mine, theirs) {
                    (Some(_), None) => true,
                    (Some(a), Some(b)) => a < b,
                    (None, _) => false,
                };
                if stricter {
                    return Err((
                        format!("tiers[{i}].{name}"),
                        format!("tier {tier} must not be stricter than tier {lower_tier}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn figures(l: &TierLimits) -> [(&'static str, Option<i64>); 4] {
    [
        ("max_single_transfer", l.max_single_transfer),
        ("daily_outgoing", l.daily_outgoing),
        ("monthly_outgoing", l.monthly_outgoing),
        ("max_balance", l.max_balance),
    ]
}

/// The identity documents a submission may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentType {
    Passport,
    NationalId,
    DriversLicence,
    ProofOfAddress,
    Selfie,
}

impl DocumentType {
    pub const ALL: [DocumentType; 5] = [
        DocumentType::Passport,
        DocumentType::NationalId,
        DocumentType::DriversLicence,
        DocumentType::ProofOfAddress,
        DocumentType::Selfie,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DocumentType::Passport => "passport",
            DocumentType::NationalId => "national_id",
            DocumentType::DriversLicence => "drivers_licence",
            DocumentType::ProofOfAddress => "proof_of_address",
            DocumentType::Selfie => "selfie",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "must be one of {}",
                    Self::ALL.map(DocumentType::as_str).join(", ")
                )
            })
    }
}

/// The content types a document may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Pdf,
    Png,
    Jpeg,
}

impl ContentType {
    pub const ALL: [ContentType; 3] = [ContentType::Pdf, ContentType::Png, ContentType::Jpeg];

    pub const fn as_str(self) -> &'static str {
        match self {
            ContentType::Pdf => "application/pdf",
            ContentType::Png => "image/png",
            ContentType::Jpeg => "image/jpeg",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "must be one of {}",
                    Self::ALL.map(ContentType::as_str).join(", ")
                )
            })
    }

    /// What the content's leading bytes say it is, if it is one of the accepted types.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"%PDF-") {
            Some(ContentType::Pdf)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ContentType::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ContentType::Jpeg)
        } else {
            None
        }
    }
}

/// The largest document accepted (decoded bytes).
pub const MAX_DOCUMENT_BYTES: usize = 5 * 1024 * 1024;
/// Most documents in one submission.
pub const MAX_DOCUMENTS: usize = 4;
/// The body limit of the submission route: the documents base64-encoded plus room for JSON.
pub const SUBMISSION_BODY_LIMIT: usize =
    MAX_DOCUMENTS * MAX_DOCUMENT_BYTES.div_ceil(3) * 4 + 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    const L: TierLimits = TierLimits {
        max_single_transfer: Some(500),
        daily_outgoing: Some(1_000),
        monthly_outgoing: Some(3_000),
        max_balance: Some(10_000),
    };

    #[test]
    fn outgoing_checks_single_then_daily_then_monthly() {
        let none = Outgoing::default();
        assert_eq!(check_outgoing(&L, none, 500), Ok(()));
        assert_eq!(
            check_outgoing(&L, none, 501).map_err(|b| b.limit),
            Err(Limit::MaxSingleTransfer)
        );
        let day = Outgoing {
            today: 600,
            this_month: 600,
        };
        assert_eq!(check_outgoing(&L, day, 400), Ok(()));
        let b = check_outgoing(&L, day, 401).err();
        assert_eq!(
            b.map(|b| (b.limit, b.figure, b.would_reach)),
            Some((Limit::DailyOutgoing, Some(1_000), 1_001))
        );
        let month = Outgoing {
            today: 0,
            this_month: 2_800,
        };
        assert_eq!(check_outgoing(&L, month, 200), Ok(()));
        assert_eq!(
            check_outgoing(&L, month, 201).map_err(|b| b.limit),
            Err(Limit::MonthlyOutgoing)
        );
        // No figures: nothing is refused, and totals never overflow.
        let free = TierLimits::default();
        let huge = Outgoing {
            today: i64::MAX,
            this_month: i64::MAX,
        };
        assert_eq!(check_outgoing(&free, huge, i64::MAX), Ok(()));
        assert!(check_outgoing(&L, huge, 1).is_err());
    }

    #[test]
    fn incoming_checks_the_balance_ceiling() {
        assert_eq!(check_incoming(&L, 9_000, 1_000), Ok(()));
        let b = check_incoming(&L, 9_000, 1_001).err();
        assert_eq!(
            b.map(|b| (b.limit, b.would_reach)),
            Some((Limit::MaxBalance, 10_001))
        );
        assert_eq!(check_incoming(&TierLimits::default(), i64::MAX, 5), Ok(()));
        // A zero ceiling refuses any credit.
        let zero = TierLimits {
            max_balance: Some(0),
            ..TierLimits::default()
        };
        assert!(check_incoming(&zero, 0, 1).is_err());
    }

    #[test]
    fn utc_days_and_months() {
        // 2026-03-15T13:45:00Z
        let t = 1_773_582_300_000_000;
        assert_eq!(utc_day_start(t), 1_773_532_800_000_000); // 2026-03-15T00:00:00Z
        assert_eq!(utc_month_start(t), 1_772_323_200_000_000); // 2026-03-01T00:00:00Z
        // The first instant of a month is its own start; the last of February is not March.
        assert_eq!(
            utc_month_start(1_772_323_200_000_000),
            1_772_323_200_000_000
        );
        assert_eq!(
            utc_month_start(1_772_323_199_999_999),
            1_769_904_000_000_000
        ); // 2026-02-01
        // A leap day, a year boundary and before the epoch.
        assert_eq!(
            utc_month_start(1_709_208_000_000_000),
            1_706_745_600_000_000
        ); // 2024-02-29 → 2024-02-01
        assert_eq!(
            utc_month_start(1_767_225_599_000_000),
            1_764_547_200_000_000
        ); // 2025-12-31 → 2025-12-01
        assert_eq!(utc_day_start(-1), -DAY_MICROS);
        assert_eq!(utc_month_start(-1), -31 * DAY_MICROS); // 1969-12-01
    }

    fn tier(
        t: i64,
        s: Option<i64>,
        d: Option<i64>,
        m: Option<i64>,
        b: Option<i64>,
    ) -> (i64, TierLimits) {
        (
            t,
            TierLimits {
                max_single_transfer: s,
                daily_outgoing: d,
                monthly_outgoing: m,
                max_balance: b,
            },
        )
    }

    #[test]
    fn tier_tables_are_validated_with_the_param_at_fault() {
        let ok = [
            tier(0, Some(100), Some(200), Some(1_000), Some(5_000)),
            tier(1, Some(100), Some(500), Some(2_000), None),
            tier(3, None, None, None, None),
        ];
        assert_eq!(validate_tiers(&ok), Ok(()));
        let param =
            |t: &[(i64, TierLimits)]| validate_tiers(t).err().map(|e| e.0).unwrap_or_default();
        assert_eq!(param(&[]), "tiers");
        assert_eq!(param(&[tier(4, None, None, None, None)]), "tiers[0].tier");
        assert_eq!(
            param(&[
                tier(0, None, None, None, None),
                tier(0, None, None, None, None)
            ]),
            "tiers[1].tier"
        );
        assert_eq!(
            param(&[tier(0, Some(-1), None, None, None)]),
            "tiers[0].max_single_transfer"
        );
        assert_eq!(
            param(&[tier(0, None, Some(11), Some(10), None)]),
            "tiers[0].daily_outgoing"
        );
        // A higher tier stricter than a lower one, or limited where the lower one is not.
        assert_eq!(
            param(&[
                tier(0, None, None, None, Some(100)),
                tier(2, None, None, None, Some(99))
            ]),
            "tiers[1].max_balance"
        );
        assert_eq!(
            param(&[
                tier(1, None, Some(10), None, None),
                tier(0, None, None, None, None)
            ]),
            "tiers[0].daily_outgoing"
        );
    }

    #[test]
    fn content_is_sniffed_from_magic_bytes() {
        assert_eq!(ContentType::sniff(b"%PDF-1.7\n"), Some(ContentType::Pdf));
        assert_eq!(
            ContentType::sniff(b"\x89PNG\r\n\x1a\n\0\0"),
            Some(ContentType::Png)
        );
        assert_eq!(
            ContentType::sniff(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ContentType::Jpeg)
        );
        assert_eq!(ContentType::sniff(b"GIF89a"), None);
        assert_eq!(ContentType::sniff(b""), None);
        assert!(ContentType::parse("image/gif").is_err());
        assert!(DocumentType::parse("passport").is_ok());
        assert!(DocumentType::parse("Passport").is_err());
        assert!(Tier::parse(-1).is_err() && Tier::parse(4).is_err() && Tier::parse(3).is_ok());
    }
}
