use chrono::{Duration, TimeZone};

use super::*;
use crate::domain::connection::ConnectionSpec;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
}

fn settings(association: &str, login_mode: &str, match_fields: &[&str]) -> ConnectionSettings {
    ConnectionSettings::validate(&ConnectionSpec {
        identifier: Some("dingtalk".into()),
        user_pool_id: Some("pool-1".into()),
        association: Some(association.into()),
        login_mode: Some(login_mode.into()),
        match_fields: Some(match_fields.iter().map(|f| f.to_string()).collect()),
        default_country_code: Some("86".into()),
        ..Default::default()
    })
    .unwrap()
}

fn email(raw: &str) -> Option<Email> {
    Some(Email::parse(raw).unwrap())
}

fn phone(raw: &str) -> Option<Phone> {
    Some(Phone::parse(raw, None).unwrap())
}

fn username(raw: &str) -> Option<Username> {
    Some(Username::parse(raw).unwrap())
}

fn valid<T: Clone>(value: Option<T>) -> Field<T> {
    value.map_or(Field::Absent, Field::valid)
}

/// A verified login with an email, a phone and a username.
fn login() -> NormalizedFields {
    NormalizedFields {
        email: valid(email("zhang@example.com")),
        email_verified: true,
        phone: valid(phone("+8613800138000")),
        phone_verified: true,
        username: valid(username("zhangsan")),
        name: Some("张三".into()),
        attributes: Default::default(),
        verified_attributes: Vec::new(),
        ..NormalizedFields::default()
    }
}

/// A pool user whose email and phone are verified on the account.
fn user(n: u128) -> PoolUser {
    PoolUser {
        id: Uuid::from_u128(n),
        email_verified: true,
        phone_verified: true,
        ..PoolUser::default()
    }
}

fn by_email(n: u128) -> PoolUser {
    PoolUser {
        email: email("zhang@example.com"),
        ..user(n)
    }
}

fn by_phone(n: u128) -> PoolUser {
    PoolUser {
        phone: phone("+8613800138000"),
        ..user(n)
    }
}

fn with_users(users: Vec<PoolUser>) -> Situation {
    Situation {
        pool_users: users,
        ..Situation::default()
    }
}

/// Association mode x login mode x zero, one or several candidates: the contract's table.
#[test]
fn every_mode_and_candidate_count() {
    let created = |action: &Action| matches!(action, Action::CreateUser(_));
    type Check = fn(&Action) -> bool;
    let cases: Vec<(&str, &str, Vec<PoolUser>, Check)> = vec![
        // disabled: candidates are never looked at.
        ("disabled", "normal", vec![], |a| {
            matches!(a, Action::CreateUser(_))
        }),
        ("disabled", "normal", vec![by_email(1)], |a| {
            matches!(a, Action::CreateUser(_))
        }),
        ("disabled", "normal", vec![by_email(1), by_phone(2)], |a| {
            matches!(a, Action::CreateUser(_))
        }),
        ("disabled", "login_only", vec![], |a| *a == Action::Reject),
        ("disabled", "login_only", vec![by_email(1)], |a| {
            *a == Action::Reject
        }),
        (
            "disabled",
            "login_only",
            vec![by_email(1), by_phone(2)],
            |a| *a == Action::Reject,
        ),
        // field_matching
        ("field_matching", "normal", vec![], |a| {
            matches!(a, Action::CreateUser(_))
        }),
        ("field_matching", "normal", vec![by_email(1)], |a| {
            *a == Action::Link {
                user_id: Uuid::from_u128(1),
                matched_on: vec![MatchField::Email.into()],
            }
        }),
        (
            "field_matching",
            "normal",
            vec![by_email(1), by_phone(2)],
            |a| {
                *a == Action::OpenBinding {
                    candidates: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
                    reason: BindingReason::AmbiguousMatch,
                }
            },
        ),
        ("field_matching", "login_only", vec![], |a| {
            *a == Action::Reject
        }),
        ("field_matching", "login_only", vec![by_email(1)], |a| {
            *a == Action::Link {
                user_id: Uuid::from_u128(1),
                matched_on: vec![MatchField::Email.into()],
            }
        }),
        (
            "field_matching",
            "login_only",
            vec![by_email(1), by_phone(2)],
            |a| {
                matches!(
                    a,
                    Action::OpenBinding {
                        reason: BindingReason::AmbiguousMatch,
                        ..
                    }
                )
            },
        ),
        // ask_binding
        ("ask_binding", "normal", vec![], |a| {
            matches!(a, Action::CreateUser(_))
        }),
        ("ask_binding", "normal", vec![by_email(1)], |a| {
            *a == Action::OpenBinding {
                candidates: vec![Uuid::from_u128(1)],
                reason: BindingReason::AskBinding,
            }
        }),
        (
            "ask_binding",
            "normal",
            vec![by_email(1), by_phone(2)],
            |a| {
                *a == Action::OpenBinding {
                    candidates: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
                    reason: BindingReason::AskBinding,
                }
            },
        ),
        ("ask_binding", "login_only", vec![], |a| {
            *a == Action::Reject
        }),
        ("ask_binding", "login_only", vec![by_email(1)], |a| {
            matches!(
                a,
                Action::OpenBinding {
                    reason: BindingReason::AskBinding,
                    ..
                }
            )
        }),
        (
            "ask_binding",
            "login_only",
            vec![by_email(1), by_phone(2)],
            |a| {
                matches!(
                    a,
                    Action::OpenBinding {
                        reason: BindingReason::AskBinding,
                        ..
                    }
                )
            },
        ),
    ];
    assert_eq!(cases.len(), 18);
    for (association, mode, users, check) in cases {
        let n = users.len();
        let s = settings(association, mode, &["email", "phone"]);
        let decision = decide(&login(), &s, &with_users(users), now());
        assert!(
            check(&decision.action),
            "{association}/{mode}/{n} candidates: got {:?}",
            decision.action
        );
        assert_eq!(decision.expire_binding, None);
        if mode == "login_only" {
            assert!(!created(&decision.action), "login_only never creates");
        }
    }
}

