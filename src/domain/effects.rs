//! What a decision or a binding resolution makes happen, as data. The domain says what must
//! happen; the adapters only apply it: the pipeline batches a login's effects into its one write
//! statement, the admin service and the command consumer write a resolution's in their
//! transaction. Every outbound event is built here, once per type.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    connection::{ConnectionSettings, MatchKey},
    decision::{
        Action, BindingReason, Decision, Evidence, NewUserFields, Outcome, UNKNOWN_USER,
        drift::{Drift, UserUpdate},
    },
    events::{
        BindingExpired, BindingPending, BindingResolved, IdentityChanged, IdentityRef, LinkMethod,
        LoginRejected, OutboundEvent, Reply, Resolution, UserCreated, UserLinked, UserSummary,
        UserUpdated,
    },
    login::LoginEvent,
};

/// The external identity a login or a binding is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The pool (tenant) the identity logs in to.
    pub user_pool_id: String,
    /// The identifier of the connection it comes from.
    pub connection: String,
    /// The person's id at the identity source; with the pool and the connection, it names the
    /// identity.
    pub external_id: String,
}

impl Identity {
    /// The identity a login is about.
    pub fn of(event: &LoginEvent) -> Self {
        Self {
            user_pool_id: event.user_pool_id.as_str().to_owned(),
            connection: event.connection.as_str().to_owned(),
            external_id: event.external_id.clone(),
        }
    }

    /// The identity as events show it (without its pool, which the event names).
    pub fn reference(&self) -> IdentityRef {
        IdentityRef {
            connection: self.connection.clone(),
            external_id: self.external_id.clone(),
        }
    }
}

/// One thing that must happen. The identity the effects are about is the context they are
/// applied in.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A pending binding of the identity, past its expiry, expires.
    ExpireBinding { binding_id: Uuid },
    /// A new account.
    CreateUser {
        /// The new account's id (a UUIDv7).
        user_id: Uuid,
        /// The values it receives from the login.
        fields: NewUserFields,
    },
    /// The identity is linked to the account `user_id`, with its profile as snapshot.
    LinkIdentity { user_id: Uuid },
    /// The linked identity's snapshot and last login time are refreshed (`user_id`: the account
    /// it is linked to).
    TouchIdentity { user_id: Uuid },
    /// Changed identifiers of a linked identity are copied onto its account.
    UpdateUser {
        /// The account updated.
        user_id: Uuid,
        /// The account after the update, and what changed.
        update: UserUpdate,
    },
    /// The identity is parked for a person or an admin to resolve.
    OpenBinding {
        /// The new binding's id (a UUIDv7).
        binding_id: Uuid,
        /// The candidate accounts, by id.
        candidates: Vec<Uuid>,
        /// Why no account was linked.
        reason: BindingReason,
        /// The time of the login plus the connection's `binding_ttl`.
        expires_at: DateTime<Utc>,
    },
    /// A pending binding is resolved.
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
    /// An event to publish (committed with the rest).
    Emit(OutboundEvent),
}

/// A login's effects and the reply that says what was decided.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginEffects {
    /// What must happen, in the order it must be applied (an overdue binding expires first).
    pub effects: Vec<Effect>,
    /// The decision as the reply (if one was asked for) and the dedupe record give it.
    pub reply: Reply,
}

/// The effects of deciding one login (`event_id` is its CloudEvents id).
pub fn of_login(
    identity: &Identity,
    event_id: &str,
    decision: &Decision,
    settings: &ConnectionSettings,
    now: DateTime<Utc>,
) -> LoginEffects {
    let pool = identity.user_pool_id.as_str();
    let cause = Some(event_id);
    let mut effects = Vec::new();
    if let Some(binding_id) = decision.expire_binding {
        effects.push(Effect::ExpireBinding { binding_id });
        effects.push(binding_expired(pool, binding_id, identity.reference(), now));
    }
    let mut reply = Reply {
        event_id: Some(event_id.to_owned()),
        outcome: decision.action.outcome(),
        user_id: None,
        binding_id: None,
        reason: None,
    };
    let masked = decision.evidence.masked();
    match &decision.action {
        Action::ExistingUser { user_id, drift } => {
            effects.push(Effect::TouchIdentity { user_id: *user_id });
            if let Some(drift) = drift {
                effects.extend(changed_identity(
                    pool, *user_id, identity, drift, event_id, now,
                ));
            }
            reply.user_id = Some(*user_id);
        }
        Action::StillPending { binding_id, reason } => {
            reply.binding_id = Some(*binding_id);
            reply.reason = Some(reason.as_str().to_owned());
        }
        Action::Link {
            user_id,
            matched_on,
        } => {
            effects.push(Effect::LinkIdentity { user_id: *user_id });
            effects.push(user_linked(
                pool,
                *user_id,
                identity.reference(),
                LinkMethod::FieldMatching,
                matched_on.clone(),
                cause,
                now,
            ));
            reply.user_id = Some(*user_id);
        }
        Action::OpenBinding { candidates, reason } => {
            let binding_id = Uuid::now_v7();
            let ttl = chrono::Duration::from_std(settings.binding_ttl)
                .unwrap_or(chrono::Duration::hours(72));
            let open = Effect::OpenBinding {
                binding_id,
                candidates: candidates.clone(),
                reason: *reason,
                expires_at: now + ttl,
            };
            let pending = binding_pending(&open, identity, masked, cause, now);
            effects.extend([open, pending]);
            reply.binding_id = Some(binding_id);
            reply.reason = Some(reason.as_str().to_owned());
        }
        Action::Reject => {
            effects.push(login_rejected(identity, masked, cause, now));
            reply.reason = Some(UNKNOWN_USER.to_owned());
        }
        Action::CreateUser(fields) => {
            let user_id = Uuid::now_v7();
            effects.extend(create_user(pool, user_id, fields, identity, cause, now));
            reply.user_id = Some(user_id);
        }
    }
    debug_assert_ne!(reply.outcome, Outcome::Error);
    LoginEffects { effects, reply }
}

