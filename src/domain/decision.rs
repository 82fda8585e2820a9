//! The decision for one login (contract section 1, steps 3 to 5): given the login's normalised
//! fields, its connection's settings and what the database knows about the identity and the pool's
//! matching users, say what happens. Steps 1 (validation) and 2 (dedupe) happen before this; step 6
//! (one transaction) is the caller's job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::account::UserRecord;
use super::attributes::{self, AttributeName, Attributes};
use super::connection::{
    Association, ConnectionSettings, LoginMode, MatchField, MatchKey, MatchRule,
};
use super::directory::Finding;
use super::login::{Field, NormalizedFields};
use super::{Email, Phone, Username};

pub mod drift;

use drift::{Drift, LinkedAccount};

/// The outcome reported in replies and recorded per processed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `existing_user`: the identity was already linked to an account.
    ExistingUser,
    /// `user_created`: a new account was made for the identity.
    UserCreated,
    /// `user_linked`: the identity was linked to the one matching account.
    UserLinked,
    /// `binding_pending`: a pending binding was opened, or the identity's binding is still
    /// pending.
    BindingPending,
    /// `rejected`: a `login_only` connection and no account for the person (`unknown_user`).
    Rejected,
    /// `error`: the message could not be processed and was dead-lettered; said in the error
    /// reply, never stored.
    Error,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: &'static [Outcome] = &[
        Self::ExistingUser,
        Self::UserCreated,
        Self::UserLinked,
        Self::BindingPending,
        Self::Rejected,
        Self::Error,
    ];

    /// The text form: the reply's `outcome`, the stored outcome and the metrics label.
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

    /// The outcome of a text form; `None` for any other text.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|o| o.as_str() == raw)
    }
}

text_enum!(
    /// Why a pending binding was opened instead of linking (the binding's and the reply's
    /// `reason`):
    ///
    /// - `ask_binding`: the connection asks before linking (`association = "ask_binding"`);
    /// - `ambiguous_match`: two or more accounts matched;
    /// - `candidate_already_linked`: the one candidate already holds an identity of the
    ///   connection;
    /// - `protected_account`: the one candidate is protected;
    /// - `confusable_identifier`: a lookalike value of the login matched the candidate;
    /// - `candidate_unverified`: the candidate's matching email or phone is unverified on the
    ///   account.
    BindingReason {
        AskBinding => "ask_binding",
        AmbiguousMatch => "ambiguous_match",
        CandidateAlreadyLinked => "candidate_already_linked",
        ProtectedAccount => "protected_account",
        ConfusableIdentifier => "confusable_identifier",
        CandidateUnverified => "candidate_unverified",
    }
);

text_enum!(
    /// Why a candidate was not linked automatically (the safety rules, in their order of
    /// precedence): the account is `protected_account`; a lookalike value of the login matched it
    /// (`confusable_identifier`); its matching email or phone is unverified on the account
    /// (`candidate_unverified`); it already holds an identity of the connection
    /// (`candidate_already_linked`).
    SetAside {
        ProtectedAccount => "protected_account",
        ConfusableIdentifier => "confusable_identifier",
        CandidateUnverified => "candidate_unverified",
        CandidateAlreadyLinked => "candidate_already_linked",
    }
);

text_enum!(
    /// Why a login's field was not used (for matching, or for a new account):
    ///
    /// - `unverified`: the source does not say it is verified and the connection requires it;
    /// - `malformed`: not a valid email, phone or username;
    /// - `suspicious`: a lookalike of another identifier;
    /// - `domain_not_allowed`: an email outside the connection's `allowed_email_domains`;
    /// - `held`: valid, but another account of the pool holds it, so a new account did not get it;
    /// - `not_matched_on`: valid, but matching did not look at it (not in `match_fields`, or no
    ///   candidate search ran).
    WhyNot {
        Unverified => "unverified",
        Malformed => "malformed",
        Suspicious => "suspicious",
        DomainNotAllowed => "domain_not_allowed",
        Held => "held",
        NotMatchedOn => "not_matched_on",
    }
);

