//! Leavers and movers (contract section 11): the source says a person left
//! (`directory.user_removed`), re-joined (`directory.user_restored`) or was renamed
//! (`directory.user_renamed`). These arrive on the commands queue beside `binding.resolve` and
//! `user.unlink`: they are heard only from trusted publishers, deduplicated by (`source`, `id`),
//! answered with a reply, and never wait behind a morning wave of logins.
//!
//! What a removal does is the connection's `on_source_removal`; a guard per connection
//! (`removal_guard`) holds removals beyond a fraction of its identities within a window, so that
//! a source app whose contact scope shrank does not unlink a whole company.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::connection::{ConnectionId, FieldError, UserPoolId};
use super::login::{Rejection, invalid, required_string};

/// The CloudEvents `type` (and routing key) of a person who left the source.
pub const REMOVED_TYPE: &str = "directory.user_removed";
/// The CloudEvents `type` of a person whose id at the source changed.
pub const RENAMED_TYPE: &str = "directory.user_renamed";
/// The CloudEvents `type` of a person who re-joined the source.
pub const RESTORED_TYPE: &str = "directory.user_restored";
/// Every directory event type.
pub const TYPES: [&str; 3] = [REMOVED_TYPE, RENAMED_TYPE, RESTORED_TYPE];

/// The reason of a login rejected because the account it would reach is suspended.
pub const ACCOUNT_SUSPENDED: &str = "account_suspended";
/// `user.unlinked`'s and `user.suspended`'s reason for a source's removal.
pub const SOURCE_REMOVED: &str = "source_removed";
/// `user.reactivated`'s reason for a source's restore.
pub const SOURCE_RESTORED: &str = "source_restored";

const MAX_EXTERNAL_ID_CHARS: usize = 256;
const MAX_SOURCE_EVENT_CHARS: usize = 128;

text_enum!(
    /// What a source's removal of a person does on a connection:
    ///
    /// - `notify` (the default): `identity.source_removed` is published, nothing else changes;
    /// - `unlink`: the identity is removed from its account (`user.unlinked`, reason
    ///   `source_removed`);
    /// - `suspend`: unlink, and the account is suspended when none of its other identities
    ///   remains (`user.suspended`).
    OnSourceRemoval { Notify => "notify", Unlink => "unlink", Suspend => "suspend" }
);

/// The guard's settings as written (`[connections.removal_guard]`); every key optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemovalGuardSpec {
    /// The fraction of the connection's identities that may be removed within the window, from
    /// 0 to 1; 0.1 by default.
    pub max_fraction: Option<f64>,
    /// Removals always allowed within the window, whatever the fraction; 20 by default.
    pub min_count: Option<u32>,
    /// The window, as a duration such as `1h` (the default) or `30m`: 1 minute to 7 days.
    pub window: Option<String>,
}

/// The guard against mass removal, validated: within any `window`, removals beyond
/// `max(min_count, max_fraction × identities of the connection)` are held for an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovalGuard {
    /// `max_fraction` in millionths (so that settings compare exactly).
    pub max_fraction_ppm: u32,
    pub min_count: u32,
    pub window: Duration,
}

impl Default for RemovalGuard {
    fn default() -> Self {
        Self {
            max_fraction_ppm: 100_000,
            min_count: 20,
            window: Duration::from_secs(3600),
        }
    }
}

impl RemovalGuard {
    /// Checks a spec and fills in the defaults.
    pub fn validate(spec: &RemovalGuardSpec) -> Result<Self, FieldError> {
        let defaults = Self::default();
        let max_fraction_ppm = match spec.max_fraction {
            None => defaults.max_fraction_ppm,
            Some(f) if f.is_finite() && (0.0..=1.0).contains(&f) => (f * 1e6).round() as u32,
            Some(f) => {
                return Err(FieldError::new(
                    "removal_guard.max_fraction",
                    format!("{f} is not a fraction from 0 to 1"),
                ));
            }
        };
        let window = match spec.window.as_deref() {
            None => defaults.window,
            Some(raw) => humantime::parse_duration(raw).map_err(|e| {
                FieldError::new(
                    "removal_guard.window",
                    format!("{raw:?} is not a duration ({e})"),
                )
            })?,
        };
        if window < Duration::from_secs(60)
            || window > Duration::from_secs(7 * 24 * 3600)
            || window.subsec_nanos() != 0
        {
            return Err(FieldError::new(
                "removal_guard.window",
                "must be whole seconds, from 1m to 7 days",
            ));
        }
        Ok(Self {
            max_fraction_ppm,
            min_count: spec.min_count.unwrap_or(defaults.min_count),
            window,
        })
    }

    /// The settings as written back.
    pub fn to_spec(&self) -> RemovalGuardSpec {
        RemovalGuardSpec {
            max_fraction: Some(f64::from(self.max_fraction_ppm) / 1e6),
            min_count: Some(self.min_count),
            window: Some(super::connection::format_ttl(self.window)),
        }
    }