/// `binding.pending` for an [`Effect::OpenBinding`], with the login's evidence (masked).
fn binding_pending(
    open: &Effect,
    identity: &Identity,
    evidence: Evidence,
    cause: Option<&str>,
    now: DateTime<Utc>,
) -> Effect {
    let Effect::OpenBinding {
        binding_id,
        candidates,
        reason,
        expires_at,
    } = open
    else {
        unreachable!("binding.pending is the event of an opened binding")
    };
    let data = BindingPending {
        binding_id: *binding_id,
        user_pool_id: &identity.user_pool_id,
        identity: identity.reference(),
        candidates: candidates.clone(),
        reason: reason.as_str(),
        expires_at: *expires_at,
        cause_event_id: cause,
        fields: evidence.fields,
        candidate_evidence: evidence.candidates,
    };
    Effect::Emit(OutboundEvent::new(data, now))
}

/// `login.rejected` of an unknown person in login-only mode, with the login's evidence (masked).
fn login_rejected(
    identity: &Identity,
    evidence: Evidence,
    cause: Option<&str>,
    now: DateTime<Utc>,
) -> Effect {
    let data = LoginRejected {
        user_pool_id: &identity.user_pool_id,
        identity: identity.reference(),
        reason: UNKNOWN_USER,
        cause_event_id: cause,
        fields: evidence.fields,
        candidates: evidence.candidates,
    };
    Effect::Emit(OutboundEvent::new(data, now))
}

/// `identity.changed` for a linked identity's changed identifiers, and when some are applied,
/// the account's update and its `user.updated`.
fn changed_identity(
    pool: &str,
    user_id: Uuid,
    identity: &Identity,
    drift: &Drift,
    event_id: &str,
    now: DateTime<Utc>,
) -> Vec<Effect> {
    let data = IdentityChanged {
        user_pool_id: pool,
        user_id,
        identity: identity.reference(),
        changes: &drift.changes,
        action: drift.action(),
        cause_event_id: event_id,
    };
    let mut effects = vec![Effect::Emit(OutboundEvent::new(data, now))];
    if let Some(update) = &drift.update {
        let changed = update.changed.iter().map(|f| f.as_str()).collect();
        effects.push(Effect::UpdateUser {
            user_id,
            update: update.clone(),
        });
        effects.push(Effect::Emit(user_updated(
            pool,
            update.user.clone(),
            changed,
            Changer::Login(event_id),
            now,
        )));
    }
    effects
}