impl From<SetAside> for BindingReason {
    fn from(reason: SetAside) -> Self {
        match reason {
            SetAside::ProtectedAccount => Self::ProtectedAccount,
            SetAside::ConfusableIdentifier => Self::ConfusableIdentifier,
            SetAside::CandidateUnverified => Self::CandidateUnverified,
            SetAside::CandidateAlreadyLinked => Self::CandidateAlreadyLinked,
        }
    }
}

/// The reason of a rejected login.
pub const UNKNOWN_USER: &str = "unknown_user";
/// The reason of a login rejected because the directory says the person left.
pub const DIRECTORY_INACTIVE: &str = "directory_inactive";

text_enum!(
    /// Where a login's field came from: the event the platform published, or the connection's
    /// directory (contract section 10).
    FieldOrigin { Event => "event", Directory => "directory" }
);

/// Evidence recorded before fields had an origin came from events.
fn from_event() -> FieldOrigin {
    FieldOrigin::Event
}

/// What the connection's directory said about the person, when it was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DirectoryEvidence {
    /// `found`, `inactive`, `not_found` (decided on the event alone) or `unavailable` (decided
    /// on the event alone, `on_unavailable = "event_profile"`).
    pub result: String,
    /// Why it could not be asked, for `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A user of the pool that shares at least one normalised email, phone or username with the login.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolUser {
    /// The account's id.
    pub id: Uuid,
    /// The account's email, canonical; `None` when it has none.
    pub email: Option<Email>,
    /// Whether the account's email is verified; a candidate matched on an unverified one is
    /// not taken over (`candidate_unverified`).
    pub email_verified: bool,
    /// The account's phone number in E.164; `None` when it has none.
    pub phone: Option<Phone>,
    /// Whether the account's phone number is verified, as `email_verified`.
    pub phone_verified: bool,
    /// The account's username, canonical; `None` when it has none.
    pub username: Option<Username>,
    /// The account's attributes.
    pub attributes: Attributes,
    /// Never linked automatically (admins, break-glass accounts).
    pub protected: bool,
    /// The user already holds an identity of the login's connection.
    pub linked_on_connection: bool,
    /// Suspended (contract section 11): never linked to, never logged into.
    pub suspended: bool,
}

impl PoolUser {
    /// Whether the account holds one of the login's valid values (lookalikes included): the
    /// accounts a decision must see, to find candidates and to know which values are held.
    pub fn shares_a_value(&self, login: &NormalizedFields) -> bool {
        shares_a_value(
            login,
            self.email.as_ref(),
            self.phone.as_ref(),
            self.username.as_ref(),
            &self.attributes,
        )
    }
}

/// Whether an account with these values holds one of the login's valid values.
pub fn shares_a_value(
    login: &NormalizedFields,
    email: Option<&Email>,
    phone: Option<&Phone>,
    username: Option<&Username>,
    attributes: &Attributes,
) -> bool {
    fn holds<T: PartialEq>(value: Option<&T>, stored: Option<&T>) -> bool {
        value.is_some() && value == stored
    }
    holds(login.email.value(), email)
        || holds(login.phone.value(), phone)
        || holds(login.username.value(), username)
        || login.attributes.iter().any(|(name, value)| {
            value.value().is_some_and(|value| {
                attributes.get(name).is_some_and(|held| {
                    // A lookalike too: it may hold the value where the pool wants it unique.
                    held == value || attributes::skeleton(held) == attributes::skeleton(value)
                })
            })
        })
}

/// The identity's binding that still waits to be resolved, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBinding {
    /// The binding's id.
    pub id: Uuid,
    /// Why it was opened; a later login of the identity gets it in its reply again.
    pub reason: BindingReason,
    /// When it expires unresolved; a login after that expires it and is decided afresh.
    pub expires_at: DateTime<Utc>,
}

