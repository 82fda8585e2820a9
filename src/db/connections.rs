//! The `connections` table: each external identity source of each pool, with its settings.

use sqlx::PgConnection;

use crate::domain::{
    connection::{ConnectionSettings, ConnectionSpec},
    directory::DirectorySpec,
};

struct Row {
    user_pool_id: String,
    identifier: String,
    display_name: String,
    provider: String,
    login_mode: String,
    association: String,
    match_fields: Vec<String>,
    require_verified: bool,
    default_country_code: Option<String>,
    binding_ttl_seconds: i64,
    trust_unverified_accounts: bool,
    allowed_email_domains: Vec<String>,
    on_profile_change: String,
    mapping: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    verified_fields: Vec<String>,
    match_rule: String,
    unique_attributes: Vec<String>,
    directory: Option<sqlx::types::Json<serde_json::Value>>,
    on_source_removal: String,
    removal_guard: Option<sqlx::types::Json<serde_json::Value>>,
    settings_version: i64,
}

/// A stored connection whose settings no longer validate (a value written by a newer version
/// during a rolling deploy, a hand edit): listed with its problem so that an admin can mend it,
/// never half-used. Its logins wait meanwhile.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// The settings as stored.
    pub spec: ConnectionSpec,
    pub version: i64,
    /// What does not validate, naming the field.
    pub problem: String,
}

impl Unreadable {
    /// The (pool, identifier) it is stored under.
    pub fn key(&self) -> (String, String) {
        (
            self.spec.user_pool_id.clone().unwrap_or_default(),
            self.spec.identifier.clone().unwrap_or_default(),
        )
    }
}

/// A stored connection: its settings, or why they cannot be used.
pub type Stored = Result<ConnectionSettings, Box<Unreadable>>;

impl Row {
    /// Rows were validated when written; a row that no longer validates is reported with its
    /// problem rather than half-used.
    fn into_stored(self) -> Stored {
        let version = self.settings_version;
        let directory = self
            .directory
            .map(|json| serde_json::from_value::<DirectorySpec>(json.0))
            .transpose();
        let (directory, mut unreadable) = match directory {
            Ok(directory) => (directory, None),
            Err(error) => (None, Some(format!("directory: {error}"))),
        };
        let removal_guard = match self
            .removal_guard
            .map(|json| serde_json::from_value(json.0))
        {
            None => None,
            Some(Ok(guard)) => Some(guard),
            Some(Err(error)) => {
                unreadable.get_or_insert(format!("removal_guard: {error}"));
                None
            }
        };
        let spec = ConnectionSpec {
            identifier: Some(self.identifier),
            user_pool_id: Some(self.user_pool_id),
            display_name: Some(self.display_name),
            provider: Some(self.provider),
            login_mode: Some(self.login_mode),
            association: Some(self.association),
            match_fields: Some(self.match_fields),
            require_verified: Some(self.require_verified),
            default_country_code: self.default_country_code,
            binding_ttl: Some(format!("{}s", self.binding_ttl_seconds)),
            trust_unverified_accounts: Some(self.trust_unverified_accounts),
            allowed_email_domains: Some(self.allowed_email_domains),
            on_profile_change: Some(self.on_profile_change),
            mapping: Some(self.mapping.0),
            verified_fields: Some(self.verified_fields),
            match_rule: Some(self.match_rule),
            unique_attributes: Some(self.unique_attributes),
            directory,
            on_source_removal: Some(self.on_source_removal),
            removal_guard,
        };
        if let Some(problem) = unreadable {
            return Err(Box::new(Unreadable {
                spec,
                version,
                problem,
            }));
        }
        match ConnectionSettings::validate(&spec) {
            Ok(mut settings) => {
                settings.version = version;
                Ok(settings)
            }
            Err(error) => Err(Box::new(Unreadable {
                spec,
                version,
                problem: error.to_string(),
            })),
        }
    }
}

/// What `upsert` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upserted {
    pub created: bool,
    /// The stored settings' version.
    pub version: i64,
}