/// Who changed an account: a login whose source changed (its event id), or an admin (the
/// token's name).
#[derive(Debug, Clone, Copy)]
pub enum Changer<'a> {
    /// The `id` of the login that carried the change (`cause_event_id`).
    Login(&'a str),
    /// The admin token's name (`actor`).
    Admin(&'a str),
}

/// `user.updated`: `user` is the account after the change, `changed` the names of the fields
/// that changed.
pub fn user_updated(
    pool: &str,
    user: UserSummary,
    changed: Vec<&'static str>,
    by: Changer<'_>,
    now: DateTime<Utc>,
) -> OutboundEvent {
    let (cause_event_id, actor) = match by {
        Changer::Login(event_id) => (Some(event_id), None),
        Changer::Admin(name) => (None, Some(name)),
    };
    OutboundEvent::new(
        UserUpdated {
            user_pool_id: pool,
            user,
            changed,
            cause_event_id,
            actor,
        },
        now,
    )
}

/// A new account with the identity linked to it, and its `user.created`.
pub fn create_user(
    pool: &str,
    user_id: Uuid,
    fields: &NewUserFields,
    identity: &Identity,
    cause: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<Effect> {
    let data = UserCreated {
        user_pool_id: pool,
        user: UserSummary {
            id: user_id,
            email: fields.email.clone(),
            phone: fields.phone.clone(),
            username: fields.username.clone(),
            name: fields.name.clone(),
            attributes: fields.attributes.clone(),
        },
        identity: identity.reference(),
        cause_event_id: cause,
    };
    vec![
        Effect::CreateUser {
            user_id,
            fields: fields.clone(),
        },
        Effect::LinkIdentity { user_id },
        Effect::Emit(OutboundEvent::new(data, now)),
    ]
}

/// `user.linked`.
pub fn user_linked(
    pool: &str,
    user_id: Uuid,
    identity: IdentityRef,
    method: LinkMethod,
    matched_on: Vec<MatchKey>,
    cause: Option<&str>,
    now: DateTime<Utc>,
) -> Effect {
    let data = UserLinked {
        user_pool_id: pool,
        user_id,
        identity,
        method,
        matched_on,
        cause_event_id: cause,
    };
    Effect::Emit(OutboundEvent::new(data, now))
}

/// `binding.expired`.
pub fn binding_expired(
    pool: &str,
    binding_id: Uuid,
    identity: IdentityRef,
    now: DateTime<Utc>,
) -> Effect {
    let data = BindingExpired {
        binding_id,
        user_pool_id: pool,
        identity,
    };
    Effect::Emit(OutboundEvent::new(data, now))
}

/// `binding.resolved`.
pub fn binding_resolved(
    pool: &str,
    binding_id: Uuid,
    resolution: Resolution,
    user_id: Option<Uuid>,
    resolved_by: &str,
    proof: &str,
    now: DateTime<Utc>,
) -> Effect {
    let data = BindingResolved {
        binding_id,
        user_pool_id: pool,
        resolution,
        user_id,
        resolved_by,
        proof,
    };
    Effect::Emit(OutboundEvent::new(data, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        connection::ConnectionSpec,
        decision::{Evidence, NewUserFields},
        events::EventType,
    };

    fn identity() -> Identity {
        Identity {
            user_pool_id: "pool-1".into(),
            connection: "dingtalk".into(),
            external_id: "dt-1".into(),
        }
    }

    fn settings() -> ConnectionSettings {
        ConnectionSettings::validate(&ConnectionSpec {
            identifier: Some("dingtalk".into()),
            user_pool_id: Some("pool-1".into()),
            binding_ttl: Some("1h".into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn kinds(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Emit(event) => event.kind.as_str().to_owned(),
                other => format!("{other:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_owned(),
            })
            .collect()
    }

    fn decision(action: Action, expire: Option<Uuid>) -> Decision {
        Decision {
            expire_binding: expire,
            action,
            evidence: Evidence::default(),
        }
    }

    #[test]
    fn each_outcome_has_its_effects_and_its_one_event() {
        let now = Utc::now();
        let user = Uuid::now_v7();
        let cases = [
            (
                Action::ExistingUser {
                    user_id: user,
                    drift: None,
                },
                vec!["TouchIdentity"],
            ),
            (
                Action::Link {
                    user_id: user,
                    matched_on: vec![crate::domain::MatchField::Email.into()],
                },
                vec!["LinkIdentity", "user.linked"],
            ),
            (
                Action::OpenBinding {
                    candidates: vec![user],
                    reason: BindingReason::AskBinding,
                },
                vec!["OpenBinding", "binding.pending"],
            ),
            (Action::Reject, vec!["login.rejected"]),
            (
                Action::CreateUser(NewUserFields::default()),
                vec!["CreateUser", "LinkIdentity", "user.created"],
            ),
        ];
        for (action, expected) in cases {
            let planned = of_login(
                &identity(),
                "e-1",
                &decision(action.clone(), None),
                &settings(),
                now,
            );
            assert_eq!(kinds(&planned.effects), expected, "{action:?}");
            assert_eq!(planned.reply.outcome, action.outcome());
        }
        let expiring = of_login(
            &identity(),
            "e-1",
            &decision(Action::Reject, Some(user)),
            &settings(),
            now,
        );
        assert_eq!(
            kinds(&expiring.effects),
            vec!["ExpireBinding", "binding.expired", "login.rejected"],
            "an overdue binding expires first"
        );
    }

    #[test]
    fn a_binding_expires_after_the_connections_ttl() {
        let now = Utc::now();
        let planned = of_login(
            &identity(),
            "e-1",
            &decision(
                Action::OpenBinding {
                    candidates: vec![],
                    reason: BindingReason::AskBinding,
                },
                None,
            ),
            &settings(),
            now,
        );
        let Effect::OpenBinding { expires_at, .. } = &planned.effects[0] else {
            panic!("{:?}", planned.effects)
        };
        assert_eq!(*expires_at, now + chrono::Duration::hours(1));
        let Effect::Emit(event) = &planned.effects[1] else {
            panic!()
        };
        assert_eq!(event.kind, EventType::BindingPending);
        assert_eq!(event.body["data"]["cause_event_id"], "e-1");
    }
}
