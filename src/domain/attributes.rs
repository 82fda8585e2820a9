//! Account attributes (contract section 9): a JSON object of string values such as
//! `{"employee_id": "E1024"}`, set by import and the admin API or mapped from a login's profile,
//! matched on by connections that name them in `match_fields`, and unique inside a pool when a
//! connection lists them in `unique_attributes`.
//!
//! Names are ASCII letters, digits, `_` and `-`, 1 to 64 characters, compared exactly. Values are
//! trimmed and put in Unicode NFC, 1 to 256 characters without control characters, and compared
//! exactly after that (`E1024` and `e1024` are different employee numbers). A login's value with
//! characters that pass for others (see `identifier`) is suspicious: it never links and is never
//! copied onto an account.
//!
//! Where a pool promises uniqueness, values that look the same are one value: two accounts never
//! hold values of a unique attribute with the same UTS #39 skeleton ([`skeleton`]: `E1024` and
//! `Е1024` with a Cyrillic `Е`, or `EIO24`), whichever path writes them. The database computes
//! the same skeleton (the table of `migrations/*_attribute_skeletons.sql`, generated from the
//! crate this function uses) and holds it unique.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use super::identifier;

const MAX_NAME_LEN: usize = 64;
const MAX_VALUE_CHARS: usize = 256;
/// Most attributes one account holds: attributes describe a person, they are not a data store.
pub const MAX_ATTRIBUTES: usize = 64;

/// An attribute's name (`employee_id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AttributeName(String);

impl AttributeName {
    /// Accepts 1 to 64 ASCII letters, digits, `_` and `-`, exactly as given.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok_len = (1..=MAX_NAME_LEN).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok_len && ok_chars {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not an attribute name (ASCII letters, digits, '_' and '-', 1 to \
                 {MAX_NAME_LEN} characters)"
            ))
        }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl schemars::JsonSchema for AttributeName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AttributeName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})
    }
}

impl TryFrom<String> for AttributeName {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(&raw)
    }
}

impl From<AttributeName> for String {
    fn from(name: AttributeName) -> Self {
        name.0
    }
}

