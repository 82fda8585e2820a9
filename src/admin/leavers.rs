//! Leavers and movers (contract section 11): what a source's removal, rename or restore does,
//! run for the directory events of the commands queue and for an admin's release of held
//! removals; an admin's reactivation of a suspended account.
//!
//! Every change takes the identity's lock (a login of the same identity is decided wholly
//! before or wholly after it) and, where it changes an account, the account's own lock and
//! those of its email, phone, username and attributes: a login of another identity that would
//! match the account waits, and then sees it suspended.

use chrono::Utc;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Actor, Admin, AdminError, views::UserView};
use crate::db::{
    audit, connections, identities, leavers as store,
    leavers::HeldRemoval,
    locks::LockSet,
    outbox::{self, NewOutbox, OutboxRow},
    users,
};
use crate::domain::{
    ConnectionSettings,
    command::CommandEvent,
    events::{
        ConnectionRemovalsHeld, IdentityRef, IdentityRenameRefused, IdentityRenamed,
        IdentitySourceRemoved, OutboundEvent, RemovalAction, UserReactivated, UserSuspended,
        UserSuspension, UserUnlinked,
    },
    leavers::{
        ChangeKind, DirectoryChange, DirectoryOutcome, DirectoryReply, OnSourceRemoval,
        SOURCE_REMOVED, SOURCE_RESTORED, Suspension,
    },
    login::{Rejection, RejectionKind},
};

/// The reply code of a removal the guard held.
pub const REMOVAL_GUARD: &str = "removal_guard";
/// The reply code of an event about an identity that is not linked.
pub const NOT_LINKED: &str = "not_linked";
/// The reply code of a restore whose person has no suspension of that source.
pub const NOT_SUSPENDED: &str = "not_suspended";
/// The reply code of a rename onto an id linked to another account.
pub const IDENTITY_TAKEN: &str = "identity_taken";
/// The reply code of an event for a connection whose stored settings no longer validate.
pub const CONNECTION_UNREADABLE: &str = "connection_unreadable";

/// How many times a removal reads its identity's account again when it moved meanwhile.
const ATTEMPTS: usize = 3;

/// Who a change is from: the removal's CloudEvents `source` and `id`, and who applies it (the
/// source itself, or the admin releasing a held removal).
struct Origin<'a> {
    source: &'a str,
    event_id: &'a str,
    actor: &'a str,
}

/// What one change did: its outcome and code, and the outbox rows written.
struct Done {
    outcome: DirectoryOutcome,
    code: Option<&'static str>,
    published: Vec<OutboxRow>,
}

impl Done {
    /// Its effects, committed with these outbox rows.
    fn applied(published: Vec<OutboxRow>) -> Self {
        Self {
            outcome: DirectoryOutcome::Done,
            code: None,
            published,
        }
    }

    fn nothing(outcome: DirectoryOutcome, code: &'static str) -> Self {
        Self {
            outcome,
            code: Some(code),
            published: Vec::new(),
        }
    }
}

/// One held removal released: its identity and what became of it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Released {
    pub external_id: String,
    /// `done` or `ignored` (the identity is no longer linked).
    pub outcome: String,
    pub code: Option<String>,
}

