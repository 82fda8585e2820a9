//! Phone numbers normalised to E.164 (`+8613800138000`) with the `phonenumber` crate (Google's
//! libphonenumber metadata). A number given without `+` is read in the national format of the
//! connection's default country code; without one, such a number is not usable.

use std::fmt;

use phonenumber::{Mode, country};

/// Longer input than this is not a phone number, whatever it is; refusing early keeps the parser's
/// work bounded on hostile input.
const MAX_INPUT_LEN: usize = 64;

/// A phone number libphonenumber considers valid, in E.164 form (`+8613800138000`: `+`, the
/// calling code and the national number, no spaces). Serialises as its canonical text; never
/// deserialised (a value from outside is parsed).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Phone(String);

/// Why a text is not a usable phone number. In a login this only makes the phone unusable
/// (malformed); for an admin's or an import's value it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Nothing but whitespace.
    #[error("phone is empty")]
    Empty,
    /// Over 64 bytes once trimmed: refused before parsing.
    #[error("phone is longer than {MAX_INPUT_LEN} characters")]
    TooLong,
    /// A national number (no leading `+`) and no default country code to read it with.
    #[error("phone has no '+' country code and the connection has no default country code")]
    NoCountryCode,
    /// Not a number, or not one libphonenumber considers valid for its region.
    #[error("phone is not a valid number")]
    Invalid,
}

impl Phone {
    /// Normalises `raw` to E.164: with a leading `+` it is read as an international number,
    /// otherwise in the national format of `default_country`'s region (trunk prefixes such as the
    /// UK's leading 0 dropped). Spaces and punctuation are ignored.
    pub fn parse(raw: &str, default_country: Option<&CountryCode>) -> Result<Self, PhoneError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        if trimmed.len() > MAX_INPUT_LEN {
            return Err(PhoneError::TooLong);
        }
        let region = if trimmed.starts_with('+') {
            None
        } else {
            let code = default_country.ok_or(PhoneError::NoCountryCode)?;
            Some(code.region())
        };
        let number = phonenumber::parse(region, trimmed).map_err(|_| PhoneError::Invalid)?;
        if !phonenumber::is_valid(&number) {
            return Err(PhoneError::Invalid);
        }
        Ok(Self(number.format().mode(Mode::E164).to_string()))
    }

    /// An already normalised E.164 value read back from storage.
    pub fn from_e164(value: String) -> Self {
        Self(value)
    }

    /// The E.164 text, as stored and as compared.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The E.164 text, taken out of the value.
    pub fn into_inner(self) -> String {
        self.0
    }

    /// `+86*******8000`: the `+` with the next two digits and the last four digits stay, enough
    /// for an admin to recognise the number, not enough to harvest it.
    pub fn masked(&self) -> String {
        crate::domain::mask::phone(&self.0)
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The main region of a calling code (`86` -> `CN`, `1` -> `US`), used to read national numbers.
pub(crate) fn region_for_calling_code(code: u16) -> Option<country::Id> {
    let regions = phonenumber::metadata::DATABASE.region(&code)?;
    regions.first()?.parse().ok()
}

/// A calling code such as `86`, with the region used to read national numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountryCode {
    code: u16,
    region: phonenumber::country::Id,
}

impl CountryCode {
    /// Accepts `86` or `+86`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let digits = raw.trim().trim_start_matches('+');
        let code: u16 = digits
            .parse()
            .ok()
            .filter(|_| (1..=3).contains(&digits.len()))
            .ok_or_else(|| format!("{raw:?} is not a calling code (1 to 3 digits, e.g. \"86\")"))?;
        let region = region_for_calling_code(code)
            .ok_or_else(|| format!("{raw:?} is not a known calling code"))?;
        Ok(Self { code, region })
    }

    /// The calling code as a number (`86`, without `+`).
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The region national numbers are read in (`CN` for `86`, `US` for `1`).
    pub(crate) fn region(&self) -> phonenumber::country::Id {
        self.region
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)
    }
}

/// Read as the canonical text it holds.
impl std::ops::Deref for Phone {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(code: &str) -> CountryCode {
        CountryCode::parse(code).unwrap()
    }

    #[test]
    fn international_number_is_normalised() {
        let phone = Phone::parse("+86 138 0013 8000", None).unwrap();
        assert_eq!(phone.as_str(), "+8613800138000");
    }

    #[test]
    fn national_number_uses_the_default_country_code() {
        let phone = Phone::parse("138 0013 8000", Some(&cc("86"))).unwrap();
        assert_eq!(phone.as_str(), "+8613800138000");
    }

    #[test]
    fn national_trunk_prefix_is_dropped() {
        let phone = Phone::parse("020 7946 0958", Some(&cc("44"))).unwrap();
        assert_eq!(phone.as_str(), "+442079460958");
    }

    #[test]
    fn plus_wins_over_the_default_country_code() {
        let phone = Phone::parse("+1 415 555 2671", Some(&cc("86"))).unwrap();
        assert_eq!(phone.as_str(), "+14155552671");
    }

    #[test]
    fn punctuation_is_ignored() {
        let phone = Phone::parse("(415) 555-2671", Some(&cc("1"))).unwrap();
        assert_eq!(phone.as_str(), "+14155552671");
    }

    #[test]
    fn national_number_without_default_is_unusable() {
        assert_eq!(
            Phone::parse("138 0013 8000", None),
            Err(PhoneError::NoCountryCode)
        );
    }

    #[test]
    fn malformed_numbers_are_rejected() {
        for raw in ["", "  ", "abc", "+", "+86 12", "+999 1234567", "138"] {
            assert!(
                Phone::parse(raw, Some(&cc("86"))).is_err(),
                "{raw:?} should be rejected"
            );
        }
    }

    #[test]
    fn overlong_input_is_rejected_before_parsing() {
        let raw = "1".repeat(10_000);
        assert_eq!(
            Phone::parse(&raw, Some(&cc("86"))),
            Err(PhoneError::TooLong)
        );
    }

    #[test]
    fn calling_code_maps_to_main_region() {
        assert_eq!(region_for_calling_code(86), Some(country::Id::CN));
        assert_eq!(region_for_calling_code(1), Some(country::Id::US));
        assert_eq!(region_for_calling_code(999), None);
    }
}