impl fmt::Display for AttributeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stored form of a value: trimmed, NFC, 1 to 256 characters without control characters.
pub fn value(raw: &str) -> Result<String, String> {
    let value: String = raw.trim().nfc().collect();
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.chars().count() > MAX_VALUE_CHARS {
        return Err(format!("is longer than {MAX_VALUE_CHARS} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    Ok(value)
}

/// The UTS #39 skeleton of a value (NFD, each character replaced by its prototype in Unicode's
/// `confusables.txt`, default-ignorable ones dropped, NFD again): two values look alike exactly
/// when their skeletons are equal.
pub fn skeleton(value: &str) -> String {
    unicode_security::confusable_detection::skeleton(value).collect()
}

/// A login's value: its stored form, and whether the raw text is suspicious.
pub fn value_checked(raw: &str) -> Result<(String, bool), String> {
    Ok((value(raw)?, identifier::is_suspicious(raw)))
}

/// An account's attributes, by name.
pub type Attributes = BTreeMap<AttributeName, String>;

/// Reads an `attributes` object given by an admin or an import: every value a string (stored
/// form); the error names the attribute.
pub fn parse_object(raw: &serde_json::Map<String, Value>) -> Result<Attributes, String> {
    if raw.len() > MAX_ATTRIBUTES {
        return Err(format!("more than {MAX_ATTRIBUTES} attributes"));
    }
    let mut out = Attributes::new();
    for (name, v) in raw {
        let name = AttributeName::parse(name)?;
        let Value::String(text) = v else {
            return Err(format!("{name} must be a string"));
        };
        out.insert(
            name.clone(),
            value(text).map_err(|m| format!("{name} {m}"))?,
        );
    }
    Ok(out)
}

/// Attributes as the JSON object stored and shown.
pub fn to_json(attributes: &Attributes) -> Value {
    Value::Object(
        attributes
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
            .collect(),
    )
}

/// Attributes read back from storage, where only valid ones are written (an unreadable entry is
/// left out rather than failing the read).
pub fn from_stored(stored: &Value) -> Attributes {
    match stored {
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| Some((AttributeName::parse(k).ok()?, v.as_str()?.to_owned())))
            .collect(),
        _ => Attributes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_plain_ascii() {
        assert!(AttributeName::parse("employee_id").is_ok());
        assert!(AttributeName::parse("Job-Number2").is_ok());
        for bad in ["", "employee id", "employée", "a.b", &"x".repeat(65)] {
            assert!(AttributeName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_are_trimmed_composed_and_keep_their_case() {
        assert_eq!(value("  E1024 ").unwrap(), "E1024");
        assert_eq!(value("Jose\u{301}").unwrap(), "José");
        assert!(value("   ").is_err());
        assert!(value("a\u{7}b").is_err());
        assert!(value(&"x".repeat(257)).is_err());
        assert_eq!(value_checked("E1024").unwrap(), ("E1024".into(), false));
        // Fullwidth digits and letters pass for ASCII ones.
        assert!(value_checked("Ｅ１０２４").unwrap().1);
        assert!(!value_checked("销售部").unwrap().1);
    }

    #[test]
    fn lookalike_values_share_a_skeleton() {
        assert_eq!(skeleton("E1024"), skeleton("\u{415}1024"));
        assert_eq!(skeleton("E1024"), skeleton("EIO24"));
        assert_ne!(skeleton("E1024"), skeleton("E1025"));
        assert_ne!(skeleton("E1024"), skeleton("e1024"));
        assert_eq!(skeleton("销售部"), "销售部");
    }

    /// The rows of `confusable_prototypes` (see the attribute skeletons migration): each
    /// character that NFD leaves alone and whose skeleton is not itself, with that skeleton.
    fn prototype_rows() -> String {
        fn literal(text: &str) -> String {
            let mut out = String::from("U&'");
            for c in text.chars() {
                match c {
                    '\'' => out.push_str("''"),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_ascii_graphic() => out.push(c),
                    c => out.push_str(&format!("\\+{:06X}", c as u32)),
                }
            }
            out.push('\'');
            out
        }
        let mut rows = Vec::new();
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let alone = c.to_string();
            if alone.nfd().collect::<String>() != alone {
                continue;
            }
            let skeleton = skeleton(&alone);
            if skeleton != alone {
                rows.push(format!("({}, {})", literal(&alone), literal(&skeleton)));
            }
        }
        rows.join(",\n")
    }

    /// The migration's table is this program's `skeleton`, so that the database holds unique
    /// exactly what the decisions call alike. `IDSYNC_WRITE_CONFUSABLES=1` rewrites it (a new
    /// migration must carry a changed table once one was released).
    #[test]
    fn the_databases_prototypes_are_the_programs() {
        const BEGIN: &str = "-- prototypes: generated, begin\n";
        const END: &str = "\n-- prototypes: generated, end";
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/20261207000018_attribute_skeletons.sql"
        );
        let migration = std::fs::read_to_string(path).expect("the migration exists");
        let (head, rest) = migration.split_once(BEGIN).expect("the begin marker");
        let (rows, tail) = rest.split_once(END).expect("the end marker");
        let expected = prototype_rows();
        if std::env::var_os("IDSYNC_WRITE_CONFUSABLES").is_some() {
            std::fs::write(path, format!("{head}{BEGIN}{expected}{END}{tail}")).unwrap();
            return;
        }
        assert!(
            rows == expected,
            "the migration's prototypes differ from unicode-security's: \
             IDSYNC_WRITE_CONFUSABLES=1 cargo test --lib prototypes"
        );
    }

    #[test]
    fn objects_take_string_values_only() {
        let ok = json!({"employee_id": " E1 ", "dept": "sales"});
        let parsed = parse_object(ok.as_object().unwrap()).unwrap();
        assert_eq!(
            to_json(&parsed),
            json!({"dept": "sales", "employee_id": "E1"})
        );
        let number = json!({"employee_id": 1024});
        assert!(
            parse_object(number.as_object().unwrap())
                .unwrap_err()
                .contains("employee_id must be a string")
        );
        let bad_name = json!({"employee id": "E1"});
        assert!(parse_object(bad_name.as_object().unwrap()).is_err());
        assert_eq!(from_stored(&json!({"a": "1", "b c": "2", "d": 3})).len(), 1);
    }
}