#[test]
fn outcomes_match_actions() {
    assert_eq!(
        Action::ExistingUser {
            user_id: Uuid::nil(),
            drift: None,
        }
        .outcome(),
        Outcome::ExistingUser
    );
    assert_eq!(Action::Reject.outcome(), Outcome::Rejected);
    assert_eq!(
        Action::CreateUser(NewUserFields::default()).outcome(),
        Outcome::UserCreated
    );
    assert_eq!(
        Action::Link {
            user_id: Uuid::nil(),
            matched_on: vec![]
        }
        .outcome(),
        Outcome::UserLinked
    );
    assert_eq!(
        Action::OpenBinding {
            candidates: vec![],
            reason: BindingReason::AskBinding
        }
        .outcome(),
        Outcome::BindingPending
    );
    assert_eq!(
        Action::StillPending {
            binding_id: Uuid::nil(),
            reason: BindingReason::AskBinding
        }
        .outcome(),
        Outcome::BindingPending
    );
    for outcome in Outcome::ALL {
        assert_eq!(Outcome::parse(outcome.as_str()), Some(*outcome));
        assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
    }
}

#[test]
fn already_linked_wins_over_everything() {
    let s = settings("field_matching", "login_only", &["email"]);
    let situation = Situation {
        linked_user: Some(Uuid::from_u128(7)),
        linked_account: None,
        pending_binding: Some(PendingBinding {
            id: Uuid::from_u128(9),
            reason: BindingReason::AskBinding,
            expires_at: now() + Duration::hours(1),
        }),
        pool_users: vec![by_email(1)],
        unique_attributes: Vec::new(),
    };
    let decision = decide(&login(), &s, &situation, now());
    assert_eq!(
        decision.action,
        Action::ExistingUser {
            user_id: Uuid::from_u128(7),
            drift: None,
        }
    );
}

#[test]
fn pending_binding_is_reported_again() {
    let s = settings("ask_binding", "normal", &["email"]);
    let situation = Situation {
        pending_binding: Some(PendingBinding {
            id: Uuid::from_u128(9),
            reason: BindingReason::AmbiguousMatch,
            expires_at: now() + Duration::seconds(1),
        }),
        pool_users: vec![by_email(1)],
        ..Situation::default()
    };
    let decision = decide(&login(), &s, &situation, now());
    assert_eq!(
        decision.action,
        Action::StillPending {
            binding_id: Uuid::from_u128(9),
            reason: BindingReason::AmbiguousMatch
        }
    );
}

