//! Listing and resolving pending bindings.

use chrono::Utc;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    Actor, Admin, AdminError,
    views::{BindingView, CandidateView, Page},
};
use crate::db::{
    audit,
    bindings::{self, BindingRow, ListFilter, Resolution as ResolutionRow},
    connections,
    identities::{self, IdentityWrites},
    locks::LockSet,
    outbox::{self, NewOutbox},
    users::{self, FieldKeys, NewUsers, UserRecord},
};
use crate::domain::{
    Email, LoginMode, Phone, Username,
    decision::{self, PoolUser},
    events::{
        BindingExpired, BindingResolved, IdentityRef, LinkMethod, OutboundEvent, Resolution,
        UserCreated, UserLinked, UserSummary,
    },
    login::{NormalizedFields, Profile},
};

pub const STATUSES: &[&str] = &["pending", "resolved", "expired"];

#[derive(Debug, Clone)]
pub enum ResolveAction {
    Link { user_id: Uuid },
    Create,
    Reject { reason: Option<String> },
}

impl ResolveAction {
    fn name(&self) -> &'static str {
        match self {
            Self::Link { .. } => "link",
            Self::Create => "create",
            Self::Reject { .. } => "reject",
        }
    }
}

/// Candidate summaries for several bindings at once.
async fn views(conn: &mut PgConnection, rows: Vec<BindingRow>) -> sqlx::Result<Vec<BindingView>> {
    let mut ids: Vec<Uuid> = rows
        .iter()
        .flat_map(|r| r.candidates.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let users = users::get_many(conn, &ids).await?;
    let links = identities::of_users(conn, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let candidates = row
                .candidates
                .iter()
                .filter_map(|id| users.iter().find(|u| u.id == *id))
                .map(|u| CandidateView::new(u, &links))
                .collect();
            BindingView::new(row, candidates)
        })
        .collect())
}

pub(crate) async fn view(conn: &mut PgConnection, row: BindingRow) -> sqlx::Result<BindingView> {
    Ok(views(conn, vec![row]).await?.remove(0))
}

fn profile_fields(
    row: &BindingRow,
    settings: &crate::domain::ConnectionSettings,
) -> NormalizedFields {
    let profile = match &row.profile {
        Value::Object(map) => Profile::from_map(map).unwrap_or_default(),
        _ => Profile::default(),
    };
    NormalizedFields::of(&profile, settings)
}

fn identity_ref(row: &BindingRow) -> IdentityRef {
    IdentityRef {
        connection: row.connection.clone(),
        external_id: row.external_id.clone(),
    }
}

impl Admin {
    pub async fn list_bindings(
        &self,
        mut filter: ListFilter,
    ) -> Result<Page<BindingView>, AdminError> {
        if let Some(status) = &filter.status
            && !STATUSES.contains(&status.as_str())
        {
            return Err(AdminError::invalid(
                "invalid_query",
                Some("status"),
                format!("status must be one of {}", STATUSES.join(", ")),
            ));
        }
        let limit = super::page_limit(filter.limit)?;
        filter.limit = limit + 1;
        let mut conn = self.pool.acquire().await?;
        let mut rows = bindings::list(&mut conn, &filter).await?;
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok(Page {
            items: views(&mut conn, rows).await?,
            next_cursor,
        })
    }

