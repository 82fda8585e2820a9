//! Changed identifiers (contract section 1, step 3): a login of a linked identity whose source
//! now sends another usable email, phone or username than the identity's last snapshot, such as
//! a new corporate address or a phone number recycled to someone else.
//!
//! Only a value the login carries and may use (valid, not a lookalike, in an allowed domain, and
//! for an email or a phone verified by the source) is compared, with the snapshot's value judged
//! the same way: a field the source leaves out this
//! time is not a change. With `on_profile_change = "update_user"` the new value is copied onto
//! the account unless another account of the pool holds it (a collision, reported and never
//! applied), the account has it already, or the account is protected.

use serde::Serialize;
use uuid::Uuid;

use super::{PoolUser, usable_value};
use crate::domain::account::UserSummary;
use crate::domain::connection::{ConnectionSettings, MatchField, OnProfileChange};
use crate::domain::login::NormalizedFields;

text_enum!(
    /// What `identity.changed` led to: `notified` (nothing else), or `user_updated` (at least one
    /// change was copied onto the account, and `user.updated` follows).
    DriftAction { Notified => "notified", UserUpdated => "user_updated" }
);

/// One changed field, as `identity.changed` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ProfileChange {
    /// `email`, `phone` or `username`.
    pub field: MatchField,
    /// The canonical value of the identity's last snapshot; `None` when it had none.
    pub old: Option<String>,
    /// The canonical value the login carries.
    pub new: String,
    /// Whether the account now has the new value (only with `update_user`).
    pub applied: bool,
    /// Another account of the pool that holds the new value: the change collides and is not
    /// applied. Absent when none does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<Uuid>,
}

/// The account a linked identity belongs to, with the identity's last snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedAccount {
    /// The account's current values.
    pub user: UserSummary,
    /// A protected account: changes are reported, never applied.
    pub protected: bool,
    /// A suspended account: its logins are rejected (`account_suspended`).
    pub suspended: bool,
    /// The identity's last profile, normalised with the connection's current settings.
    pub snapshot: NormalizedFields,
}

/// What a changed profile leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Every changed field, in the order email, phone, username.
    pub changes: Vec<ProfileChange>,
    /// The update of the account, when a change is applied.
    pub update: Option<UserUpdate>,
}

/// Changes copied onto an account from a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpdate {
    /// The account after the update.
    pub user: UserSummary,
    /// The fields that changed.
    pub changed: Vec<MatchField>,
    /// The login's verification flag, which an applied email takes with it.
    pub email_verified: bool,
    /// The login's verification flag, which an applied phone takes with it.
    pub phone_verified: bool,
}

impl Drift {
    /// `identity.changed`'s `action`.
    pub fn action(&self) -> DriftAction {
        match self.update {
            Some(_) => DriftAction::UserUpdated,
            None => DriftAction::Notified,
        }
    }
}

/// Compares a linked identity's login with its last snapshot. `None` when nothing changed or the
/// connection ignores changes. `pool_users` are the accounts of the pool sharing a value with the
/// login: those holding a new value make it collide.
pub fn judge(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    linked: &LinkedAccount,
    pool_users: &[PoolUser],
) -> Option<Drift> {
    if settings.on_profile_change == OnProfileChange::Ignore {
        return None;
    }
    let update = settings.on_profile_change == OnProfileChange::UpdateUser;
    let mut user = linked.user.clone();
    let mut changes = Vec::new();
    let mut changed = Vec::new();
    for field in MatchField::ALL.iter().copied() {
        let Some(new) = changed_value(login, settings, field) else {
            continue;
        };
        let old = changed_value(&linked.snapshot, settings, field);
        if old.as_deref() == Some(new.as_str()) {
            continue;
        }
        let held_by = pool_users
            .iter()
            .find(|u| u.id != user.id && held(u, field, &new))
            .map(|u| u.id);
        // A protected account (an admin's, a break-glass one) is never rewritten by a source.
        let applied =
            update && !linked.protected && held_by.is_none() && !account_has(&user, field, &new);
        if applied {
            copy(&mut user, login, field);
            changed.push(field);
        }
        changes.push(ProfileChange {
            field,
            old,
            new,
            applied,
            held_by,
        });
    }
    if changes.is_empty() {
        return None;
    }
    let update = (!changed.is_empty()).then_some(UserUpdate {
        user,
        changed,
        email_verified: login.email_verified,
        phone_verified: login.phone_verified,
    });
    Some(Drift { changes, update })
}