impl Admin {
    /// Runs a directory event in `tx`: its reply and outbox rows, or the rejection that
    /// dead-letters it (an unknown connection), in which case nothing may be committed.
    pub(crate) async fn directory_change_in(
        &self,
        tx: &mut PgConnection,
        event: &CommandEvent,
        change: &DirectoryChange,
    ) -> sqlx::Result<Result<(DirectoryReply, Vec<OutboxRow>), Rejection>> {
        let pool = change.user_pool_id.as_str();
        let connection = change.connection.as_str();
        let settings = match connections::get_stored(tx, pool, connection).await? {
            None => {
                return Ok(Err(Rejection::new(
                    RejectionKind::UnknownConnection,
                    format!("user pool {pool:?} has no connection {connection:?}"),
                )));
            }
            Some(Err(unreadable)) => {
                tracing::warn!(
                    pool,
                    connection,
                    problem = unreadable.problem.as_str(),
                    "a directory event for a connection whose settings do not validate is refused"
                );
                let reply = DirectoryReply::new(
                    &event.id,
                    DirectoryOutcome::Refused,
                    Some(CONNECTION_UNREADABLE),
                );
                return Ok(Ok((reply, Vec::new())));
            }
            Some(Ok(settings)) => settings,
        };
        let origin = Origin {
            source: &event.source,
            event_id: &event.id,
            actor: &event.source,
        };
        let done = match &change.kind {
            ChangeKind::Removed {
                occurred_at,
                source_event,
            } => {
                let held = HeldRemoval {
                    user_pool_id: pool.to_owned(),
                    connection: connection.to_owned(),
                    external_id: change.external_id.clone(),
                    source: event.source.clone(),
                    event_id: event.id.clone(),
                    source_event: source_event.clone(),
                    occurred_at: *occurred_at,
                    held_at: Utc::now(),
                };
                self.removed_in(tx, &settings, &change.external_id, &origin, Some(&held))
                    .await?
            }
            ChangeKind::Renamed { new_external_id } => {
                self.renamed_in(tx, change, new_external_id, &origin)
                    .await?
            }
            ChangeKind::Restored => self.restored_in(tx, change, &origin).await?,
        };
        let reply = DirectoryReply::new(&event.id, done.outcome, done.code);
        Ok(Ok((reply, done.published)))
    }

    /// A removal of `external_id` on the connection, as its `on_source_removal` says; `hold`:
    /// the removal to hold when the guard says so (`None` for a removal an admin released).
    async fn removed_in(
        &self,
        tx: &mut PgConnection,
        settings: &ConnectionSettings,
        external_id: &str,
        origin: &Origin<'_>,
        hold: Option<&HeldRemoval>,
    ) -> sqlx::Result<Done> {
        let pool = settings.user_pool_id.as_str();
        let connection = settings.identifier.as_str();
        let identity = IdentityRef {
            connection: connection.to_owned(),
            external_id: external_id.to_owned(),
        };
        let mut outbox = NewOutbox::default();
        let now = Utc::now();
        // The account is read, then locked with its values, then checked to be still the one.
        let mut attempt = 0;
        let user = loop {
            attempt += 1;
            let Some(user_id) = store::linked_user(tx, pool, connection, external_id).await? else {
                LockSet::new()
                    .identity(pool, connection, external_id)
                    .acquire(tx)
                    .await?;
                match store::linked_user(tx, pool, connection, external_id).await? {
                    None => return Ok(Done::nothing(DirectoryOutcome::Ignored, NOT_LINKED)),
                    Some(_) => continue,
                }
            };
            let Some(user) = users::get(tx, user_id).await? else {
                continue;
            };
            let mut locks = LockSet::new();
            locks
                .identity(pool, connection, external_id)
                .user(user_id)
                .record_fields(pool, &user.record());
            locks.acquire(tx).await?;
            let now_linked = store::linked_user(tx, pool, connection, external_id).await?;
            if now_linked == Some(user_id) {
                // Read again under the locks: its values are what the locks cover now.
                break users::get(tx, user_id).await?.expect("locked and linked");
            }
            if attempt >= ATTEMPTS {
                return Err(sqlx::Error::Protocol(
                    "an identity moved between accounts three times while it was removed".into(),
                ));
            }
        };
        let user_id = user.id;
        let action = match settings.on_source_removal {
            OnSourceRemoval::Notify => RemovalAction::Notified,
            OnSourceRemoval::Unlink | OnSourceRemoval::Suspend => {
                if let Some(held) = hold {
                    let guard = settings.removal_guard;
                    let window = chrono::Duration::from_std(guard.window)
                        .unwrap_or(chrono::Duration::hours(1));
                    let applied = store::removals_since(tx, pool, connection, now - window).await?;
                    let identities = store::identities_of(tx, pool, connection).await?;
                    if guard.holds(applied, identities) {
                        let count = store::hold(tx, held).await?;
                        outbox.event(OutboundEvent::new(
                            ConnectionRemovalsHeld {
                                user_pool_id: pool,
                                connection,
                                held: count,
                            },
                            now,
                        ));
                        tracing::warn!(
                            pool,
                            connection,
                            applied,
                            identities,
                            held = count,
                            "the removal guard holds a removal for an admin"
                        );
                        let published = outbox::insert_many(tx, self.origin, outbox).await?;
                        return Ok(Done {
                            outcome: DirectoryOutcome::Held,
                            code: Some(REMOVAL_GUARD),
                            published,
                        });
                    }
                }
                identities::delete(tx, user_id, connection, external_id).await?;
                store::record_removal(tx, pool, connection, external_id).await?;
                let suspend = settings.on_source_removal == OnSourceRemoval::Suspend
                    && !user.protected
                    && identities::of_users(tx, &[user_id]).await?.is_empty();
                if suspend {
                    let suspension = Suspension {
                        reason: SOURCE_REMOVED.to_owned(),
                        connection: connection.to_owned(),
                        external_id: external_id.to_owned(),
                        source: origin.source.to_owned(),
                        event_id: origin.event_id.to_owned(),
                    };
                    let stored = serde_json::to_value(&suspension).expect("serialises");
                    store::suspend(tx, user_id, &stored).await?;
                    RemovalAction::Suspended
                } else {
                    RemovalAction::Unlinked
                }
            }
        };
        outbox.event(OutboundEvent::new(
            IdentitySourceRemoved {
                user_pool_id: pool,
                user_id,
                identity: identity.clone(),
                action,
                cause_event_id: origin.event_id,
            },
            now,
        ));
        if action != RemovalAction::Notified {
            outbox.event(OutboundEvent::new(
                UserUnlinked {
                    user_pool_id: pool,
                    user_id,
                    identity: identity.clone(),
                    actor: origin.actor,
                    reason: Some(SOURCE_REMOVED),
                },
                now,
            ));
        }
        if action == RemovalAction::Suspended {
            outbox.event(OutboundEvent::new(
                UserSuspended(UserSuspension {
                    user_pool_id: pool,
                    user_id,
                    reason: SOURCE_REMOVED,
                    cause_event_id: Some(origin.event_id),
                    actor: None,
                }),
                now,
            ));
        }
        audit::record(
            tx,
            origin.actor,
            "identity.source_removed",
            &format!("user/{user_id}/identities/{connection}/{external_id}"),
            None,
            Some(json!({
                "action": action.as_str(),
                "source": origin.source,
                "event_id": origin.event_id,
            })),
        )
        .await?;
        let published = outbox::insert_many(tx, self.origin, outbox).await?;
        Ok(Done::applied(published))
    }

