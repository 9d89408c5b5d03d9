//! Customers' personal data as types ("parse, don't validate"): a name, an email, an E.164
//! phone number, a date of birth, a postal address, a nationality and national identifiers.
//! Once a value exists it is valid and normalised.
//!
//! Every type here is personal data: its `Debug` and `Display` print only its mask, never the
//! value. The value itself is reached only through an explicit accessor (`as_str`, `as_iso`,
//! [`CustomerProfile::revealed`]). The masks (docs/SECURITY.md):
//!
//! | value | mask |
//! | --- | --- |
//! | first or last name | first letter, then `***` (`J***`) |
//! | email | first character of the local part, `***@` and the domain (`j***@example.com`) |
//! | phone | `***` and the last 4 digits (`***4567`) |
//! | date of birth | `****-**-**` (nothing shown) |
//! | address | city and country only; every other line `***` |
//! | nationality | `**` |
//! | national id | the type, and `***` with the last 4 characters (the last 2 when shorter than 8) |
//!
//! [`CustomerProfile`] holds all of it and is what is sealed, as JSON, under the customer's own
//! data key. [`ProfileInput`] is the raw input of a creation or a rectification;
//! [`ProfileInput::apply`] validates it field by field (errors name the field) and yields the new
//! profile.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime};

use super::country::Country;
use super::values::Email;
use crate::clock::Timestamp;

const MASK: &str = "***";

/// `***` followed by the last `n` characters of `s`.
fn last_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    let tail: String = s.chars().skip(count.saturating_sub(n)).collect();
    format!("{MASK}{tail}")
}

// ---------------------------------------------------------------- names

/// A first or last name: 1 to 100 characters of letters (any script, with combining accents),
/// spaces, apostrophes, hyphens and periods, with at least one letter. Whitespace is trimmed and
/// collapsed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NamePart(String);

impl NamePart {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if s.is_empty() || s.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be 1 to {} characters", Self::MAX_CHARS));
        }
        let allowed = |c: char| {
            c.is_alphabetic()
                || c == ' '
                || "'\u{2019}-.".contains(c)
                || ('\u{0300}'..='\u{036F}').contains(&c)
        };
        if !s.chars().all(allowed) || !s.chars().any(char::is_alphabetic) {
            return Err(
                "may contain only letters, spaces, apostrophes, hyphens and periods".into(),
            );
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `J***`.
    pub fn mask(&self) -> String {
        let first = self.0.chars().next().unwrap_or('*');
        format!("{first}{MASK}")
    }
}

impl TryFrom<String> for NamePart {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<NamePart> for String {
    fn from(n: NamePart) -> String {
        n.0
    }
}

/// A person's first and last name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonName {
    pub first: NamePart,
    pub last: NamePart,
}

// ---------------------------------------------------------------- phone

/// A phone number in E.164: `+` then 8 to 15 digits, the first not 0. Spaces, hyphens, periods
/// and parentheses between the digits are accepted on input and dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, String> {
        const MSG: &str =
            "must be an E.164 phone number: + then 8 to 15 digits, e.g. +2348031234567";
        let rest = raw.trim().strip_prefix('+').ok_or(MSG)?;
        let mut digits = String::with_capacity(15);
        for c in rest.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
            } else if !" -.()".contains(c) {
                return Err(MSG.into());
            }
        }
        if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
            return Err(MSG.into());
        }
        Ok(Self(format!("+{digits}")))
    }

    /// `+` and the digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `***4567`.
    pub fn mask(&self) -> String {
        last_chars(&self.0, 4)
    }
}

impl TryFrom<String> for Phone {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<Phone> for String {
    fn from(p: Phone) -> String {
        p.0
    }
}

// ---------------------------------------------------------------- date of birth

/// The oldest accepted date of birth, in years before today.
pub const MAX_AGE_YEARS: i32 = 130;

/// A date of birth: an ISO 8601 calendar date (`YYYY-MM-DD`) before today and at most
/// [`MAX_AGE_YEARS`] ago, both judged by the injected clock (UTC).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DateOfBirth(Date);

/// Today's date (UTC) at `now`.
pub fn today(now: Timestamp) -> Option<Date> {
    OffsetDateTime::from_unix_timestamp(now.unix_seconds())
        .ok()
        .map(OffsetDateTime::date)
}

/// A strict `YYYY-MM-DD`.
fn parse_iso_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    let digits_at = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    if !(digits_at(0..4) && digits_at(5..7) && digits_at(8..10)) {
        return None;
    }
    let year: i32 = s[0..4].parse().ok()?;
    let month: u8 = s[5..7].parse().ok()?;
    let day: u8 = s[8..10].parse().ok()?;
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

impl DateOfBirth {
    pub fn parse(raw: &str, now: Timestamp) -> Result<Self, String> {
        let date =
            parse_iso_date(raw.trim()).ok_or("must be a calendar date in the form YYYY-MM-DD")?;
        let today = today(now).ok_or("the current date is unknown")?;
        if date >= today {
            return Err("must be in the past".into());
        }
        if date.year() < today.year() - MAX_AGE_YEARS {
            return Err(format!("must be within the last {MAX_AGE_YEARS} years"));
        }
        Ok(Self(date))
    }

