//! What a batch knows of the database after taking its locks, kept up to date in memory as the
//! batch's events are decided one after another, so that a later event of the same batch sees the
//! users, links and bindings an earlier one created.

use std::collections::HashMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::db::{batch::Snapshot, users::MatchRow};
use crate::domain::{
    ConnectionSettings,
    attributes::AttributeName,
    decision::{self, Outcome},
    decision::{
        BindingReason, NewUserFields, PendingBinding, Situation,
        drift::{LinkedAccount, UserUpdate},
    },
    effects::Identity,
    events::{Reply, UserSummary},
    login::{LoginEvent, NormalizedFields, Profile},
};

/// A linked identity: its account, and the identifiers of its last snapshot.
struct Link {
    user_id: Uuid,
    snapshot: Map<String, Value>,
}

/// The profile keys a snapshot keeps to tell changed identifiers.
const SNAPSHOT_KEYS: [&str; 5] = [
    "email",
    "email_verified",
    "phone",
    "phone_verified",
    "username",
];

fn snapshot_of(profile: &Map<String, Value>) -> Map<String, Value> {
    SNAPSHOT_KEYS
        .iter()
        .map(|k| {
            (
                (*k).to_owned(),
                profile.get(*k).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// An external identity: (pool, connection, external id).
pub type IdentityKey = Identity;

pub fn identity_key(event: &LoginEvent) -> IdentityKey {
    Identity::of(event)
}

#[derive(Default)]
pub struct BatchState {
    processed: HashMap<(String, String), Reply>,
    links: HashMap<IdentityKey, Link>,
    pending: HashMap<IdentityKey, PendingBinding>,
    /// The pool users the batch's logins share a value with, and the users it created.
    users: Vec<MatchRow>,
    /// The unique attributes of the batch's pools, by pool.
    unique_attributes: HashMap<String, Vec<AttributeName>>,
}

impl BatchState {
    pub fn load(snapshot: Snapshot) -> Self {
        let Snapshot {
            processed,
            links,
            pending,
            users,
            unique_attributes,
        } = snapshot;
        let mut state = Self::default();
        for row in unique_attributes {
            if let Ok(name) = AttributeName::parse(&row.name) {
                state
                    .unique_attributes
                    .entry(row.user_pool_id)
                    .or_default()
                    .push(name);
            }
        }
        for row in processed {
            let reply = Reply {
                event_id: Some(row.event_id.clone()),
                outcome: Outcome::parse(&row.outcome).unwrap_or(Outcome::Error),
                user_id: row.user_id,
                binding_id: row.binding_id,
                reason: row.reason,
            };
            state.processed.insert((row.source, row.event_id), reply);
        }
        for row in links {
            state.links.insert(
                Identity {
                    user_pool_id: row.user_pool_id,
                    connection: row.connection,
                    external_id: row.external_id,
                },
                Link {
                    user_id: row.user_id,
                    snapshot: row.snapshot,
                },
            );
        }
        for row in pending {
            // A reason the program does not know (a newer version wrote it) still means pending.
            let reason = BindingReason::parse(&row.reason).unwrap_or(BindingReason::AskBinding);
            state.pending.insert(
                Identity {
                    user_pool_id: row.user_pool_id,
                    connection: row.connection,
                    external_id: row.external_id,
                },
                PendingBinding {
                    id: row.id,
                    reason,
                    expires_at: row.expires_at,
                },
            );
        }
        state.users = users;
        state
    }

    pub fn processed(&self, event: &LoginEvent) -> Option<&Reply> {
        self.processed
            .get(&(event.source.clone(), event.id.clone()))
    }

    pub fn record_processed(&mut self, event: &LoginEvent, reply: Reply) {
        self.processed
            .insert((event.source.clone(), event.id.clone()), reply);
    }

    pub fn situation(
        &self,
        event: &LoginEvent,
        fields: &NormalizedFields,
        settings: &ConnectionSettings,
    ) -> Situation {
        let key = identity_key(event);
        let pool = event.user_pool_id.as_str();
        let connection = event.connection.as_str();
        let pool_users = self
            .users
            .iter()
            .filter(|u| u.user_pool_id == pool)
            .filter(|u| {
                decision::shares_a_value(
                    fields,
                    u.email.as_ref(),
                    u.phone.as_ref(),
                    u.username.as_ref(),
                    &u.attributes,
                )
            })
            .map(|u| u.pool_user(connection))
            .collect();
        let link = self.links.get(&key);
        Situation {
            linked_user: link.map(|l| l.user_id),
            linked_account: link.and_then(|l| self.linked_account(l, event, fields, settings)),
            pending_binding: self.pending.get(&key).cloned(),
            pool_users,
            unique_attributes: self
                .unique_attributes
                .get(pool)
                .cloned()
                .unwrap_or_default(),
        }
    }

    pub fn expire_binding(&mut self, key: &IdentityKey) {
        self.pending.remove(key);
    }

    pub fn open_binding(&mut self, key: IdentityKey, binding: PendingBinding) {
        self.pending.insert(key, binding);
    }

    /// The account of a linked identity with the identity's last snapshot normalised; `None`
    /// when the account was not read (it always is, with its identity).
    fn linked_account(
        &self,
        link: &Link,
        event: &LoginEvent,
        fields: &NormalizedFields,
        settings: &ConnectionSettings,
    ) -> Option<LinkedAccount> {
        let user = self.users.iter().find(|u| u.id == link.user_id)?;
        let raw = &event.profile.raw;
        let unchanged = SNAPSHOT_KEYS
            .iter()
            .all(|k| raw.get(*k).unwrap_or(&Value::Null) == &link.snapshot[*k]);
        // Most returning logins carry what they carried last time: nothing to read again.
        let snapshot = if unchanged {
            fields.clone()
        } else {
            let profile = Profile::from_map(&link.snapshot).unwrap_or_default();
            NormalizedFields::of(&profile, settings)
        };
        Some(LinkedAccount {
            user: UserSummary {
                id: user.id,
                email: user.email.clone(),
                phone: user.phone.clone(),
                username: user.username.clone(),
                name: user.name.clone(),
                attributes: user.attributes.clone(),
            },
            protected: user.protected,
            snapshot,
        })
    }

    /// A linked identity's login: its profile is the snapshot the next login is compared with.
    pub fn touch(&mut self, key: &IdentityKey, profile: &Map<String, Value>) {
        if let Some(link) = self.links.get_mut(key) {
            link.snapshot = snapshot_of(profile);
        }
    }

    pub fn link(&mut self, key: IdentityKey, user_id: Uuid, profile: &Map<String, Value>) {
        if let Some(user) = self.users.iter_mut().find(|u| u.id == user_id) {
            user.linked_connections.push(key.connection.clone());
        }
        let snapshot = snapshot_of(profile);
        self.links.insert(key, Link { user_id, snapshot });
    }

    /// Changed identifiers copied onto an account: later logins of the batch see its new values.
    pub fn update_user(&mut self, user_id: Uuid, update: &UserUpdate) {
        if let Some(user) = self.users.iter_mut().find(|u| u.id == user_id) {
            user.email = update.user.email.clone();
            user.phone = update.user.phone.clone();
            user.username = update.user.username.clone();
        }
    }

    /// A user the batch created, so that later logins of the batch see it.
    pub fn add_user(&mut self, id: Uuid, pool: &str, new: &NewUserFields) {
        self.users.push(MatchRow {
            id,
            user_pool_id: pool.to_owned(),
            email: new.email.clone(),
            email_verified: new.email_verified,
            phone: new.phone.clone(),
            phone_verified: new.phone_verified,
            username: new.username.clone(),
            name: new.name.clone(),
            attributes: new.attributes.clone(),
            protected: false,
            linked_connections: Vec::new(),
        });
    }
}