/// The canonical value of `field` that a change is judged on: usable under the connection's
/// settings, and for an email or a phone verified by the source whatever `require_verified`
/// says (an unverified address is anyone's claim).
fn changed_value(
    fields: &NormalizedFields,
    settings: &ConnectionSettings,
    field: MatchField,
) -> Option<String> {
    let verified = match field {
        MatchField::Email => fields.email_verified,
        MatchField::Phone => fields.phone_verified,
        MatchField::Username => true,
    };
    verified
        .then(|| usable_value(fields, settings, field))
        .flatten()
}

fn held(user: &PoolUser, field: MatchField, value: &str) -> bool {
    match field {
        MatchField::Email => user.email.as_deref() == Some(value),
        MatchField::Phone => user.phone.as_deref() == Some(value),
        MatchField::Username => user.username.as_deref() == Some(value),
    }
}

fn account_has(user: &UserSummary, field: MatchField, value: &str) -> bool {
    match field {
        MatchField::Email => user.email.as_deref() == Some(value),
        MatchField::Phone => user.phone.as_deref() == Some(value),
        MatchField::Username => user.username.as_deref() == Some(value),
    }
}

fn copy(user: &mut UserSummary, login: &NormalizedFields, field: MatchField) {
    match field {
        MatchField::Email => user.email = login.email.value().cloned(),
        MatchField::Phone => user.phone = login.phone.value().cloned(),
        MatchField::Username => user.username = login.username.value().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::domain::connection::ConnectionSpec;
    use crate::domain::login::Profile;

    fn settings(mode: &str) -> ConnectionSettings {
        ConnectionSettings::validate(&ConnectionSpec {
            identifier: Some("dt".into()),
            user_pool_id: Some("pool".into()),
            default_country_code: Some("86".into()),
            on_profile_change: Some(mode.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn fields(profile: Value, s: &ConnectionSettings) -> NormalizedFields {
        let Value::Object(map) = profile else {
            unreachable!()
        };
        NormalizedFields::of(&Profile::from_map(&map).unwrap(), s)
    }

    const ME: Uuid = Uuid::from_u128(1);
    const OTHER: Uuid = Uuid::from_u128(2);

    fn account(s: &ConnectionSettings, snapshot: Value) -> LinkedAccount {
        let snapshot = fields(snapshot, s);
        LinkedAccount {
            user: UserSummary {
                id: ME,
                email: snapshot.email.value().cloned(),
                phone: snapshot.phone.value().cloned(),
                username: snapshot.username.value().cloned(),
                name: Some("Zhang San".into()),
                attributes: Default::default(),
            },
            protected: false,
            suspended: false,
            snapshot,
        }
    }

    fn holder(email: &str) -> PoolUser {
        PoolUser {
            id: OTHER,
            email: Some(crate::domain::Email::parse(email).unwrap()),
            ..Default::default()
        }
    }

    const OLD: fn() -> Value = || {
        json!({"email": "zs@corp.example", "email_verified": true, "phone": "13800138000",
               "phone_verified": true, "username": "zhangsan"})
    };

    #[test]
    fn the_same_identifiers_in_another_spelling_are_no_change() {
        let s = settings("update_user");
        let login = fields(
            json!({"email": " ZS@Corp.Example ", "email_verified": true,
                   "phone": "+86 138 0013 8000", "phone_verified": true, "username": "ZhangSan"}),
            &s,
        );
        assert_eq!(judge(&login, &s, &account(&s, OLD()), &[]), None);
    }

    #[test]
    fn a_missing_unverified_or_lookalike_value_is_no_change() {
        let s = settings("update_user");
        let login = fields(
            json!({"email": "new@corp.example", "email_verified": false,
                   "username": "zhang\u{17F}an"}),
            &s,
        );
        assert_eq!(judge(&login, &s, &account(&s, OLD()), &[]), None);
    }

    #[test]
    fn notify_reports_without_applying() {
        let s = settings("notify");
        let login = fields(
            json!({"email": "zs@new.example", "email_verified": true, "phone": "13800138000",
                   "phone_verified": true}),
            &s,
        );
        let drift = judge(&login, &s, &account(&s, OLD()), &[]).unwrap();
        assert_eq!(
            drift.changes,
            vec![ProfileChange {
                field: MatchField::Email,
                old: Some("zs@corp.example".into()),
                new: "zs@new.example".into(),
                applied: false,
                held_by: None,
            }]
        );
        assert_eq!(drift.action(), DriftAction::Notified);
        assert_eq!(drift.update, None);
    }

    #[test]
    fn ignore_reports_nothing() {
        let s = settings("ignore");
        let login = fields(
            json!({"email": "zs@new.example", "email_verified": true}),
            &s,
        );
        assert_eq!(judge(&login, &s, &account(&s, OLD()), &[]), None);
    }

    #[test]
    fn update_user_applies_what_is_free_and_reports_a_collision() {
        let s = settings("update_user");
        let login = fields(
            json!({"email": "taken@corp.example", "email_verified": true,
                   "phone": "13900139000", "phone_verified": true, "username": "zhangsan"}),
            &s,
        );
        let drift = judge(
            &login,
            &s,
            &account(&s, OLD()),
            &[holder("taken@corp.example")],
        )
        .unwrap();
        assert_eq!(drift.changes.len(), 2);
        assert_eq!(drift.changes[0].held_by, Some(OTHER));
        assert!(!drift.changes[0].applied, "a collision never moves data");
        assert!(drift.changes[1].applied);
        assert_eq!(drift.changes[1].new, "+8613900139000");
        assert_eq!(drift.action(), DriftAction::UserUpdated);
        let update = drift.update.unwrap();
        assert_eq!(update.changed, vec![MatchField::Phone]);
        assert_eq!(update.user.email.as_deref(), Some("zs@corp.example"));
        assert_eq!(update.user.phone.as_deref(), Some("+8613900139000"));
        assert_eq!(update.user.name.as_deref(), Some("Zhang San"));
    }

    #[test]
    fn an_unverified_value_is_no_change_even_where_verification_is_not_required() {
        let mut s = settings("update_user");
        s.require_verified = false;
        let login = fields(
            json!({"email": "squat@corp.example", "email_verified": false,
                   "phone": "13900139000"}),
            &s,
        );
        assert_eq!(judge(&login, &s, &account(&s, OLD()), &[]), None);
    }

    #[test]
    fn a_value_that_becomes_verified_is_a_change() {
        let s = settings("notify");
        let old = json!({"phone": "13900139000", "phone_verified": false});
        let login = fields(json!({"phone": "13900139000", "phone_verified": true}), &s);
        let drift = judge(&login, &s, &account(&s, old), &[]).unwrap();
        assert_eq!(
            drift.changes[0].old, None,
            "the unverified number was nobody's"
        );
    }

    #[test]
    fn a_protected_account_is_reported_never_rewritten() {
        let s = settings("update_user");
        let login = fields(
            json!({"email": "zs@new.example", "email_verified": true}),
            &s,
        );
        let mut linked = account(&s, OLD());
        linked.protected = true;
        let drift = judge(&login, &s, &linked, &[]).unwrap();
        assert!(!drift.changes[0].applied);
        assert_eq!(drift.update, None);
    }

    #[test]
    fn a_value_the_snapshot_lacked_is_a_change() {
        let s = settings("update_user");
        let login = fields(json!({"username": "zhangsan"}), &s);
        let mut linked = account(&s, json!({}));
        linked.user.username = None;
        let drift = judge(&login, &s, &linked, &[]).unwrap();
        assert_eq!(drift.changes[0].old, None);
        assert!(drift.changes[0].applied);
    }
}