/// What is known about the login's identity and pool when the decision is taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Situation {
    /// The account the identity (pool, connection, external id) is linked to.
    pub linked_user: Option<Uuid>,
    /// That account's values and the identity's last snapshot, to tell changed identifiers;
    /// `None` when not linked (or not known, when nothing is compared).
    pub linked_account: Option<LinkedAccount>,
    /// The identity's pending binding, overdue or not (the decision compares `expires_at` with
    /// the time of the decision).
    pub pending_binding: Option<PendingBinding>,
    /// Every pool user sharing a normalised field with the login, whatever the settings: the
    /// decision needs them both to find candidates and to know which fields are already held.
    /// For attributes: every user sharing a value of an attribute the connection matches on or
    /// the pool holds unique.
    pub pool_users: Vec<PoolUser>,
    /// The attributes unique inside the login's pool (some connection of the pool lists them):
    /// a new account never takes a value of one that another account holds.
    pub unique_attributes: Vec<AttributeName>,
}

/// The fields a new account receives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewUserFields {
    /// The login's canonical email, where it is usable and no other account of the pool holds
    /// it; `None` otherwise.
    pub email: Option<Email>,
    /// The login's verification flag for the email the account receives; `false` without one.
    pub email_verified: bool,
    /// The login's phone number in E.164, on the same terms as the email.
    pub phone: Option<Phone>,
    /// The login's verification flag for the phone number the account receives; `false`
    /// without one.
    pub phone_verified: bool,
    /// The login's canonical username, on the same terms as the email.
    pub username: Option<Username>,
    /// The profile's display name as received (not normalised, not unique).
    pub name: Option<String>,
    /// The mapped attributes, each where it is valid, not a lookalike, and (for an attribute
    /// unique in the pool) not held by another account.
    pub attributes: Attributes,
}

/// What the decision does with a login (contract section 1, steps 3 to 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Step 3: already linked (to the account `user_id`); refresh the identity's snapshot, and
    /// report (or apply) what changed since it.
    ExistingUser {
        /// The account the identity is linked to.
        user_id: Uuid,
        /// The identifiers that changed since the last snapshot, if any.
        drift: Option<Drift>,
    },
    /// Step 4: a binding is still pending.
    StillPending {
        /// The pending binding, repeated in the reply.
        binding_id: Uuid,
        /// The reason it was opened with.
        reason: BindingReason,
    },
    /// Step 5: link to the one matching user.
    Link {
        /// The account the identity is linked to.
        user_id: Uuid,
        /// The fields on which the account matched, in `match_fields` order.
        matched_on: Vec<MatchKey>,
    },
    /// Step 5: park the identity for an admin (or the person, through the platform).
    OpenBinding {
        /// The candidate accounts, by id.
        candidates: Vec<Uuid>,
        /// Why no account was linked.
        reason: BindingReason,
    },
    /// Step 5: `login_only` and nobody matches.
    Reject,
    /// Before anything else: the connection's directory says the person is no longer active
    /// (contract section 10): no account, no link, `login.rejected` with `directory_inactive`.
    DirectoryInactive,
    /// Step 5: a new account with this identity.
    CreateUser(NewUserFields),
    /// The account the login would reach (linked, or a candidate) is suspended (contract
    /// section 11): no link, no login, `login.rejected` with `account_suspended`.
    AccountSuspended {
        /// The suspended account.
        user_id: Uuid,
    },
}

impl Action {
    /// The outcome the reply and the dedupe record report for this action.
    pub fn outcome(&self) -> Outcome {
        match self {
            Action::ExistingUser { .. } => Outcome::ExistingUser,
            Action::StillPending { .. } | Action::OpenBinding { .. } => Outcome::BindingPending,
            Action::Link { .. } => Outcome::UserLinked,
            Action::Reject | Action::DirectoryInactive | Action::AccountSuspended { .. } => {
                Outcome::Rejected
            }
            Action::CreateUser(_) => Outcome::UserCreated,
        }
    }
}

