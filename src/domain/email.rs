//! Email addresses as the contract normalises them: trimmed, lowercased, one `@` with text on both
//! sides. Deliberately no deeper RFC 5322 check: identity sources disagree about the edge cases and
//! the contract only asks that the same address always normalises to the same string.

use std::fmt;

/// Longest address accepted (RFC 5321 path limit).
const MAX_LEN: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email is empty")]
    Empty,
    #[error("email is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("email must contain exactly one '@' with text on both sides")]
    Shape,
    #[error("email must not contain whitespace or control characters")]
    Characters,
}

impl Email {
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
                Ok(Self(trimmed.to_lowercase()))
            }
            _ => Err(EmailError::Shape),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

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
    fn rejects_overlong_addresses() {
        let raw = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&raw), Err(EmailError::TooLong));
    }

    #[test]
    fn accepts_minimal_address() {
        assert_eq!(Email::parse("a@b").unwrap().as_str(), "a@b");
    }
}
