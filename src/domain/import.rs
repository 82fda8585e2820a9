//! The rules of importing an account line (`users import`, `POST /v1/users`), beside the login
//! decision's: each line is all-or-nothing; an identical account is the line's, a value held by
//! another account refuses it, and identities are linked ahead only to an account named by its
//! id or added by the same import. The reading and writing around them is `bulk`'s.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::{Value, json};
use uuid::Uuid;

use super::account::UserRecord;
use super::attributes::{self, AttributeName};
use super::connection::ConnectionId;
use super::effects::Identity;

/// An identity linked ahead of its first login: (connection, external id) in the account's pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AheadIdentity {
    pub connection: ConnectionId,
    pub external_id: String,
}

/// One readable line of the file: its number, the account it describes, and its identities.
#[derive(Debug, Clone)]
pub struct Line {
    pub number: u64,
    pub record: UserRecord,
    /// The line named the account's id (then a different account with that id is a conflict).
    pub explicit_id: bool,
    pub identities: Vec<AheadIdentity>,
}

/// What became of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// A new account, `user_id`, with `identities` identities linked.
    Added { user_id: Uuid, identities: usize },
    /// The account `user_id` was there already; `identities` of the line's identities were
    /// linked now.
    Unchanged { user_id: Uuid, identities: usize },
    /// Nothing was written for the line: why.
    Failed(Refused),
}

/// Why a line was refused: a stable code (the admin API's error code) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// `id_taken`, `id_required`, `field_taken`, `identity_taken`, `identity_pending`,
    /// `account_suspended` or
    /// `invalid_field`.
    pub code: &'static str,
    pub message: String,
}

pub fn refused(code: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

impl Line {
    /// The advisory locks deciding this line takes.
    pub fn locks(&self) -> usize {
        let r = &self.record;
        usize::from(self.explicit_id)
            + usize::from(r.email.is_some())
            + usize::from(r.phone.is_some())
            + usize::from(r.username.is_some())
            + r.attributes.len()
            + usize::from(!r.attributes.is_empty())
            + self.identities.len()
    }
}

/// The accounts, identities and bindings a chunk of lines touches, as the database has them after
/// its locks (filled by the reader with the `add_*` methods), updated as the chunk's lines are
/// accepted one after another.
#[derive(Default)]
pub struct ImportView {
    users: HashMap<Uuid, UserRecord>,
    /// The account holding each value (of a unique attribute only, by its skeleton).
    values: HashMap<HeldValue, Uuid>,
    identities: HashMap<IdentityKey, Uuid>,
    /// The connections each account holds an identity of.
    connections: HashMap<Uuid, HashSet<String>>,
    pending: HashSet<IdentityKey>,
    unique: HashSet<(String, String)>,
    /// The pools having a connection of each identifier the chunk's identities name.
    connection_pools: HashMap<String, Vec<String>>,
    /// Accounts this chunk added (an earlier line of the chunk may link more identities to one).
    created: HashSet<Uuid>,
    /// Suspended accounts (contract section 11): no identity is linked to them.
    suspended: HashSet<Uuid>,
}

/// A value an account holds, as lines are compared on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HeldValue {
    pool: String,
    field: Field,
    /// The value in canonical form (a unique attribute's: its skeleton).
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Field {
    Email,
    Phone,
    Username,
    /// A unique attribute.
    Attribute(AttributeName),
}

/// As refusals name it: `email`, `phone`, `username`, `attributes.<name>`.
impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Email => f.write_str("email"),
            Self::Phone => f.write_str("phone"),
            Self::Username => f.write_str("username"),
            Self::Attribute(name) => write!(f, "attributes.{name}"),
        }
    }
}

/// An identity as the view keys it: (pool, connection, external id).
type IdentityKey = (String, String, String);

fn key_of(identity: Identity) -> IdentityKey {
    (
        identity.user_pool_id,
        identity.connection,
        identity.external_id,
    )
}

/// What the accepted lines of a chunk write.
#[derive(Debug, Default)]
pub struct ImportWrites {
    pub users: Vec<UserRecord>,
    pub identities: Vec<LinkedAhead>,
}

/// An identity linked ahead of its first login, with the snapshot it starts with.
#[derive(Debug, Clone)]
pub struct LinkedAhead {
    pub identity: Identity,
    pub user_id: Uuid,
    pub snapshot: Value,
}