    pub async fn get_binding(&self, id: Uuid) -> Result<BindingView, AdminError> {
        let mut conn = self.pool.acquire().await?;
        let row = bindings::get(&mut conn, id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no binding {id}")))?;
        Ok(view(&mut conn, row).await?)
    }

    /// Resolves a pending binding. Of two concurrent resolves of one binding exactly one wins:
    /// both take the identity's lock, and the second then finds the binding no longer pending.
    pub async fn resolve_binding(
        &self,
        id: Uuid,
        action: ResolveAction,
        actor: &Actor,
    ) -> Result<BindingView, AdminError> {
        let mut tx = self.pool.begin().await?;
        let first = bindings::get(&mut tx, id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no binding {id}")))?;
        let pool_id = first.user_pool_id.clone();
        let settings = connections::get(&mut tx, &pool_id, &first.connection).await?;

        let mut locks = LockSet::new();
        locks.identity(&pool_id, &first.connection, &first.external_id);
        let mut target = None;
        match &action {
            ResolveAction::Link { user_id } => {
                let user = users::get(&mut tx, *user_id)
                    .await?
                    .filter(|u| u.user_pool_id == pool_id)
                    .ok_or_else(|| {
                        AdminError::invalid(
                            "user_not_in_pool",
                            Some("user_id"),
                            format!("no user {user_id} in user pool {pool_id}"),
                        )
                    })?;
                locks.user(user.id);
                let pool_user = user.pool_user();
                if let Some(email) = &pool_user.email {
                    locks.email(&pool_id, email);
                }
                if let Some(phone) = &pool_user.phone {
                    locks.phone(&pool_id, phone);
                }
                if let Some(username) = &pool_user.username {
                    locks.username(&pool_id, username);
                }
                target = Some(user);
            }
            ResolveAction::Create => {
                let Some(settings) = &settings else {
                    return Err(AdminError::conflict(
                        "connection_missing",
                        format!(
                            "connection {} no longer exists in user pool {pool_id}",
                            first.connection
                        ),
                    ));
                };
                if settings.login_mode == LoginMode::LoginOnly {
                    return Err(AdminError::conflict(
                        "login_only_connection",
                        format!(
                            "connection {} is login_only: it never creates accounts",
                            first.connection
                        ),
                    ));
                }
                locks.fields(&pool_id, &profile_fields(&first, settings));
            }
            ResolveAction::Reject { .. } => {}
        }
        locks.acquire(&mut tx).await?;

        // Read again under the locks: a concurrent resolve or the expiry sweeper may have won.
        let binding = bindings::get(&mut tx, id)
            .await?
            .expect("bindings are never deleted");
        let before = view(&mut tx, binding.clone()).await?;
        if binding.status != "pending" {
            return Err(AdminError::conflict(
                "binding_not_pending",
                format!(
                    "binding {id} is {}, only a pending binding can be resolved",
                    binding.status
                ),
            ));
        }
        let now = Utc::now();
        let mut outbox = NewOutbox::default();
        if binding.expires_at <= now {
            bindings::expire(&mut tx, &[id]).await?;
            let data = BindingExpired {
                binding_id: id,
                user_pool_id: &pool_id,
                identity: identity_ref(&binding),
            };
            outbox.event(OutboundEvent::new(data, now));
            let published = outbox::insert_many(&mut tx, self.origin, outbox).await?;
            self.commit(tx, published).await?;

            return Err(AdminError::conflict(
                "binding_expired",
                format!("binding {id} has expired"),
            ));
        }

        let identity = identity_ref(&binding);
        let cause = binding.cause_event_id.as_deref();
        let mut consequences = Vec::new();
        let (resolution, user_id) = match &action {
            ResolveAction::Link { user_id } => {
                let user = target.expect("looked up above");
                let held = identities::of_users(&mut tx, &[user.id]).await?;
                if held.iter().any(|i| i.connection == binding.connection) {
                    return Err(AdminError::conflict(
                        "user_already_linked",
                        format!(
                            "user {user_id} already has an identity of connection {}",
                            binding.connection
                        ),
                    ));
                }
                let mut writes = IdentityWrites::default();
                writes.push(
                    &pool_id,
                    &binding.connection,
                    &binding.external_id,
                    user.id,
                    binding.profile.clone(),
                );
                identities::insert_many(&mut tx, &writes).await?;
                let matched_on = settings
                    .as_ref()
                    .map(|s| {
                        decision::matched_fields(&profile_fields(&binding, s), s, &user.pool_user())
                    })
                    .unwrap_or_default();
                let data = UserLinked {
                    user_pool_id: &pool_id,
                    user_id: user.id,
                    identity: identity.clone(),
                    method: LinkMethod::Binding,
                    matched_on,
                    cause_event_id: cause,
                };
                consequences.push(OutboundEvent::new(data, now));
                (Resolution::Linked, Some(user.id))
            }
            ResolveAction::Create => {
                let settings = settings.as_ref().expect("checked above");
                let fields = profile_fields(&binding, settings);
                let mut keys = FieldKeys::default();
                keys.add(&fields);
                // Holders of the pool only: a value held in another pool is free in this one.
                let holders: Vec<PoolUser> = users::find_by_fields(&mut tx, &pool_id, &keys)
                    .await?
                    .iter()
                    .map(|u| u.pool_user(&binding.connection))
                    .collect();
                let new = decision::new_user_fields(&fields, settings, &holders);
                let record = UserRecord {
                    id: Uuid::now_v7(),
                    user_pool_id: pool_id.clone(),
                    email: new.email.map(Email::into_inner),
                    email_verified: new.email_verified,
                    phone: new.phone.map(Phone::into_inner),
                    phone_verified: new.phone_verified,
                    username: new.username.map(Username::into_inner),
                    name: new.name,
                    protected: false,
                };
                let mut new_users = NewUsers::default();
                new_users.push(&record);
                users::insert_many(&mut tx, &new_users).await?;
                let mut writes = IdentityWrites::default();
                writes.push(
                    &pool_id,
                    &binding.connection,
                    &binding.external_id,
                    record.id,
                    binding.profile.clone(),
                );
                identities::insert_many(&mut tx, &writes).await?;
                let data = UserCreated {
                    user_pool_id: &pool_id,
                    user: UserSummary {
                        id: record.id,
                        email: record.email.clone(),
                        phone: record.phone.clone(),
                        username: record.username.clone(),
                        name: record.name.clone(),
                    },
                    identity: identity.clone(),
                    cause_event_id: cause,
                };
                consequences.push(OutboundEvent::new(data, now));
                (Resolution::Created, Some(record.id))
            }
            ResolveAction::Reject { .. } => (Resolution::Rejected, None),
        };
        let reason = match &action {
            ResolveAction::Reject { reason } => reason.as_deref(),
            _ => None,
        };
        let resolved = bindings::resolve(
            &mut tx,
            &ResolutionRow {
                id,
                resolution: resolution.as_str(),
                user_id,
                resolved_by: &actor.name,
                reason,
            },
        )
        .await?;
        debug_assert!(resolved, "the binding was pending under the lock");
        let data = BindingResolved {
            binding_id: id,
            user_pool_id: &pool_id,
            resolution,
            user_id,
            resolved_by: &actor.name,
            proof: "admin",
        };
        // binding.resolved first: a subscriber sees the decision, then its consequence.
        outbox.event(OutboundEvent::new(data, now));
        for event in consequences {
            outbox.event(event);
        }
        let published = outbox::insert_many(&mut tx, self.origin, outbox).await?;

        let after_row = bindings::get(&mut tx, id).await?.expect("still there");
        let after = view(&mut tx, after_row).await?;
        audit::record(
            &mut tx,
            &actor.name,
            &format!("binding.{}", action.name()),
            &format!("binding/{id}"),
            Some(serde_json::to_value(&before).expect("serialises")),
            Some(serde_json::to_value(&after).expect("serialises")),
        )
        .await?;
        self.commit(tx, published).await?;

        Ok(after)
    }
}