#[test]
fn expired_binding_expires_and_the_login_starts_afresh() {
    let s = settings("field_matching", "normal", &["email"]);
    let situation = Situation {
        pending_binding: Some(PendingBinding {
            id: Uuid::from_u128(9),
            reason: BindingReason::AskBinding,
            expires_at: now(),
        }),
        pool_users: vec![by_email(1)],
        ..Situation::default()
    };
    let decision = decide(&login(), &s, &situation, now());
    assert_eq!(decision.expire_binding, Some(Uuid::from_u128(9)));
    assert_eq!(
        decision.action,
        Action::Link {
            user_id: Uuid::from_u128(1),
            matched_on: vec![MatchField::Email.into()]
        }
    );
}

#[test]
fn single_candidate_already_linked_on_connection_opens_a_binding() {
    let s = settings("field_matching", "normal", &["email"]);
    let linked = PoolUser {
        linked_on_connection: true,
        ..by_email(1)
    };
    let decision = decide(&login(), &s, &with_users(vec![linked]), now());
    assert_eq!(
        decision.action,
        Action::OpenBinding {
            candidates: vec![Uuid::from_u128(1)],
            reason: BindingReason::CandidateAlreadyLinked
        }
    );
}

#[test]
fn one_user_matching_on_several_fields_is_one_candidate() {
    let s = settings("field_matching", "normal", &["phone", "email", "username"]);
    let both = PoolUser {
        email: email("zhang@example.com"),
        phone: phone("+8613800138000"),
        ..user(1)
    };
    let decision = decide(&login(), &s, &with_users(vec![both]), now());
    assert_eq!(
        decision.action,
        Action::Link {
            user_id: Uuid::from_u128(1),
            matched_on: vec![MatchField::Phone.into(), MatchField::Email.into()],
        },
        "matched_on follows match_fields order"
    );
}

#[test]
fn only_configured_match_fields_count() {
    let s = settings("field_matching", "login_only", &["email"]);
    let decision = decide(&login(), &s, &with_users(vec![by_phone(2)]), now());
    assert_eq!(
        decision.action,
        Action::Reject,
        "a phone match does not count when only email is matched"
    );
}

#[test]
fn unverified_fields_do_not_match_when_verification_is_required() {
    let s = settings("field_matching", "login_only", &["email", "phone"]);
    let unverified = NormalizedFields {
        email_verified: false,
        phone_verified: false,
        ..login()
    };
    let decision = decide(
        &unverified,
        &s,
        &with_users(vec![by_email(1), by_phone(2)]),
        now(),
    );
    assert_eq!(decision.action, Action::Reject);

    let only_phone_verified = NormalizedFields {
        email_verified: false,
        ..login()
    };
    let decision = decide(
        &only_phone_verified,
        &s,
        &with_users(vec![by_email(1), by_phone(2)]),
        now(),
    );
    assert_eq!(
        decision.action,
        Action::Link {
            user_id: Uuid::from_u128(2),
            matched_on: vec![MatchField::Phone.into()]
        }
    );
}

#[test]
fn unverified_fields_match_when_verification_is_not_required() {
    let mut s = settings("field_matching", "normal", &["email"]);
    s.require_verified = false;
    let unverified = NormalizedFields {
        email_verified: false,
        ..login()
    };
    let decision = decide(&unverified, &s, &with_users(vec![by_email(1)]), now());
    assert_eq!(
        decision.action,
        Action::Link {
            user_id: Uuid::from_u128(1),
            matched_on: vec![MatchField::Email.into()]
        }
    );
}

#[test]
fn username_needs_no_verification() {
    let s = settings("field_matching", "normal", &["username"]);
    let no_verified = NormalizedFields {
        email_verified: false,
        phone_verified: false,
        ..login()
    };
    let by_username = PoolUser {
        username: username("zhangsan"),
        ..user(3)
    };
    let decision = decide(&no_verified, &s, &with_users(vec![by_username]), now());
    assert_eq!(
        decision.action,
        Action::Link {
            user_id: Uuid::from_u128(3),
            matched_on: vec![MatchField::Username.into()]
        }
    );
}