/// Creates the connection or replaces its settings. A change of settings takes the next
/// `settings_version` and records the new settings in `connection_versions`; writing the same
/// settings again changes nothing.
pub async fn upsert(conn: &mut PgConnection, c: &ConnectionSettings) -> sqlx::Result<Upserted> {
    let existing = get_for_update(conn, c.user_pool_id.as_str(), c.identifier.as_str()).await?;
    // A directory secret written back as shown ("set") keeps the stored one, for the same
    // source, base and app only (the admin API refuses the others with a reason).
    let mut c = std::borrow::Cow::Borrowed(c);
    if let Some(new) = &c.directory
        && new.secret.is_shown_placeholder()
        && let Some(Ok(old)) = &existing
        && let Some(old) = &old.directory
        && old.kind == new.kind
        && old.api_base == new.api_base
        && old.app == new.app
    {
        c.to_mut().directory.as_mut().expect("present").secret = old.secret.clone();
    }
    let c = c.as_ref();
    let old_directory = match &existing {
        Some(Ok(old)) => old.directory.clone(),
        _ => None,
    };
    if old_directory != c.directory {
        super::directory::forget(conn, c.user_pool_id.as_str(), c.identifier.as_str()).await?;
    }
    let version = match &existing {
        Some(Ok(old)) if old.same_settings(c) => {
            return Ok(Upserted {
                created: false,
                version: old.version,
            });
        }
        Some(Ok(old)) => old.version + 1,
        // Mended: whatever it held, these are new settings.
        Some(Err(unreadable)) => unreadable.version + 1,
        None => 1,
    };
    let spec = c.to_spec();
    let match_fields = spec.match_fields.clone().unwrap_or_default();
    sqlx::query!(
        r#"INSERT INTO connections (user_pool_id, identifier, display_name, provider, login_mode,
               association, match_fields, require_verified, default_country_code, binding_ttl_seconds,
               trust_unverified_accounts, allowed_email_domains, on_profile_change, mapping,
               verified_fields, settings_version, match_rule, unique_attributes, directory,
               on_source_removal, removal_guard)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                   $18, $19, $20, $21)
           ON CONFLICT (user_pool_id, identifier) DO UPDATE SET
               display_name = EXCLUDED.display_name,
               provider = EXCLUDED.provider,
               login_mode = EXCLUDED.login_mode,
               association = EXCLUDED.association,
               match_fields = EXCLUDED.match_fields,
               require_verified = EXCLUDED.require_verified,
               default_country_code = EXCLUDED.default_country_code,
               binding_ttl_seconds = EXCLUDED.binding_ttl_seconds,
               trust_unverified_accounts = EXCLUDED.trust_unverified_accounts,
               allowed_email_domains = EXCLUDED.allowed_email_domains,
               on_profile_change = EXCLUDED.on_profile_change,
               mapping = EXCLUDED.mapping,
               verified_fields = EXCLUDED.verified_fields,
               settings_version = EXCLUDED.settings_version,
               match_rule = EXCLUDED.match_rule,
               unique_attributes = EXCLUDED.unique_attributes,
               directory = EXCLUDED.directory,
               on_source_removal = EXCLUDED.on_source_removal,
               removal_guard = EXCLUDED.removal_guard,
               updated_at = now()"#,
        c.user_pool_id.as_str(),
        c.identifier.as_str(),
        c.display_name,
        c.provider,
        c.login_mode.as_str(),
        c.association.as_str(),
        &match_fields,
        c.require_verified,
        spec.default_country_code.as_deref(),
        c.binding_ttl.as_secs() as i64,
        c.trust_unverified_accounts,
        &c.allowed_email_domains,
        c.on_profile_change.as_str(),
        sqlx::types::Json(spec.mapping.clone().unwrap_or_default()) as _,
        &spec.verified_fields.clone().unwrap_or_default(),
        version,
        c.match_rule.as_str(),
        &spec.unique_attributes.clone().unwrap_or_default(),
        c.directory.as_ref().map(|d| d.stored_json()),
        c.on_source_removal.as_str(),
        serde_json::to_value(c.removal_guard.to_spec()).expect("settings serialise"),
    )
    .execute(&mut *conn)
    .await?;
    let mut settings = serde_json::to_value(c.to_spec()).expect("settings serialise");
    settings["settings_version"] = version.into();
    // What applied, the provider's preset included: a later program may change its presets.
    settings["effective_mapping"] =
        serde_json::to_value(c.mapping.effective()).expect("serialises");
    sqlx::query!(
        r#"INSERT INTO connection_versions (user_pool_id, identifier, version, settings)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"#,
        c.user_pool_id.as_str(),
        c.identifier.as_str(),
        version,
        settings,
    )
    .execute(conn)
    .await?;
    Ok(Upserted {
        created: existing.is_none(),
        version,
    })
}