    /// How many removals the window allows on a connection holding `identities` identities.
    pub fn allowed(&self, identities: i64) -> i64 {
        let fraction = (u128::try_from(identities.max(0)).unwrap_or(0)
            * u128::from(self.max_fraction_ppm))
        .div_ceil(1_000_000);
        i64::try_from(fraction)
            .unwrap_or(i64::MAX)
            .max(i64::from(self.min_count))
    }

    /// Whether one more removal, after `applied` within the window, is held.
    pub fn holds(&self, applied: i64, identities: i64) -> bool {
        applied >= self.allowed(identities)
    }
}

/// A change the source reports about one of a connection's people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryChange {
    /// The connection's pool.
    pub user_pool_id: UserPoolId,
    /// The connection the person's identity belongs to.
    pub connection: ConnectionId,
    /// The person's id at the source (before a rename).
    pub external_id: String,
    /// What happened.
    pub kind: ChangeKind,
}

/// What the source reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// `directory.user_removed`: the person left (or was removed from the app's range).
    Removed {
        /// When the source says it happened, if it says.
        occurred_at: Option<DateTime<Utc>>,
        /// The source's own name for it (`user_leave_org`, `delete_user`), for the audit log.
        source_event: Option<String>,
    },
    /// `directory.user_renamed`: the person's id at the source is now `new_external_id`.
    Renamed {
        /// The id the identity moves to.
        new_external_id: String,
    },
    /// `directory.user_restored`: the person re-joined.
    Restored,
}

impl DirectoryChange {
    /// The change's CloudEvents `type`.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            ChangeKind::Removed { .. } => REMOVED_TYPE,
            ChangeKind::Renamed { .. } => RENAMED_TYPE,
            ChangeKind::Restored => RESTORED_TYPE,
        }
    }
}

/// Reads the `data` of a directory event of type `kind` (one of [`TYPES`]).
pub fn decode(kind: &str, data: &Map<String, Value>) -> Result<DirectoryChange, Rejection> {
    let user_pool_id = required_string(data.get("user_pool_id"), "data.user_pool_id", 128)?;
    let user_pool_id =
        UserPoolId::parse(&user_pool_id).map_err(|m| invalid(format!("data.user_pool_id: {m}")))?;
    let connection = required_string(data.get("connection"), "data.connection", 31)?;
    let connection =
        ConnectionId::parse(&connection).map_err(|m| invalid(format!("data.connection: {m}")))?;
    let external_id = required_string(
        data.get("external_id"),
        "data.external_id",
        MAX_EXTERNAL_ID_CHARS,
    )?;
    let kind = match kind {
        REMOVED_TYPE => ChangeKind::Removed {
            occurred_at: match data.get("occurred_at") {
                None | Some(Value::Null) => None,
                value => {
                    let raw = required_string(value, "data.occurred_at", 64)?;
                    Some(
                        DateTime::parse_from_rfc3339(&raw)
                            .map_err(|_| {
                                invalid(format!(
                                    "data.occurred_at must be an RFC 3339 time, got {raw:?}"
                                ))
                            })?
                            .with_timezone(&Utc),
                    )
                }
            },
            source_event: match data.get("source_event") {
                None | Some(Value::Null) => None,
                value => Some(required_string(
                    value,
                    "data.source_event",
                    MAX_SOURCE_EVENT_CHARS,
                )?),
            },
        },
        RENAMED_TYPE => {
            let new_external_id = required_string(
                data.get("new_external_id"),
                "data.new_external_id",
                MAX_EXTERNAL_ID_CHARS,
            )?;
            ChangeKind::Renamed { new_external_id }
        }
        _ => ChangeKind::Restored,
    };
    Ok(DirectoryChange {
        user_pool_id,
        connection,
        external_id,
        kind,
    })
}

text_enum!(
    /// How a directory event ended:
    ///
    /// - `done`: its effects are committed;
    /// - `held`: a removal the guard held for an admin;
    /// - `ignored`: nothing to do (`code` says why: `not_linked`, `not_suspended`, `unchanged`);
    /// - `refused`: the rules said no (`code`: `identity_taken` for a rename onto an id linked to
    ///   another account);
    /// - `error`: it could not be read and was dead-lettered (`code`: the reason code).
    DirectoryOutcome {
        Done => "done",
        Held => "held",
        Ignored => "ignored",
        Refused => "refused",
        Error => "error",
    }
);

/// The reply to a directory event (contract section 11), sent when it has a usable `reply_to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryReply {
    /// The event's CloudEvents `id`; `null` when a dead-lettered body had no readable id.
    pub event_id: Option<String>,
    /// What became of it.
    pub outcome: DirectoryOutcome,
    /// Why, for every outcome but `done`.
    pub code: Option<String>,
}

impl DirectoryReply {
    /// The reply of event `id`.
    pub fn new(id: &str, outcome: DirectoryOutcome, code: Option<&str>) -> Self {
        Self {
            event_id: Some(id.to_owned()),
            outcome,
            code: code.map(str::to_owned),
        }
    }

    /// The reply to a directory event that was dead-lettered.
    pub fn error(event_id: Option<String>, rejection: &Rejection) -> Self {
        Self {
            event_id,
            outcome: DirectoryOutcome::Error,
            code: Some(rejection.kind.code().to_owned()),
        }
    }
}