#[test]
fn missing_fields_never_match_missing_fields() {
    let s = settings(
        "field_matching",
        "login_only",
        &["email", "phone", "username"],
    );
    let empty = NormalizedFields::default();
    let decision = decide(&empty, &s, &with_users(vec![user(1)]), now());
    assert_eq!(decision.action, Action::Reject);
}

#[test]
fn new_user_gets_valid_verified_unheld_fields() {
    let s = settings("disabled", "normal", &["email"]);
    let decision = decide(&login(), &s, &Situation::default(), now());
    assert_eq!(
        decision.action,
        Action::CreateUser(NewUserFields {
            email: email("zhang@example.com"),
            email_verified: true,
            phone: phone("+8613800138000"),
            phone_verified: true,
            username: username("zhangsan"),
            name: Some("张三".into()),
            attributes: Default::default(),
        })
    );
}

#[test]
fn held_fields_are_left_off_the_new_user() {
    // Association disabled: the holders are not candidates, but their fields stay theirs.
    let s = settings("disabled", "normal", &["email"]);
    let holder = PoolUser {
        username: username("zhangsan"),
        ..by_email(1)
    };
    let decision = decide(&login(), &s, &with_users(vec![holder]), now());
    let Action::CreateUser(fields) = decision.action else {
        panic!("expected a new user")
    };
    assert_eq!(fields.email, None);
    assert!(!fields.email_verified);
    assert_eq!(fields.username, None);
    assert_eq!(
        fields.phone,
        phone("+8613800138000"),
        "the phone is free and verified"
    );
}

#[test]
fn unverified_fields_are_left_off_the_new_user() {
    let s = settings("field_matching", "normal", &["email"]);
    let unverified = NormalizedFields {
        email_verified: false,
        phone_verified: false,
        ..login()
    };
    let decision = decide(&unverified, &s, &Situation::default(), now());
    let Action::CreateUser(fields) = decision.action else {
        panic!("expected a new user")
    };
    assert_eq!(fields.email, None);
    assert_eq!(fields.phone, None);
    assert_eq!(fields.username, username("zhangsan"));
}

#[test]
fn unverified_fields_are_kept_unverified_when_verification_is_not_required() {
    let mut s = settings("disabled", "normal", &["email"]);
    s.require_verified = false;
    let unverified = NormalizedFields {
        email_verified: false,
        ..login()
    };
    let decision = decide(&unverified, &s, &Situation::default(), now());
    let Action::CreateUser(fields) = decision.action else {
        panic!("expected a new user")
    };
    assert_eq!(fields.email, email("zhang@example.com"));
    assert!(!fields.email_verified);
    assert!(fields.phone_verified);
}

#[test]
fn unverified_holder_field_still_blocks_the_new_user_field_but_is_not_a_candidate() {
    // The login's email is unverified, so the user holding it is not a candidate; the new user
    // must still not receive the email (it is unverified and held anyway).
    let s = settings("field_matching", "normal", &["email"]);
    let unverified = NormalizedFields {
        email_verified: false,
        ..login()
    };
    let decision = decide(&unverified, &s, &with_users(vec![by_email(1)]), now());
    let Action::CreateUser(fields) = decision.action else {
        panic!("expected a new user")
    };
    assert_eq!(fields.email, None);
}

#[test]
fn ambiguous_match_lists_every_candidate_once() {
    let s = settings("field_matching", "normal", &["email", "phone", "username"]);
    let a = PoolUser {
        username: username("zhangsan"),
        ..by_email(1)
    };
    let b = by_phone(2);
    let decision = decide(&login(), &s, &with_users(vec![b, a]), now());
    assert_eq!(
        decision.action,
        Action::OpenBinding {
            candidates: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
            reason: BindingReason::AmbiguousMatch,
        }
    );
}

#[test]
fn binding_reasons_round_trip() {
    for reason in [
        BindingReason::AskBinding,
        BindingReason::AmbiguousMatch,
        BindingReason::CandidateAlreadyLinked,
    ] {
        assert_eq!(BindingReason::parse(reason.as_str()), Some(reason));
    }
}

// --- The safety rules of section 1, one row per sentence. ---

fn suspicious<T>(value: T) -> Field<T> {
    Field::Valid {
        value,
        suspicious: Some("\u{212A}...".into()),
    }
}

