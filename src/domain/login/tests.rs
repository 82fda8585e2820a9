//! Decoding and checking logins: every refusal, and what a login's profile becomes.

use super::*;
use serde_json::json;

#[test]
fn a_mapped_field_comes_from_its_template_alone() {
    let spec = crate::domain::connection::ConnectionSpec {
        identifier: Some("dingtalk".into()),
        user_pool_id: Some("pool-1".into()),
        mapping: Some(
            [
                (
                    "phone".to_owned(),
                    "+{attributes.state_code}{attributes.mobile}".to_owned(),
                ),
                ("email".to_owned(), "{attributes.org_email}".to_owned()),
            ]
            .into(),
        ),
        verified_fields: Some(vec!["phone".into()]),
        ..Default::default()
    };
    let settings = ConnectionSettings::validate(&spec).unwrap();
    let raw = json!({"email": "personal@example.com", "email_verified": true,
                     "username": "zs",
                     "attributes": {"state_code": "86", "mobile": "13800138000"}});
    let profile = Profile::from_map(raw.as_object().unwrap()).unwrap();
    let fields = NormalizedFields::of(&profile, &settings);
    assert_eq!(
        fields.phone.value().map(|p| p.as_str()),
        Some("+8613800138000")
    );
    assert!(fields.phone_verified, "vouched for by the connection");
    assert_eq!(
        fields.email,
        Field::Absent,
        "no org_email: no email, not the profile's"
    );
    assert_eq!(
        fields.username.value().map(|u| u.as_str()),
        Some("zs"),
        "not mapped"
    );
}

#[test]
fn a_preset_stands_in_only_for_a_missing_standard_name() {
    let spec = crate::domain::connection::ConnectionSpec {
        identifier: Some("dingtalk".into()),
        user_pool_id: Some("pool-1".into()),
        provider: Some("dingtalk".into()),
        ..Default::default()
    };
    let settings = ConnectionSettings::validate(&spec).unwrap();
    let source = json!({"attributes": {"state_code": "852", "mobile": "61234567",
                                       "org_email": "Chan@Corp.Example", "job_number": "E2048"}});
    let profile = Profile::from_map(source.as_object().unwrap()).unwrap();
    let fields = NormalizedFields::of(&profile, &settings);
    assert_eq!(fields.phone.value().unwrap().as_str(), "+85261234567");
    assert!(
        fields.phone_verified && fields.email_verified,
        "vouched for"
    );
    assert_eq!(fields.email.value().unwrap().as_str(), "chan@corp.example");
    let (name, employee) = fields.attributes.iter().next().unwrap();
    assert_eq!(
        (name.as_str(), employee.value().unwrap().as_str()),
        ("employee_id", "E2048")
    );

    // A platform that already sends the standard names keeps them, with their own flags.
    let mut raw = source.as_object().unwrap().clone();
    raw.insert("email".into(), json!("chan@example.net"));
    let profile = Profile::from_map(&raw).unwrap();
    let fields = NormalizedFields::of(&profile, &settings);
    assert_eq!(fields.email.value().unwrap().as_str(), "chan@example.net");
    assert!(!fields.email_verified, "the profile does not say so");
}

#[test]
fn a_name_is_cut_to_what_an_account_holds_and_an_empty_one_is_none() {
    let settings = ConnectionSettings::validate(&crate::domain::connection::ConnectionSpec {
        identifier: Some("c".into()),
        user_pool_id: Some("p".into()),
        ..Default::default()
    })
    .unwrap();
    let of = |name: &str| {
        let raw = json!({ "name": name });
        NormalizedFields::of(
            &Profile::from_map(raw.as_object().unwrap()).unwrap(),
            &settings,
        )
        .name
    };
    assert_eq!(of("张三").as_deref(), Some("张三"));
    assert_eq!(of(""), None);
    assert_eq!(
        of(&"名".repeat(300)).unwrap().chars().count(),
        MAX_NAME_CHARS
    );
}

const LIMIT: usize = 64 * 1024;

