//! The pure heart of identity-sync: validated values, the inbound login event, the decision and
//! the outbound event formats. Nothing here performs I/O or knows about the broker, the database or
//! HTTP, so every rule can be unit tested on its own.

/// A closed set of values, each with its text form: `as_str`, `parse`, `FromStr` (an error
/// listing the values), `Display`, serde, and `ALL` in declaration order.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        ///
        /// JSON carries it in its text form (`as_str`), which `parse` and `FromStr` read back.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
            schemars::JsonSchema,
        )]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The value of a text form.
            pub fn parse(raw: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == raw)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(raw: &str) -> Result<Self, String> {
                Self::parse(raw).ok_or_else(|| {
                    format!("{raw:?} is not one of {}", [$($text),+].join(", "))
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod account;
pub mod attributes;
pub mod command;
pub mod connection;
pub mod decision;
pub mod directory;
pub mod effects;
pub mod email;
pub mod events;
pub mod field;
pub mod identifier;
pub mod import;
pub mod leavers;
pub mod login;
pub mod mapping;
pub mod mask;
pub mod message;
pub mod phone;
pub mod presets;
#[cfg(test)]
mod proptests;
pub mod resolution;
pub mod schemas;
pub mod simulation;
pub mod strict_json;
pub mod username;
pub mod webhooks;

pub use connection::{
    Association, ConnectionId, ConnectionSettings, LoginMode, MatchField, MatchKey, MatchRule,
};
pub use email::Email;
pub use phone::{CountryCode, Phone};
pub use username::Username;

/// Why a text is not a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    /// Neither an RFC 3339 time nor a duration.
    NotATime,
    /// A duration back from now that reaches before the clock's range.
    TooFarBack,
}

/// A point in time as operators write one: an RFC 3339 time, or a duration back from `now`
/// (`2h`, `7d`).
pub fn time_or_age(
    raw: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, TimeError> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    let age = humantime::parse_duration(raw).map_err(|_| TimeError::NotATime)?;
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .ok_or(TimeError::TooFarBack)
}