impl ImportView {
    /// The values `record` holds; attributes only where unique in the pool.
    fn keys_of(&self, record: &UserRecord) -> Vec<HeldValue> {
        let pool = &record.user_pool_id;
        let mut keys = Vec::new();
        let mut push = |field: Field, value: Option<&str>| {
            if let Some(value) = value {
                keys.push(HeldValue {
                    pool: pool.clone(),
                    field,
                    value: value.to_owned(),
                });
            }
        };
        push(Field::Email, record.email.as_ref().map(|e| e.as_str()));
        push(Field::Phone, record.phone.as_ref().map(|p| p.as_str()));
        push(
            Field::Username,
            record.username.as_ref().map(|u| u.as_str()),
        );
        for (name, value) in &record.attributes {
            if self
                .unique
                .contains(&(pool.clone(), name.as_str().to_owned()))
            {
                // Lookalikes are one value where the pool promises uniqueness.
                let skeleton = attributes::skeleton(value);
                push(Field::Attribute(name.clone()), Some(&skeleton));
            }
        }
        keys
    }

    /// An account as stored, with the connections it holds identities of.
    pub fn add_stored_user(&mut self, record: UserRecord, connections: HashSet<String>) {
        self.connections.insert(record.id, connections);
        self.add_user(record);
    }

    /// A stored account that is suspended.
    pub fn add_suspended(&mut self, user_id: Uuid) {
        self.suspended.insert(user_id);
    }

    /// An identity as stored: linked to `user_id`.
    pub fn add_identity(&mut self, identity: Identity, user_id: Uuid) {
        self.identities.insert(key_of(identity), user_id);
    }

    /// An identity with a pending binding.
    pub fn add_pending(&mut self, identity: Identity) {
        self.pending.insert(key_of(identity));
    }

    /// An attribute unique in a pool.
    pub fn add_unique(&mut self, pool: String, name: String) {
        self.unique.insert((pool, name));
    }

    /// A pool having a connection `identifier`.
    pub fn add_connection(&mut self, identifier: String, pool: String) {
        self.connection_pools
            .entry(identifier)
            .or_default()
            .push(pool);
    }

    fn add_user(&mut self, record: UserRecord) {
        for key in self.keys_of(&record) {
            self.values.insert(key, record.id);
        }
        self.users.insert(record.id, record);
    }

    /// What becomes of the line; when it is accepted, what it writes is added to `writes` and to
    /// the view (a later line of the chunk sees it).
    pub fn decide(&mut self, line: &Line, writes: &mut ImportWrites) -> Imported {
        let (target, added) = match self.account_of(line) {
            Ok(found) => found,
            Err(reason) => return Imported::Failed(reason),
        };
        let identities = match self.identities_to_link(line, target) {
            Ok(identities) => identities,
            Err(reason) => return Imported::Failed(reason),
        };
        if !identities.is_empty() && self.suspended.contains(&target) {
            return Imported::Failed(refused(
                crate::domain::leavers::ACCOUNT_SUSPENDED,
                format!(
                    "user {target} is suspended: reactivate it before linking identities to it"
                ),
            ));
        }
        // An account found by its values alone (no id on the line) gets no new identity: equal
        // values are not proof enough that the identity is that account's.
        if !added && !line.explicit_id && !identities.is_empty() && !self.created.contains(&target)
        {
            return Imported::Failed(refused(
                "id_required",
                format!(
                    "user {target} exists: name it by its id to link identities to it (users \
                     export writes the ids)"
                ),
            ));
        }
        let pool = line.record.user_pool_id.clone();
        if added {
            let record = UserRecord {
                id: target,
                ..line.record.clone()
            };
            writes.users.push(record.clone());
            self.created.insert(record.id);
            self.add_user(record);
        }
        if !identities.is_empty() {
            let snapshot = snapshot_of(&self.users[&target]);
            for identity in &identities {
                let connection = identity.connection.as_str().to_owned();
                self.identities.insert(
                    (
                        pool.clone(),
                        connection.clone(),
                        identity.external_id.clone(),
                    ),
                    target,
                );
                self.connections
                    .entry(target)
                    .or_default()
                    .insert(connection.clone());
                writes.identities.push(LinkedAhead {
                    identity: Identity {
                        user_pool_id: pool.clone(),
                        connection,
                        external_id: identity.external_id.clone(),
                    },
                    user_id: target,
                    snapshot: snapshot.clone(),
                });
            }
        }
        let identities = identities.len();
        if added {
            Imported::Added {
                user_id: target,
                identities,
            }
        } else {
            Imported::Unchanged {
                user_id: target,
                identities,
            }
        }
    }

