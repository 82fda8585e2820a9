//! What a batch knows of the database after taking its locks, kept up to date in memory as the
//! batch's events are decided one after another, so that a later event of the same batch sees the
//! users, links and bindings an earlier one created.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::db::batch::Snapshot;
use crate::domain::{
    Email, Phone, Username,
    decision::Outcome,
    decision::{BindingReason, PendingBinding, PoolUser, Situation},
    events::Reply,
    login::{LoginEvent, NormalizedFields},
};

pub type IdentityKey = (String, String, String);

pub fn identity_key(event: &LoginEvent) -> IdentityKey {
    (
        event.user_pool_id.as_str().to_owned(),
        event.connection.as_str().to_owned(),
        event.external_id.clone(),
    )
}

struct KnownUser {
    id: Uuid,
    pool: String,
    email: Option<Email>,
    phone: Option<Phone>,
    username: Option<Username>,
    linked_connections: HashSet<String>,
}

#[derive(Default)]
pub struct BatchState {
    processed: HashMap<(String, String), Reply>,
    links: HashMap<IdentityKey, Uuid>,
    pending: HashMap<IdentityKey, PendingBinding>,
    users: Vec<KnownUser>,
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
                (row.user_pool_id, row.connection, row.external_id),
                row.user_id,
            );
        }
        for row in pending {
            // A reason the program does not know (a newer version wrote it) still means pending.
            let reason = BindingReason::parse(&row.reason).unwrap_or(BindingReason::AskBinding);
            state.pending.insert(
                (row.user_pool_id, row.connection, row.external_id),
                PendingBinding {
                    id: row.id,
                    reason,
                    expires_at: row.expires_at,
                },
            );
        }
        for row in users {
            state.users.push(KnownUser {
                id: row.id,
                pool: row.user_pool_id,
                // Stored values are normalised already; re-parsing them only guards against rows
                // edited by hand.
                email: row.email.and_then(|e| Email::parse(&e).ok()),
                phone: row.phone.map(Phone::from_e164),
                username: row.username.and_then(|u| Username::parse(&u).ok()),
                linked_connections: row.linked_connections.into_iter().collect(),
            });
        }
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
        let pool_users = self
            .users
            .iter()
            .filter(|u| u.pool == pool)
            .filter(|u| {
                (fields.email.is_some() && u.email == fields.email)
                    || (fields.phone.is_some() && u.phone == fields.phone)
                    || (fields.username.is_some() && u.username == fields.username)
            })
            .map(|u| PoolUser {
                id: u.id,
                email: u.email.clone(),
                phone: u.phone.clone(),
                username: u.username.clone(),
                linked_on_connection: u.linked_connections.contains(connection),
            })
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
            user.linked_connections.insert(key.1.clone());
        }
        self.links.insert(key, user_id);
    }

    pub fn add_user(
        &mut self,
        id: Uuid,
        pool: &str,
        email: Option<Email>,
        phone: Option<Phone>,
        username: Option<Username>,
    ) {
        self.users.push(KnownUser {
            id,
            pool: pool.to_owned(),
            email,
            phone,
            username,
            linked_connections: HashSet::new(),
        });
    }
}
