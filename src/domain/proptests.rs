//! Property tests: the decoder and the normalisers never panic, whatever the input, and the
//! decision keeps its promises for any login, settings and situation. Case counts are large by
//! default; `PROPTEST_CASES` overrides them.

use chrono::{Duration, TimeZone, Utc};
use proptest::{prelude::*, test_runner::RngSeed};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    Association, ConnectionId, CountryCode, Email, LoginMode, MatchField, Phone, Username,
    connection::{ConnectionSettings, UserPoolId},
    decision::{
        Action, BindingReason, NewUserFields, PendingBinding, PoolUser, Situation, WhyNot, decide,
    },
    login::{self, NormalizedFields},
};

/// `default` cases (`PROPTEST_CASES` overrides), from a seed of their own, printed so that a
/// failure in CI can be run again exactly: `PROPTEST_RNG_SEED=<seed>` (which also sets it).
fn cases(default: u32) -> ProptestConfig {
    use std::hash::{BuildHasher, Hasher};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    let config = ProptestConfig::default();
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
    };
    // Shown with the test's output, which the test runners print for a failing test.
    eprintln!("proptest seed {seed}: rerun with PROPTEST_RNG_SEED={seed}");
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        ..config
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

/// A well-formed email with random case and surrounding whitespace, and its canonical form: its
/// lowercase. Its domain is plain ASCII with no IDNA A-label (a label starting `xn--`): the
/// canonical form of an A-label is its Unicode form (DESIGN.md, "The canonical form"), which
/// [`idn_domains_compare_in_their_unicode_form`] covers.
fn email_text() -> impl Strategy<Value = (String, String)> {
    (
        "[a-z0-9][a-z0-9._+-]{0,15}",
        "[a-z0-9][a-z0-9-]{0,8}(\\.[a-z]{2,5}){1,2}"
            .prop_filter("no IDNA A-label", |domain| !domain.starts_with("xn--")),
        prop::collection::vec(any::<bool>(), 32),
        "[ \t]{0,2}",
    )
        .prop_map(|(local, domain, upper, pad)| {
            let canonical = format!("{local}@{domain}");
            let written: String = canonical
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            (format!("{pad}{written}{pad}"), canonical)
        })
}

proptest! {
    #![proptest_config(cases(10_000))]

    #[test]
    fn well_formed_emails_normalise_to_their_lowercase((written, canonical) in email_text()) {
        let email = Email::parse(&written).unwrap();
        prop_assert_eq!(email.as_str(), canonical.as_str());
        prop_assert!(!Email::parse_checked(&written).unwrap().1, "plain ASCII is never suspicious");
        prop_assert_eq!(Email::parse(email.as_str()).unwrap(), email);
    }

    #[test]
    fn chinese_mobile_numbers_normalise_to_e164(
        prefix in prop::sample::select(vec!["130", "138", "139", "150", "186", "199"]),
        rest in "[0-9]{8}",
        style in 0usize..4,
    ) {
        let national = format!("{prefix}{rest}");
        let written = match style {
            0 => national.clone(),
            1 => format!("+86 {prefix} {} {}", &rest[..4], &rest[4..]),
            2 => format!("{prefix}-{}-{}", &rest[..4], &rest[4..]),
            _ => format!("  +86{national} "),
        };
        let cc = CountryCode::parse("86").unwrap();
        let phone = Phone::parse(&written, Some(&cc)).unwrap();
        prop_assert_eq!(phone.as_str(), format!("+86{national}"));
        prop_assert_eq!(Phone::parse(phone.as_str(), None).unwrap(), phone);
    }

    #[test]
    fn well_typed_events_decode_and_normalise(
        (email, canonical) in email_text(),
        verified in prop_oneof![Just(json!(true)), Just(json!(false)), Just(json!("true")), Just(json!("FALSE"))],
        username in "[A-Za-z][A-Za-z0-9._-]{0,20}",
        external_id in "[a-zA-Z0-9:_-]{1,64}",
    ) {
        let event = json!({
            "specversion": "1.0", "id": "e-1", "source": "urn:test", "type": "login.completed",
            "data": {"user_pool_id": "pool-1", "connection": "conn", "external_id": external_id,
                     "profile": {"email": email, "email_verified": verified, "username": username,
                                 "attributes": {"dept": "sales"}}}
        });
        let decoded = login::decode(&serde_json::to_vec(&event).unwrap(), 65536).unwrap();
        let spec = super::connection::ConnectionSpec {
            identifier: Some("conn".into()),
            user_pool_id: Some("pool-1".into()),
            ..Default::default()
        };
        let settings = ConnectionSettings::validate(&spec).unwrap();
        let fields = NormalizedFields::of(&decoded.profile, &settings);
        prop_assert_eq!(fields.email.value().map(|e| e.as_str()), Some(canonical.as_str()));
        prop_assert_eq!(
            fields.username.value().map(|u| u.as_str().to_owned()),
            Some(username.to_lowercase())
        );
        let expected = verified == json!(true) || verified == json!("true");
        prop_assert_eq!(fields.email_verified, expected);
    }
}

