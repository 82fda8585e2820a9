//! What a decision or a binding resolution makes happen, as data. The domain says what must
//! happen; the adapters only apply it: the pipeline batches a login's effects into its one write
//! statement, the admin service and the command consumer write a resolution's in their
//! transaction. Every outbound event is built here, once per type.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    account::UserRecord,
    connection::{ConnectionSettings, MatchKey},
    decision::{
        Action, BindingReason, DIRECTORY_INACTIVE, Decision, Evidence, NewUserFields, Outcome,
        UNKNOWN_USER,
        drift::{Drift, UserUpdate},
    },
    events::{
        BindingExpired, BindingPending, BindingResolved, IdentityChanged, IdentityRef, LinkMethod,
        LoginRejected, OutboundEvent, Reply, Resolution, UserCreated, UserLinked, UserSummary,
        UserUpdated,
    },
    leavers::ACCOUNT_SUSPENDED,
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

/// One thing a login makes happen. The identity the effects are about is the context they are
/// applied in. (A binding's resolution has effects of its own: `resolution::ResolutionEffect`.)
#[derive(Debug, Clone, PartialEq)]
pub enum LoginEffect {
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
    OpenBinding(OpenBinding),
    /// An event to publish (committed with the rest).
    Emit(OutboundEvent),
}

/// A binding opened for an identity.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenBinding {
    /// The new binding's id (a UUIDv7).
    pub binding_id: Uuid,
    /// The candidate accounts, by id.
    pub candidates: Vec<Uuid>,
    /// Why no account was linked.
    pub reason: BindingReason,
    /// The time of the login plus the connection's `binding_ttl`.
    pub expires_at: DateTime<Utc>,
}

/// A new account for an identity, and its `user.created`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAccount {
    pub user_id: Uuid,
    pub fields: NewUserFields,
    pub created: OutboundEvent,
}

impl NewAccount {
    /// A login's effects for it: the account, the login's identity linked to it, the event.
    fn effects(self) -> [LoginEffect; 3] {
        [
            LoginEffect::CreateUser {
                user_id: self.user_id,
                fields: self.fields,
            },
            LoginEffect::LinkIdentity {
                user_id: self.user_id,
            },
            LoginEffect::Emit(self.created),
        ]
    }
}

/// A login's effects and the reply that says what was decided.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginEffects {
    /// What must happen, in the order it must be applied (an overdue binding expires first).
    pub effects: Vec<LoginEffect>,
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
    // An overdue binding of the identity expires first.
    let mut effects = Vec::new();
    if let Some(binding_id) = decision.expire_binding {
        let expired = binding_expired(pool, binding_id, identity.reference(), now);
        effects.extend([
            LoginEffect::ExpireBinding { binding_id },
            LoginEffect::Emit(expired),
        ]);
    }
    let mut reply = Reply::of(event_id, decision.action.outcome());
    let masked = decision.evidence.masked();
    match &decision.action {
        Action::ExistingUser { user_id, drift } => {
            effects.push(LoginEffect::TouchIdentity { user_id: *user_id });
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
            effects.push(LoginEffect::LinkIdentity { user_id: *user_id });
            effects.push(LoginEffect::Emit(user_linked(
                pool,
                *user_id,
                identity.reference(),
                LinkMethod::FieldMatching,
                matched_on.clone(),
                cause,
                now,
            )));
            reply.user_id = Some(*user_id);
        }
        Action::OpenBinding { candidates, reason } => {
            let open = OpenBinding {
                binding_id: Uuid::now_v7(),
                candidates: candidates.clone(),
                reason: *reason,
                expires_at: now + binding_ttl(settings),
            };
            reply.binding_id = Some(open.binding_id);
            reply.reason = Some(reason.as_str().to_owned());
            let pending = binding_pending(&open, identity, masked, cause, now);
            effects.extend([LoginEffect::OpenBinding(open), LoginEffect::Emit(pending)]);
        }
        Action::Reject => {
            let rejected = login_rejected(identity, masked, UNKNOWN_USER, cause, now);
            effects.push(LoginEffect::Emit(rejected));
            reply.reason = Some(UNKNOWN_USER.to_owned());
        }
        Action::DirectoryInactive => {
            let rejected = login_rejected(identity, masked, DIRECTORY_INACTIVE, cause, now);
            effects.push(LoginEffect::Emit(rejected));
            reply.reason = Some(DIRECTORY_INACTIVE.to_owned());
        }
        Action::AccountSuspended { .. } => {
            let rejected = login_rejected(identity, masked, ACCOUNT_SUSPENDED, cause, now);
            effects.push(LoginEffect::Emit(rejected));
            reply.reason = Some(ACCOUNT_SUSPENDED.to_owned());
        }
        Action::CreateUser(fields) => {
            let account = new_account(pool, fields, identity, cause, now);
            reply.user_id = Some(account.user_id);
            effects.extend(account.effects());
        }
    }
    debug_assert_ne!(reply.outcome, Outcome::Error);
    LoginEffects { effects, reply }
}