    /// `YYYY-MM-DD`.
    pub fn as_iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}",
            self.0.year(),
            u8::from(self.0.month()),
            self.0.day()
        )
    }

    /// Nothing of the date: `****-**-**`.
    pub fn mask(&self) -> String {
        "****-**-**".into()
    }
}

impl Serialize for DateOfBirth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_iso())
    }
}

impl<'de> Deserialize<'de> for DateOfBirth {
    /// Stored values were checked against the clock when written; only the form is checked here.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_iso_date(&s)
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom("stored date of birth is malformed"))
    }
}

// ---------------------------------------------------------------- address

/// One line of an address (also a city or a region): 1 to 100 characters after trimming, no
/// control characters.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddressLine(String);

impl AddressLine {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.is_empty() || s.chars().count() > 100 || s.chars().any(char::is_control) {
            return Err("must be 1 to 100 characters without control characters".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AddressLine {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<AddressLine> for String {
    fn from(l: AddressLine) -> String {
        l.0
    }
}

/// A postal code: 2 to 16 of letters, digits, spaces and hyphens, upper-cased.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PostalCode(String);

impl PostalCode {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim().to_ascii_uppercase();
        let ok = (2..=16).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-')
            && s.bytes().any(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err("must be 2 to 16 letters, digits, spaces or hyphens".into());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PostalCode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<PostalCode> for String {
    fn from(p: PostalCode) -> String {
        p.0
    }
}

/// A postal address.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub line1: AddressLine,
    pub line2: Option<AddressLine>,
    pub city: AddressLine,
    pub region: Option<AddressLine>,
    pub postal_code: Option<PostalCode>,
    pub country: Country,
}

/// The raw input of an address.
#[derive(Clone, Default)]
pub struct AddressInput {
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: String,
}

impl Address {
    /// Parses each part; an error names the part (`line1`, `city`, `country`, …).
    pub fn parse(input: &AddressInput) -> Result<Self, (&'static str, String)> {
        let opt_line = |v: &Option<String>, field: &'static str| {
            v.as_deref()
                .map(AddressLine::parse)
                .transpose()
                .map_err(|e| (field, e))
        };
        Ok(Self {
            line1: AddressLine::parse(&input.line1).map_err(|e| ("line1", e))?,
            line2: opt_line(&input.line2, "line2")?,
            city: AddressLine::parse(&input.city).map_err(|e| ("city", e))?,
            region: opt_line(&input.region, "region")?,
            postal_code: input
                .postal_code
                .as_deref()
                .map(PostalCode::parse)
                .transpose()
                .map_err(|e| ("postal_code", e))?,
            country: Country::parse(&input.country).map_err(|e| ("country", e))?,
        })
    }

    /// City and country only.
    pub fn mask(&self) -> AddressText {
        AddressText {
            line1: MASK.into(),
            line2: self.line2.as_ref().map(|_| MASK.into()),
            city: self.city.as_str().to_owned(),
            region: self.region.as_ref().map(|_| MASK.into()),
            postal_code: self.postal_code.as_ref().map(|_| MASK.into()),
            country: self.country.to_string(),
        }
    }

    pub fn reveal(&self) -> AddressText {
        AddressText {
            line1: self.line1.as_str().to_owned(),
            line2: self.line2.as_ref().map(|l| l.as_str().to_owned()),
            city: self.city.as_str().to_owned(),
            region: self.region.as_ref().map(|l| l.as_str().to_owned()),
            postal_code: self.postal_code.as_ref().map(|p| p.as_str().to_owned()),
            country: self.country.to_string(),
        }
    }
}

/// An address as text, masked or revealed, for rendering.
#[derive(Clone, PartialEq, Eq)]
pub struct AddressText {
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: String,
}

// ---------------------------------------------------------------- national identifiers

/// The kinds of national identifier Kasho validates: those of its markets (Nigeria, South
/// Africa, the United States) and passports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NationalIdKind {
    /// Nigeria's Bank Verification Number: 11 digits.
    #[serde(rename = "BVN")]
    Bvn,
    /// Nigeria's National Identification Number (NIMC): 11 digits.
    #[serde(rename = "NIN")]
    Nin,
    /// A US Social Security Number: `NNN-NN-NNNN` or 9 digits, with the SSA's impossible
    /// ranges refused (area 000, 666 or 9xx; group 00; serial 0000).
    #[serde(rename = "SSN")]
    Ssn,
    /// A South African identity number: 13 digits, a valid `YYMMDD` date of birth first and a
    /// Luhn check digit last.
    #[serde(rename = "ZA_ID")]
    ZaId,
    /// A passport number: 6 to 9 letters or digits (ICAO 9303 allows up to 9).
    #[serde(rename = "PASSPORT")]
    Passport,
}

impl NationalIdKind {
    pub const ALL: [NationalIdKind; 5] = [
        NationalIdKind::Bvn,
        NationalIdKind::Nin,
        NationalIdKind::Ssn,
        NationalIdKind::ZaId,
        NationalIdKind::Passport,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            NationalIdKind::Bvn => "BVN",
            NationalIdKind::Nin => "NIN",
            NationalIdKind::Ssn => "SSN",
            NationalIdKind::ZaId => "ZA_ID",
            NationalIdKind::Passport => "PASSPORT",
        }
    }

    /// Case-insensitive: `bvn` is `BVN`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim().to_ascii_uppercase();
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "must be one of {}",
                    Self::ALL.map(NationalIdKind::as_str).join(", ")
                )
            })
    }

    /// The blind-index field of this kind, e.g. `national_id:BVN`.
    pub fn index_field(self) -> String {
        format!("national_id:{}", self.as_str())
    }
}