// The decision over a small universe of values, so that matches are frequent.
const EMAILS: [&str; 3] = ["a@example.com", "b@example.com", "c@corp.example"];
const PHONES: [&str; 3] = ["+8613800138000", "+8613900139000", "+14155552671"];
const USERNAMES: [&str; 3] = ["amy", "bob", "cyd"];
const DOMAINS: [&str; 2] = ["example.com", "corp.example"];

/// A login field: absent, malformed, or one of `values` (suspicious or not).
#[derive(Debug, Clone)]
enum Given {
    Absent,
    Malformed,
    Value(&'static str, bool),
}

fn given(values: &'static [&'static str]) -> impl Strategy<Value = Given> {
    prop_oneof![
        1 => Just(Given::Absent),
        1 => Just(Given::Malformed),
        6 => (prop::sample::select(values.to_vec()), prop::bool::weighted(0.2))
            .prop_map(|(v, suspicious)| Given::Value(v, suspicious)),
    ]
}

fn field<T>(given: &Given, parse: impl Fn(&str) -> T) -> login::Field<T> {
    match given {
        Given::Absent => login::Field::Absent,
        Given::Malformed => login::Field::Malformed("not a value".into()),
        Given::Value(v, suspicious) => login::Field::Valid {
            value: parse(v),
            suspicious: suspicious.then(|| format!("lookalike of {v}")),
        },
    }
}

/// A generated login, kept as plain values for the oracle.
#[derive(Debug, Clone)]
struct Login {
    email: Given,
    email_verified: bool,
    phone: Given,
    phone_verified: bool,
    username: Given,
}

impl Login {
    fn fields(&self) -> NormalizedFields {
        NormalizedFields {
            email: field(&self.email, |v| Email::parse(v).unwrap()),
            email_verified: self.email_verified,
            phone: field(&self.phone, |v| Phone::parse(v, None).unwrap()),
            phone_verified: self.phone_verified,
            username: field(&self.username, |v| Username::parse(v).unwrap()),
            name: None,
            attributes: Default::default(),
            verified_attributes: Vec::new(),
            ..NormalizedFields::default()
        }
    }

    fn given(&self, f: MatchField) -> &Given {
        match f {
            MatchField::Email => &self.email,
            MatchField::Phone => &self.phone,
            MatchField::Username => &self.username,
        }
    }

    fn verified(&self, f: MatchField) -> bool {
        match f {
            MatchField::Email => self.email_verified,
            MatchField::Phone => self.phone_verified,
            MatchField::Username => true,
        }
    }
}

fn logins() -> impl Strategy<Value = Login> {
    (
        given(&EMAILS),
        any::<bool>(),
        given(&PHONES),
        any::<bool>(),
        given(&USERNAMES),
    )
        .prop_map(
            |(email, email_verified, phone, phone_verified, username)| Login {
                email,
                email_verified,
                phone,
                phone_verified,
                username,
            },
        )
}

/// A generated pool user, as plain values.
#[derive(Debug, Clone)]
struct User {
    id: u128,
    email: Option<&'static str>,
    email_verified: bool,
    phone: Option<&'static str>,
    phone_verified: bool,
    username: Option<&'static str>,
    protected: bool,
    linked: bool,
    suspended: bool,
}

impl User {
    fn value(&self, f: MatchField) -> Option<&'static str> {
        match f {
            MatchField::Email => self.email,
            MatchField::Phone => self.phone,
            MatchField::Username => self.username,
        }
    }

    fn verified(&self, f: MatchField) -> bool {
        match f {
            MatchField::Email => self.email_verified,
            MatchField::Phone => self.phone_verified,
            MatchField::Username => true,
        }
    }

    fn pool_user(&self) -> PoolUser {
        PoolUser {
            id: Uuid::from_u128(self.id),
            email: self.email.map(|e| Email::parse(e).unwrap()),
            email_verified: self.email_verified,
            phone: self.phone.map(|p| Phone::parse(p, None).unwrap()),
            phone_verified: self.phone_verified,
            username: self.username.map(|u| Username::parse(u).unwrap()),
            attributes: Default::default(),
            protected: self.protected,
            linked_on_connection: self.linked,
            suspended: self.suspended,
        }
    }
}