    /// A rename: the identity (or its pending binding) moves to the new id, unless another
    /// account holds it.
    async fn renamed_in(
        &self,
        tx: &mut PgConnection,
        change: &DirectoryChange,
        new_external_id: &str,
        origin: &Origin<'_>,
    ) -> sqlx::Result<Done> {
        let pool = change.user_pool_id.as_str();
        let connection = change.connection.as_str();
        let old = change.external_id.as_str();
        if old == new_external_id {
            return Ok(Done::nothing(DirectoryOutcome::Ignored, "unchanged"));
        }
        LockSet::new()
            .identity(pool, connection, old)
            .identity(pool, connection, new_external_id)
            .acquire(tx)
            .await?;
        let user_id = store::linked_user(tx, pool, connection, old).await?;
        let now = Utc::now();
        let mut outbox = NewOutbox::default();
        if store::linked_user(tx, pool, connection, new_external_id)
            .await?
            .is_some()
        {
            outbox.event(OutboundEvent::new(
                IdentityRenameRefused {
                    user_pool_id: pool,
                    user_id,
                    connection,
                    old_external_id: old,
                    new_external_id,
                    reason: IDENTITY_TAKEN,
                },
                now,
            ));
            let published = outbox::insert_many(tx, self.origin, outbox).await?;
            return Ok(Done {
                outcome: DirectoryOutcome::Refused,
                code: Some(IDENTITY_TAKEN),
                published,
            });
        }
        let moved_bindings = if user_id.is_none() {
            // A pending binding follows its identity, unless the new id has one of its own.
            store::rename_pending(tx, pool, connection, old, new_external_id).await?
        } else {
            Vec::new()
        };
        let renamed = match user_id {
            Some(_) => store::rename_identity(tx, pool, connection, old, new_external_id).await?,
            None => None,
        };
        if renamed.is_none() && moved_bindings.is_empty() {
            return Ok(Done::nothing(DirectoryOutcome::Ignored, NOT_LINKED));
        }
        if let Some(user_id) = renamed {
            outbox.event(OutboundEvent::new(
                IdentityRenamed {
                    user_pool_id: pool,
                    user_id,
                    connection,
                    old_external_id: old,
                    new_external_id,
                },
                now,
            ));
        }
        audit::record(
            tx,
            origin.actor,
            "identity.rename",
            &format!("identities/{connection}/{old}"),
            Some(json!({"external_id": old})),
            Some(json!({
                "external_id": new_external_id,
                "user_id": renamed,
                "bindings": moved_bindings,
                "event_id": origin.event_id,
            })),
        )
        .await?;
        let published = outbox::insert_many(tx, self.origin, outbox).await?;
        Ok(Done::applied(published))
    }