impl fmt::Display for NationalIdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A national identifier: its kind and its number, normalised (digits only for the numeric
/// kinds, upper-case for passports).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredNationalId", into = "StoredNationalId")]
pub struct NationalId {
    kind: NationalIdKind,
    number: String,
}

#[derive(Serialize, Deserialize)]
struct StoredNationalId {
    #[serde(rename = "type")]
    kind: NationalIdKind,
    number: String,
}

impl TryFrom<StoredNationalId> for NationalId {
    type Error = String;
    fn try_from(s: StoredNationalId) -> Result<Self, String> {
        Self::parse(s.kind, &s.number)
    }
}

impl From<NationalId> for StoredNationalId {
    fn from(n: NationalId) -> Self {
        Self {
            kind: n.kind,
            number: n.number,
        }
    }
}

fn all_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// The Luhn check over all digits (the last one being the check digit).
fn luhn_ok(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

fn valid_ssn(digits: &str) -> bool {
    let (area, group, serial) = (&digits[0..3], &digits[3..5], &digits[5..9]);
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

fn valid_za_id(digits: &str) -> bool {
    let (Ok(yy), Ok(mm), Ok(dd)) = (
        digits[0..2].parse::<i32>(),
        digits[2..4].parse::<u8>(),
        digits[4..6].parse::<u8>(),
    ) else {
        return false;
    };
    let Ok(month) = Month::try_from(mm) else {
        return false;
    };
    // The century is not encoded: the date must exist in one of the two.
    let date_ok = [1900, 2000]
        .iter()
        .any(|c| Date::from_calendar_date(c + yy, month, dd).is_ok());
    // Digit 11 is the citizenship flag: 0 (citizen), 1 (permanent resident) or 2 (refugee).
    date_ok && matches!(digits.as_bytes()[10], b'0'..=b'2') && luhn_ok(digits)
}

impl NationalId {
    pub fn parse(kind: NationalIdKind, raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let number = match kind {
            NationalIdKind::Bvn | NationalIdKind::Nin => {
                if !all_digits(s, 11) {
                    return Err(format!("a {kind} must be 11 digits"));
                }
                s.to_owned()
            }
            NationalIdKind::Ssn => {
                let b = s.as_bytes();
                let dashed = b.len() == 11 && b[3] == b'-' && b[6] == b'-';
                let digits = if dashed {
                    s.replace('-', "")
                } else {
                    s.to_owned()
                };
                if !all_digits(&digits, 9) || (b.len() != 9 && !dashed) {
                    return Err("an SSN must be NNN-NN-NNNN or 9 digits".into());
                }
                if !valid_ssn(&digits) {
                    return Err("this is not an SSN that can be issued".into());
                }
                digits
            }
            NationalIdKind::ZaId => {
                if !all_digits(s, 13) || !valid_za_id(s) {
                    return Err(
                        "a ZA_ID must be 13 digits: a YYMMDD date, then 7 digits ending in a valid check digit"
                            .into(),
                    );
                }
                s.to_owned()
            }
            NationalIdKind::Passport => {
                let up = s.to_ascii_uppercase();
                if !(6..=9).contains(&up.len()) || !up.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err("a passport number must be 6 to 9 letters or digits".into());
                }
                up
            }
        };
        Ok(Self { kind, number })
    }

    pub fn kind(&self) -> NationalIdKind {
        self.kind
    }

    /// The normalised number (also what its blind index is computed from).
    pub fn number(&self) -> &str {
        &self.number
    }

    /// `***6789` (the last 4; the last 2 for numbers shorter than 8).
    pub fn mask(&self) -> String {
        let shown = if self.number.len() >= 8 { 4 } else { 2 };
        last_chars(&self.number, shown)
    }
}

/// The raw input of a national identifier.
#[derive(Clone, Default)]
pub struct NationalIdInput {
    pub kind: String,
    pub number: String,
}

/// Most national identifiers per customer.
pub const MAX_NATIONAL_IDS: usize = 10;

// ---------------------------------------------------------------- masked Debug and Display

macro_rules! masked_fmt {
    ($($t:ty => $name:literal),* $(,)?) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($name, "({})"), self.mask())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.mask())
            }
        }
    )*};
}

