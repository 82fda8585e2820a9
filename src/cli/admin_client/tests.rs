//! The admin client's requests and how it prints answers.

use serde_json::json;

use super::{apply_setting, proposed_from_view};

#[test]
fn control_characters_are_shown_escaped() {
    let cell = super::text(&json!("ext\u{1b}[2J\nforged  row"));
    assert_eq!(cell, "ext\\u{1b}[2J\\nforged  row");
    assert_eq!(super::text(&json!("张三")), "张三");
}

#[test]
fn settings_are_set_by_their_type() {
    let mut c = proposed_from_view(json!({
        "identifier": "corp", "association": "disabled", "mapping": {},
        "effective_mapping": {"email": "x"}, "settings_version": 3,
    }));
    for set in [
        "association=field_matching",
        "match_fields=email, phone",
        "require_verified=false",
        "default_country_code=86",
        "mapping.attributes.employee_id={attributes.job_number}",
        "allowed_email_domains=[\"example.com\"]",
    ] {
        apply_setting(&mut c, set).unwrap();
    }
    assert_eq!(
        c,
        json!({
            "identifier": "corp", "association": "field_matching",
            "match_fields": ["email", "phone"], "require_verified": false,
            "default_country_code": "86",
            "mapping": {"attributes.employee_id": "{attributes.job_number}"},
            "allowed_email_domains": ["example.com"],
        })
    );
    for bad in [
        "association",
        "require_verified=yes",
        "colour=red",
        "mapping=[1]",
    ] {
        assert!(apply_setting(&mut c, bad).is_err(), "{bad}");
    }
}