fn matching(fields: &[&str]) -> ConnectionSettings {
    settings("field_matching", "normal", fields)
}

fn reason_of(decision: &Decision) -> Option<BindingReason> {
    match decision.action {
        Action::OpenBinding { reason, .. } => Some(reason),
        _ => None,
    }
}

#[test]
fn safety_rules_one_row_per_sentence() {
    let e = || email("zhang@example.com").unwrap();
    let protected = PoolUser {
        protected: true,
        ..by_email(1)
    };
    let unverified = PoolUser {
        email_verified: false,
        ..by_email(1)
    };
    let linked = PoolUser {
        linked_on_connection: true,
        ..by_email(1)
    };
    let lookalike = NormalizedFields {
        email: suspicious(e()),
        ..login()
    };
    let trusting = ConnectionSettings {
        trust_unverified_accounts: true,
        ..matching(&["email"])
    };
    type Row = (
        &'static str,
        NormalizedFields,
        ConnectionSettings,
        Vec<PoolUser>,
        Option<BindingReason>,
    );
    let rows: Vec<Row> = vec![
        (
            "a suspicious value that equals a candidate's gives confusable_identifier",
            lookalike.clone(),
            matching(&["email"]),
            vec![by_email(1)],
            Some(BindingReason::ConfusableIdentifier),
        ),
        (
            "a candidate whose matching email is unverified on the account is not linked",
            login(),
            matching(&["email"]),
            vec![unverified.clone()],
            Some(BindingReason::CandidateUnverified),
        ),
        (
            "a source of truth may trust unverified accounts",
            login(),
            trusting,
            vec![unverified.clone()],
            None,
        ),
        (
            "a protected account is never linked automatically",
            login(),
            matching(&["email"]),
            vec![protected.clone()],
            Some(BindingReason::ProtectedAccount),
        ),
        (
            "protected_account comes before confusable_identifier",
            lookalike.clone(),
            matching(&["email"]),
            vec![protected.clone()],
            Some(BindingReason::ProtectedAccount),
        ),
        (
            "confusable_identifier comes before candidate_unverified",
            lookalike.clone(),
            matching(&["email"]),
            vec![unverified.clone()],
            Some(BindingReason::ConfusableIdentifier),
        ),
        (
            "candidate_unverified comes before candidate_already_linked",
            login(),
            matching(&["email"]),
            vec![PoolUser {
                linked_on_connection: true,
                ..unverified.clone()
            }],
            Some(BindingReason::CandidateUnverified),
        ),
        (
            "candidate_already_linked last",
            login(),
            matching(&["email"]),
            vec![linked],
            Some(BindingReason::CandidateAlreadyLinked),
        ),
        (
            "with several candidates ambiguous_match wins",
            login(),
            matching(&["email", "phone"]),
            vec![protected, by_phone(2)],
            Some(BindingReason::AmbiguousMatch),
        ),
    ];
    for (sentence, fields, s, users, reason) in rows {
        let decision = decide(&fields, &s, &with_users(users), now());
        assert_eq!(
            reason_of(&decision),
            reason,
            "{sentence}: {:?}",
            decision.action
        );
        if reason.is_none() {
            assert!(matches!(decision.action, Action::Link { .. }), "{sentence}");
        }
    }
}

#[test]
fn protected_accounts_are_set_aside_in_every_association_mode_that_matches() {
    let protected = PoolUser {
        protected: true,
        ..by_email(1)
    };
    let asking = settings("ask_binding", "normal", &["email"]);
    let decision = decide(
        &login(),
        &asking,
        &with_users(vec![protected.clone()]),
        now(),
    );
    assert_eq!(
        reason_of(&decision),
        Some(BindingReason::ProtectedAccount),
        "whatever the association mode: the platform must not offer self-service proof"
    );
    assert_eq!(
        decision.evidence.candidates[0].set_aside,
        Some(SetAside::ProtectedAccount),
        "the evidence says it would not have been linked"
    );
    let only = settings("field_matching", "login_only", &["email"]);
    let decision = decide(&login(), &only, &with_users(vec![protected]), now());
    assert_eq!(reason_of(&decision), Some(BindingReason::ProtectedAccount));
}

