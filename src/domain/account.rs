//! An account as stored, as the events show it, and as a linked identity's drift is judged
//! against.

use serde::Serialize;
use uuid::Uuid;

use super::attributes::Attributes;
use super::{Email, Phone, Username};

/// An account as `user.created` and `user.updated` show it: its values after the change, in
/// canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct UserSummary {
    /// The account's id.
    pub id: Uuid,
    /// The account's email, canonical; `None` when it has none.
    pub email: Option<Email>,
    /// The account's phone number in E.164; `None` when it has none.
    pub phone: Option<Phone>,
    /// The account's username, canonical; `None` when it has none.
    pub username: Option<Username>,
    /// The account's display name as given; `None` when it has none.
    pub name: Option<String>,
    /// The account's attributes (`{}` when it has none).
    pub attributes: Attributes,
}

/// A whole user row (as written: the values serialise as their canonical text).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRecord {
    pub id: Uuid,
    pub user_pool_id: String,
    pub email: Option<Email>,
    pub email_verified: bool,
    pub phone: Option<Phone>,
    pub phone_verified: bool,
    pub username: Option<Username>,
    pub name: Option<String>,
    /// Never linked automatically.
    pub protected: bool,
    pub attributes: Attributes,
}
