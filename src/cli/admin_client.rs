//! `identity-sync bindings ...` and `identity-sync users find`: the admin API from the command
//! line (reqwest), printing aligned tables or, with `--json`, the API's JSON.

use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::settings::{Role, Settings};
use print::{identities, print_binding, print_bindings, print_table, text};

mod print;
mod webhooks;

pub use webhooks::{WebhooksCommand, webhooks};

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Admin API address; defaults to http://<admin.listen>.
    #[arg(long, global = true, env = "IDSYNC_API_URL", value_name = "URL")]
    pub api: Option<String>,
    /// Bearer token; defaults to the first admin token of the configuration.
    #[arg(
        long,
        global = true,
        env = "IDSYNC_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BindingsCommand {
    /// List bindings, newest first (pending ones by default).
    List {
        #[arg(long)]
        pool: Option<String>,
        /// pending, resolved, expired or all.
        #[arg(long, default_value = "pending")]
        status: String,
        #[arg(long)]
        connection: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one binding with its candidates.
    Show {
        /// The binding's id (a UUID).
        id: uuid::Uuid,
    },
    /// Resolve a pending binding.
    Resolve {
        /// The binding's id (a UUID).
        id: uuid::Uuid,
        /// Link the identity to this account.
        #[arg(long, value_name = "USER_ID", group = "action")]
        link: Option<uuid::Uuid>,
        /// Create a new account with this identity.
        #[arg(long, group = "action")]
        create: bool,
        /// Reject the identity.
        #[arg(long, group = "action")]
        reject: bool,
        /// Why (with --reject).
        #[arg(long, requires = "reject")]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DecisionsCommand {
    /// Show why a login was decided as it was: its fields, candidates and the settings used.
    Show {
        /// The login's CloudEvents id.
        event_id: String,
        /// The login's CloudEvents source, needed when several sources used the same id.
        #[arg(long)]
        source: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Preview a change of a connection's settings on its logins of a window: each decided again
    /// as a first login under the current and the proposed settings (changes nothing).
    Simulate {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        connection: String,
        /// A proposed setting, over the connection's current ones: `association=field_matching`,
        /// `match_fields=email,phone`, `require_verified=false`, `mapping.email={attributes.mail}`.
        /// Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// How far back to take logins.
        #[arg(long, default_value = "30d")]
        since: String,
    },
}

#[derive(Debug, Args)]
pub struct FindArgs {
    #[arg(long)]
    pub pool: String,
    #[arg(long, group = "field", required = true)]
    pub email: Option<String>,
    #[arg(long, group = "field")]
    pub phone: Option<String>,
    #[arg(long, group = "field")]
    pub username: Option<String>,
    /// An attribute's name, with --value: every account holding the value.
    #[arg(long, group = "field", requires = "value")]
    pub attribute: Option<String>,
    #[arg(long, requires = "attribute")]
    pub value: Option<String>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(args: &ApiArgs, settings: &Settings) -> anyhow::Result<Self> {
        let base = match &args.api {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let listen = settings.admin.listen.replace("0.0.0.0", "127.0.0.1");
                if listen.ends_with(":0") {
                    bail!("admin.listen picks a random port: pass --api URL");
                }
                format!("http://{listen}")
            }
        };
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let tokens = &settings.admin.tokens;
                let chosen = tokens
                    .iter()
                    .find(|t| t.role == Role::Admin)
                    .or(tokens.first());
                chosen
                    .and_then(|t| t.secret().ok())
                    .map(|s| s.expose_secret().to_owned())
                    .ok_or_else(|| anyhow!("no token: pass --token or set IDSYNC_ADMIN_TOKEN"))?
            }
        };
        Ok(Self {
            http: reqwest::Client::new(),
            base,
            token,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling the admin API at {}", self.base))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let code = value
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("error");
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("");
        Err(ApiFailure {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
        }
        .into())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{} {code}: {message}", status.as_u16())]
struct ApiFailure {
    status: StatusCode,
    code: String,
    message: String,
}

pub async fn bindings(
    command: BindingsCommand,
    args: ApiArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args, settings)?;
    let value = match command {
        BindingsCommand::List {
            pool,
            status,
            connection,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if status != "all" {
                query.push(("status", status));
            }
            if let Some(pool) = pool {
                query.push(("user_pool_id", pool));
            }
            if let Some(connection) = connection {
                query.push(("connection", connection));
            }
            let page = client
                .call(Method::GET, "/v1/bindings", &query, None)
                .await?;
            if !args.json {
                print_bindings(&page);
                return Ok(ExitCode::SUCCESS);
            }
            page
        }
        BindingsCommand::Show { id } => {
            client
                .call(Method::GET, &format!("/v1/bindings/{id}"), &[], None)
                .await?
        }
        BindingsCommand::Resolve {
            id,
            link,
            create,
            reject,
            reason,
        } => {
            let body = match (link, create, reject) {
                (Some(user_id), _, _) => json!({"action": "link", "user_id": user_id}),
                (None, true, _) => json!({"action": "create"}),
                (None, false, true) => json!({"action": "reject", "reason": reason}),
                _ => bail!("say how to resolve: --link USER_ID, --create or --reject"),
            };
            client
                .call(
                    Method::POST,
                    &format!("/v1/bindings/{id}/resolve"),
                    &[],
                    Some(body),
                )
                .await?
        }
    };
    if args.json {
        println!("{value}");
    } else {
        print_binding(&value);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn connections(
    command: super::ConnectionsCommand,
    args: ApiArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let path = match command {
        // A configuration file's, checked without the API.
        super::ConnectionsCommand::Check(check) => return super::check::run(check).await,
        super::ConnectionsCommand::List => "/v1/connections".to_owned(),
        super::ConnectionsCommand::Show { pool, connection } => {
            format!(
                "/v1/connections/{}/{}",
                segment(&pool),
                segment(&connection)
            )
        }
    };
    let client = Client::new(&args, settings)?;
    let value = client.call(Method::GET, &path, &[], None).await?;
    if args.json {
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    let items = match value.get("items") {
        Some(items) => items.as_array().cloned().unwrap_or_default(),
        None => vec![value],
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            vec![
                text(&c["user_pool_id"]),
                text(&c["identifier"]),
                text(&c["provider"]),
                text(&c["login_mode"]),
                text(&c["association"]),
                text(&c["settings_version"]),
                c.get("problem").map_or_else(|| "ok".to_owned(), text),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no connections");
        return Ok(ExitCode::SUCCESS);
    }
    print_table(
        &[
            "POOL",
            "CONNECTION",
            "PROVIDER",
            "LOGIN MODE",
            "ASSOCIATION",
            "VERSION",
            "PROBLEM",
        ],
        rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes one path segment: an id chosen by a source may hold `/`, `?` or `..`.
fn segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn decisions(
    command: DecisionsCommand,
    args: ApiArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args, settings)?;
    let DecisionsCommand::Show { event_id, source } = command;
    let query: Vec<(&str, String)> = source.into_iter().map(|s| ("source", s)).collect();
    let decision = client
        .call(
            Method::GET,
            &format!("/v1/decisions/{}", segment(&event_id)),
            &query,
            None,
        )
        .await?;
    if args.json {
        println!("{decision}");
        return Ok(ExitCode::SUCCESS);
    }
    for key in [
        "event_id",
        "source",
        "decided_at",
        "user_pool_id",
        "connection",
        "outcome",
        "reason",
        "user_id",
        "binding_id",
        "settings_version",
    ] {
        println!("{:<18} {}", format!("{key}:"), text(&decision[key]));
    }
    let rows = |key: &str, columns: &[&str]| -> Vec<Vec<String>> {
        decision[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| columns.iter().map(|c| text(&item[*c])).collect())
                    .collect()
            })
            .unwrap_or_default()
    };
    println!("fields:");
    print_table(
        &["FIELD", "VALUE", "USABLE", "WHY NOT"],
        rows("fields", &["field", "value", "usable", "why_not"]),
    );
    println!("candidates:");
    print_table(
        &["USER", "MATCHED ON", "SET ASIDE"],
        rows("candidates", &["user_id", "matched_on", "set_aside"]),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn policy(
    command: PolicyCommand,
    args: ApiArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Simulate {
        pool,
        connection,
        set,
        since,
    } = command;
    let client = Client::new(&args, settings)?;
    let path = format!(
        "/v1/connections/{}/{}",
        segment(&pool),
        segment(&connection)
    );
    let view = client.call(Method::GET, &path, &[], None).await?;
    let mut proposed = proposed_from_view(view);
    for assignment in &set {
        apply_setting(&mut proposed, assignment)?;
    }
    let body = json!({"connection": proposed, "since": since});
    let result = client
        .call(Method::POST, &format!("{path}/simulate"), &[], Some(body))
        .await?;
    if args.json {
        println!("{result}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<&Value> = result["rows"].as_array().into_iter().flatten().collect();
    let count = |r: &Value| r["count"].as_u64().unwrap_or(0);
    let changed: u64 = rows
        .iter()
        .filter(|r| r["from"] != r["to"])
        .map(|r| count(r))
        .sum();
    println!(
        "{} logins since {} (latest per identity), {changed} would be decided otherwise",
        text(&result["logins"]),
        text(&result["since"])
    );
    print_table(
        &["CURRENT", "PROPOSED", "COUNT", "EXAMPLES"],
        rows.iter()
            .map(|r| {
                let examples: Vec<String> = r["examples"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                vec![
                    text(&r["from"]),
                    text(&r["to"]),
                    count(r).to_string(),
                    examples.join(", "),
                ]
            })
            .collect(),
    );
    Ok(ExitCode::SUCCESS)
}

/// A connection's view as a `PUT` body: without what the API computes.
fn proposed_from_view(mut view: Value) -> Value {
    if let Some(map) = view.as_object_mut() {
        for computed in [
            "effective_mapping",
            "settings_version",
            "problem",
            "directory_state",
            "held_removals",
        ] {
            map.remove(computed);
        }
    }
    view
}

/// The settings `--set` takes, by the type of their value.
const TEXT_SETTINGS: &[&str] = &[
    "display_name",
    "provider",
    "login_mode",
    "association",
    "match_rule",
    "default_country_code",
    "binding_ttl",
    "on_profile_change",
    "on_source_removal",
];
const BOOL_SETTINGS: &[&str] = &["require_verified", "trust_unverified_accounts"];
const LIST_SETTINGS: &[&str] = &[
    "match_fields",
    "allowed_email_domains",
    "unique_attributes",
    "verified_fields",
];

/// Applies one `KEY=VALUE` to a proposed connection. Lists are comma-separated (or JSON arrays),
/// `mapping.<target>` sets one template and `mapping` takes a JSON object.
fn apply_setting(proposed: &mut Value, assignment: &str) -> anyhow::Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| anyhow!("--set {assignment:?}: expected KEY=VALUE"))?;
    let key = key.trim();
    let value = if let Some(target) = key.strip_prefix("mapping.") {
        let mapping = &mut proposed["mapping"];
        if !mapping.is_object() {
            *mapping = json!({});
        }
        mapping[target] = Value::String(raw.to_owned());
        return Ok(());
    } else if key == "mapping" {
        let mapping: Value = serde_json::from_str(raw)
            .with_context(|| format!("--set mapping: expected a JSON object, got {raw:?}"))?;
        if !mapping.is_object() {
            bail!("--set mapping: expected a JSON object, got {raw:?}");
        }
        mapping
    } else if TEXT_SETTINGS.contains(&key) {
        Value::String(raw.to_owned())
    } else if BOOL_SETTINGS.contains(&key) {
        match raw.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => bail!("--set {key}: expected true or false, got {other:?}"),
        }
    } else if LIST_SETTINGS.contains(&key) {
        match serde_json::from_str::<Value>(raw) {
            Ok(list @ Value::Array(_)) => list,
            _ => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
        }
    } else {
        let mut known: Vec<&str> = [TEXT_SETTINGS, BOOL_SETTINGS, LIST_SETTINGS].concat();
        known.extend(["mapping", "mapping.<target>"]);
        bail!("--set {key:?}: not a setting; one of {}", known.join(", "));
    };
    proposed[key] = value;
    Ok(())
}

pub async fn find_users(
    find: FindArgs,
    args: ApiArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args, settings)?;
    let mut query = vec![("user_pool_id", find.pool)];
    if let Some(v) = find.email {
        query.push(("email", v));
    }
    if let Some(v) = find.phone {
        query.push(("phone", v));
    }
    if let Some(v) = find.username {
        query.push(("username", v));
    }
    if let (Some(name), Some(value)) = (find.attribute, find.value) {
        query.push(("attribute", name));
        query.push(("value", value));
    }
    let page = client.call(Method::GET, "/v1/users", &query, None).await?;
    if args.json {
        println!("{page}");
        return Ok(ExitCode::SUCCESS);
    }
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no such user");
        return Ok(ExitCode::from(1));
    }
    let rows = items
        .iter()
        .map(|u| {
            vec![
                text(&u["id"]),
                text(&u["email"]),
                text(&u["phone"]),
                text(&u["username"]),
                text(&u["name"]),
                identities(&u["identities"]),
            ]
        })
        .collect();
    print_table(
        &["ID", "EMAIL", "PHONE", "USERNAME", "NAME", "IDENTITIES"],
        rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// Which of a connection's held removals (`directory held`, `release`, `discard`).
#[derive(Debug, Args)]
pub struct HeldArgs {
    #[arg(long)]
    pub pool: String,
    #[arg(long)]
    pub connection: String,
    /// Only these identities (repeatable); every held removal of the connection when absent.
    #[arg(long = "external-id", value_name = "ID")]
    pub external_ids: Vec<String>,
}

/// What to do with held removals.
#[derive(Debug, Clone, Copy)]
pub enum HeldAction {
    List,
    Release,
    Discard,
}

/// `directory held|release|discard`: the removals a connection's guard holds.
pub async fn held_removals(
    action: HeldAction,
    held: HeldArgs,
    args: ApiArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args, settings)?;
    let base = format!(
        "/v1/connections/{}/{}/held-removals",
        segment(&held.pool),
        segment(&held.connection)
    );
    let ids = (!held.external_ids.is_empty()).then_some(&held.external_ids);
    let page = match action {
        HeldAction::List => client.call(Method::GET, &base, &[], None).await?,
        HeldAction::Release => {
            let path = format!("{base}/release");
            let body = json!({ "external_ids": ids });
            client.call(Method::POST, &path, &[], Some(body)).await?
        }
        HeldAction::Discard => {
            let path = format!("{base}/discard");
            let body = json!({ "external_ids": ids });
            client.call(Method::POST, &path, &[], Some(body)).await?
        }
    };
    if args.json {
        println!("{page}");
        return Ok(ExitCode::SUCCESS);
    }
    let items = page["items"].as_array().cloned().unwrap_or_default();
    match action {
        HeldAction::Release => {
            let rows = items
                .iter()
                .map(|r| {
                    vec![
                        text(&r["external_id"]),
                        text(&r["outcome"]),
                        text(&r["code"]),
                    ]
                })
                .collect();
            print_table(&["EXTERNAL_ID", "OUTCOME", "CODE"], rows);
            println!("{} released", items.len());
        }
        HeldAction::List | HeldAction::Discard => {
            let rows = items
                .iter()
                .map(|r| {
                    vec![
                        text(&r["external_id"]),
                        text(&r["held_at"]),
                        text(&r["source_event"]),
                        text(&r["event_id"]),
                    ]
                })
                .collect();
            print_table(
                &["EXTERNAL_ID", "HELD_AT", "SOURCE_EVENT", "EVENT_ID"],
                rows,
            );
            let verb = match action {
                HeldAction::Discard => "discarded",
                _ => "held",
            };
            println!("{} {verb}", items.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `users reactivate`: a suspended account may be linked to and logged into again.
pub async fn reactivate(
    id: uuid::Uuid,
    reason: Option<String>,
    args: ApiArgs,
    settings: &Settings,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args, settings)?;
    let user = client
        .call(
            Method::POST,
            &format!("/v1/users/{id}/reactivate"),
            &[],
            Some(json!({ "reason": reason })),
        )
        .await?;
    if args.json {
        println!("{user}");
    } else {
        println!("user {} is active again", text(&user["id"]));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