/// One field of the login, as the decision judged it (contract section 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FieldEvidence {
    /// Which of the login's fields this is.
    pub field: MatchKey,
    /// The canonical value, or the value as received (cut to 256 characters) when malformed or
    /// suspicious, so that an admin sees the lookalike; masked in events and for viewers.
    pub value: String,
    /// Whether the field could be used; `false` exactly when `why_not` says why.
    pub usable: bool,
    /// Why the field was not used; `None` when it was usable.
    pub why_not: Option<WhyNot>,
    /// Where the value came from: `event` or `directory`.
    #[serde(default = "from_event")]
    pub origin: FieldOrigin,
}

/// A candidate account: the fields it matched on and why it was set aside, if it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CandidateEvidence {
    /// The candidate account.
    pub user_id: Uuid,
    /// The fields on which its value equals the login's, in `match_fields` order; never empty.
    pub matched_on: Vec<MatchKey>,
    /// The first safety rule that kept it from being linked automatically; `None` when none did.
    pub set_aside: Option<SetAside>,
    /// The account is suspended (contract section 11): the login is rejected with
    /// `account_suspended` rather than reaching it. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
}

/// Why the decision is what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// How the match fields combined (`any` for decisions recorded before there was a choice).
    #[serde(default = "any")]
    pub match_rule: MatchRule,
    /// Each field the login carried (email, phone, username, then its mapped attributes by
    /// name), with whether it was usable and why not.
    pub fields: Vec<FieldEvidence>,
    /// The candidate accounts, in id order; empty when none matched or no candidate search ran
    /// (an existing user, a still-pending binding, association disabled).
    pub candidates: Vec<CandidateEvidence>,
    /// What the connection's directory said, when it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryEvidence>,
}

fn any() -> MatchRule {
    MatchRule::Any
}

impl Default for Evidence {
    fn default() -> Self {
        Self {
            match_rule: MatchRule::Any,
            fields: Vec::new(),
            candidates: Vec::new(),
            directory: None,
        }
    }
}

impl Evidence {
    /// The evidence as events and viewers see it: emails and phone numbers masked.
    pub fn masked(&self) -> Self {
        let fields = self
            .fields
            .iter()
            .map(|f| FieldEvidence {
                value: match f.field {
                    MatchKey::Field(MatchField::Email) => super::mask::email(&f.value),
                    MatchKey::Field(MatchField::Phone) => super::mask::phone(&f.value),
                    _ => f.value.clone(),
                },
                ..f.clone()
            })
            .collect();
        Self {
            match_rule: self.match_rule,
            fields,
            candidates: self.candidates.clone(),
            directory: self.directory.clone(),
        }
    }
}

/// What is decided for one login: an overdue binding to expire first, what to do, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// A pending binding found past its `expires_at`: it expires now and the login starts afresh.
    pub expire_binding: Option<Uuid>,
    /// What happens to the login.
    pub action: Action,
    /// Why: the login's fields and the candidates as judged, stored with the dedupe record.
    pub evidence: Evidence,
}

/// Decides one login (steps 3 to 5 and the safety rules).
pub fn decide(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    situation: &Situation,
    now: DateTime<Utc>,
) -> Decision {
    let judge = Judge { login, settings };
    if matches!(login.directory, Some(Finding::Found { inactive: true })) {
        return Decision {
            expire_binding: None,
            action: Action::DirectoryInactive,
            evidence: judge.evidence(false, &[], None, situation),
        };
    }
    if let Some(user_id) = situation.linked_user {
        if situation
            .linked_account
            .as_ref()
            .is_some_and(|a| a.suspended)
        {
            return Decision {
                expire_binding: None,
                action: Action::AccountSuspended { user_id },
                evidence: judge.evidence(false, &[], None, situation),
            };
        }
        return Decision {
            expire_binding: None,
            action: Action::ExistingUser {
                user_id,
                drift: situation
                    .linked_account
                    .as_ref()
                    .and_then(|a| drift::judge(login, settings, a, &situation.pool_users)),
            },
            evidence: judge.evidence(false, &[], None, situation),
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
                evidence: judge.evidence(false, &[], None, situation),
            };
        }
        expire_binding = Some(binding.id);
    }

    let candidates = match settings.association {
        Association::Disabled => Vec::new(),
        Association::FieldMatching | Association::AskBinding => {
            judge.candidates(&situation.pool_users)
        }
    };
    let action = judge.action(&candidates, situation);
    let created = match &action {
        Action::CreateUser(new) => Some(new),
        _ => None,
    };
    let searched = settings.association != Association::Disabled;
    let evidence = judge.evidence(searched, &candidates, created, situation);
    Decision {
        expire_binding,
        action,
        evidence,
    }
}