fn valid() -> Value {
    json!({
        "specversion": "1.0",
        "id": "9d1c6f0e-2b1a-4c55-a3a8-1f7f3b2b9e10",
        "source": "urn:authing:userpool:pool-1",
        "type": "login.completed",
        "time": "2026-11-24T12:00:00Z",
        "data": {
            "user_pool_id": "pool-1",
            "connection": "dingtalk-corp",
            "external_id": "dingtalk-unionid-abc123",
            "profile": {
                "email": "Zhang.San@Example.com", "email_verified": true,
                "phone": "138 0013 8000", "phone_verified": true,
                "username": "zhangsan", "name": "张三", "nickname": "San",
                "attributes": { "userid": "manager4230", "dept": "sales" }
            }
        }
    })
}

fn decode_value(v: &Value) -> Result<LoginEvent, Rejection> {
    decode(&serde_json::to_vec(v).unwrap(), LIMIT)
}

fn kind_of(v: &Value) -> RejectionKind {
    decode_value(v).unwrap_err().kind
}

#[test]
fn decodes_the_contract_example() {
    let event = decode_value(&valid()).unwrap();
    assert_eq!(event.id, "9d1c6f0e-2b1a-4c55-a3a8-1f7f3b2b9e10");
    assert_eq!(event.user_pool_id.as_str(), "pool-1");
    assert_eq!(event.connection.as_str(), "dingtalk-corp");
    assert_eq!(
        event.profile.email.as_deref(),
        Some("Zhang.San@Example.com")
    );
    assert!(event.profile.email_verified && event.profile.phone_verified);
    assert_eq!(event.profile.raw["attributes"]["dept"], "sales");
}

#[test]
fn unknown_fields_are_ignored_and_profile_is_optional() {
    let mut v = valid();
    v["extension"] = json!({"any": "thing"});
    v["data"]["future_field"] = json!(1);
    v["data"].as_object_mut().unwrap().remove("profile");
    let event = decode_value(&v).unwrap();
    assert_eq!(event.profile, Profile::default());
}

#[test]
fn oversized_body_is_rejected_before_parsing() {
    let body = vec![b'x'; LIMIT + 1];
    let err = decode(&body, LIMIT).unwrap_err();
    assert_eq!(err.kind, RejectionKind::TooLarge);
    assert!(err.reason().starts_with("too_large: "));
}

#[test]
fn not_json() {
    for body in [&b"not json"[..], b"{\"id\": ", b"\xff\xfe", b""] {
        assert_eq!(
            decode(body, LIMIT).unwrap_err().kind,
            RejectionKind::NotJson,
            "{body:?}"
        );
    }
}

#[test]
fn deeply_nested_json_is_refused_without_overflow() {
    let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = decode(body.as_bytes(), usize::MAX).unwrap_err();
    assert_eq!(err.kind, RejectionKind::NotJson);
}

#[test]
fn not_cloudevents() {
    let mut v = valid();
    v["specversion"] = json!("0.3");
    assert_eq!(kind_of(&v), RejectionKind::NotCloudEvents);
    v.as_object_mut().unwrap().remove("specversion");
    assert_eq!(kind_of(&v), RejectionKind::NotCloudEvents);
    assert_eq!(kind_of(&json!([1, 2])), RejectionKind::NotCloudEvents);
    assert_eq!(kind_of(&json!("1.0")), RejectionKind::NotCloudEvents);
}

#[test]
fn wrong_type() {
    let mut v = valid();
    v["type"] = json!("logout.completed");
    assert_eq!(kind_of(&v), RejectionKind::WrongType);
}

#[test]
fn missing_required_fields() {
    for path in ["id", "source", "type", "data"] {
        let mut v = valid();
        v.as_object_mut().unwrap().remove(path);
        let err = decode_value(&v).unwrap_err();
        assert_eq!(err.kind, RejectionKind::InvalidEvent, "{path}");
        assert!(err.detail.contains(path), "{path}: {}", err.detail);
    }
    for field in ["user_pool_id", "connection", "external_id"] {
        let mut v = valid();
        v["data"].as_object_mut().unwrap().remove(field);
        let err = decode_value(&v).unwrap_err();
        assert_eq!(err.kind, RejectionKind::InvalidEvent);
        assert!(err.detail.contains(field), "{}", err.detail);
    }
}