/// Where an account's suspension came from, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// `source_removed`.
    pub reason: String,
    /// The connection whose source removed the person.
    pub connection: String,
    /// The identity removed.
    pub external_id: String,
    /// The CloudEvents `source` and `id` of the removal.
    pub source: String,
    pub event_id: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(kind: &str, data: Value) -> Result<DirectoryChange, Rejection> {
        decode(kind, data.as_object().unwrap())
    }

    #[test]
    fn reads_each_type() {
        let removed = read(
            REMOVED_TYPE,
            json!({"user_pool_id": "p", "connection": "dingtalk", "external_id": "u1",
                   "occurred_at": "2026-12-07T08:00:00+08:00", "source_event": "user_leave_org"}),
        )
        .unwrap();
        assert_eq!(removed.kind(), REMOVED_TYPE);
        assert_eq!(
            removed.kind,
            ChangeKind::Removed {
                occurred_at: Some("2026-12-07T00:00:00Z".parse().unwrap()),
                source_event: Some("user_leave_org".into()),
            }
        );
        let renamed = read(
            RENAMED_TYPE,
            json!({"user_pool_id": "p", "connection": "wecom", "external_id": "zhangsan",
                   "new_external_id": "zhangsan01"}),
        )
        .unwrap();
        assert_eq!(
            renamed.kind,
            ChangeKind::Renamed {
                new_external_id: "zhangsan01".into()
            }
        );
        let restored = read(
            RESTORED_TYPE,
            json!({"user_pool_id": "p", "connection": "dingtalk", "external_id": "u1"}),
        )
        .unwrap();
        assert_eq!(restored.kind, ChangeKind::Restored);
    }

    #[test]
    fn a_badly_shaped_event_names_the_field() {
        let cases = [
            (
                REMOVED_TYPE,
                json!({"connection": "c", "external_id": "u"}),
                "data.user_pool_id",
            ),
            (
                REMOVED_TYPE,
                json!({"user_pool_id": "p", "connection": "Bad!", "external_id": "u"}),
                "data.connection",
            ),
            (
                REMOVED_TYPE,
                json!({"user_pool_id": "p", "connection": "c", "external_id": ""}),
                "data.external_id must not be empty",
            ),
            (
                REMOVED_TYPE,
                json!({"user_pool_id": "p", "connection": "c", "external_id": "u", "occurred_at": "yesterday"}),
                "data.occurred_at must be an RFC 3339",
            ),
            (
                RENAMED_TYPE,
                json!({"user_pool_id": "p", "connection": "c", "external_id": "u"}),
                "data.new_external_id is missing",
            ),
            (
                RENAMED_TYPE,
                json!({"user_pool_id": "p", "connection": "c", "external_id": "u", "new_external_id": "x".repeat(257)}),
                "data.new_external_id is longer",
            ),
        ];
        for (kind, data, expected) in cases {
            let rejection = read(kind, data.clone()).unwrap_err();
            assert!(rejection.detail.contains(expected), "{data}: {rejection}");
        }
    }

    #[test]
    fn the_guard_allows_the_larger_of_its_count_and_its_fraction() {
        let guard = RemovalGuard::default();
        assert_eq!(guard.allowed(100), 20, "10% of 100 is below the count");
        assert_eq!(guard.allowed(1000), 100);
        assert_eq!(
            guard.allowed(1001),
            101,
            "a fraction of a removal rounds up"
        );
        assert!(!guard.holds(19, 100));
        assert!(guard.holds(20, 100), "the 21st removal is held");
        let none = RemovalGuard::validate(&RemovalGuardSpec {
            max_fraction: Some(0.0),
            min_count: Some(0),
            window: Some("30m".into()),
        })
        .unwrap();
        assert!(
            none.holds(0, 1_000_000),
            "a guard of zero holds every removal"
        );
    }

    #[test]
    fn guard_settings_are_checked_and_read_back() {
        for (spec, field) in [
            (
                RemovalGuardSpec {
                    max_fraction: Some(1.5),
                    ..Default::default()
                },
                "removal_guard.max_fraction",
            ),
            (
                RemovalGuardSpec {
                    max_fraction: Some(f64::NAN),
                    ..Default::default()
                },
                "removal_guard.max_fraction",
            ),
            (
                RemovalGuardSpec {
                    window: Some("5s".into()),
                    ..Default::default()
                },
                "removal_guard.window",
            ),
            (
                RemovalGuardSpec {
                    window: Some("soon".into()),
                    ..Default::default()
                },
                "removal_guard.window",
            ),
        ] {
            assert_eq!(RemovalGuard::validate(&spec).unwrap_err().field, field);
        }
        let guard = RemovalGuard::validate(&RemovalGuardSpec {
            max_fraction: Some(0.25),
            min_count: Some(5),
            window: Some("90m".into()),
        })
        .unwrap();
        assert_eq!(RemovalGuard::validate(&guard.to_spec()).unwrap(), guard);
    }
}
