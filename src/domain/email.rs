//! Email addresses as the contract normalises them: trimmed, one `@` with text on both sides, the
//! local part in the identifier canonical form and the domain IDNA-mapped (`identifier`).
//! Deliberately no deeper RFC 5322 check: identity sources disagree about the edge cases and the
//! contract only asks that the same address always normalises to the same string.

use std::fmt;

use super::identifier;

/// Longest address accepted (RFC 5321 path limit).
const MAX_LEN: usize = 254;

/// An email address in canonical form: `local@domain`, the local part trimmed, NFC and
/// case-folded, the domain IDNA-mapped (`Zhang.San@Example.COM` is `zhang.san@example.com`).
/// Serialises as its canonical text; never deserialised (a value from outside is parsed).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Email(String);

/// Why a text is not a usable email address. In a login this only makes the email unusable
/// (malformed); for an admin's or an import's value it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Nothing but whitespace.
    #[error("email is empty")]
    Empty,
    /// Over 254 bytes once trimmed.
    #[error("email is longer than {MAX_LEN} characters")]
    TooLong,
    /// No `@`, more than one, or nothing on one side of it.
    #[error("email must contain exactly one '@' with text on both sides")]
    Shape,
    /// Whitespace or a control character inside the address.
    #[error("email must not contain whitespace or control characters")]
    Characters,
    /// A lookalike of another address (see `identifier`); only `parse_strict` refuses it.
    #[error("email has characters that pass for others (a lookalike of another address)")]
    Suspicious,
}

impl Email {
    /// The canonical form of `raw`, and whether `raw` is suspicious (see `identifier`).
    pub fn parse_checked(raw: &str) -> Result<(Self, bool), EmailError> {
        let email = Self::parse(raw)?;
        let trimmed = raw.trim();
        let (local, domain) = trimmed.split_once('@').expect("parse checked the shape");
        Ok((email, identifier::is_suspicious_email(local, domain)))
    }

    /// For values an admin or an import supplies: a suspicious value is refused, since its
    /// canonical form could be another person's address.
    pub fn parse_strict(raw: &str) -> Result<Self, EmailError> {
        match Self::parse_checked(raw)? {
            (_, true) => Err(EmailError::Suspicious),
            (email, false) => Ok(email),
        }
    }

    /// A value read back from storage, where only canonical values are written.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The domain, after the `@`.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }

    /// The canonical form of `raw` (suspicious or not).
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        if trimmed.len() > MAX_LEN {
            return Err(EmailError::TooLong);
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EmailError::Characters);
        }
        let mut parts = trimmed.split('@');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(local), Some(domain), None) if !local.is_empty() && !domain.is_empty() => {
                // IDNA mapping can make what it reads into something no address holds: U+00A8
                // becomes a space and a combining mark, U+FF20 an `@`. The canonical form must
                // itself be an address, or the same text would not parse to the same value twice.
                let domain = identifier::canonical_domain(domain);
                if domain.contains(|c: char| c == '@' || c.is_whitespace() || c.is_control()) {
                    return Err(EmailError::Characters);
                }
                Ok(Self(format!("{}@{domain}", identifier::canonical(local))))
            }
            _ => Err(EmailError::Shape),
        }
    }

    /// The canonical text, as stored and as compared.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical text, taken out of the value.
    pub fn into_inner(self) -> String {
        self.0
    }

    /// `z***@example.com`: enough for an admin to recognise, not enough to harvest.
    pub fn masked(&self) -> String {
        crate::domain::mask::email(&self.0)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read as the canonical text it holds.
impl std::ops::Deref for Email {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_lowercases() {
        let email = Email::parse("  Zhang.San@Example.COM \t").unwrap();
        assert_eq!(email.as_str(), "zhang.san@example.com");
    }

    #[test]
    fn keeps_unicode_and_lowercases_it() {
        assert_eq!(
            Email::parse("ÄBC@Bücher.DE").unwrap().as_str(),
            "äbc@bücher.de"
        );
    }

    #[test]
    fn rejects_malformed_addresses() {
        for raw in [
            "",
            "   ",
            "no-at-sign",
            "@example.com",
            "user@",
            "a@b@c",
            "a b@c.d",
            "a@\u{7}c",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} should be rejected");
        }
    }

    #[test]
    fn refuses_a_domain_whose_mapping_is_no_domain() {
        // U+00A8 maps to a space and U+0308; U+FF20 to `@`.
        assert_eq!(Email::parse("0@\u{a8}"), Err(EmailError::Characters));
        assert_eq!(
            Email::parse("a@b\u{ff20}c.example"),
            Err(EmailError::Characters)
        );
    }

    #[test]
    fn rejects_overlong_addresses() {
        let raw = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&raw), Err(EmailError::TooLong));
    }

    #[test]
    fn idn_domains_are_one_domain_whatever_their_spelling() {
        let ascii = idna::domain_to_ascii("例子.公司").unwrap();
        assert_eq!(
            Email::parse(&format!("Zhāng@{}", ascii.to_uppercase())).unwrap(),
            Email::parse("zhāng@例子.公司").unwrap()
        );
    }

    #[test]
    fn lookalikes_are_flagged_and_refused_where_strict() {
        let (email, suspicious) = Email::parse_checked("\u{212A}evin@corp.example").unwrap();
        assert!(suspicious);
        assert_eq!(
            email.as_str(),
            "kevin@corp.example",
            "its canonical form is another's"
        );
        assert_eq!(
            Email::parse_strict("\u{212A}evin@corp.example"),
            Err(EmailError::Suspicious)
        );
        assert!(!Email::parse_checked("zhāng@例子.公司").unwrap().1);
        assert_eq!(Email::parse("a@b.example").unwrap().domain(), "b.example");
    }

    #[test]
    fn accepts_minimal_address() {
        assert_eq!(Email::parse("a@b").unwrap().as_str(), "a@b");
    }
}