    /// The account the line is about, and whether it is new: an identical account is the line's
    /// (unless the line names another id); a value held by another account refuses the line.
    fn account_of(&self, line: &Line) -> Result<(Uuid, bool), Refused> {
        let record = &line.record;
        if line.explicit_id
            && let Some(existing) = self.users.get(&record.id)
        {
            return if existing == record {
                Ok((record.id, false))
            } else {
                Err(refused(
                    "id_taken",
                    format!("user id {} already exists with other fields", record.id),
                ))
            };
        }
        let keys = self.keys_of(record);
        let mut holders: Vec<Uuid> = keys
            .iter()
            .filter_map(|k| self.values.get(k).copied())
            .collect();
        holders.sort_unstable();
        holders.dedup();
        if let [holder] = holders.as_slice() {
            let same = UserRecord {
                id: *holder,
                ..record.clone()
            } == self.users[holder];
            if same && !line.explicit_id {
                return Ok((*holder, false));
            }
        }
        let taken: Vec<String> = keys
            .iter()
            .filter_map(|key| {
                let holder = self.values.get(key)?;
                (*holder != record.id).then(|| format!("{} is held by user {holder}", key.field))
            })
            .collect();
        if taken.is_empty() {
            Ok((record.id, true))
        } else {
            Err(refused("field_taken", taken.join("; ")))
        }
    }

    /// The line's identities not linked yet; an error when one cannot be linked to `target`.
    fn identities_to_link(&self, line: &Line, target: Uuid) -> Result<Vec<AheadIdentity>, Refused> {
        let pool = &line.record.user_pool_id;
        let held = self.connections.get(&target);
        let mut link = Vec::new();
        let mut seen = HashSet::new();
        for identity in &line.identities {
            let connection = identity.connection.as_str();
            let key = (
                pool.clone(),
                connection.to_owned(),
                identity.external_id.clone(),
            );
            let named = format!("identity {connection}/{}", identity.external_id);
            // A connection is named inside its pool: one of another pool is not this line's
            // (only a connection unknown everywhere may be linked ahead of its creation).
            if let Some(pools) = self.connection_pools.get(connection)
                && !pools.contains(pool)
            {
                return Err(refused(
                    "invalid_field",
                    format!(
                        "{named}: connection {connection} belongs to user pool {}, not to this \
                         account's pool {pool}",
                        pools.join(", ")
                    ),
                ));
            }
            if !seen.insert(connection) {
                return Err(refused(
                    "invalid_field",
                    format!(
                        "two identities of connection {connection}: an account holds one per \
                         connection"
                    ),
                ));
            }
            match self.identities.get(&key) {
                Some(owner) if *owner == target => continue,
                Some(owner) => {
                    return Err(refused(
                        "identity_taken",
                        format!("{named} is linked to user {owner}"),
                    ));
                }
                None => {}
            }
            if self.pending.contains(&key) {
                return Err(refused(
                    "identity_pending",
                    format!("{named} has a pending binding: resolve it before linking it ahead"),
                ));
            }
            if held.is_some_and(|c| c.contains(connection)) {
                return Err(refused(
                    "identity_taken",
                    format!(
                        "{named}: user {target} already holds an identity of connection \
                         {connection}"
                    ),
                ));
            }
            link.push(identity.clone());
        }
        Ok(link)
    }
}