/// The login's canonical value of `field` when it may be used at all: present, valid, not a
/// lookalike, in an allowed domain, verified where the connection requires it.
pub fn usable_value(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    field: MatchField,
) -> Option<String> {
    let judge = Judge { login, settings };
    if judge.unusable(&field.into()).is_some() {
        return None;
    }
    match field {
        MatchField::Email => login.email.value().map(|v| v.to_string()),
        MatchField::Phone => login.phone.value().map(|v| v.to_string()),
        MatchField::Username => login.username.value().map(|v| v.to_string()),
    }
}

/// The rules about one login under one connection's settings.
struct Judge<'a> {
    login: &'a NormalizedFields,
    settings: &'a ConnectionSettings,
}

/// What the login carries in one field, as the rules see it.
struct Carried<'a> {
    malformed: bool,
    suspicious: bool,
    verified: bool,
    /// The canonical value when valid.
    value: Option<&'a str>,
}

impl Judge<'_> {
    fn carried(&self, key: &MatchKey) -> Option<Carried<'_>> {
        fn of<'v, T>(field: &'v Field<T>, verified: bool, text: fn(&T) -> &str) -> Carried<'v> {
            Carried {
                malformed: matches!(field, Field::Malformed(_)),
                suspicious: field.is_suspicious(),
                verified,
                value: field.value().map(text),
            }
        }
        let login = self.login;
        let carried = match key {
            MatchKey::Field(MatchField::Email) => {
                of(&login.email, login.email_verified, Email::as_str)
            }
            MatchKey::Field(MatchField::Phone) => {
                of(&login.phone, login.phone_verified, Phone::as_str)
            }
            MatchKey::Field(MatchField::Username) => of(&login.username, true, Username::as_str),
            MatchKey::Attribute(name) => of(
                login.attributes.get(name)?,
                login.verified_attributes.contains(name),
                String::as_str,
            ),
        };
        (carried.malformed || carried.value.is_some()).then_some(carried)
    }

    /// Why the login's `field` cannot be used at all, whatever the decision: malformed,
    /// suspicious, outside the allowed domains, or unverified where verification is required.
    fn unusable(&self, key: &MatchKey) -> Option<WhyNot> {
        self.judged(key, true)
    }

    /// `unusable`, leaving suspicion out when `suspicion` is false.
    fn judged(&self, key: &MatchKey, suspicion: bool) -> Option<WhyNot> {
        let carried = self.carried(key)?;
        if carried.malformed {
            return Some(WhyNot::Malformed);
        }
        if suspicion && carried.suspicious {
            return Some(WhyNot::Suspicious);
        }
        if *key == MatchKey::Field(MatchField::Email)
            && let Some(email) = self.login.email.value()
            && !self.settings.email_domain_allowed(email.domain())
        {
            return Some(WhyNot::DomainNotAllowed);
        }
        if self.settings.require_verified && !carried.verified {
            return Some(WhyNot::Unverified);
        }
        None
    }

    /// Whether candidates are looked for with this field: in `match_fields`, present and valid,
    /// in an allowed domain and verified where required. A suspicious value is looked for too, to
    /// find the account it could pass for; it never links by itself.
    fn searched(&self, key: &MatchKey) -> bool {
        self.settings.match_fields.contains(key)
            && self.present(key)
            && self.judged(key, false).is_none()
    }

    fn present(&self, key: &MatchKey) -> bool {
        self.carried(key).is_some_and(|c| c.value.is_some())
    }

    /// Whether `user` holds the login's value of `field`.
    fn holds(&self, user: &PoolUser, key: &MatchKey) -> bool {
        let Some(value) = self.carried(key).and_then(|c| c.value) else {
            return false;
        };
        let stored = match key {
            MatchKey::Field(MatchField::Email) => user.email.as_ref().map(Email::as_str),
            MatchKey::Field(MatchField::Phone) => user.phone.as_ref().map(Phone::as_str),
            MatchKey::Field(MatchField::Username) => user.username.as_ref().map(Username::as_str),
            MatchKey::Attribute(name) => user.attributes.get(name).map(String::as_str),
        };
        stored == Some(value)
    }

    /// The listed fields a candidate must match on under `match_rule = "all"`: every one the
    /// login carries at all (a carried but unusable value cannot be matched, so nobody is a
    /// candidate then).
    fn required(&self) -> Vec<&MatchKey> {
        self.settings
            .match_fields
            .iter()
            .filter(|k| self.carried(k).is_some())
            .collect()
    }

    /// Users whose normalised `match_fields` equal the login's under the connection's
    /// `match_rule`, each with the fields that matched (in `match_fields` order) and why it
    /// cannot be linked automatically, in a stable order (by id).
    fn candidates(&self, pool_users: &[PoolUser]) -> Vec<CandidateEvidence> {
        let required = self.required();
        let qualifies = |matched_on: &[MatchKey]| match self.settings.match_rule {
            MatchRule::Any => !matched_on.is_empty(),
            MatchRule::All => {
                !required.is_empty() && required.iter().all(|k| matched_on.contains(k))
            }
        };
        let mut found: Vec<CandidateEvidence> = pool_users
            .iter()
            .filter_map(|user| {
                let matched_on = matched_fields(self.login, self.settings, user);
                qualifies(&matched_on).then(|| CandidateEvidence {
                    user_id: user.id,
                    set_aside: self.set_aside(user, &matched_on),
                    matched_on,
                    suspended: user.suspended,
                })
            })
            .collect();
        found.sort_by_key(|c| c.user_id);
        found.dedup_by_key(|c| c.user_id);
        found
    }

    /// The first safety rule that keeps `user` from being linked automatically, in the
    /// contract's order.
    fn set_aside(&self, user: &PoolUser, matched_on: &[MatchKey]) -> Option<SetAside> {
        let suspicious = |k: &MatchKey| self.carried(k).is_some_and(|c| c.suspicious);
        let unverified_on_account = |k: &MatchKey| match k {
            MatchKey::Field(MatchField::Email) => !user.email_verified,
            MatchKey::Field(MatchField::Phone) => !user.phone_verified,
            _ => false,
        };
        if user.protected {
            Some(SetAside::ProtectedAccount)
        } else if matched_on.iter().any(suspicious) {
            Some(SetAside::ConfusableIdentifier)
        } else if !self.settings.trust_unverified_accounts
            && matched_on.iter().any(unverified_on_account)
        {
            Some(SetAside::CandidateUnverified)
        } else if user.linked_on_connection {
            Some(SetAside::CandidateAlreadyLinked)
        } else {
            None
        }
    }

    /// What to do given the candidates found (none: [`Judge::no_candidate`]).
    fn action(&self, candidates: &[CandidateEvidence], situation: &Situation) -> Action {
        // A suspended account is never linked to, nor offered in a binding: whoever reaches it
        // is turned away (a person who left must not come back through a second source).
        if let Some(suspended) = candidates.iter().find(|c| c.suspended) {
            return Action::AccountSuspended {
                user_id: suspended.user_id,
            };
        }
        match (self.settings.association, candidates) {
            (_, []) => self.no_candidate(situation),
            (Association::FieldMatching, [only]) => match only.set_aside {
                None => Action::Link {
                    user_id: only.user_id,
                    matched_on: only.matched_on.clone(),
                },
                Some(reason) => Action::OpenBinding {
                    candidates: vec![only.user_id],
                    reason: reason.into(),
                },
            },
            (Association::FieldMatching, many) => Action::OpenBinding {
                candidates: many.iter().map(|c| c.user_id).collect(),
                reason: BindingReason::AmbiguousMatch,
            },
            // Asking the person: a protected account or a lookalike of the one candidate says so,
            // so that the platform does not offer self-service proof against it.
            (_, [only])
                if matches!(
                    only.set_aside,
                    Some(SetAside::ProtectedAccount | SetAside::ConfusableIdentifier)
                ) =>
            {
                Action::OpenBinding {
                    candidates: vec![only.user_id],
                    reason: only.set_aside.expect("matched above").into(),
                }
            }
            (_, some) => Action::OpenBinding {
                candidates: some.iter().map(|c| c.user_id).collect(),
                reason: BindingReason::AskBinding,
            },
        }
    }

    fn no_candidate(&self, situation: &Situation) -> Action {
        if self.settings.login_mode == LoginMode::LoginOnly {
            return Action::Reject;
        }
        Action::CreateUser(new_user_fields(
            self.login,
            self.settings,
            &situation.pool_users,
            &situation.unique_attributes,
        ))
    }

    /// Whether a new account may not take the login's value of `key` because another account
    /// holds it: always for email, phone and username, for an attribute where it is unique in
    /// the pool.
    /// A unique attribute is held by any account holding a lookalike of the value (the same
    /// UTS #39 skeleton: `E1024` and `Е1024` with a Cyrillic `Е`).
    fn held(&self, key: &MatchKey, pool_users: &[PoolUser], unique: &[AttributeName]) -> bool {
        match key {
            MatchKey::Attribute(name) => {
                let Some(value) = self.carried(key).and_then(|c| c.value) else {
                    return false;
                };
                let skeleton = attributes::skeleton(value);
                unique.contains(name)
                    && pool_users.iter().any(|u| {
                        u.attributes
                            .get(name)
                            .is_some_and(|held| attributes::skeleton(held) == skeleton)
                    })
            }
            MatchKey::Field(_) => pool_users.iter().any(|u| self.holds(u, key)),
        }
    }

    /// Every field the login carries, in evidence order.
    fn keys(&self) -> Vec<MatchKey> {
        MatchField::ALL
            .iter()
            .map(|f| MatchKey::Field(*f))
            .chain(
                self.login
                    .attributes
                    .keys()
                    .cloned()
                    .map(MatchKey::Attribute),
            )
            .filter(|k| self.carried(k).is_some())
            .collect()
    }

    /// The evidence of the login's fields: each present field with its value, whether it was
    /// used and why not. `searching`: candidates were looked for (step 5, association enabled).
    fn evidence(
        &self,
        searching: bool,
        candidates: &[CandidateEvidence],
        created: Option<&NewUserFields>,
        situation: &Situation,
    ) -> Evidence {
        let mut fields = Vec::new();
        for key in self.keys() {
            let value = match &key {
                MatchKey::Field(MatchField::Email) => text(&self.login.email, Email::as_str),
                MatchKey::Field(MatchField::Phone) => text(&self.login.phone, Phone::as_str),
                MatchKey::Field(MatchField::Username) => {
                    text(&self.login.username, Username::as_str)
                }
                MatchKey::Attribute(name) => self
                    .login
                    .attributes
                    .get(name)
                    .and_then(|f| text(f, String::as_str)),
            };
            let Some(value) = value else { continue };
            let copied = created.is_some_and(|new| match &key {
                MatchKey::Field(MatchField::Email) => new.email.is_some(),
                MatchKey::Field(MatchField::Phone) => new.phone.is_some(),
                MatchKey::Field(MatchField::Username) => new.username.is_some(),
                MatchKey::Attribute(name) => new.attributes.contains_key(name),
            });
            let why_not = self.unusable(&key).or(if copied {
                None
            } else if created.is_some()
                && self.held(&key, &situation.pool_users, &situation.unique_attributes)
            {
                Some(WhyNot::Held)
            } else if !(searching && self.searched(&key)) {
                Some(WhyNot::NotMatchedOn)
            } else {
                None
            });
            let origin = if self.login.from_directory.contains(&key) {
                FieldOrigin::Directory
            } else {
                FieldOrigin::Event
            };
            fields.push(FieldEvidence {
                field: key,
                value,
                usable: why_not.is_none(),
                why_not,
                origin,
            });
        }
        Evidence {
            match_rule: self.settings.match_rule,
            fields,
            candidates: candidates.to_vec(),
            directory: self
                .login
                .directory
                .as_ref()
                .map(|finding| DirectoryEvidence {
                    result: finding.result().to_owned(),
                    detail: match finding {
                        Finding::Unavailable(detail) => Some(detail.clone()),
                        _ => None,
                    },
                }),
        }
    }
}