/// Two accounts of a pool sharing a value of an attribute that a connection wants unique.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "attribute {name:?} cannot be unique in user pool {pool:?}: accounts {} share a value",
    users.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ")
)]
pub struct SharedValue {
    pub pool: String,
    pub name: String,
    pub users: Vec<uuid::Uuid>,
}

/// Makes each pool's unique attributes the names its connections list in `unique_attributes`,
/// and marks the accounts' values accordingly (the database's unique index then holds them). Run
/// in the transaction that wrote connections; when two accounts share a value of a name that
/// would become unique it says which (the caller rolls back). A pool whose set does not change
/// is left alone, unlocked: saving a connection does not hold up the pool's logins.
pub async fn sync_unique_attributes(
    conn: &mut PgConnection,
    pools: &[String],
) -> sqlx::Result<Result<(), SharedValue>> {
    let changed: Vec<String> = sqlx::query_scalar!(
        r#"SELECT p AS "pool!" FROM unnest($1::text[]) AS p
           WHERE ARRAY(SELECT DISTINCT name FROM connections, unnest(unique_attributes) AS name
                       WHERE user_pool_id = p ORDER BY 1)
              <> ARRAY(SELECT name FROM unique_attributes WHERE user_pool_id = p ORDER BY 1)"#,
        pools
    )
    .fetch_all(&mut *conn)
    .await?;
    if changed.is_empty() {
        return Ok(Ok(()));
    }
    // Exclusive against every writer of the pools' accounts' attributes (they share it), taken
    // in the order every lock is taken (see `locks::LockSet`).
    sqlx::query!(
        r#"SELECT count(pg_advisory_xact_lock(k)) AS "locked!"
           FROM (SELECT DISTINCT unique_attributes_lock_key(p) AS k
                 FROM unnest($1::text[]) AS p ORDER BY 1) AS ordered"#,
        &changed
    )
    .fetch_one(&mut *conn)
    .await?;
    for pool in &changed {
        if let Err(shared) = sync_pool(conn, pool).await? {
            return Ok(Err(shared));
        }
    }
    Ok(Ok(()))
}

async fn sync_pool(conn: &mut PgConnection, pool: &str) -> sqlx::Result<Result<(), SharedValue>> {
    let wanted: Vec<String> = sqlx::query_scalar!(
        r#"SELECT DISTINCT name AS "name!" FROM connections, unnest(unique_attributes) AS name
           WHERE user_pool_id = $1"#,
        pool
    )
    .fetch_all(&mut *conn)
    .await?;
    let shared = sqlx::query!(
        r#"SELECT name, array_agg(user_id ORDER BY user_id) AS "users!"
           FROM user_attributes
           WHERE user_pool_id = $1 AND name = ANY($2)
           GROUP BY name, skeleton HAVING count(*) > 1
           ORDER BY name LIMIT 1"#,
        pool,
        &wanted
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = shared {
        return Ok(Err(SharedValue {
            pool: pool.to_owned(),
            name: row.name,
            users: row.users,
        }));
    }
    sqlx::query!(
        r#"WITH gone AS (
             DELETE FROM unique_attributes WHERE user_pool_id = $1 AND NOT name = ANY($2)),
           added AS (
             INSERT INTO unique_attributes (user_pool_id, name)
             SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING)
           UPDATE user_attributes SET is_unique = (name = ANY($2))
           WHERE user_pool_id = $1 AND is_unique <> (name = ANY($2))"#,
        pool,
        &wanted
    )
    .execute(conn)
    .await?;
    Ok(Ok(()))
}

