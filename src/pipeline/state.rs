//! What a batch knows of the database after taking its locks, kept up to date in memory as the
//! batch's events are decided one after another, so that a later event of the same batch sees the
//! users, links and bindings an earlier one created.

use std::collections::HashMap;

use uuid::Uuid;

use crate::db::{batch::Snapshot, users::MatchRow};
use crate::domain::{
    decision::Outcome,
    decision::{BindingReason, NewUserFields, PendingBinding, Situation},
    effects::Identity,
    events::Reply,
    login::{LoginEvent, NormalizedFields},
};

/// An external identity: (pool, connection, external id).
pub type IdentityKey = Identity;

pub fn identity_key(event: &LoginEvent) -> IdentityKey {
    Identity::of(event)
}

#[derive(Default)]
pub struct BatchState {
    processed: HashMap<(String, String), Reply>,
    links: HashMap<IdentityKey, Uuid>,
    pending: HashMap<IdentityKey, PendingBinding>,
    /// The pool users the batch's logins share a value with, and the users it created.
    users: Vec<MatchRow>,
}

impl BatchState {
    pub fn load(snapshot: Snapshot) -> Self {
        let Snapshot {
            processed,
            links,
            pending,
            users,
        } = snapshot;
        let mut state = Self::default();
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
                row.user_id,
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

    pub fn situation(&self, event: &LoginEvent, fields: &NormalizedFields) -> Situation {
        let key = identity_key(event);
        let pool = event.user_pool_id.as_str();
        let connection = event.connection.as_str();
        fn holds<T: PartialEq>(value: Option<&T>, stored: &Option<T>) -> bool {
            value.is_some() && value == stored.as_ref()
        }
        let pool_users = self
            .users
            .iter()
            .filter(|u| u.user_pool_id == pool)
            .filter(|u| {
                holds(fields.email.value(), &u.email)
                    || holds(fields.phone.value(), &u.phone)
                    || holds(fields.username.value(), &u.username)
            })
            .map(|u| u.pool_user(connection))
            .collect();
        Situation {
            linked_user: self.links.get(&key).copied(),
            pending_binding: self.pending.get(&key).cloned(),
            pool_users,
        }
    }

    pub fn expire_binding(&mut self, key: &IdentityKey) {
        self.pending.remove(key);
    }

    pub fn open_binding(&mut self, key: IdentityKey, binding: PendingBinding) {
        self.pending.insert(key, binding);
    }

    pub fn link(&mut self, key: IdentityKey, user_id: Uuid) {
        if let Some(user) = self.users.iter_mut().find(|u| u.id == user_id) {
            user.linked_connections.push(key.connection.clone());
        }
        self.links.insert(key, user_id);
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
            protected: false,
            linked_connections: Vec::new(),
        });
    }
}