    /// A restore: the account this source's removal suspended is reactivated, and a removal
    /// of the person still held is dropped.
    async fn restored_in(
        &self,
        tx: &mut PgConnection,
        change: &DirectoryChange,
        origin: &Origin<'_>,
    ) -> sqlx::Result<Done> {
        let pool = change.user_pool_id.as_str();
        let connection = change.connection.as_str();
        let external_id = change.external_id.as_str();
        LockSet::new()
            .identity(pool, connection, external_id)
            .acquire(tx)
            .await?;
        let dropped = store::take_held(
            tx,
            pool,
            connection,
            Some(std::slice::from_ref(&change.external_id)),
        )
        .await?;
        let Some(user_id) = store::suspended_by(tx, pool, connection, external_id).await? else {
            if dropped.is_empty() {
                return Ok(Done::nothing(DirectoryOutcome::Ignored, NOT_SUSPENDED));
            }
            audit_dropped(tx, origin, pool, connection, external_id).await?;
            return Ok(Done::applied(Vec::new()));
        };
        let reactivated = self
            .reactivate_in(tx, user_id, SOURCE_RESTORED, Some(origin.event_id), None)
            .await?;
        let Some(published) = reactivated else {
            return Ok(Done::nothing(DirectoryOutcome::Ignored, NOT_SUSPENDED));
        };
        audit::record(
            tx,
            origin.actor,
            "user.reactivate",
            &format!("user/{user_id}"),
            None,
            Some(json!({"reason": SOURCE_RESTORED, "event_id": origin.event_id})),
        )
        .await?;
        Ok(Done::applied(published))
    }

    /// Reactivates `user_id` under its locks, publishing `user.reactivated`: the outbox rows, or
    /// `None` when it was not suspended.
    async fn reactivate_in(
        &self,
        tx: &mut PgConnection,
        user_id: Uuid,
        reason: &str,
        cause_event_id: Option<&str>,
        actor: Option<&str>,
    ) -> sqlx::Result<Option<Vec<OutboxRow>>> {
        let Some(user) = users::get(tx, user_id).await? else {
            return Ok(None);
        };
        LockSet::new()
            .user(user_id)
            .record_fields(&user.user_pool_id, &user.record())
            .acquire(tx)
            .await?;
        if store::reactivate(tx, user_id).await?.is_none() {
            return Ok(None);
        }
        let mut outbox = NewOutbox::default();
        outbox.event(OutboundEvent::new(
            UserReactivated(UserSuspension {
                user_pool_id: &user.user_pool_id,
                user_id,
                reason,
                cause_event_id,
                actor,
            }),
            Utc::now(),
        ));
        Ok(Some(outbox::insert_many(tx, self.origin, outbox).await?))
    }

    /// `POST /v1/users/{id}/reactivate`: a suspended account may be linked to and logged into
    /// again. 404 for no such account, 409 `not_suspended` for an active one.
    pub async fn reactivate(
        &self,
        user_id: Uuid,
        reason: Option<&str>,
        actor: &Actor,
    ) -> Result<UserView, AdminError> {
        let mut tx = self.pool.begin().await?;
        if users::get(&mut tx, user_id).await?.is_none() {
            return Err(AdminError::NotFound(format!("no user {user_id}")));
        }
        let reason = reason.unwrap_or("admin");
        let Some(published) = self
            .reactivate_in(&mut tx, user_id, reason, None, Some(&actor.name))
            .await?
        else {
            return Err(AdminError::conflict(
                NOT_SUSPENDED,
                format!("user {user_id} is not suspended"),
            ));
        };
        audit::record(
            &mut tx,
            &actor.name,
            "user.reactivate",
            &format!("user/{user_id}"),
            None,
            Some(json!({"reason": reason})),
        )
        .await?;
        let user = users::get(&mut tx, user_id)
            .await?
            .expect("just reactivated");
        let links = identities::of_users(&mut tx, &[user_id]).await?;
        let view = UserView::new(user, &links);
        self.commit(tx, published).await?;
        Ok(view)
    }