#[test]
fn oversized_required_fields() {
    let mut v = valid();
    v["id"] = json!("x".repeat(129));
    assert_eq!(kind_of(&v), RejectionKind::InvalidEvent);
    let mut v = valid();
    v["id"] = json!("é".repeat(128));
    assert!(
        decode_value(&v).is_ok(),
        "128 characters are allowed whatever their bytes"
    );
    let mut v = valid();
    v["data"]["external_id"] = json!("x".repeat(257));
    assert_eq!(kind_of(&v), RejectionKind::InvalidEvent);
    let mut v = valid();
    v["data"]["external_id"] = json!("");
    assert_eq!(kind_of(&v), RejectionKind::InvalidEvent);
}

#[test]
fn wrongly_typed_fields() {
    let mut v = valid();
    v["id"] = json!(42);
    assert_eq!(kind_of(&v), RejectionKind::InvalidEvent);
    let mut v = valid();
    v["data"]["profile"]["email"] = json!(["a@b"]);
    assert_eq!(kind_of(&v), RejectionKind::InvalidEvent);
    let mut v = valid();
    v["data"]["profile"]["email_verified"] = json!("yes");
    assert_eq!(kind_of(&v), RejectionKind::InvalidEvent);
    for (text, value) in [("true", true), ("TRUE", true), ("false", false)] {
        let mut v = valid();
        v["data"]["profile"]["email_verified"] = json!(text);
        assert_eq!(
            decode_value(&v).unwrap().profile.email_verified,
            value,
            "{text}"
        );
    }
    let mut v = valid();
    v["data"]["connection"] = json!("DingTalk");
    assert_eq!(kind_of(&v), RejectionKind::InvalidEvent);
}

#[test]
fn a_repeated_key_is_invalid_wherever_it_is() {
    let valid = serde_json::to_string(&valid()).unwrap();
    for (from, to) in [
        (r#""id":"#, r#""id":"other","id":"#),
        (
            r#""user_pool_id":"#,
            r#""user_pool_id":"pool-2","user_pool_id":"#,
        ),
        (r#""connection":"#, r#""connection":"other","connection":"#),
        (
            r#""email_verified":"#,
            r#""email_verified":false,"email_verified":"#,
        ),
    ] {
        let body = valid.replacen(from, to, 1);
        assert_ne!(body, valid, "{from}");
        let err = decode(body.as_bytes(), LIMIT).unwrap_err();
        assert_eq!(err.kind, RejectionKind::InvalidEvent, "{from}: {err}");
        assert!(err.detail.starts_with("duplicate key"), "{}", err.detail);
    }
}

#[test]
fn nul_characters_are_refused() {
    let mut v = valid();
    v["data"]["profile"]["attributes"]["dept"] = json!("sa\u{0}les");
    assert_eq!(kind_of(&v), RejectionKind::InvalidEvent);
    let mut v = valid();
    v["data"]["external_id"] = json!("a\u{0}b");
    assert_eq!(kind_of(&v), RejectionKind::InvalidEvent);
}

#[test]
fn normalises_with_the_connection() {
    let event = decode_value(&valid()).unwrap();
    let settings = ConnectionSettings::validate(&crate::domain::connection::ConnectionSpec {
        identifier: Some("dingtalk-corp".into()),
        user_pool_id: Some("pool-1".into()),
        default_country_code: Some("86".into()),
        ..Default::default()
    })
    .unwrap();
    let fields = NormalizedFields::of(&event.profile, &settings);
    assert_eq!(
        fields.email.value().unwrap().as_str(),
        "zhang.san@example.com"
    );
    assert_eq!(fields.phone.value().unwrap().as_str(), "+8613800138000");
    assert_eq!(fields.username.value().unwrap().as_str(), "zhangsan");
    assert!(!fields.username.is_suspicious());
}

#[test]
fn malformed_contact_fields_are_dropped_not_fatal() {
    let mut v = valid();
    v["data"]["profile"]["email"] = json!("not-an-email");
    v["data"]["profile"]["phone"] = json!("12");
    let event = decode_value(&v).unwrap();
    let settings = ConnectionSettings::validate(&crate::domain::connection::ConnectionSpec {
        identifier: Some("dingtalk-corp".into()),
        user_pool_id: Some("pool-1".into()),
        ..Default::default()
    })
    .unwrap();
    let fields = NormalizedFields::of(&event.profile, &settings);
    assert_eq!(fields.email, Field::Malformed("not-an-email".into()));
    assert_eq!(fields.phone, Field::Malformed("12".into()));
}