masked_fmt!(
    NamePart => "NamePart",
    Phone => "Phone",
    DateOfBirth => "DateOfBirth",
    NationalId => "NationalId",
);

impl AddressLine {
    fn mask(&self) -> String {
        MASK.into()
    }
}

impl PostalCode {
    fn mask(&self) -> String {
        MASK.into()
    }
}

masked_fmt!(AddressLine => "AddressLine", PostalCode => "PostalCode");

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Address({}, {}, {MASK})",
            self.city.as_str(),
            self.country
        )
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MASK}, {}, {}", self.city.as_str(), self.country)
    }
}

impl fmt::Debug for AddressText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AddressText([REDACTED])")
    }
}

// ---------------------------------------------------------------- the profile

/// A customer's personal data: sealed as one JSON value under the customer's data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerProfile {
    pub name: PersonName,
    #[serde(default)]
    pub email: Option<Email>,
    #[serde(default)]
    pub phone: Option<Phone>,
    #[serde(default)]
    pub date_of_birth: Option<DateOfBirth>,
    #[serde(default)]
    pub address: Option<Address>,
    #[serde(default)]
    pub nationality: Option<Country>,
    #[serde(default)]
    pub national_ids: Vec<NationalId>,
}

/// A profile as text, masked or revealed, for rendering. Its `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProfileText {
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub date_of_birth: Option<String>,
    pub address: Option<AddressText>,
    pub nationality: Option<String>,
    /// (type, number)
    pub national_ids: Vec<(String, String)>,
}

impl fmt::Debug for ProfileText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProfileText([REDACTED])")
    }
}

/// The blind-index field of the email.
pub const EMAIL_FIELD: &str = "email";
/// The blind-index field of the phone.
pub const PHONE_FIELD: &str = "phone";

impl CustomerProfile {
    /// Every value as masked text.
    pub fn masked(&self) -> ProfileText {
        ProfileText {
            first_name: self.name.first.mask(),
            last_name: self.name.last.mask(),
            email: self.email.as_ref().map(Email::masked),
            phone: self.phone.as_ref().map(Phone::mask),
            date_of_birth: self.date_of_birth.as_ref().map(DateOfBirth::mask),
            address: self.address.as_ref().map(Address::mask),
            nationality: self.nationality.map(|_| "**".to_owned()),
            national_ids: self
                .national_ids
                .iter()
                .map(|n| (n.kind.as_str().to_owned(), n.mask()))
                .collect(),
        }
    }

    /// Every value in full.
    pub fn revealed(&self) -> ProfileText {
        ProfileText {
            first_name: self.name.first.as_str().to_owned(),
            last_name: self.name.last.as_str().to_owned(),
            email: self.email.as_ref().map(|e| e.as_str().to_owned()),
            phone: self.phone.as_ref().map(|p| p.as_str().to_owned()),
            date_of_birth: self.date_of_birth.as_ref().map(DateOfBirth::as_iso),
            address: self.address.as_ref().map(Address::reveal),
            nationality: self.nationality.map(|c| c.to_string()),
            national_ids: self
                .national_ids
                .iter()
                .map(|n| (n.kind.as_str().to_owned(), n.number.clone()))
                .collect(),
        }
    }

    /// The exact-match look-ups this profile answers: (blind-index field, normalised value).
    pub fn lookups(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if let Some(e) = &self.email {
            v.push((EMAIL_FIELD.to_owned(), e.as_str().to_owned()));
        }
        if let Some(p) = &self.phone {
            v.push((PHONE_FIELD.to_owned(), p.as_str().to_owned()));
        }
        for n in &self.national_ids {
            v.push((n.kind.index_field(), n.number.clone()));
        }
        v.sort();
        v.dedup();
        v
    }

