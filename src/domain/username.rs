//! Usernames as the contract normalises them: trimmed and lowercased.

use std::fmt;

const MAX_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("username is empty")]
    Empty,
    #[error("username is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("username must not contain control characters")]
    Characters,
}

impl Username {
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
        Ok(Self(trimmed.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    fn rejects_empty_control_and_overlong() {
        assert_eq!(Username::parse("   "), Err(UsernameError::Empty));
        assert_eq!(Username::parse("a\u{0}b"), Err(UsernameError::Characters));
        assert_eq!(
            Username::parse(&"x".repeat(129)),
            Err(UsernameError::TooLong)
        );
    }
}
