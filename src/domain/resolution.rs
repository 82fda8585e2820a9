//! Resolving a pending binding (contract section 1, "Resolving a pending binding", and section 6):
//! the rules that decide whether a `link`, `create` or `reject` may happen, and its effects. The
//! admin API and the commands over the queue both resolve through here; they differ only in who
//! resolves and with what proof.

use super::attributes::AttributeName;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    connection::{ConnectionSettings, LoginMode},
    decision::{self, PoolUser},
    effects::{self, Identity},
    events::{LinkMethod, Resolution},
    login::NormalizedFields,
};

text_enum!(
    /// Where a binding is in its life: `pending` (waiting for a `link`, `create` or `reject`),
    /// `resolved` (one of them happened) or `expired` (its `expires_at` passed first). Only a
    /// pending binding can be resolved.
    BindingStatus { Pending => "pending", Resolved => "resolved", Expired => "expired" }
);

text_enum!(
    /// How the decision to resolve was proven (section 6): `admin` for an admin's decision, the
    /// others for a person who proved they own the account (with its `password`, a one-time
    /// password `otp`, an existing `session`, or single sign-on `sso`), who may only `link` to
    /// one of the binding's candidates.
    Proof {
        Admin => "admin",
        Password => "password",
        Otp => "otp",
        Session => "session",
        Sso => "sso",
    }
);

/// What to do with a pending binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Link the identity to the account `user_id` of the binding's pool (refused if that account
    /// already holds an identity of the binding's connection).
    Link { user_id: Uuid },
    /// Give the identity a new account, with the values of its profile that are usable and free
    /// in the pool (refused on a `login_only` connection).
    Create,
    /// Leave the identity without an account; the optional `reason` is kept with the binding.
    Reject { reason: Option<String> },
}

impl Request {
    /// The action's name (`link`, `create`, `reject`), as requests and the audit log write it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Link { .. } => "link",
            Self::Create => "create",
            Self::Reject { .. } => "reject",
        }
    }
}

/// Who resolves, and the proof they give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    /// The admin token's name, or the person's (or operator's) login a command names.
    pub actor: String,
    /// How the decision was proven; anything but `admin` may only link to a candidate.
    pub proof: Proof,
}

/// What is known of the binding when it is resolved (read under its identity's lock).
#[derive(Debug, Clone)]
pub struct BindingFacts {
    /// The binding's id.
    pub id: Uuid,
    /// The external identity it parks.
    pub identity: Identity,
    /// Where it is in its life; only `pending` can be resolved.
    pub status: BindingStatus,
    /// When it expires; from then on it cannot be resolved and expires instead.
    pub expires_at: DateTime<Utc>,
    /// The candidate accounts listed when it was opened.
    pub candidates: Vec<Uuid>,
    /// The login that opened it.
    pub cause_event_id: Option<String>,
    /// Its profile, normalised with the connection's settings.
    pub fields: NormalizedFields,
    /// The attributes unique in the binding's pool: a created account takes none another
    /// account holds.
    pub unique_attributes: Vec<AttributeName>,
}

/// The account a `link` names, as found in the binding's pool.
#[derive(Debug, Clone)]
pub enum LinkTarget {
    /// No such account in the binding's pool.
    NotInPool,
    /// The account (`linked_on_connection`: it already holds an identity of the connection).
    User(PoolUser),
}

/// Why a resolution is refused, with the code the admin API and the command replies give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `binding_not_pending`: the binding is already resolved or expired (its status given).
    NotPending(BindingStatus),
    /// `binding_expired`: the binding was still pending but past its `expires_at`; it expires now.
    Expired,
    /// `user_not_in_pool`: the account a `link` names is not in the binding's pool.
    UserNotInPool,
    /// `not_a_candidate`: a person's proof can only link the identity to one of the binding's
    /// candidates.
    NotACandidate,
    /// `user_already_linked`: the account already holds an identity of the binding's connection.
    UserAlreadyLinked,
    /// `login_only_connection`: a `login_only` connection never creates accounts.
    LoginOnly,
    /// `connection_missing`: the binding's connection no longer exists, so no account can be
    /// created under its settings.
    ConnectionMissing,
    /// `account_suspended`: the account is suspended (contract section 11); it is linked to
    /// again only once reactivated.
    AccountSuspended,
}

/// How a refusal maps onto HTTP: 409 or 422.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalClass {
    /// 409: the binding's or the account's state does not allow it.
    Conflict,
    /// 422: the request names an account it may not.
    Invalid,
}