fn pick(values: &'static [&'static str]) -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(values.to_vec()))
}

fn users() -> impl Strategy<Value = Vec<User>> {
    let user = (
        pick(&EMAILS),
        prop::bool::weighted(0.8),
        pick(&PHONES),
        prop::bool::weighted(0.8),
        pick(&USERNAMES),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
    );
    prop::collection::vec(user, 0..5).prop_map(|users| {
        users
            .into_iter()
            .enumerate()
            .map(
                |(
                    i,
                    (
                        email,
                        email_verified,
                        phone,
                        phone_verified,
                        username,
                        protected,
                        linked,
                        suspended,
                    ),
                )| {
                    User {
                        id: i as u128 + 1,
                        email,
                        email_verified,
                        phone,
                        phone_verified,
                        username,
                        protected,
                        linked,
                        suspended,
                    }
                },
            )
            .collect()
    })
}

fn settings() -> impl Strategy<Value = ConnectionSettings> {
    (
        prop::sample::select(Association::ALL.to_vec()),
        prop::sample::select(LoginMode::ALL.to_vec()),
        prop::sample::subsequence(MatchField::ALL.to_vec(), 1..=3).prop_shuffle(),
        any::<bool>(),
        any::<bool>(),
        prop::sample::subsequence(DOMAINS.to_vec(), 0..=2),
    )
        .prop_map(
            |(association, login_mode, match_fields, require_verified, trust, domains)| {
                ConnectionSettings {
                    identifier: ConnectionId::parse("conn").unwrap(),
                    user_pool_id: UserPoolId::parse("pool").unwrap(),
                    display_name: "conn".into(),
                    provider: String::new(),
                    login_mode,
                    association,
                    match_fields: match_fields.into_iter().map(Into::into).collect(),
                    match_rule: crate::domain::MatchRule::Any,
                    unique_attributes: Vec::new(),
                    require_verified,
                    default_country_code: None,
                    binding_ttl: std::time::Duration::from_secs(3600),
                    trust_unverified_accounts: trust,
                    allowed_email_domains: domains.iter().map(|d| d.to_string()).collect(),
                    on_profile_change: crate::domain::connection::OnProfileChange::Notify,
                    mapping: Default::default(),
                    directory: None,
                    on_source_removal: crate::domain::leavers::OnSourceRemoval::Notify,
                    removal_guard: Default::default(),
                    version: 1,
                }
            },
        )
}