    /// The removals a connection's guard holds.
    pub async fn held_removals(
        &self,
        pool: &str,
        connection: &str,
    ) -> Result<Vec<HeldRemoval>, AdminError> {
        let mut conn = self.pool.acquire().await?;
        if connections::get_stored(&mut conn, pool, connection)
            .await?
            .is_none()
        {
            return Err(no_connection(pool, connection));
        }
        Ok(store::held(&mut conn, pool, connection).await?)
    }

    /// Applies held removals (all, or those of `external_ids`) as the connection's
    /// `on_source_removal` says now, past the guard.
    pub async fn release_removals(
        &self,
        pool: &str,
        connection: &str,
        external_ids: Option<&[String]>,
        actor: &Actor,
    ) -> Result<Vec<Released>, AdminError> {
        let mut tx = self.pool.begin().await?;
        let settings = match connections::get_stored(&mut tx, pool, connection).await? {
            None => {
                return Err(no_connection(pool, connection));
            }
            Some(Err(unreadable)) => {
                return Err(AdminError::conflict(
                    CONNECTION_UNREADABLE,
                    format!(
                        "the connection's settings do not validate: {}",
                        unreadable.problem
                    ),
                ));
            }
            Some(Ok(settings)) => settings,
        };
        let taken = store::take_held(&mut tx, pool, connection, external_ids).await?;
        let mut released = Vec::with_capacity(taken.len());
        let mut published = Vec::new();
        for held in &taken {
            let origin = Origin {
                source: &held.source,
                event_id: &held.event_id,
                actor: &actor.name,
            };
            let done = self
                .removed_in(&mut tx, &settings, &held.external_id, &origin, None)
                .await?;
            published.extend(done.published);
            released.push(Released {
                external_id: held.external_id.clone(),
                outcome: done.outcome.as_str().to_owned(),
                code: done.code.map(str::to_owned),
            });
        }
        audit::record(
            &mut tx,
            &actor.name,
            "removals.release",
            &format!("connection/{pool}/{connection}"),
            None,
            Some(json!({ "released": released })),
        )
        .await?;
        self.commit(tx, published).await?;
        Ok(released)
    }

    /// Drops held removals (all, or those of `external_ids`) without applying them.
    pub async fn discard_removals(
        &self,
        pool: &str,
        connection: &str,
        external_ids: Option<&[String]>,
        actor: &Actor,
    ) -> Result<Vec<HeldRemoval>, AdminError> {
        let mut tx = self.pool.begin().await?;
        if connections::get_stored(&mut tx, pool, connection)
            .await?
            .is_none()
        {
            return Err(no_connection(pool, connection));
        }
        let taken = store::take_held(&mut tx, pool, connection, external_ids).await?;
        audit::record(
            &mut tx,
            &actor.name,
            "removals.discard",
            &format!("connection/{pool}/{connection}"),
            None,
            Some(json!({
                "discarded": taken.iter().map(|h| &h.external_id).collect::<Vec<_>>()
            })),
        )
        .await?;
        tx.commit().await?;
        Ok(taken)
    }
}

/// The admin API's 404 for a connection that is not stored.
fn no_connection(pool: &str, connection: &str) -> AdminError {
    AdminError::NotFound(format!(
        "user pool {pool:?} has no connection {connection:?}"
    ))
}

/// Audits a held removal dropped by the person's restore.
async fn audit_dropped(
    tx: &mut PgConnection,
    origin: &Origin<'_>,
    pool: &str,
    connection: &str,
    external_id: &str,
) -> sqlx::Result<()> {
    audit::record(
        tx,
        origin.actor,
        "removals.discard",
        &format!("connection/{pool}/{connection}"),
        None,
        Some(json!({"discarded": [external_id], "event_id": origin.event_id})),
    )
    .await
}
