//! Usernames as the contract normalises them: the identifier canonical form (trimmed, NFC,
//! lowercased; see `identifier`).

use std::fmt;

use super::identifier;

const MAX_LEN: usize = 128;

/// A username in canonical form (trimmed, NFC, case-folded: `ZhangSan` is `zhangsan`), 1 to 128
/// characters without control characters. Serialises as its canonical text; never deserialised
/// (a value from outside is parsed).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Username(String);

/// Why a text is not a usable username. In a login this only makes the username unusable
/// (malformed); for an admin's or an import's value it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Nothing but whitespace.
    #[error("username is empty")]
    Empty,
    /// Over 128 characters once trimmed.
    #[error("username is longer than {MAX_LEN} characters")]
    TooLong,
    /// A control character inside the name.
    #[error("username must not contain control characters")]
    Characters,
    /// A lookalike of another username (see `identifier`); only `parse_strict` refuses it.
    #[error("username has characters that pass for others (a lookalike of another username)")]
    Suspicious,
}

impl Username {
    /// The canonical form of `raw` (suspicious or not): trimmed, 1 to 128 characters, no control
    /// characters.
    pub fn parse(raw: &str) -> Result<Self, UsernameError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(UsernameError::Empty);
        }
        if trimmed.chars().count() > MAX_LEN {
            return Err(UsernameError::TooLong);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(UsernameError::Characters);
        }
        Ok(Self(identifier::canonical(trimmed)))
    }

    /// The canonical form of `raw`, and whether `raw` is suspicious (see `identifier`).
    pub fn parse_checked(raw: &str) -> Result<(Self, bool), UsernameError> {
        Ok((Self::parse(raw)?, identifier::is_suspicious(raw)))
    }

    /// For values an admin or an import supplies: a suspicious value is refused.
    pub fn parse_strict(raw: &str) -> Result<Self, UsernameError> {
        match Self::parse_checked(raw)? {
            (_, true) => Err(UsernameError::Suspicious),
            (username, false) => Ok(username),
        }
    }

    /// A value read back from storage, where only canonical values are written.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The canonical text, as stored and as compared.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical text, taken out of the value.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read as the canonical text it holds.
impl std::ops::Deref for Username {
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
        assert_eq!(Username::parse("  ZhangSan ").unwrap().as_str(), "zhangsan");
    }

    #[test]
    fn the_kelvin_sign_is_a_suspicious_kevin() {
        let (username, suspicious) = Username::parse_checked("\u{212A}evin").unwrap();
        assert!(suspicious);
        assert_eq!(username.as_str(), "kevin");
        assert_eq!(
            Username::parse_strict("\u{212A}evin"),
            Err(UsernameError::Suspicious)
        );
        assert_eq!(Username::parse_strict("张三").unwrap().as_str(), "张三");
    }

    #[test]
    fn rejects_empty_control_and_overlong() {
        assert_eq!(Username::parse("   "), Err(UsernameError::Empty));
        assert_eq!(Username::parse("a\u{0}b"), Err(UsernameError::Characters));
        assert_eq!(
            Username::parse(&"x".repeat(129)),
            Err(UsernameError::TooLong)
        );
    }
}