/// What the contract's section 1 says the action must be: written from the contract's table and
/// safety rules, apart from the implementation.
fn expected(
    login: &Login,
    s: &ConnectionSettings,
    users: &[User],
    linked: bool,
    pending: Option<bool>,
) -> Action {
    if linked {
        return Action::ExistingUser {
            user_id: Uuid::from_u128(99),
            drift: None,
        };
    }
    if pending == Some(true) {
        return Action::StillPending {
            binding_id: Uuid::from_u128(77),
            reason: BindingReason::AskBinding,
        };
    }
    let domain_ok = |v: &str| {
        s.allowed_email_domains.is_empty()
            || s.allowed_email_domains
                .iter()
                .any(|d| v.ends_with(&format!("@{d}")))
    };
    // A field candidates are looked for with (suspicious values too: they find the account
    // they could pass for).
    let searched = |f: MatchField| match login.given(f) {
        Given::Value(v, _) => {
            (f != MatchField::Email || domain_ok(v)) && (login.verified(f) || !s.require_verified)
        }
        _ => false,
    };
    let login_value = |f: MatchField| match login.given(f) {
        Given::Value(v, _) => Some(*v),
        _ => None,
    };
    let mut candidates: Vec<(&User, Vec<MatchField>)> = Vec::new();
    if s.association != Association::Disabled {
        for u in users {
            let matched: Vec<MatchField> = s
                .match_fields
                .iter()
                .filter_map(|k| k.field())
                .filter(|f| searched(*f) && u.value(*f).is_some() && u.value(*f) == login_value(*f))
                .collect();
            if !matched.is_empty() {
                candidates.push((u, matched));
            }
        }
    }
    // "A suspended account is never linked to": reaching one (by id order, the first) rejects.
    if let Some((u, _)) = candidates.iter().find(|(u, _)| u.suspended) {
        return Action::AccountSuspended {
            user_id: Uuid::from_u128(u.id),
        };
    }
    let ids = |c: &[(&User, Vec<MatchField>)]| -> Vec<Uuid> {
        c.iter().map(|(u, _)| Uuid::from_u128(u.id)).collect()
    };
    match (s.association, candidates.len()) {
        (_, 0) => {}
        (Association::FieldMatching, 1) => {
            let (u, matched) = &candidates[0];
            let suspicious = matched
                .iter()
                .any(|f| matches!(login.given(*f), Given::Value(_, true)));
            let unverified = matched.iter().any(|f| !u.verified(*f));
            let reason = if u.protected {
                Some(BindingReason::ProtectedAccount)
            } else if suspicious {
                Some(BindingReason::ConfusableIdentifier)
            } else if unverified && !s.trust_unverified_accounts {
                Some(BindingReason::CandidateUnverified)
            } else if u.linked {
                Some(BindingReason::CandidateAlreadyLinked)
            } else {
                None
            };
            return match reason {
                None => Action::Link {
                    user_id: Uuid::from_u128(u.id),
                    matched_on: matched.iter().map(|f| (*f).into()).collect(),
                },
                Some(reason) => Action::OpenBinding {
                    candidates: ids(&candidates),
                    reason,
                },
            };
        }
        (Association::FieldMatching, _) => {
            return Action::OpenBinding {
                candidates: ids(&candidates),
                reason: BindingReason::AmbiguousMatch,
            };
        }
        _ => {
            // Asking the person: "protected ... whatever the association mode", and a
            // lookalike of the one candidate, say so.
            let reason = match candidates.as_slice() {
                [(u, _)] if u.protected => BindingReason::ProtectedAccount,
                [(_, matched)]
                    if matched
                        .iter()
                        .any(|f| matches!(login.given(*f), Given::Value(_, true))) =>
                {
                    BindingReason::ConfusableIdentifier
                }
                _ => BindingReason::AskBinding,
            };
            return Action::OpenBinding {
                candidates: ids(&candidates),
                reason,
            };
        }
    }
    if s.login_mode == LoginMode::LoginOnly {
        return Action::Reject;
    }
    // A new account: each value only if valid, not suspicious, in an allowed domain, verified
    // where required, and held by nobody of the pool.
    let give = |f: MatchField| match login.given(f) {
        Given::Value(v, false)
            if (f != MatchField::Email || domain_ok(v))
                && (login.verified(f) || !s.require_verified)
                && users.iter().all(|u| u.value(f) != Some(*v)) =>
        {
            Some(*v)
        }
        _ => None,
    };
    let email = give(MatchField::Email).map(|e| Email::parse(e).unwrap());
    let phone = give(MatchField::Phone).map(|p| Phone::parse(p, None).unwrap());
    Action::CreateUser(NewUserFields {
        email_verified: email.is_some() && login.email_verified,
        email,
        phone_verified: phone.is_some() && login.phone_verified,
        phone,
        username: give(MatchField::Username).map(|u| Username::parse(u).unwrap()),
        name: None,
        attributes: Default::default(),
    })
}

proptest! {
    #![proptest_config(cases(20_000))]

    #[test]
    fn the_decision_is_what_the_contract_says(
        login in logins(),
        s in settings(),
        users in users(),
        linked in prop::bool::weighted(0.1),
        pending in prop::option::weighted(0.1, any::<bool>()),
    ) {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let situation = Situation {
            linked_user: linked.then(|| Uuid::from_u128(99)),
            linked_account: None,
            pending_binding: pending.map(|fresh| PendingBinding {
                id: Uuid::from_u128(77),
                reason: BindingReason::AskBinding,
                expires_at: if fresh { now + Duration::hours(1) } else { now - Duration::hours(1) },
            }),
            pool_users: users.iter().map(User::pool_user).collect(),
            unique_attributes: Vec::new(),
        };
        let decision = decide(&login.fields(), &s, &situation, now);
        prop_assert_eq!(&decision.action, &expected(&login, &s, &users, linked, pending));
        let expires = !linked && pending == Some(false);
        prop_assert_eq!(decision.expire_binding, expires.then(|| Uuid::from_u128(77)));
        // Evidence: one entry per field given, its value usable only if it was not judged
        // malformed, suspicious, out of domain or unverified.
        for f in MatchField::ALL {
            let entry = decision.evidence.fields.iter().find(|e| e.field == *f);
            prop_assert_eq!(entry.is_some(), !matches!(login.given(*f), Given::Absent));
            if let Some(entry) = entry {
                prop_assert_eq!(entry.usable, entry.why_not.is_none());
                if matches!(login.given(*f), Given::Value(_, true)) {
                    prop_assert_eq!(entry.why_not, Some(WhyNot::Suspicious));
                }
                if matches!(login.given(*f), Given::Malformed) {
                    prop_assert_eq!(entry.why_not, Some(WhyNot::Malformed));
                }
            }
        }
    }
}

