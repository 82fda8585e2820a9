//! The JSON Schema of every outbound event type (contract section 3.4), generated from the Rust
//! types that build the events' `data`, so that a schema cannot drift from what is published. The
//! repository's `schemas/` folder holds them as files (a test keeps the files equal to what is
//! generated here) and the HTTP side serves them at `/schemas/<type>.v<major>.json`.

use serde_json::{Map, Value, json};

use super::events::{
    BindingExpired, BindingPending, BindingResolved, ConnectionRemovalsHeld, EventType,
    IdentityChanged, IdentityRenameRefused, IdentityRenamed, IdentitySourceRemoved, LoginRejected,
    UserCreated, UserLinked, UserReactivated, UserSuspended, UserUnlinked, UserUpdated,
    WebhookDeliveryFailed, WebhookEndpointDisabled,
};

/// The major version of every event type's schema; it changes only with an incompatible change.
pub const MAJOR: u32 = 1;

impl EventType {
    /// The event's `dataschema`: `urn:identity-sync:schema:<type>:<major>`.
    pub fn dataschema(self) -> String {
        format!("urn:identity-sync:schema:{}:{MAJOR}", self.as_str())
    }

    /// The name of its schema's file, in `schemas/` and under `/schemas/`.
    pub fn schema_file(self) -> String {
        format!("{}.v{MAJOR}.json", self.as_str())
    }
}

/// The schema of a whole event of type `kind`: the CloudEvents envelope as identity-sync writes
/// it (structured mode), its `data` described by the type that builds it.
pub fn of(kind: EventType) -> Value {
    let data = match kind {
        EventType::UserCreated => schemars::schema_for!(UserCreated<'static>),
        EventType::UserLinked => schemars::schema_for!(UserLinked<'static>),
        EventType::UserUnlinked => schemars::schema_for!(UserUnlinked<'static>),
        EventType::UserUpdated => schemars::schema_for!(UserUpdated<'static>),
        EventType::LoginRejected => schemars::schema_for!(LoginRejected<'static>),
        EventType::BindingPending => schemars::schema_for!(BindingPending<'static>),
        EventType::BindingResolved => schemars::schema_for!(BindingResolved<'static>),
        EventType::BindingExpired => schemars::schema_for!(BindingExpired<'static>),
        EventType::IdentityChanged => schemars::schema_for!(IdentityChanged<'static>),
        EventType::IdentitySourceRemoved => schemars::schema_for!(IdentitySourceRemoved<'static>),
        EventType::UserSuspended => schemars::schema_for!(UserSuspended<'static>),
        EventType::UserReactivated => schemars::schema_for!(UserReactivated<'static>),
        EventType::IdentityRenamed => schemars::schema_for!(IdentityRenamed<'static>),
        EventType::IdentityRenameRefused => schemars::schema_for!(IdentityRenameRefused<'static>),
        EventType::ConnectionRemovalsHeld => {
            schemars::schema_for!(ConnectionRemovalsHeld<'static>)
        }
        EventType::WebhookDeliveryFailed => schemars::schema_for!(WebhookDeliveryFailed<'static>),
        EventType::WebhookEndpointDisabled => {
            schemars::schema_for!(WebhookEndpointDisabled<'static>)
        }
    };
    let mut data = match data.to_value() {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    // The data's definitions move to the root, where its `#/$defs/...` references point.
    let defs = data.remove("$defs").unwrap_or_else(|| json!({}));
    data.remove("$schema");
    data.remove("title");
    // A rename refused for an identity without an account is about the identity, like a
    // rejected login: it carries no sequence then.
    let sequenced = !matches!(
        kind,
        EventType::LoginRejected
            | EventType::ConnectionRemovalsHeld
            | EventType::IdentityRenameRefused
            | EventType::WebhookDeliveryFailed
            | EventType::WebhookEndpointDisabled
    );
    let mut required = vec![
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "data",
    ];
    if sequenced {
        required.push("sequence");
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": kind.dataschema(),
        "title": kind.as_str(),
        "description": format!("An identity-sync `{}` event (CloudEvents 1.0, structured mode).", kind.as_str()),
        "type": "object",
        "required": required,
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "format": "uuid"},
            "source": {"const": super::events::SOURCE},
            "type": {"const": kind.as_str()},
            "time": {"type": "string", "format": "date-time"},
            "subject": {"type": "string", "minLength": 1},
            "datacontenttype": {"const": "application/json"},
            "dataschema": {"const": kind.dataschema()},
            "sequence": {"type": "string", "pattern": "^[0-9]{20}$"},
            "data": Value::Object(data),
        },
        "$defs": defs,
    })
}

/// Every schema, by file name.
pub fn all() -> Vec<(String, Value)> {
    EventType::ALL
        .iter()
        .map(|kind| (kind.schema_file(), of(*kind)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files in `schemas/` are what the types generate. `IDSYNC_WRITE_SCHEMAS=1` writes
    /// them after a change of an event's data.
    #[test]
    fn the_schema_files_are_generated_from_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let write = std::env::var_os("IDSYNC_WRITE_SCHEMAS").is_some();
        for (file, schema) in all() {
            let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            let path = dir.join(&file);
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let stored = std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("{file} is missing: IDSYNC_WRITE_SCHEMAS=1 writes it"));
            assert_eq!(
                stored, text,
                "{file} is stale: IDSYNC_WRITE_SCHEMAS=1 rewrites it"
            );
        }
    }
}