/// The value the evidence shows: the canonical one, or the raw one when it is malformed or
/// suspicious (the canonical form of a lookalike hides what it was).
fn text<T>(field: &Field<T>, as_str: fn(&T) -> &str) -> Option<String> {
    match field {
        Field::Absent => None,
        Field::Malformed(raw) => Some(raw.clone()),
        Field::Valid {
            suspicious: Some(raw),
            ..
        } => Some(raw.clone()),
        Field::Valid { value, .. } => Some(as_str(value).to_owned()),
    }
}

/// What a new account receives from a login: each field only where it is valid, not suspicious,
/// in an allowed domain, verified (when the connection requires it) and not held by another user
/// of the pool (for an attribute: when it is unique in the pool).
pub fn new_user_fields(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    pool_users: &[PoolUser],
    unique: &[AttributeName],
) -> NewUserFields {
    let judge = Judge { login, settings };
    let take =
        |key: MatchKey| judge.unusable(&key).is_none() && !judge.held(&key, pool_users, unique);
    let email = login
        .email
        .value()
        .cloned()
        .filter(|_| take(MatchField::Email.into()));
    let phone = login
        .phone
        .value()
        .cloned()
        .filter(|_| take(MatchField::Phone.into()));
    let username = login
        .username
        .value()
        .cloned()
        .filter(|_| take(MatchField::Username.into()));
    // An attribute is copied only where the connection vouches for it, whatever
    // `require_verified` says: an account's attributes identify it to every connection of the
    // pool, and an account has no flag to say a value was never checked.
    let attributes = login
        .attributes
        .iter()
        .filter(|(name, _)| login.verified_attributes.contains(name))
        .filter(|(name, _)| take(MatchKey::Attribute((*name).clone())))
        .filter_map(|(name, field)| Some((name.clone(), field.value()?.clone())))
        .collect();
    NewUserFields {
        email_verified: email.is_some() && login.email_verified,
        email,
        phone_verified: phone.is_some() && login.phone_verified,
        phone,
        username,
        name: login.name.clone(),
        attributes,
    }
}

/// The connection's match fields (in order) on which `user` matches the login, counting only
/// fields candidates are looked for with.
pub fn matched_fields(
    login: &NormalizedFields,
    settings: &ConnectionSettings,
    user: &PoolUser,
) -> Vec<MatchKey> {
    let judge = Judge { login, settings };
    settings
        .match_fields
        .iter()
        .filter(|k| judge.searched(k) && judge.holds(user, k))
        .cloned()
        .collect()
}

impl UserRecord {
    /// The user as the decision sees it (without its identities).
    pub fn pool_user(&self) -> PoolUser {
        PoolUser {
            id: self.id,
            email: self.email.clone(),
            email_verified: self.email_verified,
            phone: self.phone.clone(),
            phone_verified: self.phone_verified,
            username: self.username.clone(),
            attributes: self.attributes.clone(),
            protected: self.protected,
            linked_on_connection: false,
            suspended: false,
        }
    }
}

#[cfg(test)]
mod tests;
