//! Previewing a change of a connection's settings (contract section 8): a stored login is decided
//! again as the first login of its identity, under the current and under the proposed settings,
//! against today's accounts; the pairs of outcomes are tallied with a few example identities.
//! Each login is decided on its own: what one simulated login would create is not seen by the next.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::attributes::AttributeName;
use super::connection::ConnectionSettings;
use super::decision::{self, Outcome, PoolUser, Situation};
use super::login::{NormalizedFields, Profile};

/// Most example identities a row of the table keeps.
pub const EXAMPLES: usize = 5;

/// The accounts one login could meet, as the decision needs them: every account sharing a value
/// with the login under either settings, each seen from the login's connection.
pub struct Accounts<'a> {
    /// The pool's accounts sharing a value with the login (more may be given; they are filtered).
    pub users: &'a [PoolUser],
    /// The account the identity is linked to today, if any: as a first login, the identity does
    /// not count as that account's identity of the connection.
    pub own_account: Option<Uuid>,
}

/// The outcome of `profile` as the first login of its identity under `settings`.
pub fn first_login(
    profile: &Profile,
    settings: &ConnectionSettings,
    unique_attributes: &[AttributeName],
    accounts: &Accounts<'_>,
    now: DateTime<Utc>,
) -> Outcome {
    let fields = NormalizedFields::of(profile, settings);
    let pool_users = accounts
        .users
        .iter()
        .filter(|u| u.shares_a_value(&fields))
        .map(|u| {
            let mut user = u.clone();
            user.linked_on_connection &= Some(u.id) != accounts.own_account;
            user
        })
        .collect();
    let situation = Situation {
        pool_users,
        unique_attributes: unique_attributes.to_vec(),
        ..Situation::default()
    };
    decision::decide(&fields, settings, &situation, now)
        .action
        .outcome()
}

/// One row of the table: how many logins go from one outcome to another, and some of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The outcome under the current settings.
    pub from: Outcome,
    /// The outcome under the proposed settings.
    pub to: Outcome,
    pub count: u64,
    /// Up to five external ids of those logins, in the order they were read.
    pub examples: Vec<String>,
}

/// The table being built: bounded by the number of outcome pairs, whatever the logins.
#[derive(Debug, Default)]
pub struct Tally {
    logins: u64,
    rows: BTreeMap<(usize, usize), Row>,
}

fn rank(outcome: Outcome) -> usize {
    Outcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(usize::MAX)
}

impl Tally {
    /// Counts one login.
    pub fn add(&mut self, from: Outcome, to: Outcome, external_id: &str) {
        self.logins += 1;
        let row = self
            .rows
            .entry((rank(from), rank(to)))
            .or_insert_with(|| Row {
                from,
                to,
                count: 0,
                examples: Vec::new(),
            });
        row.count += 1;
        if row.examples.len() < EXAMPLES {
            row.examples.push(external_id.to_owned());
        }
    }

    /// The logins counted.
    pub fn logins(&self) -> u64 {
        self.logins
    }

    /// One row per pair that occurred, unchanged pairs included, in the order of the outcomes
    /// (current first).
    pub fn rows(self) -> Vec<Row> {
        self.rows.into_values().collect()
    }
}