impl Refusal {
    /// The stable, machine-readable code of the error body and of a command's `refused` reply.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotPending(_) => "binding_not_pending",
            Self::Expired => "binding_expired",
            Self::UserNotInPool => "user_not_in_pool",
            Self::NotACandidate => "not_a_candidate",
            Self::UserAlreadyLinked => "user_already_linked",
            Self::LoginOnly => "login_only_connection",
            Self::ConnectionMissing => "connection_missing",
            Self::AccountSuspended => crate::domain::leavers::ACCOUNT_SUSPENDED,
        }
    }

    /// Whether the refusal is a conflict with the current state (409) or an invalid request
    /// (422).
    pub fn class(&self) -> RefusalClass {
        match self {
            Self::UserNotInPool | Self::NotACandidate => RefusalClass::Invalid,
            _ => RefusalClass::Conflict,
        }
    }

    /// A sentence for the error body.
    pub fn message(&self, binding: &BindingFacts, request: &Request) -> String {
        let id = binding.id;
        let connection = &binding.identity.connection;
        let pool = &binding.identity.user_pool_id;
        let user = match request {
            Request::Link { user_id } => user_id.to_string(),
            _ => String::new(),
        };
        match self {
            Self::NotPending(status) => {
                format!("binding {id} is {status}, only a pending binding can be resolved")
            }
            Self::Expired => format!("binding {id} has expired"),
            Self::UserNotInPool => format!("no user {user} in user pool {pool}"),
            Self::NotACandidate => format!(
                "user {user} is not a candidate of binding {id}: a person can only prove an \
                 account the login matched"
            ),
            Self::UserAlreadyLinked => {
                format!("user {user} already has an identity of connection {connection}")
            }
            Self::LoginOnly => {
                format!("connection {connection} is login_only: it never creates accounts")
            }
            Self::ConnectionMissing => {
                format!("connection {connection} no longer exists in user pool {pool}")
            }
            Self::AccountSuspended => {
                format!("user {user} is suspended: reactivate it before linking to it")
            }
        }
    }
}

/// One thing a binding's resolution makes happen, about the binding's identity.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolutionEffect {
    /// The binding, past its expiry, expires instead of being resolved.
    ExpireBinding { binding_id: Uuid },
    /// The binding is resolved.
    ResolveBinding {
        /// The binding resolved.
        binding_id: Uuid,
        /// Linked, created or rejected.
        resolution: Resolution,
        /// The account linked or created; `None` for a rejection.
        user_id: Option<Uuid>,
        /// Who decided (the admin token's name, or the actor a command names).
        resolved_by: String,
        /// How the decision was proven, in its text form (`admin`, `password`, ...).
        proof: String,
        /// The reason a `reject` gave, kept with the binding; `None` otherwise.
        reason: Option<String>,
    },
    /// A new account for the identity.
    CreateUser {
        user_id: Uuid,
        fields: decision::NewUserFields,
    },
    /// The identity is linked to the account `user_id`, with the binding's profile as snapshot.
    LinkIdentity { user_id: Uuid },
    /// An event to publish (committed with the rest).
    Emit(crate::domain::events::OutboundEvent),
}

/// What resolving gives: effects to apply (even a refusal may have some: an overdue binding
/// expires), and the resolution or the refusal.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What must happen, in order, in the resolving transaction: `binding.resolved` before the
    /// link or the new account it causes.
    pub effects: Vec<ResolutionEffect>,
    /// The resolution with the account linked or created (`None` for a rejection), or why it
    /// was refused.
    pub outcome: Result<(Resolution, Option<Uuid>), Refusal>,
}

impl Resolved {
    fn refused(refusal: Refusal) -> Self {
        Self {
            effects: Vec::new(),
            outcome: Err(refusal),
        }
    }
}

