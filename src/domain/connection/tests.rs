//! Connection settings: validation, defaults and the spec written back.

use super::*;

#[test]
fn a_mapping_names_account_fields_and_templates_that_read() {
    let mut with = spec("dingtalk");
    let map = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    with.mapping = map(&[("phone", "+{attributes.state_code}{attributes.mobile}")]);
    with.verified_fields = Some(vec!["phone".into()]);
    let settings = ConnectionSettings::validate(&with).unwrap();
    assert!(settings.mapping.phone.is_some());
    assert_eq!(settings.mapping.verified, [MatchField::Phone]);
    assert_eq!(
        ConnectionSettings::validate(&settings.to_spec()).unwrap(),
        settings,
        "the spec reads back"
    );
    for (mapping, verified, field, says) in [
        (
            map(&[("shoe_size", "{a}")]),
            None,
            "mapping",
            "cannot be mapped",
        ),
        (
            map(&[("email", "{a")]),
            None,
            "mapping",
            "email: the placeholder",
        ),
        (
            map(&[("email", "{a}")]),
            Some(vec!["phone".to_owned()]),
            "verified_fields",
            "not mapped",
        ),
        (None, Some(vec!["fax".to_owned()]), "verified_fields", "fax"),
    ] {
        let mut bad = spec("dingtalk");
        bad.mapping = mapping;
        bad.verified_fields = verified;
        let error = ConnectionSettings::validate(&bad).unwrap_err();
        assert_eq!(error.field, field);
        assert!(error.message.contains(says), "{error}");
    }
}

#[test]
fn a_preset_maps_the_source_and_yields_key_by_key() {
    let mut dingtalk = spec("dingtalk");
    dingtalk.provider = Some("dingtalk".into());
    let settings = ConnectionSettings::validate(&dingtalk).unwrap();
    let effective = settings.mapping.effective();
    assert_eq!(
        effective["phone"],
        "+{attributes.state_code}{attributes.mobile}"
    );
    assert_eq!(
        effective["attributes.employee_id"],
        "{attributes.job_number}"
    );
    let verified = |s: &ConnectionSettings| -> Vec<String> {
        s.mapping.verified.iter().map(|k| k.to_string()).collect()
    };
    assert_eq!(
        verified(&settings),
        ["phone", "email", "attributes.employee_id"]
    );
    assert!(settings.mapping.written().is_empty(), "nothing written");

    // The connection's own keys win; an empty one takes the preset's away.
    dingtalk.mapping = Some(
        [
            ("email".to_owned(), String::new()),
            (
                "attributes.employee_id".to_owned(),
                "D{attributes.job_number}".to_owned(),
            ),
        ]
        .into(),
    );
    let settings = ConnectionSettings::validate(&dingtalk).unwrap();
    let effective = settings.mapping.effective();
    assert!(!effective.contains_key("email"));
    assert_eq!(
        effective["attributes.employee_id"],
        "D{attributes.job_number}"
    );
    assert_eq!(
        verified(&settings),
        ["phone", "attributes.employee_id"],
        "what is no longer mapped is not vouched for"
    );
    assert!(
        settings.mapping.phone.as_ref().unwrap().fallback,
        "the preset's"
    );
    assert_eq!(
        ConnectionSettings::validate(&settings.to_spec()).unwrap(),
        settings,
        "the spec reads back"
    );

    let mut wecom = spec("wecom");
    wecom.provider = Some("wecom".into());
    let settings = ConnectionSettings::validate(&wecom).unwrap();
    assert_eq!(settings.default_country_code.as_ref().unwrap().code(), 86);
    // "No default country code", written, is a setting the preset does not override.
    wecom.default_country_code = Some(String::new());
    let settings = ConnectionSettings::validate(&wecom).unwrap();
    assert_eq!(settings.default_country_code, None);
    assert_eq!(
        ConnectionSettings::validate(&settings.to_spec()).unwrap(),
        settings
    );
    let mut ldap = spec("ldap");
    ldap.provider = Some("ldap".into());
    let settings = ConnectionSettings::validate(&ldap).unwrap();
    assert!(settings.mapping.effective().is_empty());
}