    /// The names of the fields that differ between two versions (never their values).
    pub fn changed_fields(old: Option<&Self>, new: Option<&Self>) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut cmp = |name: &'static str, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        cmp(
            "first_name",
            old.map(|p| &p.name.first) != new.map(|p| &p.name.first),
        );
        cmp(
            "last_name",
            old.map(|p| &p.name.last) != new.map(|p| &p.name.last),
        );
        cmp(
            "email",
            old.and_then(|p| p.email.as_ref()) != new.and_then(|p| p.email.as_ref()),
        );
        cmp(
            "phone",
            old.and_then(|p| p.phone.as_ref()) != new.and_then(|p| p.phone.as_ref()),
        );
        cmp(
            "date_of_birth",
            old.and_then(|p| p.date_of_birth) != new.and_then(|p| p.date_of_birth),
        );
        cmp(
            "address",
            old.and_then(|p| p.address.as_ref()) != new.and_then(|p| p.address.as_ref()),
        );
        cmp(
            "nationality",
            old.and_then(|p| p.nationality) != new.and_then(|p| p.nationality),
        );
        let no_ids: &[NationalId] = &[];
        cmp(
            "national_ids",
            old.map_or(no_ids, |p| &p.national_ids) != new.map_or(no_ids, |p| &p.national_ids),
        );
        changed
    }
}

// ---------------------------------------------------------------- input

/// A field of the input that could not be accepted. `param` is the request field (dotted, with
/// list indexes: `address.country`, `national_ids[1].number`); the message never repeats the
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub param: String,
    pub message: String,
    /// A required field is absent (rather than invalid).
    pub missing: bool,
}

impl FieldError {
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
            missing: false,
        }
    }

    fn missing(param: &str) -> Self {
        Self {
            param: param.to_owned(),
            message: format!("`{param}` is required when personal data is given"),
            missing: true,
        }
    }
}

/// The personal data of a creation or a rectification, as sent. Each field is `None` (leave as
/// it is), `Some(None)` (remove it) or `Some(Some(value))` (set it). It holds raw personal data
/// and so has no `Debug`.
#[derive(Clone, Default)]
pub struct ProfileInput {
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub date_of_birth: Option<Option<String>>,
    pub address: Option<Option<AddressInput>>,
    pub nationality: Option<Option<String>>,
    /// The whole list is replaced; `Some(None)` or an empty list removes every identifier.
    pub national_ids: Option<Option<Vec<NationalIdInput>>>,
}

impl ProfileInput {
    /// Whether no field is given at all.
    pub fn is_empty(&self) -> bool {
        self.first_name.is_none()
            && self.last_name.is_none()
            && self.email.is_none()
            && self.phone.is_none()
            && self.date_of_birth.is_none()
            && self.address.is_none()
            && self.nationality.is_none()
            && self.national_ids.is_none()
    }

