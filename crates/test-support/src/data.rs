//! What every test environment holds: the pool, the connections, the admin tokens, and the
//! accounts and counts tests create and read.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// The user pool of every test connection.
pub const POOL: &str = "pool-1";
/// How long a test waits for a reply, an event or a dead letter.
pub const WAIT: Duration = Duration::from_secs(30);

/// The connections every test environment is configured with (all in pool `pool-1`).
pub const CONNECTIONS: &str = r#"
[[connections]]
identifier = "plain"
user_pool_id = "pool-1"
display_name = "Association disabled"
provider = "oidc"

[[connections]]
identifier = "matching"
user_pool_id = "pool-1"
provider = "dingtalk"
association = "field_matching"
match_fields = ["email", "phone"]
default_country_code = "86"

[[connections]]
identifier = "asking"
user_pool_id = "pool-1"
provider = "wecom"
association = "ask_binding"
match_fields = ["email", "phone", "username"]
default_country_code = "86"
binding_ttl = "1h"

[[connections]]
identifier = "only"
user_pool_id = "pool-1"
provider = "ldap"
login_mode = "login_only"
association = "field_matching"
match_fields = ["email", "username"]

[[connections]]
identifier = "trusting"
user_pool_id = "pool-1"
provider = "saml"
association = "field_matching"
match_fields = ["email"]
require_verified = false

[[connections]]
identifier = "brief"
user_pool_id = "pool-1"
provider = "feishu"
association = "ask_binding"
match_fields = ["email"]
binding_ttl = "1s"
"#;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const VIEWER_TOKEN: &str = "test-viewer-token-0123456789";

/// Creates a user through the same code as `users import`.
pub async fn create_user(
    db: &PgPool,
    email: Option<&str>,
    phone: Option<&str>,
    username: Option<&str>,
) -> Uuid {
    let input = identity_sync::accounts::AccountInput {
        user_pool_id: Some(POOL.into()),
        email: email.map(Into::into),
        email_verified: true,
        phone: phone.map(Into::into),
        phone_verified: true,
        username: username.map(Into::into),
        name: Some("Existing".into()),
        ..Default::default()
    };
    let record = input.normalise(None).unwrap();
    match identity_sync::accounts::create(db, &record, false)
        .await
        .unwrap()
    {
        identity_sync::accounts::Created::Added(id) => id,
        other => panic!("expected a new user, got {other:?}"),
    }
}

pub async fn count(db: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db)
        .await
        .unwrap()
}
