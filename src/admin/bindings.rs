//! Listing and resolving pending bindings.

use chrono::Utc;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    Admin, AdminError, Applied,
    views::{BindingView, CandidateView, Page},
};
use crate::db::{
    audit,
    bindings::{self, BindingRow, ListFilter, Resolution as ResolutionRow},
    connections,
    identities::{self, IdentityRecord},
    locks::LockSet,
    outbox::{self, NewOutbox, OutboxRow},
    users::{self, FieldKeys, UserRecord, UserRow},
};
use crate::domain::{
    ConnectionSettings,
    attributes::AttributeName,
    decision::PoolUser,
    effects::Identity,
    login::{NormalizedFields, Profile},
    resolution::{
        self, BindingFacts, LinkTarget, Proof, Refusal, RefusalClass, Request, ResolutionEffect,
        Resolver,
    },
};

use super::Actor;
pub use crate::domain::resolution::Request as ResolveAction;

pub const STATUSES: &[&str] = &["pending", "resolved", "expired"];

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

    /// Resolves a pending binding (the admin API: proof `admin`). Of two concurrent resolves of
    /// one binding exactly one wins: both take the identity's lock, and the second then finds
    /// the binding no longer pending.
    pub async fn resolve_binding(
        &self,
        id: Uuid,
        request: Request,
        actor: &Actor,
    ) -> Result<BindingView, AdminError> {
        let resolver = Resolver {
            actor: actor.name.clone(),
            proof: Proof::Admin,
        };
        self.resolve(id, request, &resolver).await
    }

    /// Resolves a binding as `resolver`, in a transaction of its own.
    pub(crate) async fn resolve(
        &self,
        id: Uuid,
        request: Request,
        resolver: &Resolver,
    ) -> Result<BindingView, AdminError> {
        let mut tx = self.pool.begin().await?;
        let applied = self.resolve_in(&mut tx, id, request, resolver).await?;
        // A refusal commits too: what must happen anyway (an overdue binding expires) happens.
        self.commit(tx, applied.published).await?;
        applied.result
    }

    /// Resolves a binding as `resolver` in `tx`: the admin API and the commands over the queue.
    /// An error means nothing was written; a refusal after writing is in the [`Applied`].
    pub(crate) async fn resolve_in(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        request: Request,
        resolver: &Resolver,
    ) -> Result<Applied<BindingView>, AdminError> {
        let facts = self.resolution_facts(tx, id, &request).await?;
        let before = view(tx, facts.row.clone()).await?;
        let resolved = resolution::resolve(
            &facts.binding,
            facts.settings.as_ref(),
            &request,
            facts.target.as_ref(),
            &facts.holders,
            resolver,
            Utc::now(),
        );
        let published = self
            .apply(
                tx,
                &facts.binding.identity,
                &facts.row.profile,
                resolved.effects,
            )
            .await?;
        if let Err(refusal) = resolved.outcome {
            let result = Err(refused(&refusal, &facts.binding, &request));
            return Ok(Applied { result, published });
        }
        let after_row = bindings::get(tx, id).await?.expect("still there");
        let after = view(tx, after_row).await?;
        audit::record(
            tx,
            &resolver.actor,
            &format!("binding.{}", request.name()),
            &format!("binding/{id}"),
            Some(serde_json::to_value(&before).expect("serialises")),
            Some(serde_json::to_value(&after).expect("serialises")),
        )
        .await?;
        Ok(Applied {
            result: Ok(after),
            published,
        })
    }

    /// Reads what a resolution needs, under the locks of the binding's identity and of the
    /// values the resolution could touch (the linked account's, the new account's).
    async fn resolution_facts(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        request: &Request,
    ) -> Result<Facts, AdminError> {
        let first = bindings::get(tx, id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no binding {id}")))?;
        // A connection whose stored settings cannot be read refuses only its own resolutions
        // (an admin mends it first); the rest of the admin API and the commands go on.
        let settings =
            match connections::get_stored(tx, &first.user_pool_id, &first.connection).await? {
                Some(Ok(settings)) => Some(settings),
                Some(Err(unreadable)) => {
                    return Err(AdminError::conflict(
                        "connection_unreadable",
                        format!(
                            "connection {} of user pool {} cannot be read ({}): mend it (PUT \
                         /v1/connections/{}/{}) before resolving its bindings",
                            first.connection,
                            first.user_pool_id,
                            unreadable.problem,
                            first.user_pool_id,
                            first.connection
                        ),
                    ));
                }
                None => None,
            };
        let target = lock_for(tx, &first, settings.as_ref(), request).await?;

        // Read again under the locks: a concurrent resolve or the expiry sweeper may have won.
        let row = bindings::get(tx, id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no binding {id}")))?;
        let fields = settings
            .as_ref()
            .map(|s| profile_fields(&row, s))
            .unwrap_or_default();
        let target = match target {
            None => None,
            Some(None) => Some(LinkTarget::NotInPool),
            Some(Some(user)) => {
                let held = identities::of_users(tx, &[user.id]).await?;
                Some(LinkTarget::User(PoolUser {
                    linked_on_connection: held.iter().any(|i| i.connection == row.connection),
                    ..user.pool_user()
                }))
            }
        };
        let mut holders = Vec::new();
        let mut unique_attributes = Vec::new();
        if let (Request::Create, Some(settings)) = (request, settings.as_ref()) {
            unique_attributes = users::unique_attributes(tx, &row.user_pool_id).await?;
            let mut keys = FieldKeys::default();
            keys.add(&row.user_pool_id, &fields, settings);
            // Holders of the pool only: a value held in another pool is free in this one.
            holders = users::find_by_fields(tx, &row.user_pool_id, &keys)
                .await?
                .iter()
                .map(|u| u.pool_user(&row.connection))
                .collect();
        }
        Ok(Facts {
            binding: binding_facts(&row, fields, unique_attributes),
            row,
            settings,
            target,
            holders,
        })
    }

    /// Applies a resolution's effects in `tx`; returns the outbox rows written, to hand to the
    /// relay once committed.
    pub(crate) async fn apply(
        &self,
        tx: &mut PgConnection,
        identity: &Identity,
        profile: &Value,
        effects: Vec<ResolutionEffect>,
    ) -> sqlx::Result<Vec<OutboxRow>> {
        let mut outbox = NewOutbox::default();
        for effect in effects {
            match effect {
                ResolutionEffect::ExpireBinding { binding_id } => {
                    bindings::expire(tx, &[binding_id]).await?;
                }
                ResolutionEffect::CreateUser { user_id, fields } => {
                    let user = UserRecord::new(user_id, &identity.user_pool_id, &fields);
                    users::insert_many(tx, &[user]).await?;
                }
                ResolutionEffect::LinkIdentity { user_id } => {
                    let linked = IdentityRecord {
                        user_pool_id: identity.user_pool_id.clone(),
                        connection: identity.connection.clone(),
                        external_id: identity.external_id.clone(),
                        user_id,
                        profile: profile.clone(),
                    };
                    identities::insert_many(tx, &[linked]).await?;
                }
                ResolutionEffect::ResolveBinding {
                    binding_id,
                    resolution,
                    user_id,
                    resolved_by,
                    proof,
                    reason,
                } => {
                    let row = ResolutionRow {
                        id: binding_id,
                        resolution: resolution.as_str(),
                        user_id,
                        resolved_by: &resolved_by,
                        proof: &proof,
                        reason: reason.as_deref(),
                    };
                    let resolved = bindings::resolve(tx, &row).await?;
                    debug_assert!(resolved, "the binding was pending under the lock");
                }
                ResolutionEffect::Emit(event) => outbox.event(event),
            }
        }
        outbox::insert_many(tx, self.origin, outbox).await
    }
}

/// What `resolution_facts` reads.
struct Facts {
    row: BindingRow,
    binding: BindingFacts,
    settings: Option<ConnectionSettings>,
    target: Option<LinkTarget>,
    holders: Vec<PoolUser>,
}

/// A refusal as the admin API answers it.
fn refused(refusal: &Refusal, binding: &BindingFacts, request: &Request) -> AdminError {
    let message = refusal.message(binding, request);
    match refusal.class() {
        RefusalClass::Conflict => AdminError::conflict(refusal.code(), message),
        RefusalClass::Invalid => {
            let field = matches!(request, Request::Link { .. }).then_some("user_id");
            AdminError::invalid(refusal.code(), field, message)
        }
    }
}

/// Takes the locks of a resolution of `binding`: its identity's, and for a link the target
/// user's and its values, for a creation the values the new account would take. For a link,
/// returns the target as read before the locks (`None` inside: not a user of the pool).
async fn lock_for(
    tx: &mut PgConnection,
    binding: &BindingRow,
    settings: Option<&ConnectionSettings>,
    request: &Request,
) -> sqlx::Result<Option<Option<UserRow>>> {
    let pool = binding.user_pool_id.as_str();
    let mut locks = LockSet::new();
    locks.identity(pool, &binding.connection, &binding.external_id);
    let mut target = None;
    match request {
        Request::Link { user_id } => {
            let user = users::get(tx, *user_id)
                .await?
                .filter(|u| u.user_pool_id == pool);
            if let Some(user) = &user {
                locks.user(user.id).record_fields(pool, &user.record());
            }
            target = Some(user);
        }
        Request::Create => {
            if let Some(settings) = settings {
                locks.fields(pool, &profile_fields(binding, settings));
            }
        }
        Request::Reject { .. } => {}
    }
    locks.acquire(tx).await?;
    Ok(target)
}

/// The binding as the resolution rules see it.
fn binding_facts(
    row: &BindingRow,
    fields: NormalizedFields,
    unique_attributes: Vec<AttributeName>,
) -> BindingFacts {
    BindingFacts {
        id: row.id,
        identity: Identity {
            user_pool_id: row.user_pool_id.clone(),
            connection: row.connection.clone(),
            external_id: row.external_id.clone(),
        },
        status: row.status,
        expires_at: row.expires_at,
        candidates: row.candidates.clone(),
        cause_event_id: row.cause_event_id.clone(),
        fields,
        unique_attributes,
    }
}