/// Resolves `binding` as `request` asks, by `resolver`. `target` is the account a `link` names;
/// `holders` the pool's users holding a value of the binding's profile (for `create`).
pub fn resolve(
    binding: &BindingFacts,
    settings: Option<&ConnectionSettings>,
    request: &Request,
    target: Option<&LinkTarget>,
    holders: &[PoolUser],
    resolver: &Resolver,
    now: DateTime<Utc>,
) -> Resolved {
    if let Some(refusal) = refused_up_front(settings, request, target) {
        return Resolved::refused(refusal);
    }
    if binding.status != BindingStatus::Pending {
        return Resolved::refused(Refusal::NotPending(binding.status));
    }
    if binding.expires_at <= now {
        return expired(binding, now);
    }
    let (resolution, user_id, consequences) =
        match consequences(binding, settings, request, target, holders, resolver, now) {
            Ok(planned) => planned,
            Err(refusal) => return Resolved::refused(refusal),
        };
    let reason = match request {
        Request::Reject { reason } => reason.clone(),
        _ => None,
    };
    let pool = binding.identity.user_pool_id.as_str();
    // binding.resolved first: a subscriber sees the decision, then its consequence.
    let mut effects = vec![
        ResolutionEffect::ResolveBinding {
            binding_id: binding.id,
            resolution,
            user_id,
            resolved_by: resolver.actor.clone(),
            proof: resolver.proof.as_str().to_owned(),
            reason,
        },
        ResolutionEffect::Emit(effects::binding_resolved(
            pool,
            binding.id,
            resolution,
            user_id,
            &resolver.actor,
            resolver.proof.as_str(),
            now,
        )),
    ];
    effects.extend(consequences);
    Resolved {
        effects,
        outcome: Ok((resolution, user_id)),
    }
}

/// A binding past its expiry cannot be resolved: it expires now instead.
fn expired(binding: &BindingFacts, now: DateTime<Utc>) -> Resolved {
    let pool = binding.identity.user_pool_id.as_str();
    Resolved {
        effects: vec![
            ResolutionEffect::ExpireBinding {
                binding_id: binding.id,
            },
            ResolutionEffect::Emit(effects::binding_expired(
                pool,
                binding.id,
                binding.identity.reference(),
                now,
            )),
        ],
        outcome: Err(Refusal::Expired),
    }
}

/// What the request does besides resolving the binding: link the identity to the target, create
/// an account for it, or nothing (a rejection).
fn consequences(
    binding: &BindingFacts,
    settings: Option<&ConnectionSettings>,
    request: &Request,
    target: Option<&LinkTarget>,
    holders: &[PoolUser],
    resolver: &Resolver,
    now: DateTime<Utc>,
) -> Result<(Resolution, Option<Uuid>, Vec<ResolutionEffect>), Refusal> {
    let pool = binding.identity.user_pool_id.as_str();
    let cause = binding.cause_event_id.as_deref();
    match (request, target) {
        (Request::Link { .. }, Some(LinkTarget::User(user))) => {
            if resolver.proof != Proof::Admin && !binding.candidates.contains(&user.id) {
                return Err(Refusal::NotACandidate);
            }
            if user.suspended {
                return Err(Refusal::AccountSuspended);
            }
            if user.linked_on_connection {
                return Err(Refusal::UserAlreadyLinked);
            }
            let matched_on = settings
                .map(|s| decision::matched_fields(&binding.fields, s, user))
                .unwrap_or_default();
            let link = vec![
                ResolutionEffect::LinkIdentity { user_id: user.id },
                ResolutionEffect::Emit(effects::user_linked(
                    pool,
                    user.id,
                    binding.identity.reference(),
                    LinkMethod::Binding,
                    matched_on,
                    cause,
                    now,
                )),
            ];
            Ok((Resolution::Linked, Some(user.id), link))
        }
        (Request::Create, _) => {
            let Some(settings) = settings else {
                return Err(Refusal::ConnectionMissing);
            };
            let fields = decision::new_user_fields(
                &binding.fields,
                settings,
                holders,
                &binding.unique_attributes,
            );
            let account = effects::new_account(pool, &fields, &binding.identity, cause, now);
            let user_id = account.user_id;
            let create = vec![
                ResolutionEffect::CreateUser {
                    user_id,
                    fields: account.fields,
                },
                ResolutionEffect::LinkIdentity { user_id },
                ResolutionEffect::Emit(account.created),
            ];
            Ok((Resolution::Created, Some(user_id), create))
        }
        (Request::Reject { .. }, _) => Ok((Resolution::Rejected, None, Vec::new())),
        (Request::Link { .. }, _) => Err(Refusal::UserNotInPool),
    }
}

/// Refusals that depend on the request alone, checked before the binding's state.
fn refused_up_front(
    settings: Option<&ConnectionSettings>,
    request: &Request,
    target: Option<&LinkTarget>,
) -> Option<Refusal> {
    match request {
        Request::Link { .. } => match target {
            Some(LinkTarget::User(_)) => None,
            _ => Some(Refusal::UserNotInPool),
        },
        Request::Create => match settings {
            None => Some(Refusal::ConnectionMissing),
            Some(s) if s.login_mode == LoginMode::LoginOnly => Some(Refusal::LoginOnly),
            Some(_) => None,
        },
        Request::Reject { .. } => None,
    }
}

#[cfg(test)]
mod tests;