/// Characters that case mapping or compatibility normalisation can turn into ASCII, a few
/// legitimate non-ASCII ones, and ASCII.
const TRICKY: &[&str] = &[
    "a", "k", "s", "i", "f", "K", "S", "I", "\u{212A}", "\u{17F}", "\u{DF}", "\u{131}", "\u{130}",
    "\u{FB01}", "\u{FF21}", "\u{FF41}", "\u{1D2E}", "\u{2170}", "\u{E9}", "e\u{301}", "\u{5F20}",
    "\u{430}", "\u{3BF}", "\u{101}", "\u{100}", " ", ".", "-", "_", "0", "\u{3002}", "\u{AD}",
    "\u{200B}", "\u{212B}", "\u{F9E1}", "\u{674E}", "\u{3A3}", "\u{3C2}",
];

fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TRICKY.to_vec()), 1..8).prop_map(|v| v.concat())
}

/// A domain label of one script, from letters that IDNA takes as they are.
fn unicode_label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[\u{0627}-\u{064a}]{1,6}",
        "[\u{4e00}-\u{4e2f}]{1,4}",
        "[\u{0430}-\u{044f}]{1,8}",
        "[\u{3041}-\u{3093}]{1,5}",
        "[a-z]{1,8}",
    ]
}

proptest! {
    #![proptest_config(cases(5_000))]

    /// `xn--0gb.aa` and `ص.aa` are one domain: an email compares in its domain's Unicode form
    /// (UTS 46 ToUnicode), whichever form it was written in, and the lookalike rules judge both
    /// forms alike. The A-label is made by UTS 46 ToASCII, the definition, not by the product.
    #[test]
    fn idn_domains_compare_in_their_unicode_form(
        local in "[a-z0-9]{1,8}",
        labels in prop::collection::vec(unicode_label(), 1..3),
        tld in "[a-z]{2,4}",
    ) {
        let unicode = format!("{}.{tld}", labels.join("."));
        let ascii = idna::domain_to_ascii(&unicode).expect("a valid IDN");
        let written_unicode = Email::parse_checked(&format!("{local}@{unicode}"));
        let written_ascii = Email::parse_checked(&format!("{local}@{}", ascii.to_uppercase()));
        match (written_unicode, written_ascii) {
            (Ok((u, u_suspicious)), Ok((a, a_suspicious))) => {
                prop_assert_eq!(&u, &a);
                prop_assert_eq!(u.as_str(), format!("{local}@{unicode}"));
                prop_assert_eq!(u_suspicious, a_suspicious);
            }
            (u, a) => prop_assert!(u.is_err() && a.is_err(), "refused alike: {u:?} {a:?}"),
        }
    }
}

proptest! {
    #![proptest_config(cases(20_000))]

    #[test]
    fn canonical_forms_are_idempotent(raw in tricky_text()) {
        if let Ok(username) = Username::parse(&raw) {
            prop_assert_eq!(Username::parse(username.as_str()).unwrap(), username);
        }
        let email = format!("{raw}@{raw}.example");
        if let Ok(parsed) = Email::parse(&email) {
            prop_assert_eq!(Email::parse(parsed.as_str()).unwrap(), parsed);
        }
    }

    #[test]
    fn a_value_that_is_not_suspicious_never_passes_for_another_ascii_one(
        raw in tricky_text(),
        ascii in "[a-zA-Z0-9._-]{1,8}",
    ) {
        if let (Ok((a, false)), Ok(b)) = (Username::parse_checked(&raw), Username::parse(&ascii))
            && a == b
        {
            prop_assert!(raw.trim().eq_ignore_ascii_case(ascii.trim()), "{raw:?} passes for {ascii:?}");
        }
        let (left, right) = (format!("{ascii}@{raw}.example"), format!("{ascii}@corp.example"));
        if let (Ok((a, false)), Ok(b)) = (Email::parse_checked(&left), Email::parse(&right))
            && a == b
        {
            prop_assert!(raw.trim().eq_ignore_ascii_case("corp"), "{left:?} passes for {right:?}");
        }
        let (left, right) = (format!("{raw}@corp.example"), format!("{ascii}@corp.example"));
        if let (Ok((a, false)), Ok(b)) = (Email::parse_checked(&left), Email::parse(&right))
            && a == b
        {
            prop_assert!(raw.trim().eq_ignore_ascii_case(ascii.trim()), "{left:?} passes for {right:?}");
        }
    }
}