/// The attributes unique in the pool once `proposed` replaces the connection: those the pool's
/// other connections list, and the proposal's own.
pub fn unique_after(
    others: &[ConnectionSettings],
    proposed: &ConnectionSettings,
) -> Vec<AttributeName> {
    let mut names: Vec<AttributeName> = others
        .iter()
        .filter(|c| c.identifier != proposed.identifier)
        .flat_map(|c| c.unique_attributes.iter().cloned())
        .chain(proposed.unique_attributes.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::domain::{Email, connection::ConnectionSpec};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    fn settings(association: &str, login_mode: &str, fields: &[&str]) -> ConnectionSettings {
        ConnectionSettings::validate(&ConnectionSpec {
            identifier: Some("corp".into()),
            user_pool_id: Some("pool-1".into()),
            association: Some(association.into()),
            login_mode: Some(login_mode.into()),
            match_fields: Some(fields.iter().map(|f| f.to_string()).collect()),
            default_country_code: Some("86".into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn profile(value: serde_json::Value) -> Profile {
        Profile::from_map(value.as_object().unwrap()).unwrap()
    }

    fn account(n: u128, email: &str) -> PoolUser {
        PoolUser {
            id: Uuid::from_u128(n),
            email: Some(Email::parse(email).unwrap()),
            email_verified: true,
            ..PoolUser::default()
        }
    }

    fn outcome(settings: &ConnectionSettings, accounts: &Accounts<'_>, p: &Profile) -> Outcome {
        first_login(p, settings, &[], accounts, now())
    }

    #[test]
    fn the_identitys_own_account_is_a_candidate_again() {
        let mut own = account(1, "zhang@example.com");
        own.linked_on_connection = true;
        let users = [own];
        let p = profile(json!({"email": "Zhang@Example.com", "email_verified": true}));
        let matching = settings("field_matching", "normal", &["email"]);
        let linked = Accounts {
            users: &users,
            own_account: Some(Uuid::from_u128(1)),
        };
        assert_eq!(outcome(&matching, &linked, &p), Outcome::UserLinked);
        // The same account holding another identity of the connection is set aside.
        let other = Accounts {
            users: &users,
            own_account: None,
        };
        assert_eq!(outcome(&matching, &other, &p), Outcome::BindingPending);
    }

    #[test]
    fn first_logins_under_each_mode() {
        let users = [account(1, "zhang@example.com")];
        let accounts = Accounts {
            users: &users,
            own_account: None,
        };
        let known = profile(json!({"email": "zhang@example.com", "email_verified": true}));
        let unknown = profile(json!({"email": "li@example.com", "email_verified": true}));
        let unverified = profile(json!({"email": "zhang@example.com"}));
        let disabled = settings("disabled", "normal", &["email"]);
        let matching = settings("field_matching", "normal", &["email"]);
        let asking = settings("ask_binding", "normal", &["email"]);
        let only = settings("field_matching", "login_only", &["email"]);
        assert_eq!(outcome(&disabled, &accounts, &known), Outcome::UserCreated);
        assert_eq!(outcome(&matching, &accounts, &known), Outcome::UserLinked);
        assert_eq!(outcome(&asking, &accounts, &known), Outcome::BindingPending);
        assert_eq!(outcome(&only, &accounts, &known), Outcome::UserLinked);
        assert_eq!(outcome(&only, &accounts, &unknown), Outcome::Rejected);
        assert_eq!(
            outcome(&matching, &accounts, &unknown),
            Outcome::UserCreated
        );
        // require_verified: an unverified email matches nobody.
        assert_eq!(outcome(&only, &accounts, &unverified), Outcome::Rejected);
    }

    #[test]
    fn accounts_sharing_no_value_are_not_candidates() {
        // The caller may hand over every account a chunk of logins found.
        let users = [
            account(1, "zhang@example.com"),
            account(2, "li@example.com"),
        ];
        let accounts = Accounts {
            users: &users,
            own_account: None,
        };
        let p = profile(json!({"email": "zhang@example.com", "email_verified": true}));
        let matching = settings("field_matching", "normal", &["email"]);
        assert_eq!(outcome(&matching, &accounts, &p), Outcome::UserLinked);
    }

    #[test]
    fn the_tally_keeps_five_examples_and_orders_rows_by_outcome() {
        let mut tally = Tally::default();
        for i in 0..7 {
            tally.add(
                Outcome::UserCreated,
                Outcome::UserLinked,
                &format!("id-{i}"),
            );
        }
        tally.add(Outcome::Rejected, Outcome::Rejected, "r");
        tally.add(Outcome::ExistingUser, Outcome::UserCreated, "e");
        assert_eq!(tally.logins(), 9);
        let rows = tally.rows();
        let pairs: Vec<_> = rows.iter().map(|r| (r.from, r.to, r.count)).collect();
        assert_eq!(
            pairs,
            [
                (Outcome::ExistingUser, Outcome::UserCreated, 1),
                (Outcome::UserCreated, Outcome::UserLinked, 7),
                (Outcome::Rejected, Outcome::Rejected, 1),
            ]
        );
        assert_eq!(rows[1].examples, ["id-0", "id-1", "id-2", "id-3", "id-4"]);
    }

    #[test]
    fn unique_attributes_after_a_change() {
        let mut other = settings("disabled", "normal", &["email"]);
        other.identifier = crate::domain::ConnectionId::parse("other").unwrap();
        other.unique_attributes = vec![AttributeName::parse("badge").unwrap()];
        let mut current = settings("disabled", "normal", &["email"]);
        current.unique_attributes = vec![AttributeName::parse("employee_id").unwrap()];
        let proposed = settings("disabled", "normal", &["email"]);
        let names = unique_after(&[other.clone(), current], &proposed);
        assert_eq!(names, [AttributeName::parse("badge").unwrap()]);
        let mut proposed = proposed;
        proposed.unique_attributes = vec![AttributeName::parse("seat").unwrap()];
        let names = unique_after(&[other], &proposed);
        assert_eq!(
            names,
            [
                AttributeName::parse("badge").unwrap(),
                AttributeName::parse("seat").unwrap()
            ]
        );
    }
}
