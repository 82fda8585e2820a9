//! What a batch knows of the database after taking its locks, kept up to date in memory as the
//! batch's logins are decided one after another, so that a later login of the same batch sees the
//! users, links and bindings an earlier one created. Each login's effects are applied here, once;
//! what the batch writes is derived from what changed ([`BatchState::into_writes`]).

use std::collections::HashMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::db::{
    batch::BatchRead,
    bindings::BindingRecord,
    identities::{IdentifierSnapshot, IdentityRecord},
    outbox::NewOutbox,
    processed::ProcessedRecord,
    users::{MatchRow, ProfileUpdate, UserRecord},
};
use crate::domain::{
    ConnectionSettings,
    attributes::AttributeName,
    decision::{self, Outcome},
    decision::{
        BindingReason, NewUserFields, PendingBinding, Situation,
        drift::{LinkedAccount, UserUpdate},
    },
    effects::{Identity, LoginEffect, OpenBinding},
    events::{Reply, UserSummary},
    login::{LoginEvent, NormalizedFields, Profile},
};

/// A linked identity: its account, the identifiers of its last snapshot, and whether the batch
/// wrote it.
struct Link {
    user_id: Uuid,
    snapshot: IdentifierSnapshot,
    written: Option<Written>,
}

/// An identity the batch linked or refreshed: its latest profile, to be written.
struct Written {
    profile: Value,
    /// Linked by this batch (inserted), rather than stored before it (updated).
    linked: bool,
}

/// Everything a batch writes, derived from what changed in its view.
#[derive(Default)]
pub struct Writes {
    /// Pending bindings past their expiry.
    pub expired: Vec<Uuid>,
    pub users: Vec<UserRecord>,
    /// Identities the batch linked, each with its latest profile.
    pub linked: Vec<IdentityRecord>,
    /// Identities stored before the batch that it refreshed, each with its latest profile.
    pub touched: Vec<IdentityRecord>,
    pub bindings: Vec<BindingRecord>,
    pub processed: Vec<ProcessedRecord>,
    pub outbox: NewOutbox,
    /// Accounts whose identifiers a login changed, one each (merged), written after the rest: an
    /// account of the batch is created before it is updated.
    pub profile_updates: Vec<ProfileUpdate>,
}

#[derive(Default)]
pub struct BatchState {
    processed: HashMap<(String, String), Reply>,
    links: HashMap<Identity, Link>,
    pending: HashMap<Identity, PendingBinding>,
    /// The pool users the batch's logins share a value with, and the users it created.
    users: Vec<MatchRow>,
    /// The unique attributes of the batch's pools, by pool.
    unique_attributes: HashMap<String, Vec<AttributeName>>,
    /// The identities the batch wrote, in the order it first wrote them.
    written: Vec<Identity>,
    /// The writes that are not identities (those are derived from `links`).
    writes: Writes,
}

