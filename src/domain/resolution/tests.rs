//! The resolution rules, one row per sentence of the contract.

use super::*;
use crate::domain::{Email, connection::ConnectionSpec, events::EventType, login::Field};

fn now() -> DateTime<Utc> {
    chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 25, 12, 0, 0).unwrap()
}

fn settings(login_mode: &str) -> ConnectionSettings {
    ConnectionSettings::validate(&ConnectionSpec {
        identifier: Some("wecom".into()),
        user_pool_id: Some("pool-1".into()),
        association: Some("ask_binding".into()),
        login_mode: Some(login_mode.into()),
        ..Default::default()
    })
    .unwrap()
}

fn candidate() -> PoolUser {
    PoolUser {
        id: Uuid::from_u128(1),
        email: Some(Email::parse("a@corp.example").unwrap()),
        email_verified: true,
        ..PoolUser::default()
    }
}

fn binding() -> BindingFacts {
    BindingFacts {
        id: Uuid::from_u128(77),
        identity: Identity {
            user_pool_id: "pool-1".into(),
            connection: "wecom".into(),
            external_id: "wc-1".into(),
        },
        status: BindingStatus::Pending,
        expires_at: now() + chrono::Duration::hours(1),
        candidates: vec![Uuid::from_u128(1)],
        cause_event_id: Some("e-1".into()),
        unique_attributes: Vec::new(),
        fields: NormalizedFields {
            email: Field::valid(Email::parse("a@corp.example").unwrap()),
            email_verified: true,
            ..NormalizedFields::default()
        },
    }
}

fn admin() -> Resolver {
    Resolver {
        actor: "ops-alice".into(),
        proof: Proof::Admin,
    }
}

fn person() -> Resolver {
    Resolver {
        actor: "zhangsan".into(),
        proof: Proof::Password,
    }
}

fn link(user: PoolUser) -> (Request, Option<LinkTarget>) {
    (
        Request::Link { user_id: user.id },
        Some(LinkTarget::User(user)),
    )
}

fn events(resolved: &Resolved) -> Vec<EventType> {
    resolved
        .effects
        .iter()
        .filter_map(|e| match e {
            ResolutionEffect::Emit(event) => Some(event.kind),
            _ => None,
        })
        .collect()
}

#[test]
fn resolution_rules_one_row_per_sentence() {
    let other = PoolUser {
        id: Uuid::from_u128(2),
        ..PoolUser::default()
    };
    let linked = PoolUser {
        linked_on_connection: true,
        ..candidate()
    };
    let resolved = BindingFacts {
        status: BindingStatus::Resolved,
        ..binding()
    };
    type Row = (
        &'static str,
        BindingFacts,
        ConnectionSettings,
        (Request, Option<LinkTarget>),
        Resolver,
        Result<Resolution, &'static str>,
    );
    let rows: Vec<Row> = vec![
        (
            "link to a user of the pool",
            binding(),
            settings("normal"),
            link(candidate()),
            admin(),
            Ok(Resolution::Linked),
        ),
        (
            "an admin may link to any user of the pool",
            binding(),
            settings("normal"),
            link(other.clone()),
            admin(),
            Ok(Resolution::Linked),
        ),
        (
            "a person may link only to a candidate",
            binding(),
            settings("normal"),
            link(other),
            person(),
            Err("not_a_candidate"),
        ),
        (
            "a person links to a candidate",
            binding(),
            settings("normal"),
            link(candidate()),
            person(),
            Ok(Resolution::Linked),
        ),
        (
            "link refused if the user already has an identity of the connection",
            binding(),
            settings("normal"),
            link(linked),
            admin(),
            Err("user_already_linked"),
        ),
        (
            "link to a user not in the pool",
            binding(),
            settings("normal"),
            (
                Request::Link {
                    user_id: Uuid::from_u128(9),
                },
                Some(LinkTarget::NotInPool),
            ),
            admin(),
            Err("user_not_in_pool"),
        ),
        (
            "create a new user",
            binding(),
            settings("normal"),
            (Request::Create, None),
            admin(),
            Ok(Resolution::Created),
        ),
        (
            "create refused on a login_only connection",
            binding(),
            settings("login_only"),
            (Request::Create, None),
            admin(),
            Err("login_only_connection"),
        ),
        (
            "reject",
            binding(),
            settings("normal"),
            (
                Request::Reject {
                    reason: Some("not them".into()),
                },
                None,
            ),
            admin(),
            Ok(Resolution::Rejected),
        ),
        (
            "only a pending binding can be resolved",
            resolved,
            settings("normal"),
            (Request::Reject { reason: None }, None),
            admin(),
            Err("binding_not_pending"),
        ),
    ];
    for (sentence, facts, s, (request, target), resolver, expected) in rows {
        let got = resolve(
            &facts,
            Some(&s),
            &request,
            target.as_ref(),
            &[],
            &resolver,
            now(),
        );
        let got = got.outcome.map(|(r, _)| r).map_err(|r| r.code());
        assert_eq!(got, expected, "{sentence}");
    }
}

#[test]
fn each_resolution_publishes_binding_resolved_then_its_consequence() {
    let s = settings("normal");
    let cases = [
        (
            link(candidate()),
            vec![EventType::BindingResolved, EventType::UserLinked],
        ),
        (
            (Request::Create, None),
            vec![EventType::BindingResolved, EventType::UserCreated],
        ),
        (
            (Request::Reject { reason: None }, None),
            vec![EventType::BindingResolved],
        ),
    ];
    for ((request, target), expected) in cases {
        let resolved = resolve(
            &binding(),
            Some(&s),
            &request,
            target.as_ref(),
            &[],
            &person(),
            now(),
        );
        assert_eq!(events(&resolved), expected, "{request:?}");
        let ResolutionEffect::Emit(event) = &resolved.effects[1] else {
            panic!()
        };
        assert_eq!(event.body["data"]["proof"], "password");
        assert_eq!(event.body["data"]["resolved_by"], "zhangsan");
    }
}

#[test]
fn an_overdue_binding_expires_instead_of_resolving() {
    let overdue = BindingFacts {
        expires_at: now() - chrono::Duration::seconds(1),
        ..binding()
    };
    let resolved = resolve(
        &overdue,
        Some(&settings("normal")),
        &Request::Create,
        None,
        &[],
        &admin(),
        now(),
    );
    assert_eq!(events(&resolved), vec![EventType::BindingExpired]);
    assert!(matches!(
        resolved.effects[0],
        ResolutionEffect::ExpireBinding { .. }
    ));
    assert_eq!(resolved.outcome.unwrap_err(), Refusal::Expired);
}

#[test]
fn a_created_account_leaves_out_values_held_in_the_pool() {
    let holder = PoolUser {
        id: Uuid::from_u128(5),
        email: Some(Email::parse("a@corp.example").unwrap()),
        ..PoolUser::default()
    };
    let resolved = resolve(
        &binding(),
        Some(&settings("normal")),
        &Request::Create,
        None,
        &[holder],
        &admin(),
        now(),
    );
    let created = resolved.effects.iter().find_map(|e| match e {
        ResolutionEffect::CreateUser { fields, .. } => Some(fields.clone()),
        _ => None,
    });
    assert_eq!(created.unwrap().email, None);
}

#[test]
fn a_missing_connection_cannot_create() {
    let resolved = resolve(
        &binding(),
        None,
        &Request::Create,
        None,
        &[],
        &admin(),
        now(),
    );
    assert_eq!(resolved.outcome.unwrap_err().code(), "connection_missing");
}