/// The snapshot an identity linked ahead starts with: the account's own identifiers, so that its
/// first login reports as changed only what differs from them.
fn snapshot_of(user: &UserRecord) -> Value {
    json!({
        "email": user.email.as_ref().map(|e| e.as_str()),
        "email_verified": user.email_verified,
        "phone": user.phone.as_ref().map(|p| p.as_str()),
        "phone_verified": user.phone_verified,
        "username": user.username.as_ref().map(|u| u.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Email;

    fn account(id: u128, email: &str) -> UserRecord {
        UserRecord {
            id: Uuid::from_u128(id),
            user_pool_id: "pool-1".into(),
            email: Some(Email::parse(email).unwrap()),
            email_verified: true,
            phone: None,
            phone_verified: false,
            username: None,
            name: None,
            protected: false,
            attributes: Default::default(),
        }
    }

    fn line(record: UserRecord, explicit_id: bool, identities: &[&str]) -> Line {
        Line {
            number: 1,
            record,
            explicit_id,
            identities: identities
                .iter()
                .map(|x| AheadIdentity {
                    connection: ConnectionId::parse("dingtalk").unwrap(),
                    external_id: (*x).to_owned(),
                })
                .collect(),
        }
    }

    fn code(imported: Imported) -> &'static str {
        match imported {
            Imported::Added { .. } => "added",
            Imported::Unchanged { .. } => "unchanged",
            Imported::Failed(refused) => refused.code,
        }
    }

    #[test]
    fn each_rule_of_a_line_one_row_per_sentence() {
        let stored = account(1, "zs@corp.example");
        let identity = |x: &str| Identity {
            user_pool_id: "pool-1".into(),
            connection: "dingtalk".into(),
            external_id: x.into(),
        };
        let view = || {
            let mut view = ImportView::default();
            view.add_stored_user(stored.clone(), HashSet::new());
            view.add_identity(identity("taken"), Uuid::from_u128(9));
            view.add_pending(identity("waiting"));
            view
        };
        let cases = [
            // The same account again is that account, unchanged.
            (line(account(2, "zs@corp.example"), false, &[]), "unchanged"),
            // Named by its id with other values: the id is taken.
            (
                line(account(1, "other@corp.example"), true, &[]),
                "id_taken",
            ),
            // Another account holding its email refuses it.
            (
                line(
                    UserRecord {
                        name: Some("Li Si".into()),
                        ..account(2, "zs@corp.example")
                    },
                    false,
                    &[],
                ),
                "field_taken",
            ),
            // Found by its values alone, it gets no identity: its id must be named.
            (
                line(account(2, "zs@corp.example"), false, &["new"]),
                "id_required",
            ),
            // Named by its id, it gets one.
            (line(stored.clone(), true, &["new"]), "unchanged"),
            // An identity linked to someone else, or waiting for an admin, is not linked ahead.
            (line(stored.clone(), true, &["taken"]), "identity_taken"),
            (line(stored.clone(), true, &["waiting"]), "identity_pending"),
            // Two identities of one connection cannot be one account's.
            (line(stored.clone(), true, &["a", "b"]), "invalid_field"),
            // A new account with its identity is added.
            (
                line(account(3, "ww@corp.example"), false, &["new"]),
                "added",
            ),
        ];
        for (n, (line, expected)) in cases.into_iter().enumerate() {
            let mut writes = ImportWrites::default();
            assert_eq!(
                code(view().decide(&line, &mut writes)),
                expected,
                "case {n}"
            );
            let wrote = !writes.users.is_empty() || !writes.identities.is_empty();
            let accepted = matches!(expected, "added" | "unchanged");
            assert!(wrote <= accepted, "case {n}: a refused line writes nothing");
        }
    }

    #[test]
    fn a_suspended_account_gets_no_identity_ahead() {
        let stored = account(1, "zs@corp.example");
        let mut view = ImportView::default();
        view.add_stored_user(stored.clone(), HashSet::new());
        view.add_suspended(stored.id);
        let mut writes = ImportWrites::default();
        assert_eq!(
            code(view.decide(&line(stored.clone(), true, &["new"]), &mut writes)),
            "account_suspended"
        );
        assert!(writes.identities.is_empty());
        // Named without an identity, it is the same account, unchanged.
        assert_eq!(
            code(view.decide(&line(stored, true, &[]), &mut writes)),
            "unchanged"
        );
    }

    #[test]
    fn a_later_line_sees_what_an_earlier_one_added_and_refusals_name_the_field() {
        let mut view = ImportView::default();
        view.add_unique("pool-1".into(), "employee_id".into());
        let with_id = |id: u128, email: &str, value: &str| UserRecord {
            attributes: [(
                AttributeName::parse("employee_id").unwrap(),
                value.to_owned(),
            )]
            .into(),
            ..account(id, email)
        };
        let mut writes = ImportWrites::default();
        let first = view.decide(
            &line(with_id(1, "a@corp.example", "E1024"), false, &[]),
            &mut writes,
        );
        assert_eq!(code(first), "added");
        // A lookalike of a unique attribute's value (a Cyrillic Е) is that value.
        let second = view.decide(
            &line(with_id(2, "b@corp.example", "Е1024"), false, &[]),
            &mut writes,
        );
        let Imported::Failed(refused) = second else {
            panic!("{second:?}");
        };
        assert_eq!(refused.code, "field_taken");
        assert!(
            refused
                .message
                .starts_with("attributes.employee_id is held by user"),
            "{}",
            refused.message
        );
        assert_eq!(writes.users.len(), 1);
    }
}