#[test]
fn a_suspicious_value_is_never_copied_onto_a_new_account() {
    let lookalike = NormalizedFields {
        username: suspicious(username("kevin").unwrap()),
        ..login()
    };
    let decision = decide(
        &lookalike,
        &matching(&["email"]),
        &Situation::default(),
        now(),
    );
    let Action::CreateUser(new) = &decision.action else {
        panic!("{:?}", decision.action)
    };
    assert_eq!(new.username, None);
    assert!(new.email.is_some());
    let field = decision
        .evidence
        .fields
        .iter()
        .find(|f| f.field == MatchField::Username)
        .unwrap();
    assert_eq!(field.why_not, Some(WhyNot::Suspicious));
    assert!(!field.usable);
}

#[test]
fn an_email_outside_the_allowed_domains_is_unusable() {
    let s = ConnectionSettings {
        allowed_email_domains: vec!["corp.example".into()],
        ..matching(&["email"])
    };
    let decision = decide(&login(), &s, &with_users(vec![by_email(1)]), now());
    let Action::CreateUser(new) = &decision.action else {
        panic!("not matched: {:?}", decision.action)
    };
    assert_eq!(new.email, None, "not copied");
    assert_eq!(
        decision.evidence.fields[0].why_not,
        Some(WhyNot::DomainNotAllowed)
    );
    let inside = ConnectionSettings {
        allowed_email_domains: vec!["example.com".into()],
        ..matching(&["email"])
    };
    let decision = decide(&login(), &inside, &with_users(vec![by_email(1)]), now());
    assert!(matches!(decision.action, Action::Link { .. }));
}

#[test]
fn legitimate_non_ascii_values_match_exactly() {
    let chinese = NormalizedFields {
        username: valid(username("张三")),
        ..NormalizedFields::default()
    };
    let holder = PoolUser {
        username: username("张三"),
        ..user(1)
    };
    let decision = decide(
        &chinese,
        &matching(&["username"]),
        &with_users(vec![holder]),
        now(),
    );
    assert!(
        matches!(decision.action, Action::Link { .. }),
        "{:?}",
        decision.action
    );
}

#[test]
fn the_evidence_says_why_each_field_was_or_was_not_used() {
    // email unverified, phone malformed, username held by another user and not matched on.
    let fields = NormalizedFields {
        email: valid(email("zhang@example.com")),
        email_verified: false,
        phone: Field::Malformed("12".into()),
        phone_verified: true,
        username: valid(username("zhangsan")),
        name: None,
        attributes: Default::default(),
        verified_attributes: Vec::new(),
        ..NormalizedFields::default()
    };
    let holder = PoolUser {
        username: username("zhangsan"),
        ..user(5)
    };
    let decision = decide(
        &fields,
        &matching(&["email", "phone"]),
        &with_users(vec![holder]),
        now(),
    );
    assert!(matches!(decision.action, Action::CreateUser(_)));
    let why: Vec<(MatchField, Option<WhyNot>, bool)> = decision
        .evidence
        .fields
        .iter()
        .map(|f| (f.field.field().unwrap(), f.why_not, f.usable))
        .collect();
    assert_eq!(
        why,
        vec![
            (MatchField::Email, Some(WhyNot::Unverified), false),
            (MatchField::Phone, Some(WhyNot::Malformed), false),
            (MatchField::Username, Some(WhyNot::Held), false),
        ]
    );
    assert_eq!(
        decision.evidence.fields[1].value, "12",
        "the raw value of a malformed field"
    );
    assert!(decision.evidence.candidates.is_empty());

    // A link: the matched field is used, another valid one was not matched on.
    let decision = decide(
        &login(),
        &matching(&["email"]),
        &with_users(vec![by_email(1)]),
        now(),
    );
    let why: Vec<(MatchField, Option<WhyNot>)> = decision
        .evidence
        .fields
        .iter()
        .map(|f| (f.field.field().unwrap(), f.why_not))
        .collect();
    assert_eq!(
        why,
        vec![
            (MatchField::Email, None),
            (MatchField::Phone, Some(WhyNot::NotMatchedOn)),
            (MatchField::Username, Some(WhyNot::NotMatchedOn)),
        ]
    );
    assert_eq!(
        decision.evidence.candidates,
        vec![CandidateEvidence {
            user_id: Uuid::from_u128(1),
            matched_on: vec![MatchField::Email.into()],
            set_aside: None,
            suspended: false,
        }]
    );
    let masked = decision.evidence.masked();
    assert_eq!(masked.fields[0].value, "z***@example.com");
    assert_eq!(masked.fields[1].value, "+86*******8000");
}

