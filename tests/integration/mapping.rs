//! Profile mapping (contract section 9), through the admin API and the broker: a source that
//! sends its own field names (DingTalk's mobile number with the country code apart) still
//! matches the account.

use identity_sync::domain::decision::Outcome;
use serde_json::json;

use idsync_test_support::*;

#[tokio::test]
async fn a_mapped_phone_links_a_dingtalk_login_to_its_account() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let account = create_user(&db, None, Some("+8613800138000"), None).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let path = format!("/v1/connections/{POOL}/matching");

    // A mapping that cannot work is refused, naming the setting.
    let (status, body) = app
        .api()
        .put(
            &path,
            json!({"association": "field_matching", "match_fields": ["email", "phone"],
                   "mapping": {"phone": "+{attributes.state_code"}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "invalid_field"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mapping"),
        "{body}"
    );

    let (status, body) = app
        .api()
        .put(
            &path,
            json!({"provider": "dingtalk", "association": "field_matching",
                   "match_fields": ["email", "phone"], "default_country_code": "86",
                   "mapping": {"phone": "+{attributes.state_code}{attributes.mobile}",
                               "email": "{attributes.org_email}"},
                   "verified_fields": ["phone"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["mapping"]["phone"],
        "+{attributes.state_code}{attributes.mobile}"
    );

    // DingTalk's user detail, as the platform passes it on: no standard phone field.
    let reply = broker
        .login(&login(
            "matching",
            "dt-unionid-1",
            json!({"name": "张三", "attributes": {"state_code": "86", "mobile": "13800138000",
                                                  "org_email": ""}}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserLinked, "{reply:?}");
    assert_eq!(reply.user_id, Some(account));
    let linked = broker.next_event().await;
    assert_eq!(linked.body["data"]["matched_on"], json!(["phone"]));
    app.stop().await;
}
