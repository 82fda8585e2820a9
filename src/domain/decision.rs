//! The decision for one login (contract section 1, steps 3 to 5): given the login's normalised
//! fields, its connection's settings and what the database knows about the identity and the pool's
//! matching users, say what happens. Steps 1 (validation) and 2 (dedupe) happen before this; step 6
//! (one transaction) is the caller's job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::connection::{Association, ConnectionSettings, LoginMode, MatchField};
use super::login::NormalizedFields;
use super::{Email, Phone, Username};

/// The outcome reported in replies and recorded per processed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    ExistingUser,
    UserCreated,
    UserLinked,
    BindingPending,
    Rejected,
    Error,
}

impl Outcome {
    pub const ALL: &'static [Outcome] = &[
        Self::ExistingUser,
        Self::UserCreated,
        Self::UserLinked,
        Self::BindingPending,
        Self::Rejected,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExistingUser => "existing_user",
            Self::UserCreated => "user_created",
            Self::UserLinked => "user_linked",
            Self::BindingPending => "binding_pending",
            Self::Rejected => "rejected",
            Self::Error => "error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|o| o.as_str() == raw)
    }
}

/// Why a pending binding was opened instead of linking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingReason {
    AskBinding,
    AmbiguousMatch,
    CandidateAlreadyLinked,
}

impl BindingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AskBinding => "ask_binding",
            Self::AmbiguousMatch => "ambiguous_match",
            Self::CandidateAlreadyLinked => "candidate_already_linked",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::AskBinding,
            Self::AmbiguousMatch,
            Self::CandidateAlreadyLinked,
        ]
        .into_iter()
        .find(|r| r.as_str() == raw)
    }
}

/// The reason of a rejected login.
pub const UNKNOWN_USER: &str = "unknown_user";

/// A user of the pool that shares at least one normalised email, phone or username with the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUser {
    pub id: Uuid,
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    pub username: Option<Username>,
    /// The user already holds an identity of the login's connection.
    pub linked_on_connection: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBinding {
    pub id: Uuid,
    pub reason: BindingReason,
    pub expires_at: DateTime<Utc>,
}

/// What is known about the login's identity and pool when the decision is taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Situation {
    /// The account the identity (pool, connection, external id) is linked to.
    pub linked_user: Option<Uuid>,
    pub pending_binding: Option<PendingBinding>,
    /// Every pool user sharing a normalised field with the login, whatever the settings: the
    /// decision needs them both to find candidates and to know which fields are already held.
    pub pool_users: Vec<PoolUser>,
}

/// The fields a new account receives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewUserFields {
    pub email: Option<Email>,
    pub email_verified: bool,
    pub phone: Option<Phone>,
    pub phone_verified: bool,
    pub username: Option<Username>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Step 3: already linked; refresh the identity's snapshot.
    ExistingUser { user_id: Uuid },
    /// Step 4: a binding is still pending.
    StillPending {
        binding_id: Uuid,
        reason: BindingReason,
    },
    /// Step 5: link to the one matching user.
    Link {
        user_id: Uuid,
        matched_on: Vec<MatchField>,
    },
    /// Step 5: park the identity for an admin.
    OpenBinding {
        candidates: Vec<Uuid>,
        reason: BindingReason,
    },
    /// Step 5: `login_only` and nobody matches.
    Reject,
    /// Step 5: a new account with this identity.
    CreateUser(NewUserFields),
}