/// A connection mapping `attributes.employee_id` from the profile's job number (and vouching
/// for it) and matching on `match_fields` under `rule`.
fn on_employee_id(match_fields: &[&str], rule: &str) -> ConnectionSettings {
    vouching(match_fields, rule, &["attributes.employee_id"], true)
}

fn vouching(
    match_fields: &[&str],
    rule: &str,
    verified: &[&str],
    require_verified: bool,
) -> ConnectionSettings {
    ConnectionSettings::validate(&ConnectionSpec {
        verified_fields: Some(verified.iter().map(|f| f.to_string()).collect()),
        require_verified: Some(require_verified),
        identifier: Some("dingtalk".into()),
        user_pool_id: Some("pool-1".into()),
        association: Some("field_matching".into()),
        match_fields: Some(match_fields.iter().map(|f| f.to_string()).collect()),
        match_rule: Some(rule.into()),
        mapping: Some(
            [(
                "attributes.employee_id".to_owned(),
                "{attributes.job_number}".to_owned(),
            )]
            .into(),
        ),
        default_country_code: Some("86".into()),
        ..Default::default()
    })
    .unwrap()
}

/// A login with the standard fields of `login()` and a job number.
fn with_job_number(s: &ConnectionSettings, job_number: &str) -> NormalizedFields {
    let profile = serde_json::json!({
        "email": "zhang@example.com", "email_verified": true,
        "attributes": {"job_number": job_number},
    });
    let profile = crate::domain::login::Profile::from_map(profile.as_object().unwrap()).unwrap();
    NormalizedFields::of(&profile, s)
}

fn employee(n: u128, employee_id: &str) -> PoolUser {
    PoolUser {
        attributes: [(
            crate::domain::attributes::AttributeName::parse("employee_id").unwrap(),
            employee_id.to_owned(),
        )]
        .into(),
        ..user(n)
    }
}

fn employee_id() -> MatchKey {
    "attributes.employee_id".parse().unwrap()
}

#[test]
fn an_attribute_links_like_any_match_field() {
    let s = on_employee_id(&["attributes.employee_id"], "any");
    let login = with_job_number(&s, " E1024 ");
    let decision = decide(
        &login,
        &s,
        &with_users(vec![employee(1, "E1024"), employee(2, "E2048")]),
        now(),
    );
    assert_eq!(
        decision.action,
        Action::Link {
            user_id: Uuid::from_u128(1),
            matched_on: vec![employee_id()],
        }
    );
    let field = decision.evidence.fields.last().unwrap();
    assert_eq!(
        (field.field.clone(), field.value.as_str(), field.usable),
        (employee_id(), "E1024", true)
    );
    // Values keep their case: e1024 is another employee number.
    let other = with_job_number(&s, "e1024");
    let decision = decide(&other, &s, &with_users(vec![employee(1, "E1024")]), now());
    assert!(matches!(decision.action, Action::CreateUser(_)));
}

#[test]
fn a_lookalike_attribute_never_links() {
    let s = on_employee_id(&["attributes.employee_id"], "any");
    // Fullwidth letters and digits pass for E1024 in many systems.
    let login = with_job_number(&s, "Ｅ１０２４");
    let decision = decide(&login, &s, &with_users(vec![employee(1, "E1024")]), now());
    assert!(matches!(decision.action, Action::CreateUser(ref new) if new.attributes.is_empty()));
    let field = decision.evidence.fields.last().unwrap();
    assert_eq!(field.why_not, Some(WhyNot::Suspicious));
}