    /// Validates every given field and applies them to `current`. A profile needs a first and a
    /// last name: they cannot be removed, and they are required as soon as any personal data
    /// is given. Returns `None` when there is no personal data at all.
    pub fn apply(
        &self,
        current: Option<&CustomerProfile>,
        now: Timestamp,
    ) -> Result<Option<CustomerProfile>, FieldError> {
        fn field<T>(
            v: &Option<Option<String>>,
            param: &str,
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<Option<T>>, FieldError> {
            match v {
                None => Ok(None),
                Some(None) => Ok(Some(None)),
                Some(Some(s)) => parse(s)
                    .map(|t| Some(Some(t)))
                    .map_err(|e| FieldError::invalid(param, e)),
            }
        }
        fn name(v: &Option<Option<String>>, param: &str) -> Result<Option<NamePart>, FieldError> {
            match field(v, param, NamePart::parse)? {
                Some(None) => Err(FieldError::invalid(
                    param,
                    "cannot be removed; a customer's personal data needs a name",
                )),
                Some(Some(n)) => Ok(Some(n)),
                None => Ok(None),
            }
        }
        fn merge<T: Clone>(change: Option<Option<T>>, old: Option<&T>) -> Option<T> {
            match change {
                None => old.cloned(),
                Some(v) => v,
            }
        }

        let first = name(&self.first_name, "first_name")?;
        let last = name(&self.last_name, "last_name")?;
        let email = field(&self.email, "email", Email::parse)?;
        let phone = field(&self.phone, "phone", Phone::parse)?;
        let dob = field(&self.date_of_birth, "date_of_birth", |s| {
            DateOfBirth::parse(s, now)
        })?;
        let address = match &self.address {
            None => None,
            Some(None) => Some(None),
            Some(Some(a)) => {
                Some(Some(Address::parse(a).map_err(|(part, e)| {
                    FieldError::invalid(format!("address.{part}"), e)
                })?))
            }
        };
        let nationality = field(&self.nationality, "nationality", Country::parse)?;
        let national_ids = match &self.national_ids {
            None => None,
            Some(None) => Some(Vec::new()),
            Some(Some(list)) => {
                if list.len() > MAX_NATIONAL_IDS {
                    return Err(FieldError::invalid(
                        "national_ids",
                        format!("at most {MAX_NATIONAL_IDS} identifiers"),
                    ));
                }
                let mut ids: Vec<NationalId> = Vec::with_capacity(list.len());
                for (i, n) in list.iter().enumerate() {
                    let kind = NationalIdKind::parse(&n.kind)
                        .map_err(|e| FieldError::invalid(format!("national_ids[{i}].type"), e))?;
                    let id = NationalId::parse(kind, &n.number)
                        .map_err(|e| FieldError::invalid(format!("national_ids[{i}].number"), e))?;
                    if ids.contains(&id) {
                        return Err(FieldError::invalid(
                            format!("national_ids[{i}].number"),
                            "this identifier is listed twice",
                        ));
                    }
                    ids.push(id);
                }
                Some(ids)
            }
        };

        let first = first.or_else(|| current.map(|p| p.name.first.clone()));
        let last = last.or_else(|| current.map(|p| p.name.last.clone()));
        let email = merge(email, current.and_then(|p| p.email.as_ref()));
        let phone = merge(phone, current.and_then(|p| p.phone.as_ref()));
        let date_of_birth = merge(dob, current.and_then(|p| p.date_of_birth.as_ref()));
        let address = merge(address, current.and_then(|p| p.address.as_ref()));
        let nationality = merge(nationality, current.and_then(|p| p.nationality.as_ref()));
        let national_ids = national_ids
            .unwrap_or_else(|| current.map(|p| p.national_ids.clone()).unwrap_or_default());

        let anything = first.is_some()
            || last.is_some()
            || email.is_some()
            || phone.is_some()
            || date_of_birth.is_some()
            || address.is_some()
            || nationality.is_some()
            || !national_ids.is_empty();
        if !anything {
            return Ok(None);
        }
        let first = first.ok_or_else(|| FieldError::missing("first_name"))?;
        let last = last.ok_or_else(|| FieldError::missing("last_name"))?;
        Ok(Some(CustomerProfile {
            name: PersonName { first, last },
            email,
            phone,
            date_of_birth,
            address,
            nationality,
            national_ids,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: fmt::Debug>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| unreachable!("{e:?}"))
    }

    /// 2026-06-15T12:00:00Z.
    fn now() -> Timestamp {
        Timestamp::from_unix_seconds(1_781_524_800)
    }

    #[test]
    fn names_are_letters_and_mask_to_an_initial() {
        let n = ok(NamePart::parse("  Mary   Ann "));
        assert_eq!(n.as_str(), "Mary Ann");
        assert_eq!(n.mask(), "M***");
        for good in [
            "O'Brien",
            "Jean-Luc",
            "Chukwuemeka",
            "Ngọc",
            "Zoë",
            "St. John",
            "Łukasz",
        ] {
            assert!(NamePart::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "   ",
            "R2D2",
            "a<script>",
            "--",
            "x\u{0}y",
            &"a".repeat(101),
        ] {
            assert!(NamePart::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{n:?} {n}").contains("Mary"));
    }

    #[test]
    fn phones_are_e164_and_mask_to_the_last_four() {
        let p = ok(Phone::parse(" +234 (803) 123-4567 "));
        assert_eq!(p.as_str(), "+2348031234567");
        assert_eq!(p.mask(), "***4567");
        assert!(Phone::parse("+12345678").is_ok());
        assert!(Phone::parse("+123456789012345").is_ok());
        for bad in [
            "",
            "2348031234567",
            "+1234567",
            "+1234567890123456",
            "+0234567890",
            "+234 803 CALL ME",
            "++2348031234567",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{p:?} {p}").contains("803123"));
    }

    #[test]
    fn dates_of_birth_are_iso_dates_in_the_past_and_mask_entirely() {
        let d = ok(DateOfBirth::parse("1990-02-28", now()));
        assert_eq!(d.as_iso(), "1990-02-28");
        assert_eq!(d.mask(), "****-**-**");
        assert!(!format!("{d:?} {d}").contains("1990"));
        assert!(DateOfBirth::parse("2026-06-14", now()).is_ok());
        assert!(DateOfBirth::parse("1896-01-01", now()).is_ok());
        for bad in [
            "2026-06-15", // today
            "2030-01-01", // the future
            "1895-12-31", // more than 130 years ago
            "1990-02-30",
            "1990-2-28",
            "28/02/1990",
            "1990-02-28T00:00:00Z",
            "",
        ] {
            assert!(DateOfBirth::parse(bad, now()).is_err(), "{bad}");
        }
        // Stored values round-trip without the clock.
        let json = ok(serde_json::to_string(&d));
        assert_eq!(json, "\"1990-02-28\"");
        assert_eq!(ok(serde_json::from_str::<DateOfBirth>(&json)), d);
    }

    fn address() -> AddressInput {
        AddressInput {
            line1: "12 Marina Road".into(),
            line2: Some("Flat 3".into()),
            city: "Lagos".into(),
            region: Some("Lagos State".into()),
            postal_code: Some("101241".into()),
            country: "ng".into(),
        }
    }

    #[test]
    fn addresses_parse_each_part_and_mask_to_city_and_country() {
        let a = ok(Address::parse(&address()));
        assert_eq!(a.country.as_str(), "NG");
        let m = a.mask();
        assert_eq!(m.line1, "***");
        assert_eq!(m.line2.as_deref(), Some("***"));
        assert_eq!(m.city, "Lagos");
        assert_eq!(m.region.as_deref(), Some("***"));
        assert_eq!(m.postal_code.as_deref(), Some("***"));
        assert_eq!(m.country, "NG");
        assert_eq!(a.reveal().line1, "12 Marina Road");
        assert!(!format!("{a:?} {a} {m:?}").contains("Marina"));
        let bad = |f: fn(&mut AddressInput)| {
            let mut i = address();
            f(&mut i);
            Address::parse(&i).map(|_| ()).map_err(|(p, _)| p)
        };
        assert_eq!(bad(|i| i.line1 = " ".into()), Err("line1"));
        assert_eq!(bad(|i| i.line2 = Some("a\nb".into())), Err("line2"));
        assert_eq!(bad(|i| i.city = String::new()), Err("city"));
        assert_eq!(bad(|i| i.region = Some("x".repeat(101))), Err("region"));
        assert_eq!(
            bad(|i| i.postal_code = Some("#1".into())),
            Err("postal_code")
        );
        assert_eq!(bad(|i| i.country = "Nigeria".into()), Err("country"));
    }

    #[test]
    fn national_ids_follow_the_format_of_their_kind() {
        use NationalIdKind as K;
        let good = [
            (K::Bvn, "22123456789", "22123456789", "***6789"),
            (K::Nin, " 12345678901 ", "12345678901", "***8901"),
            (K::Ssn, "123-45-6789", "123456789", "***6789"),
            (K::Ssn, "123456789", "123456789", "***6789"),
            (K::ZaId, "8001015009087", "8001015009087", "***9087"),
            (K::Passport, "a1234567", "A1234567", "***4567"),
            (K::Passport, "AB1234", "AB1234", "***34"),
        ];
        for (kind, raw, normalised, mask) in good {
            let n = ok(NationalId::parse(kind, raw));
            assert_eq!(n.number(), normalised);
            assert_eq!(n.mask(), mask);
            assert!(!format!("{n:?} {n}").contains(normalised));
        }
        let bad = [
            (K::Bvn, "2212345678"),
            (K::Bvn, "221234567890"),
            (K::Bvn, "2212345678a"),
            (K::Nin, "1234-5678901"),
            (K::Ssn, "000-12-3456"),
            (K::Ssn, "666-12-3456"),
            (K::Ssn, "912-34-5678"),
            (K::Ssn, "123-00-4567"),
            (K::Ssn, "123-45-0000"),
            (K::Ssn, "12-345-6789"),
            (K::Ssn, "1234567890"),
            (K::ZaId, "8001015009088"), // check digit
            (K::ZaId, "8013015009087"), // month 13
            (K::ZaId, "800101500908"),
            (K::Passport, "A1234"),
            (K::Passport, "A12345678X"),
            (K::Passport, "A123-456"),
        ];
        for (kind, raw) in bad {
            assert!(NationalId::parse(kind, raw).is_err(), "{kind} {raw}");
        }
        assert_eq!(NationalIdKind::parse("bvn"), Ok(K::Bvn));
        assert_eq!(NationalIdKind::parse("ZA_ID"), Ok(K::ZaId));
        assert!(NationalIdKind::parse("DRIVING_LICENCE").is_err());
        assert_eq!(K::Nin.index_field(), "national_id:NIN");
    }

    fn full_input() -> ProfileInput {
        ProfileInput {
            first_name: Some(Some("Jane".into())),
            last_name: Some(Some("Doe".into())),
            email: Some(Some("Jane.Doe@Example.com".into())),
            phone: Some(Some("+2348031234567".into())),
            date_of_birth: Some(Some("1990-02-28".into())),
            address: Some(Some(address())),
            nationality: Some(Some("NG".into())),
            national_ids: Some(Some(vec![
                NationalIdInput {
                    kind: "BVN".into(),
                    number: "22123456789".into(),
                },
                NationalIdInput {
                    kind: "passport".into(),
                    number: "a1234567".into(),
                },
            ])),
        }
    }

    #[test]
    fn a_profile_masks_every_field_and_never_prints_a_value() {
        let p = ok(full_input().apply(None, now())).unwrap_or_else(|| unreachable!());
        let m = p.masked();
        assert_eq!(m.first_name, "J***");
        assert_eq!(m.last_name, "D***");
        assert_eq!(m.email.as_deref(), Some("j***@example.com"));
        assert_eq!(m.phone.as_deref(), Some("***4567"));
        assert_eq!(m.date_of_birth.as_deref(), Some("****-**-**"));
        assert_eq!(m.nationality.as_deref(), Some("**"));
        assert_eq!(
            m.national_ids,
            vec![
                ("BVN".into(), "***6789".into()),
                ("PASSPORT".into(), "***4567".into())
            ]
        );
        let r = p.revealed();
        assert_eq!(r.email.as_deref(), Some("jane.doe@example.com"));
        assert_eq!(r.national_ids[1].1, "A1234567");
        let debug = format!("{p:?} {m:?} {r:?}");
        for secret in [
            "Jane",
            "jane.doe",
            "8031234567",
            "1990",
            "Marina",
            "22123456789",
            "A1234567",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        // The sealed form round-trips.
        let json = ok(serde_json::to_string(&p));
        assert_eq!(ok(serde_json::from_str::<CustomerProfile>(&json)), p);
        assert_eq!(
            p.lookups(),
            vec![
                ("email".to_owned(), "jane.doe@example.com".to_owned()),
                ("national_id:BVN".to_owned(), "22123456789".to_owned()),
                ("national_id:PASSPORT".to_owned(), "A1234567".to_owned()),
                ("phone".to_owned(), "+2348031234567".to_owned()),
            ]
        );
    }

    #[test]
    fn input_errors_name_the_field() {
        let err = |f: fn(&mut ProfileInput)| {
            let mut i = full_input();
            f(&mut i);
            i.apply(None, now()).map(|_| ()).map_err(|e| e.param)
        };
        assert_eq!(err(|_| {}), Ok(()));
        assert_eq!(
            err(|i| i.first_name = Some(Some("1".into()))),
            Err("first_name".into())
        );
        assert_eq!(err(|i| i.last_name = Some(None)), Err("last_name".into()));
        assert_eq!(
            err(|i| i.email = Some(Some("nope".into()))),
            Err("email".into())
        );
        assert_eq!(
            err(|i| i.phone = Some(Some("0803".into()))),
            Err("phone".into())
        );
        assert_eq!(
            err(|i| i.date_of_birth = Some(Some("2999-01-01".into()))),
            Err("date_of_birth".into())
        );
        assert_eq!(
            err(|i| i.address = Some(Some(AddressInput {
                country: "XX".into(),
                ..address()
            }))),
            Err("address.country".into())
        );
        assert_eq!(
            err(|i| i.nationality = Some(Some("NGA".into()))),
            Err("nationality".into())
        );
        assert_eq!(
            err(|i| i.national_ids = Some(Some(vec![NationalIdInput {
                kind: "SSN".into(),
                number: "666-12-3456".into(),
            }]))),
            Err("national_ids[0].number".into())
        );
        assert_eq!(
            err(|i| i.national_ids = Some(Some(vec![
                NationalIdInput {
                    kind: "NIN".into(),
                    number: "12345678901".into(),
                },
                NationalIdInput {
                    kind: "TAX".into(),
                    number: "1".into(),
                },
            ]))),
            Err("national_ids[1].type".into())
        );
        // Personal data without a name.
        let only_email = ProfileInput {
            email: Some(Some("a@example.com".into())),
            ..ProfileInput::default()
        };
        let e = only_email.apply(None, now());
        assert!(
            matches!(e, Err(FieldError { ref param, missing: true, .. }) if param == "first_name")
        );
        // No personal data at all is no profile.
        assert_eq!(ProfileInput::default().apply(None, now()), Ok(None));
    }

    #[test]
    fn a_rectification_changes_only_what_it_names() {
        let p = ok(full_input().apply(None, now())).unwrap_or_else(|| unreachable!());
        let change = ProfileInput {
            email: Some(Some("new@example.com".into())),
            phone: Some(None),
            ..ProfileInput::default()
        };
        let q = ok(change.apply(Some(&p), now())).unwrap_or_else(|| unreachable!());
        assert_eq!(q.email.as_ref().map(Email::as_str), Some("new@example.com"));
        assert_eq!(q.phone, None);
        assert_eq!(q.name, p.name);
        assert_eq!(q.national_ids, p.national_ids);
        assert_eq!(
            CustomerProfile::changed_fields(Some(&p), Some(&q)),
            vec!["email", "phone"]
        );
        assert!(CustomerProfile::changed_fields(Some(&p), Some(&p)).is_empty());
        assert_eq!(
            CustomerProfile::changed_fields(None, Some(&p)).len(),
            8,
            "every field is new"
        );
    }
}