async fn get_for_update(
    conn: &mut PgConnection,
    pool: &str,
    identifier: &str,
) -> sqlx::Result<Option<Stored>> {
    let row = sqlx::query_as!(
        Row,
        r#"SELECT user_pool_id, identifier, display_name, provider, login_mode, association,
                  match_fields, require_verified, default_country_code, binding_ttl_seconds,
                  trust_unverified_accounts, allowed_email_domains, on_profile_change,
                  mapping AS "mapping: _", verified_fields, match_rule, unique_attributes,
                  directory AS "directory: sqlx::types::Json<serde_json::Value>",
                  on_source_removal,
                  removal_guard AS "removal_guard: sqlx::types::Json<serde_json::Value>",
                  settings_version
           FROM connections WHERE user_pool_id = $1 AND identifier = $2 FOR UPDATE"#,
        pool,
        identifier
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Row::into_stored))
}

/// The settings of one version of a connection, as the admin API showed them.
pub async fn version(
    conn: &mut PgConnection,
    pool: &str,
    identifier: &str,
    version: i64,
) -> sqlx::Result<Option<serde_json::Value>> {
    sqlx::query_scalar!(
        r#"SELECT settings FROM connection_versions
           WHERE user_pool_id = $1 AND identifier = $2 AND version = $3"#,
        pool,
        identifier,
        version
    )
    .fetch_optional(conn)
    .await
}

/// The connections among `(pool, identifier)` pairs that exist, readable or not.
pub async fn find_many(
    conn: &mut PgConnection,
    pools: &[String],
    identifiers: &[String],
) -> sqlx::Result<Vec<Stored>> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT c.user_pool_id, c.identifier, c.display_name, c.provider, c.login_mode,
                  c.association, c.match_fields, c.require_verified, c.default_country_code,
                  c.binding_ttl_seconds, c.trust_unverified_accounts, c.allowed_email_domains,
                  c.on_profile_change, c.mapping AS "mapping: _", c.verified_fields,
                  c.match_rule, c.unique_attributes,
                  c.directory AS "directory: sqlx::types::Json<serde_json::Value>",
                  c.on_source_removal,
                  c.removal_guard AS "removal_guard: sqlx::types::Json<serde_json::Value>",
                  c.settings_version
           FROM connections c
           JOIN unnest($1::text[], $2::text[]) AS k(pool, identifier)
             ON c.user_pool_id = k.pool AND c.identifier = k.identifier"#,
        pools,
        identifiers
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Row::into_stored).collect())
}

/// One connection as stored, readable or not.
pub async fn get_stored(
    conn: &mut PgConnection,
    pool: &str,
    identifier: &str,
) -> sqlx::Result<Option<Stored>> {
    let row = sqlx::query_as!(
        Row,
        r#"SELECT user_pool_id, identifier, display_name, provider, login_mode, association,
                  match_fields, require_verified, default_country_code, binding_ttl_seconds,
                  trust_unverified_accounts, allowed_email_domains, on_profile_change,
                  mapping AS "mapping: _", verified_fields, match_rule, unique_attributes,
                  directory AS "directory: sqlx::types::Json<serde_json::Value>",
                  on_source_removal,
                  removal_guard AS "removal_guard: sqlx::types::Json<serde_json::Value>",
                  settings_version
           FROM connections WHERE user_pool_id = $1 AND identifier = $2"#,
        pool,
        identifier
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Row::into_stored))
}

/// Every connection of every pool, readable or not.
pub async fn list(conn: &mut PgConnection) -> sqlx::Result<Vec<Stored>> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT user_pool_id, identifier, display_name, provider, login_mode, association,
                  match_fields, require_verified, default_country_code, binding_ttl_seconds,
                  trust_unverified_accounts, allowed_email_domains, on_profile_change,
                  mapping AS "mapping: _", verified_fields, match_rule, unique_attributes,
                  directory AS "directory: sqlx::types::Json<serde_json::Value>",
                  on_source_removal,
                  removal_guard AS "removal_guard: sqlx::types::Json<serde_json::Value>",
                  settings_version
           FROM connections ORDER BY user_pool_id, identifier"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Row::into_stored).collect())
}
