//! Property tests: the decoder and the normalisers never panic, whatever the input, and the
//! decision keeps its promises for any login, settings and situation. Case counts are large by
//! default; `PROPTEST_CASES` overrides them.

use chrono::{Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    Association, ConnectionId, CountryCode, Email, LoginMode, MatchField, Phone, Username,
    connection::{ConnectionSettings, UserPoolId},
    decision::{Action, BindingReason, PendingBinding, PoolUser, Situation, decide},
    login::{self, NormalizedFields},
};

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON, nested a few levels, with unicode, NUL and long strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "[a-z0-9@.+ ]{0,20}".prop_map(Value::String),
        (0usize..3000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Something shaped like a login.completed whose fields may be anything.
fn event_like() -> impl Strategy<Value = Value> {
    let field = || prop_oneof![json_value(), "[a-z0-9-]{1,31}".prop_map(Value::String)];
    (field(), field(), field(), field(), field(), field(), field(), json_value()).prop_map(
        |(spec, id, source, kind, pool, connection, external_id, profile)| {
            json!({
                "specversion": if spec.is_string() { json!("1.0") } else { spec },
                "id": id, "source": source,
                "type": if kind.is_null() { json!("login.completed") } else { kind },
                "data": {"user_pool_id": pool, "connection": connection, "external_id": external_id,
                         "profile": profile}
            })
        },
    )
}

proptest! {
    #![proptest_config(cases(10_000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = login::decode(&body, 65536);
    }

    #[test]
    fn decoding_arbitrary_events_never_panics(event in event_like()) {
        let body = serde_json::to_vec(&event).unwrap();
        if let Ok(decoded) = login::decode(&body, 65536) {
            prop_assert!(!decoded.id.is_empty() && decoded.id.chars().count() <= 128);
            prop_assert!(!decoded.external_id.is_empty());
        }
    }

    #[test]
    fn normalisers_never_panic_and_are_idempotent(raw in ".{0,80}", code in 1u16..999) {
        if let Ok(email) = Email::parse(&raw) {
            prop_assert_eq!(Email::parse(email.as_str()).unwrap(), email.clone());
        }
        if let Ok(username) = Username::parse(&raw) {
            prop_assert_eq!(Username::parse(username.as_str()).unwrap(), username.clone());
        }
        let country = CountryCode::parse(&code.to_string()).ok();
        for cc in [None, country.as_ref()] {
            if let Ok(phone) = Phone::parse(&raw, cc) {
                prop_assert!(phone.as_str().starts_with('+'));
                prop_assert_eq!(Phone::parse(phone.as_str(), None).unwrap(), phone.clone());
            }
        }
        let _ = ConnectionId::parse(&raw);
        let _ = UserPoolId::parse(&raw);
        let _ = CountryCode::parse(&raw);
    }

    #[test]
    fn phone_like_input_never_panics(raw in "[+]?[0-9 ()-]{0,40}", code in prop::sample::select(vec!["1", "44", "86", "81", "49"])) {
        let cc = CountryCode::parse(code).unwrap();
        let _ = Phone::parse(&raw, Some(&cc));
    }
}

// The decision over a small universe of values, so that matches are frequent.
const EMAILS: [&str; 3] = ["a@example.com", "b@example.com", "c@example.com"];
const PHONES: [&str; 3] = ["+8613800138000", "+8613900139000", "+14155552671"];
const USERNAMES: [&str; 3] = ["amy", "bob", "cyd"];

fn pick<T: Clone + std::fmt::Debug + 'static>(
    values: &[T],
) -> impl Strategy<Value = Option<T>> + use<T> {
    let values = values.to_vec();
    prop::option::of(prop::sample::select(values))
}

fn fields() -> impl Strategy<Value = NormalizedFields> {
    (
        pick(&EMAILS),
        any::<bool>(),
        pick(&PHONES),
        any::<bool>(),
        pick(&USERNAMES),
    )
        .prop_map(|(email, email_verified, phone, phone_verified, username)| {
            NormalizedFields {
                email: email.map(|e| Email::parse(e).unwrap()),
                email_verified,
                phone: phone.map(|p| Phone::parse(p, None).unwrap()),
                phone_verified,
                username: username.map(|u| Username::parse(u).unwrap()),
                name: None,
            }
        })
}