/// How long a binding a login opens stays pending.
fn binding_ttl(settings: &ConnectionSettings) -> chrono::Duration {
    chrono::Duration::from_std(settings.binding_ttl).unwrap_or(chrono::Duration::hours(72))
}

/// `binding.pending` for an opened binding, with the login's evidence (masked).
fn binding_pending(
    open: &OpenBinding,
    identity: &Identity,
    evidence: Evidence,
    cause: Option<&str>,
    now: DateTime<Utc>,
) -> OutboundEvent {
    let data = BindingPending {
        binding_id: open.binding_id,
        user_pool_id: &identity.user_pool_id,
        identity: identity.reference(),
        candidates: open.candidates.clone(),
        reason: open.reason.as_str(),
        expires_at: open.expires_at,
        cause_event_id: cause,
        fields: evidence.fields,
        candidate_evidence: evidence.candidates,
    };
    OutboundEvent::new(data, now)
}

/// `login.rejected` of an unknown person in login-only mode (`unknown_user`), of a person the
/// directory says left (`directory_inactive`), or of a login reaching a suspended account
/// (`account_suspended`), with the login's evidence (masked).
fn login_rejected(
    identity: &Identity,
    evidence: Evidence,
    reason: &'static str,
    cause: Option<&str>,
    now: DateTime<Utc>,
) -> OutboundEvent {
    let data = LoginRejected {
        user_pool_id: &identity.user_pool_id,
        identity: identity.reference(),
        reason,
        cause_event_id: cause,
        fields: evidence.fields,
        candidates: evidence.candidates,
    };
    OutboundEvent::new(data, now)
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
) -> Vec<LoginEffect> {
    let data = IdentityChanged {
        user_pool_id: pool,
        user_id,
        identity: identity.reference(),
        changes: &drift.changes,
        action: drift.action(),
        cause_event_id: event_id,
    };
    let mut effects = vec![LoginEffect::Emit(OutboundEvent::new(data, now))];
    if let Some(update) = &drift.update {
        let changed = update.changed.iter().map(|f| f.as_str()).collect();
        effects.push(LoginEffect::UpdateUser {
            user_id,
            update: update.clone(),
        });
        effects.push(LoginEffect::Emit(user_updated(
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

/// A new account (a fresh UUIDv7) for the identity, and its `user.created`.
pub fn new_account(
    pool: &str,
    fields: &NewUserFields,
    identity: &Identity,
    cause: Option<&str>,
    now: DateTime<Utc>,
) -> NewAccount {
    let user_id = Uuid::now_v7();
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
    NewAccount {
        user_id,
        fields: fields.clone(),
        created: OutboundEvent::new(data, now),
    }
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
) -> OutboundEvent {
    let data = UserLinked {
        user_pool_id: pool,
        user_id,
        identity,
        method,
        matched_on,
        cause_event_id: cause,
    };
    OutboundEvent::new(data, now)
}

/// `binding.expired`.
pub fn binding_expired(
    pool: &str,
    binding_id: Uuid,
    identity: IdentityRef,
    now: DateTime<Utc>,
) -> OutboundEvent {
    let data = BindingExpired {
        binding_id,
        user_pool_id: pool,
        identity,
    };
    OutboundEvent::new(data, now)
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
) -> OutboundEvent {
    let data = BindingResolved {
        binding_id,
        user_pool_id: pool,
        resolution,
        user_id,
        resolved_by,
        proof,
    };
    OutboundEvent::new(data, now)
}

impl UserRecord {
    /// A new account of `pool` with the fields a login or a resolution gives it.
    pub fn new(id: Uuid, pool: &str, fields: &NewUserFields) -> Self {
        Self {
            id,
            user_pool_id: pool.to_owned(),
            email: fields.email.clone(),
            email_verified: fields.email_verified,
            phone: fields.phone.clone(),
            phone_verified: fields.phone_verified,
            username: fields.username.clone(),
            name: fields.name.clone(),
            protected: false,
            attributes: fields.attributes.clone(),
        }
    }
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

    fn kinds(effects: &[LoginEffect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                LoginEffect::Emit(event) => event.kind.as_str().to_owned(),
                other => format!("{other:?}")
                    .split([' ', '{', '('])
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
        let LoginEffect::OpenBinding(open) = &planned.effects[0] else {
            panic!("{:?}", planned.effects)
        };
        assert_eq!(open.expires_at, now + chrono::Duration::hours(1));
        let LoginEffect::Emit(event) = &planned.effects[1] else {
            panic!("{:?}", planned.effects)
        };
        assert_eq!(event.kind, EventType::BindingPending);
        assert_eq!(event.body["data"]["cause_event_id"], "e-1");
    }
}