#[test]
fn attributes_are_matched_only_where_a_mapping_fills_them() {
    let mut with = spec("hr");
    with.match_fields = Some(vec!["attributes.employee_id".into(), "email".into()]);
    with.match_rule = Some("all".into());
    with.unique_attributes = Some(vec!["employee_id".into(), "attributes.employee_id".into()]);
    let error = ConnectionSettings::validate(&with).unwrap_err();
    assert_eq!(error.field, "match_fields");
    assert!(error.message.contains("can never match"), "{error}");

    with.mapping = Some(
        [(
            "attributes.employee_id".to_owned(),
            "{attributes.employee_no}".to_owned(),
        )]
        .into(),
    );
    let settings = ConnectionSettings::validate(&with).unwrap();
    assert_eq!(settings.match_rule, MatchRule::All);
    assert_eq!(
        settings.match_fields[0].to_string(),
        "attributes.employee_id"
    );
    assert_eq!(settings.unique_attributes.len(), 1, "listed once");
    assert_eq!(
        ConnectionSettings::validate(&settings.to_spec()).unwrap(),
        settings
    );
    for (key, value, says) in [
        ("match_rule", "some", "match_rule"),
        ("match_fields", "attributes.employee id", "match_fields"),
        ("unique_attributes", "a.b", "unique_attributes"),
    ] {
        let mut bad = with.clone();
        match key {
            "match_rule" => bad.match_rule = Some(value.into()),
            "match_fields" => bad.match_fields = Some(vec![value.into()]),
            _ => bad.unique_attributes = Some(vec![value.into()]),
        }
        assert_eq!(ConnectionSettings::validate(&bad).unwrap_err().field, says);
    }
}

fn spec(identifier: &str) -> ConnectionSpec {
    ConnectionSpec {
        identifier: Some(identifier.into()),
        user_pool_id: Some("pool-1".into()),
        ..ConnectionSpec::default()
    }
}

#[test]
fn identifier_rules() {
    for ok in ["a", "dingtalk-corp", "x1-2-3", &"a".repeat(31)] {
        assert!(ConnectionId::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "Dingtalk",
        "ding_talk",
        "ding talk",
        &"a".repeat(32),
        "é",
    ] {
        assert!(ConnectionId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn defaults_follow_the_contract() {
    let settings = ConnectionSettings::validate(&spec("dingtalk")).unwrap();
    assert_eq!(settings.login_mode, LoginMode::Normal);
    assert_eq!(settings.association, Association::Disabled);
    assert_eq!(settings.match_fields, vec![MatchField::Email]);
    assert!(settings.require_verified);
    assert_eq!(settings.default_country_code, None);
    assert_eq!(settings.binding_ttl, Duration::from_secs(72 * 3600));
    assert_eq!(settings.display_name, "dingtalk");
}

#[test]
fn errors_name_the_field() {
    let mut bad = spec("ok");
    bad.association = Some("sometimes".into());
    assert_eq!(
        ConnectionSettings::validate(&bad).unwrap_err().field,
        "association"
    );

    let mut bad = spec("ok");
    bad.match_fields = Some(vec!["email".into(), "shoe_size".into()]);
    assert_eq!(
        ConnectionSettings::validate(&bad).unwrap_err().field,
        "match_fields"
    );

    let mut bad = spec("ok");
    bad.match_fields = Some(vec!["email".into(), "email".into()]);
    assert_eq!(
        ConnectionSettings::validate(&bad).unwrap_err().field,
        "match_fields"
    );

    let mut bad = spec("ok");
    bad.default_country_code = Some("999".into());
    assert_eq!(
        ConnectionSettings::validate(&bad).unwrap_err().field,
        "default_country_code"
    );

    let mut bad = spec("ok");
    bad.allowed_email_domains = Some(vec!["not a domain".into()]);
    assert_eq!(
        ConnectionSettings::validate(&bad).unwrap_err().field,
        "allowed_email_domains"
    );

    let mut bad = spec("ok");
    bad.binding_ttl = Some("soon".into());
    assert_eq!(
        ConnectionSettings::validate(&bad).unwrap_err().field,
        "binding_ttl"
    );

    assert_eq!(
        ConnectionSettings::validate(&spec("Bad_Id"))
            .unwrap_err()
            .field,
        "identifier"
    );
}

#[test]
fn spec_round_trips() {
    let mut full = spec("wecom");
    full.login_mode = Some("login_only".into());
    full.association = Some("field_matching".into());
    full.match_fields = Some(vec!["phone".into(), "email".into()]);
    full.require_verified = Some(false);
    full.default_country_code = Some("+86".into());
    full.binding_ttl = Some("1h 30m".into());
    full.trust_unverified_accounts = Some(true);
    full.allowed_email_domains = Some(vec!["Corp.Example".into(), "corp.example".into()]);
    let settings = ConnectionSettings::validate(&full).unwrap();
    assert_eq!(settings.binding_ttl, Duration::from_secs(5400));
    assert_eq!(format_ttl(settings.binding_ttl), "90m");
    assert_eq!(format_ttl(Duration::from_secs(72 * 3600)), "72h");
    assert_eq!(format_ttl(Duration::from_secs(61)), "61s");
    assert_eq!(settings.default_country_code.as_ref().unwrap().code(), 86);
    assert_eq!(settings.allowed_email_domains, vec!["corp.example"]);
    assert!(settings.email_domain_allowed("corp.example"));
    assert!(!settings.email_domain_allowed("evil.example"));
    assert_eq!(
        ConnectionSettings::validate(&settings.to_spec()).unwrap(),
        settings
    );
}
