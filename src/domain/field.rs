//! The fields a connection names: an account's standard identifiers and its attributes, as
//! `match_fields`, mapping targets and evidence name them; and the error of a setting that names
//! a bad one. (Apart from `connection`, which the mapping also reads them from.)

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::attributes::AttributeName;

text_enum!(
    /// An account field compared during association, in canonical form: `email`, `phone`
    /// (E.164) or `username`. Also names the fields of a decision's evidence.
    MatchField { Email => "email", Phone => "phone", Username => "username" }
);

/// Where `match_fields` and mapping targets name account attributes: `attributes.<name>`.
pub const ATTRIBUTE_PREFIX: &str = "attributes.";

/// A field compared during association: one of the account's standard identifiers, or one of its
/// attributes (`attributes.employee_id`). Also names the fields of a decision's evidence and a
/// link's `matched_on`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MatchKey {
    /// `email`, `phone` or `username`.
    Field(MatchField),
    /// `attributes.<name>`.
    Attribute(AttributeName),
}

impl MatchKey {
    /// The attribute's name, for an attribute.
    pub fn attribute(&self) -> Option<&AttributeName> {
        match self {
            Self::Attribute(name) => Some(name),
            Self::Field(_) => None,
        }
    }

    /// The standard field, for one of `email`, `phone`, `username`.
    pub fn field(&self) -> Option<MatchField> {
        match self {
            Self::Field(field) => Some(*field),
            Self::Attribute(_) => None,
        }
    }
}

impl schemars::JsonSchema for MatchKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MatchKey".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(email|phone|username|attributes\\.[A-Za-z0-9_-]{1,64})$"
        })
    }
}

impl PartialEq<MatchField> for MatchKey {
    fn eq(&self, other: &MatchField) -> bool {
        self.field() == Some(*other)
    }
}

impl From<MatchField> for MatchKey {
    fn from(field: MatchField) -> Self {
        Self::Field(field)
    }
}

impl FromStr for MatchKey {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        match raw.strip_prefix(ATTRIBUTE_PREFIX) {
            Some(name) => Ok(Self::Attribute(AttributeName::parse(name)?)),
            None => raw.parse().map(Self::Field).map_err(|_| {
                format!("{raw:?} is not one of email, phone, username, attributes.<name>")
            }),
        }
    }
}

impl fmt::Display for MatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(field) => f.write_str(field.as_str()),
            Self::Attribute(name) => write!(f, "{ATTRIBUTE_PREFIX}{name}"),
        }
    }
}

impl Serialize for MatchKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MatchKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A validation failure that names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The setting at fault, named as in the spec (`match_fields`, `binding_ttl`).
    pub field: &'static str,
    /// What is wrong with it, for people (the admin API's 422 and the configuration error).
    pub message: String,
}

impl FieldError {
    /// A failure of `field`, explained by `message`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
