//! The pure heart of identity-sync: validated values, the inbound login event, the decision and
//! the outbound event formats. Nothing here performs I/O or knows about the broker, the database or
//! HTTP, so every rule can be unit tested on its own.

pub mod connection;
pub mod decision;
pub mod effects;
pub mod email;
pub mod events;
pub mod identifier;
pub mod login;
pub mod mask;
pub mod phone;
#[cfg(test)]
mod proptests;
pub mod resolution;
pub mod strict_json;
pub mod username;

pub use connection::{
    Association, ConnectionId, ConnectionSettings, CountryCode, LoginMode, MatchField,
};
pub use email::Email;
pub use phone::Phone;
pub use username::Username;