impl Action {
    pub fn outcome(&self) -> Outcome {
        match self {
            Action::ExistingUser { .. } => Outcome::ExistingUser,
            Action::StillPending { .. } | Action::OpenBinding { .. } => Outcome::BindingPending,
            Action::Link { .. } => Outcome::UserLinked,
            Action::Reject => Outcome::Rejected,
            Action::CreateUser(_) => Outcome::UserCreated,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// A pending binding found past its `expires_at`: it expires now and the login starts afresh.
    pub expire_binding: Option<Uuid>,
    pub action: Action,
}

pub fn decide(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    situation: &Situation,
    now: DateTime<Utc>,
) -> Decision {
    if let Some(user_id) = situation.linked_user {
        return Decision {
            expire_binding: None,
            action: Action::ExistingUser { user_id },
        };
    }

    let mut expire_binding = None;
    if let Some(binding) = &situation.pending_binding {
        if binding.expires_at > now {
            return Decision {
                expire_binding: None,
                action: Action::StillPending {
                    binding_id: binding.id,
                    reason: binding.reason,
                },
            };
        }
        expire_binding = Some(binding.id);
    }

    let action = match settings.association {
        Association::Disabled => no_candidate(login, settings, situation),
        Association::FieldMatching | Association::AskBinding => {
            let candidates = candidates(login, settings, &situation.pool_users);
            match (settings.association, candidates.as_slice()) {
                (_, []) => no_candidate(login, settings, situation),
                (Association::FieldMatching, [(user, matched_on)]) => {
                    if user.linked_on_connection {
                        Action::OpenBinding {
                            candidates: vec![user.id],
                            reason: BindingReason::CandidateAlreadyLinked,
                        }
                    } else {
                        Action::Link {
                            user_id: user.id,
                            matched_on: matched_on.clone(),
                        }
                    }
                }
                (Association::FieldMatching, many) => Action::OpenBinding {
                    candidates: many.iter().map(|(u, _)| u.id).collect(),
                    reason: BindingReason::AmbiguousMatch,
                },
                (_, some) => Action::OpenBinding {
                    candidates: some.iter().map(|(u, _)| u.id).collect(),
                    reason: BindingReason::AskBinding,
                },
            }
        }
    };
    Decision {
        expire_binding,
        action,
    }
}

/// The login's value of `field`, if it may take part in matching.
fn usable(login: &NormalizedFields, settings: &ConnectionSettings, field: MatchField) -> bool {
    match field {
        MatchField::Email => {
            login.email.is_some() && (login.email_verified || !settings.require_verified)
        }
        MatchField::Phone => {
            login.phone.is_some() && (login.phone_verified || !settings.require_verified)
        }
        MatchField::Username => login.username.is_some(),
    }
}

fn field_matches(login: &NormalizedFields, user: &PoolUser, field: MatchField) -> bool {
    match field {
        MatchField::Email => login.email.is_some() && login.email == user.email,
        MatchField::Phone => login.phone.is_some() && login.phone == user.phone,
        MatchField::Username => login.username.is_some() && login.username == user.username,
    }
}

/// Users whose normalised `match_fields` equal the login's, each with the fields that matched (in
/// `match_fields` order), in a stable order (by id).
fn candidates<'a>(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    pool_users: &'a [PoolUser],
) -> Vec<(&'a PoolUser, Vec<MatchField>)> {
    let mut found: Vec<(&PoolUser, Vec<MatchField>)> = pool_users
        .iter()
        .filter_map(|user| {
            let matched = matched_fields(login, settings, user);
            (!matched.is_empty()).then_some((user, matched))
        })
        .collect();
    found.sort_by_key(|(u, _)| u.id);
    found.dedup_by_key(|(u, _)| u.id);
    found
}

fn no_candidate(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    situation: &Situation,
) -> Action {
    if settings.login_mode == LoginMode::LoginOnly {
        return Action::Reject;
    }
    Action::CreateUser(new_user_fields(login, settings, &situation.pool_users))
}

/// What a new account receives from a login: each field only where it is valid, verified (when
/// the connection requires it) and not held by another user of the pool.
pub fn new_user_fields(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    pool_users: &[PoolUser],
) -> NewUserFields {
    let held = |field: MatchField| pool_users.iter().any(|u| field_matches(login, u, field));
    let verified_ok = |verified: bool| verified || !settings.require_verified;
    let email = login
        .email
        .clone()
        .filter(|_| verified_ok(login.email_verified) && !held(MatchField::Email));
    let phone = login
        .phone
        .clone()
        .filter(|_| verified_ok(login.phone_verified) && !held(MatchField::Phone));
    let username = login
        .username
        .clone()
        .filter(|_| !held(MatchField::Username));
    NewUserFields {
        email_verified: email.is_some() && login.email_verified,
        email,
        phone_verified: phone.is_some() && login.phone_verified,
        phone,
        username,
        name: login.name.clone(),
    }
}

/// The connection's match fields (in order) on which `user` matches the login, counting only
/// fields the login may match on.
pub fn matched_fields(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    user: &PoolUser,
) -> Vec<MatchField> {
    settings
        .match_fields
        .iter()
        .copied()
        .filter(|f| usable(login, settings, *f) && field_matches(login, user, *f))
        .collect()
}

#[cfg(test)]
mod tests;