fn settings() -> impl Strategy<Value = ConnectionSettings> {
    (
        prop::sample::select(Association::ALL.to_vec()),
        prop::sample::select(LoginMode::ALL.to_vec()),
        prop::sample::subsequence(MatchField::ALL.to_vec(), 1..=3).prop_shuffle(),
        any::<bool>(),
    )
        .prop_map(
            |(association, login_mode, match_fields, require_verified)| ConnectionSettings {
                identifier: ConnectionId::parse("conn").unwrap(),
                user_pool_id: UserPoolId::parse("pool").unwrap(),
                display_name: "conn".into(),
                provider: String::new(),
                login_mode,
                association,
                match_fields,
                require_verified,
                default_country_code: None,
                binding_ttl: std::time::Duration::from_secs(3600),
            },
        )
}

fn situation() -> impl Strategy<Value = Situation> {
    let user = (
        pick(&EMAILS),
        pick(&PHONES),
        pick(&USERNAMES),
        any::<bool>(),
    );
    (
        prop::collection::vec(user, 0..5),
        any::<bool>(),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(users, linked, pending)| {
            let pool_users: Vec<PoolUser> = users
                .into_iter()
                .enumerate()
                .map(
                    |(i, (email, phone, username, linked_on_connection))| PoolUser {
                        id: Uuid::from_u128(i as u128 + 1),
                        email: email.map(|e| Email::parse(e).unwrap()),
                        phone: phone.map(|p| Phone::parse(p, None).unwrap()),
                        username: username.map(|u| Username::parse(u).unwrap()),
                        linked_on_connection,
                    },
                )
                .collect();
            let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
            Situation {
                linked_user: linked.then(|| Uuid::from_u128(99)),
                pending_binding: pending.map(|fresh| PendingBinding {
                    id: Uuid::from_u128(77),
                    reason: BindingReason::AskBinding,
                    expires_at: if fresh {
                        now + Duration::hours(1)
                    } else {
                        now - Duration::hours(1)
                    },
                }),
                pool_users,
            }
        })
}

proptest! {
    #![proptest_config(cases(20_000))]

    #[test]
    fn the_decision_keeps_its_promises(login in fields(), s in settings(), situation in situation()) {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let decision = decide(&login, &s, &situation, now);
        if let Some(user_id) = situation.linked_user {
            prop_assert_eq!(decision.action, Action::ExistingUser { user_id });
            return Ok(());
        }
        match &decision.action {
            Action::ExistingUser { .. } => prop_assert!(false, "not linked, yet existing_user"),
            Action::StillPending { binding_id, .. } => {
                let pending = situation.pending_binding.as_ref().unwrap();
                prop_assert_eq!(*binding_id, pending.id);
                prop_assert!(pending.expires_at > now);
            }
            Action::CreateUser(new) => {
                prop_assert_eq!(s.login_mode, LoginMode::Normal, "login_only never creates");
                for u in &situation.pool_users {
                    prop_assert!(new.email.is_none() || new.email != u.email, "a held email is never given");
                    prop_assert!(new.phone.is_none() || new.phone != u.phone, "a held phone is never given");
                    prop_assert!(new.username.is_none() || new.username != u.username);
                }
                if s.require_verified {
                    prop_assert!(new.email.is_none() || login.email_verified);
                    prop_assert!(new.phone.is_none() || login.phone_verified);
                }
            }
            Action::Link { user_id, matched_on } => {
                prop_assert_eq!(s.association, Association::FieldMatching, "only field matching links");
                prop_assert!(!matched_on.is_empty());
                let target = situation.pool_users.iter().find(|u| u.id == *user_id).unwrap();
                prop_assert!(!target.linked_on_connection, "one identity per connection");
                // Never an ambiguous link: no other user matches.
                let others = situation.pool_users.iter().filter(|u| u.id != *user_id).filter(|u| {
                    !super::decision::matched_fields(&login, &s, u).is_empty()
                });
                prop_assert_eq!(others.count(), 0);
            }
            Action::OpenBinding { candidates, reason } => {
                prop_assert!(s.association != Association::Disabled);
                prop_assert!(!candidates.is_empty());
                if *reason == BindingReason::AmbiguousMatch {
                    prop_assert!(candidates.len() >= 2);
                }
            }
            Action::Reject => prop_assert_eq!(s.login_mode, LoginMode::LoginOnly),
        }
        if let Some(expired) = decision.expire_binding {
            let pending = situation.pending_binding.as_ref().unwrap();
            prop_assert_eq!(expired, pending.id);
            prop_assert!(pending.expires_at <= now);
        }
    }
}