impl BatchState {
    pub fn load(snapshot: BatchRead) -> Self {
        let BatchRead {
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
                    written: None,
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

    /// A login decided: its dedupe record (with its decision's evidence), which a later copy of
    /// it in the batch finds.
    pub fn record_processed(
        &mut self,
        event: &LoginEvent,
        reply: Reply,
        settings_version: i64,
        evidence: Value,
    ) {
        self.writes.processed.push(ProcessedRecord::of(
            event,
            &reply,
            settings_version,
            evidence,
        ));
        self.processed
            .insert((event.source.clone(), event.id.clone()), reply);
    }

    /// A reply to enqueue with the batch's events.
    pub fn reply(&mut self, reply_to: &str, correlation_id: Option<&str>, reply: &Reply) {
        self.writes.outbox.reply(
            reply_to,
            correlation_id,
            serde_json::to_value(reply).expect("replies serialise"),
        );
    }

    /// Applies one effect of a login to the view, so that the next logins of the batch see it,
    /// and to what the batch will write.
    pub fn apply(&mut self, effect: LoginEffect, event: &LoginEvent) {
        let identity = Identity::of(event);
        match effect {
            LoginEffect::ExpireBinding { binding_id } => {
                self.pending.remove(&identity);
                self.writes.expired.push(binding_id);
            }
            LoginEffect::CreateUser { user_id, fields } => {
                self.add_user(user_id, &identity.user_pool_id, &fields);
                self.writes
                    .users
                    .push(UserRecord::new(user_id, &identity.user_pool_id, &fields));
            }
            LoginEffect::LinkIdentity { user_id } => {
                self.link(identity, user_id, &event.profile.raw);
            }
            LoginEffect::TouchIdentity { user_id } => {
                self.touch(identity, user_id, &event.profile.raw);
            }
            LoginEffect::UpdateUser { user_id, update } => self.update_user(user_id, &update),
            LoginEffect::OpenBinding(OpenBinding {
                binding_id,
                candidates,
                reason,
                expires_at,
            }) => {
                self.writes.bindings.push(BindingRecord::of_login(
                    binding_id,
                    event,
                    reason.as_str(),
                    candidates,
                    expires_at,
                ));
                self.pending.insert(
                    identity,
                    PendingBinding {
                        id: binding_id,
                        reason,
                        expires_at,
                    },
                );
            }
            LoginEffect::Emit(outbound) => self.writes.outbox.event(outbound),
        }
    }

    /// What the batch writes: its records, and each identity it wrote once, with its latest
    /// profile (an identity it linked is inserted with it, never inserted then updated).
    pub fn into_writes(mut self) -> Writes {
        for identity in std::mem::take(&mut self.written) {
            let Some(link) = self.links.remove(&identity) else {
                continue;
            };
            let Some(written) = link.written else {
                continue;
            };
            let record = IdentityRecord {
                user_pool_id: identity.user_pool_id,
                connection: identity.connection,
                external_id: identity.external_id,
                user_id: link.user_id,
                profile: written.profile,
            };
            if written.linked {
                self.writes.linked.push(record);
            } else {
                self.writes.touched.push(record);
            }
        }
        self.writes
    }

    pub fn situation(
        &self,
        event: &LoginEvent,
        fields: &NormalizedFields,
        settings: &ConnectionSettings,
    ) -> Situation {
        let key = Identity::of(event);
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
        let unchanged = IdentifierSnapshot::of(&event.profile.raw) == link.snapshot;
        // Most returning logins carry what they carried last time: nothing to read again.
        let snapshot = if unchanged {
            fields.clone()
        } else {
            let profile = Profile::from_map(&link.snapshot.to_profile()).unwrap_or_default();
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
            suspended: user.suspended,
            snapshot,
        })
    }

    /// A linked identity's login: its profile is the snapshot the next login is compared with.
    fn touch(&mut self, identity: Identity, user_id: Uuid, profile: &Map<String, Value>) {
        let link = self.links.entry(identity.clone()).or_insert_with(|| Link {
            user_id,
            snapshot: IdentifierSnapshot::default(),
            written: None,
        });
        link.snapshot = IdentifierSnapshot::of(profile);
        match &mut link.written {
            // The same identity twice in a batch: its latest profile wins.
            Some(written) => written.profile = Value::Object(profile.clone()),
            None => {
                link.written = Some(Written {
                    profile: Value::Object(profile.clone()),
                    linked: false,
                });
                self.written.push(identity);
            }
        }
    }

    fn link(&mut self, identity: Identity, user_id: Uuid, profile: &Map<String, Value>) {
        if let Some(user) = self.users.iter_mut().find(|u| u.id == user_id) {
            user.linked_connections.push(identity.connection.clone());
        }
        let link = Link {
            user_id,
            snapshot: IdentifierSnapshot::of(profile),
            written: Some(Written {
                profile: Value::Object(profile.clone()),
                linked: true,
            }),
        };
        self.links.insert(identity.clone(), link);
        self.written.push(identity);
    }

    /// Changed identifiers copied onto an account: later logins of the batch see its new values.
    fn update_user(&mut self, user_id: Uuid, update: &UserUpdate) {
        if let Some(user) = self.users.iter_mut().find(|u| u.id == user_id) {
            user.email = update.user.email.clone();
            user.phone = update.user.phone.clone();
            user.username = update.user.username.clone();
        }
        let updates = &mut self.writes.profile_updates;
        match updates.iter_mut().find(|u| u.id == user_id) {
            Some(merged) => merged.merge(update),
            None => {
                let mut first = ProfileUpdate::of(user_id);
                first.merge(update);
                updates.push(first);
            }
        }
    }

    /// A user the batch created, so that later logins of the batch see it.
    fn add_user(&mut self, id: Uuid, pool: &str, new: &NewUserFields) {
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
            suspended: false,
        });
    }
}