#[test]
fn any_takes_one_field_all_takes_every_field_the_login_carries() {
    let both = employee(1, "E1024");
    let both = PoolUser {
        email: email("zhang@example.com"),
        ..both
    };
    let only_id = employee(2, "E1024");
    let only_email = PoolUser {
        email: email("zhang@example.com"),
        ..user(3)
    };
    let fields = ["email", "attributes.employee_id"];

    // any: each of the three is a candidate, so nobody is linked.
    let s = on_employee_id(&fields, "any");
    let login = with_job_number(&s, "E1024");
    let users = vec![both.clone(), only_id.clone(), only_email.clone()];
    let decision = decide(&login, &s, &with_users(users.clone()), now());
    assert_eq!(reason_of(&decision), Some(BindingReason::AmbiguousMatch));
    assert_eq!(decision.evidence.match_rule, MatchRule::Any);
    assert_eq!(decision.evidence.candidates.len(), 3);

    // all: only the account matching on both.
    let s = on_employee_id(&fields, "all");
    let login = with_job_number(&s, "E1024");
    let decision = decide(&login, &s, &with_users(users), now());
    assert_eq!(
        decision.action,
        Action::Link {
            user_id: Uuid::from_u128(1),
            matched_on: vec![MatchField::Email.into(), employee_id()],
        }
    );
    assert_eq!(decision.evidence.match_rule, MatchRule::All);

    // all: a field the login does not carry is not required...
    let no_email = NormalizedFields {
        email: Field::Absent,
        ..login.clone()
    };
    let decision = decide(&no_email, &s, &with_users(vec![only_id.clone()]), now());
    assert_eq!(
        decision.action,
        Action::Link {
            user_id: Uuid::from_u128(2),
            matched_on: vec![employee_id()],
        }
    );
    // ...but one it carries and cannot use (unverified) matches nobody.
    let unverified = NormalizedFields {
        email_verified: false,
        ..login.clone()
    };
    let decision = decide(&unverified, &s, &with_users(vec![both.clone()]), now());
    assert!(matches!(decision.action, Action::CreateUser(_)));
    // and a login carrying none of the fields has no candidate at all.
    let nothing = NormalizedFields {
        email: Field::Absent,
        attributes: Default::default(),
        ..login
    };
    let decision = decide(&nothing, &s, &with_users(vec![both]), now());
    assert!(decision.evidence.candidates.is_empty());
    assert!(matches!(decision.action, Action::CreateUser(_)));
}

#[test]
fn a_new_account_takes_attributes_unless_unique_and_held() {
    let s = on_employee_id(&["email"], "any");
    let login = with_job_number(&s, "E1024");
    let holder = employee(9, "E1024");
    let unique = vec![crate::domain::attributes::AttributeName::parse("employee_id").unwrap()];
    let not_unique = new_user_fields(&login, &s, std::slice::from_ref(&holder), &[]);
    assert_eq!(not_unique.attributes.values().next().unwrap(), "E1024");
    let held = new_user_fields(&login, &s, std::slice::from_ref(&holder), &unique);
    assert!(held.attributes.is_empty());
    let situation = Situation {
        pool_users: vec![holder],
        unique_attributes: unique,
        ..Situation::default()
    };
    let decision = decide(&login, &s, &situation, now());
    let field = decision.evidence.fields.last().unwrap();
    assert_eq!(
        (field.field.clone(), field.why_not),
        (employee_id(), Some(WhyNot::Held))
    );
}

#[test]
fn an_attribute_the_connection_does_not_vouch_for_links_nobody_and_is_never_copied() {
    let holder = employee(1, "E1024");
    // Required verified (the default): unverified, like an email without its flag.
    let s = vouching(&["attributes.employee_id"], "any", &[], true);
    let login = with_job_number(&s, "E1024");
    let decision = decide(&login, &s, &with_users(vec![holder.clone()]), now());
    assert!(matches!(decision.action, Action::CreateUser(ref new) if new.attributes.is_empty()));
    let field = decision.evidence.fields.last().unwrap();
    assert_eq!(field.why_not, Some(WhyNot::Unverified));
    // Not required: it matches, but a new account never takes it (it would identify that
    // account to every connection of the pool).
    let s = vouching(&["attributes.employee_id"], "any", &[], false);
    let login = with_job_number(&s, "E1024");
    let decision = decide(&login, &s, &with_users(vec![holder]), now());
    assert_eq!(
        decision.action,
        Action::Link {
            user_id: Uuid::from_u128(1),
            matched_on: vec![employee_id()],
        }
    );
    let alone = new_user_fields(&login, &s, &[], &[]);
    assert!(alone.attributes.is_empty(), "{alone:?}");
}
