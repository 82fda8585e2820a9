//! Webhook endpoints (contract section 12): create, read, change, delete, rotate the secret, read
//! the delivery log, retry one delivery, replay since a time, ping. Every change is audited;
//! secrets are shown only by the calls that make them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Actor, Admin, AdminError, views::Page};
use crate::db::{audit, webhooks as db, webhooks::EndpointRow};
use crate::domain::webhooks::{MAX_DESCRIPTION, TypeFilter, new_secret, parse_url};
use crate::domain::{TimeError, time_or_age};
use crate::webhooks::{Sender, ping_body};

/// What the admin API needs to manage endpoints: the delivering client (for creation's address
/// check and the ping) and how long a rotated-out secret keeps signing.
#[derive(Clone)]
pub struct WebhookTools {
    pub sender: Sender,
    pub rotation_overlap: std::time::Duration,
}

/// An endpoint, never with its secrets.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub user_pool_id: String,
    /// For viewers, without its query string's values (a receiver's token may be there).
    pub url: String,
    /// Routing-key patterns: `*` one word, `#` any words.
    pub event_types: Vec<String>,
    pub description: String,
    pub enabled: bool,
    /// Why it is disabled: `gone` (it answered 410), `failing` (every attempt failed for
    /// `webhooks.disable_after`) or `admin`.
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed; null once one succeeds.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the previous secret signs beside the current one, after a rotation.
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An endpoint as the audit log records it: its URL without query values, which the log's
/// readers (viewers too) need not see.
fn audited(row: &EndpointRow) -> serde_json::Value {
    let mut view = WebhookView::of(row);
    view.url = without_query_values(&view.url);
    serde_json::to_value(view).expect("serialises")
}

impl WebhookView {
    fn of(row: &EndpointRow) -> Self {
        Self {
            id: row.id,
            user_pool_id: row.user_pool_id.clone(),
            url: row.url.clone(),
            event_types: row.event_types.clone(),
            description: row.description.clone(),
            enabled: row.enabled,
            disabled_reason: row.disabled_reason.clone(),
            failing_since: row.failing_since,
            previous_secret_until: row
                .previous_secret_until
                .filter(|until| *until > Utc::now()),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    /// As `actor` may see it.
    pub fn seen_by(mut self, actor: &Actor) -> Self {
        if actor.sees_masked() {
            self.url = without_query_values(&self.url);
        }
        self
    }
}

fn without_query_values(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.query().is_some() => {
            let keys: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
            parsed.set_query(None);
            let mut pairs = parsed.query_pairs_mut();
            for key in keys {
                pairs.append_pair(&key, "***");
            }
            drop(pairs);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// An endpoint with its secret: the answer to a creation or a rotation, the only time the secret
/// is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_` and the base64 of 32 random bytes: the key of the signatures.
    pub secret: String,
}

/// One delivery of an event to an endpoint, with its attempts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    /// The event's CloudEvents `id`, also its `webhook-id`.
    pub event_id: Uuid,
    pub event_type: String,
    /// The event's subject: its deliveries to one endpoint go in order.
    pub subject: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub state: String,
    pub attempts: i32,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Every attempt, oldest first.
    pub log: Vec<AttemptView>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// The HTTP status; null when no answer came.
    pub status: Option<i32>,
    pub latency_ms: i32,
    /// The first bytes of the answer.
    pub response: String,
    /// Why no answer came (refused address, connection error, timeout).
    pub error: Option<String>,
}

/// What a replay queued.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplayView {
    /// Events queued again (one already waiting to be delivered is not counted).
    pub queued: u64,
    pub since: DateTime<Utc>,
}

/// What a ping got.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PingView {
    /// The ping's `webhook-id`.
    pub id: Uuid,
    /// The receiver answered 2xx.
    pub delivered: bool,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub response: String,
    pub error: Option<String>,
}

/// A change of an endpoint: absent fields stay.
#[derive(Debug, Default, Clone)]
pub struct WebhookChange {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> AdminError {
    AdminError::invalid("invalid_field", Some(field), message)
}

fn not_found(id: Uuid) -> AdminError {
    AdminError::NotFound(format!("no webhook {id}"))
}

fn check_description(description: &str) -> Result<(), AdminError> {
    if description.len() > MAX_DESCRIPTION || description.chars().any(char::is_control) {
        return Err(invalid(
            "description",
            format!(
                "description must be at most {MAX_DESCRIPTION} bytes, without control characters"
            ),
        ));
    }
    Ok(())
}

/// `since` as the API takes it: an RFC 3339 time, or a duration back from now (`1h`).
pub fn parse_since(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, AdminError> {
    let since = time_or_age(raw, now).map_err(|e| match e {
        TimeError::NotATime => invalid(
            "since",
            format!("since must be an RFC 3339 time or a duration such as \"1h\", got {raw:?}"),
        ),
        TimeError::TooFarBack => invalid("since", "since is too far back"),
    })?;
    if since > now {
        return Err(invalid("since", "since is in the future"));
    }
    Ok(since)
}

impl Admin {
    fn webhook_tools(&self) -> Result<&WebhookTools, AdminError> {
        self.webhooks.as_ref().ok_or_else(|| {
            AdminError::conflict("webhooks_unavailable", "webhooks are not served here")
        })
    }

    async fn checked_url(&self, raw: &str) -> Result<String, AdminError> {
        let url = parse_url(raw).map_err(|e| invalid("url", e))?;
        self.webhook_tools()?
            .sender
            .check_url(&url)
            .await
            .map_err(|e| invalid("url", format!("url: {e}")))?;
        Ok(url.to_string())
    }

    pub async fn create_webhook(
        &self,
        user_pool_id: &str,
        url: &str,
        event_types: Option<Vec<String>>,
        description: Option<String>,
        actor: &Actor,
    ) -> Result<WebhookWithSecret, AdminError> {
        if user_pool_id.is_empty()
            || user_pool_id.len() > 128
            || user_pool_id.chars().any(char::is_control)
        {
            return Err(invalid(
                "user_pool_id",
                "user_pool_id must be 1 to 128 characters",
            ));
        }
        let url = self.checked_url(url).await?;
        let filter = match event_types {
            Some(patterns) => {
                TypeFilter::parse(&patterns).map_err(|e| invalid("event_types", e))?
            }
            None => TypeFilter::everything(),
        };
        let description = description.unwrap_or_default();
        check_description(&description)?;
        let secret = new_secret();
        let mut tx = self.pool.begin().await?;
        let row = db::insert(
            &mut tx,
            &db::NewEndpoint {
                id: Uuid::now_v7(),
                user_pool_id,
                url: &url,
                event_types: filter.patterns(),
                type_regex: &filter.regex(),
                description: &description,
                secret: &secret,
            },
        )
        .await?;
        let view = WebhookView::of(&row);
        audit::record(
            &mut tx,
            &actor.name,
            "webhook.create",
            &format!("webhook/{}", row.id),
            None,
            Some(audited(&row)),
        )
        .await?;
        tx.commit().await?;
        Ok(WebhookWithSecret {
            webhook: view,
            secret,
        })
    }

    pub async fn list_webhooks(&self, pool: Option<&str>) -> Result<Vec<WebhookView>, AdminError> {
        let mut conn = self.pool.acquire().await?;
        Ok(db::list(&mut conn, pool)
            .await?
            .iter()
            .map(WebhookView::of)
            .collect())
    }

    pub async fn get_webhook(&self, id: Uuid) -> Result<WebhookView, AdminError> {
        let mut conn = self.pool.acquire().await?;
        let row = db::get(&mut conn, id, false)
            .await?
            .ok_or_else(|| not_found(id))?;
        Ok(WebhookView::of(&row))
    }

    pub async fn update_webhook(
        &self,
        id: Uuid,
        change: WebhookChange,
        actor: &Actor,
    ) -> Result<WebhookView, AdminError> {
        let url = match &change.url {
            Some(raw) => Some(self.checked_url(raw).await?),
            None => None,
        };
        let filter = match &change.event_types {
            Some(patterns) => {
                Some(TypeFilter::parse(patterns).map_err(|e| invalid("event_types", e))?)
            }
            None => None,
        };
        if let Some(description) = &change.description {
            check_description(description)?;
        }
        let mut tx = self.pool.begin().await?;
        let before = db::get(&mut tx, id, true)
            .await?
            .ok_or_else(|| not_found(id))?;
        let mut after = before.clone();
        if let Some(url) = url {
            after.url = url;
        }
        let filter = match filter {
            Some(filter) => filter,
            None => {
                TypeFilter::parse(&before.event_types).map_err(|e| invalid("event_types", e))?
            }
        };
        after.event_types = filter.patterns().to_vec();
        if let Some(description) = change.description {
            after.description = description;
        }
        if let Some(enabled) = change.enabled {
            if enabled != before.enabled {
                after.disabled_reason = (!enabled).then(|| "admin".to_owned());
            }
            after.enabled = enabled;
        }
        let row = db::update(&mut tx, &after, &filter.regex()).await?;
        let view = WebhookView::of(&row);
        audit::record(
            &mut tx,
            &actor.name,
            "webhook.update",
            &format!("webhook/{id}"),
            Some(audited(&before)),
            Some(audited(&row)),
        )
        .await?;
        tx.commit().await?;
        Ok(view)
    }

    pub async fn delete_webhook(&self, id: Uuid, actor: &Actor) -> Result<(), AdminError> {
        let mut tx = self.pool.begin().await?;
        let before = db::get(&mut tx, id, true)
            .await?
            .ok_or_else(|| not_found(id))?;
        db::delete(&mut tx, id).await?;
        audit::record(
            &mut tx,
            &actor.name,
            "webhook.delete",
            &format!("webhook/{id}"),
            Some(audited(&before)),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn rotate_webhook_secret(
        &self,
        id: Uuid,
        actor: &Actor,
    ) -> Result<WebhookWithSecret, AdminError> {
        let overlap = chrono::Duration::from_std(self.webhook_tools()?.rotation_overlap)
            .unwrap_or(chrono::Duration::MAX);
        let until = Utc::now()
            .checked_add_signed(overlap)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let secret = new_secret();
        let mut tx = self.pool.begin().await?;
        let before = db::get(&mut tx, id, true)
            .await?
            .ok_or_else(|| not_found(id))?;
        let row = db::rotate(&mut tx, id, &secret, until)
            .await?
            .ok_or_else(|| not_found(id))?;
        let view = WebhookView::of(&row);
        audit::record(
            &mut tx,
            &actor.name,
            "webhook.rotate_secret",
            &format!("webhook/{id}"),
            Some(audited(&before)),
            Some(audited(&row)),
        )
        .await?;
        tx.commit().await?;
        Ok(WebhookWithSecret {
            webhook: view,
            secret,
        })
    }

    pub async fn webhook_deliveries(
        &self,
        id: Uuid,
        state: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Page<DeliveryView>, AdminError> {
        let limit = super::page_limit(limit)?;
        if let Some(state) = state
            && !["pending", "delivered", "failed"].contains(&state)
        {
            return Err(AdminError::invalid(
                "invalid_query",
                Some("state"),
                "state must be pending, delivered or failed",
            ));
        }
        let mut conn = self.pool.acquire().await?;
        db::get(&mut conn, id, false)
            .await?
            .ok_or_else(|| not_found(id))?;
        let mut rows = db::deliveries(&mut conn, id, state, before, limit + 1).await?;
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.id.to_string())
        } else {
            None
        };
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let attempts = db::attempts(&mut conn, &ids).await?;
        let items = rows
            .into_iter()
            .map(|r| DeliveryView {
                log: attempts
                    .iter()
                    .filter(|a| a.delivery_id == r.id)
                    .map(|a| AttemptView {
                        attempt: a.attempt,
                        at: a.at,
                        status: a.status,
                        latency_ms: a.latency_ms,
                        response: a.response.clone(),
                        error: a.error.clone(),
                    })
                    .collect(),
                next_attempt_at: (r.state == "pending").then_some(r.next_attempt_at),
                id: r.id,
                event_id: r.event_id,
                event_type: r.event_type,
                subject: r.subject,
                state: r.state,
                attempts: r.attempts,
                last_status: r.last_status,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
            .collect();
        Ok(Page { items, next_cursor })
    }

    pub async fn retry_webhook_delivery(
        &self,
        id: Uuid,
        delivery: i64,
        actor: &Actor,
    ) -> Result<(), AdminError> {
        let mut tx = self.pool.begin().await?;
        if !db::retry(&mut tx, id, delivery).await? {
            return Err(AdminError::NotFound(format!(
                "webhook {id} has no delivery {delivery}"
            )));
        }
        audit::record(
            &mut tx,
            &actor.name,
            "webhook.retry",
            &format!("webhook/{id}/deliveries/{delivery}"),
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn replay_webhook(
        &self,
        id: Uuid,
        since: &str,
        actor: &Actor,
    ) -> Result<ReplayView, AdminError> {
        let since = parse_since(since, Utc::now())?;
        let mut tx = self.pool.begin().await?;
        db::get(&mut tx, id, true)
            .await?
            .ok_or_else(|| not_found(id))?;
        let queued = db::replay(&mut tx, id, since).await?;
        let view = ReplayView { queued, since };
        audit::record(
            &mut tx,
            &actor.name,
            "webhook.replay",
            &format!("webhook/{id}"),
            None,
            Some(serde_json::to_value(&view).expect("serialises")),
        )
        .await?;
        tx.commit().await?;
        Ok(view)
    }

    pub async fn ping_webhook(&self, id: Uuid) -> Result<PingView, AdminError> {
        let tools = self.webhook_tools()?;
        let row = {
            let mut conn = self.pool.acquire().await?;
            db::get(&mut conn, id, false)
                .await?
                .ok_or_else(|| not_found(id))?
        };
        let (ping_id, body) = ping_body(&row);
        let secrets = row.signing_secrets(Utc::now());
        let answer = tools
            .sender
            .send(&row.url, &ping_id.to_string(), body, &secrets)
            .await;
        Ok(PingView {
            id: ping_id,
            delivered: answer.delivered(),
            status: answer.status,
            latency_ms: answer.latency.as_millis() as u64,
            response: answer.response,
            error: answer.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_back() {
        let now = Utc::now();
        assert_eq!(
            parse_since("1h", now).unwrap(),
            now - chrono::Duration::hours(1)
        );
        let at = "2026-12-01T00:00:00Z";
        assert_eq!(
            parse_since(at, now).unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("2999-01-01T00:00:00Z", now).is_err());
        assert!(parse_since("100000000000y", now).is_err());
    }

    #[test]
    fn viewers_see_no_query_values() {
        assert_eq!(
            without_query_values("https://h.example/in?token=abc&x=1"),
            "https://h.example/in?token=***&x=***"
        );
        assert_eq!(
            without_query_values("https://h.example/in"),
            "https://h.example/in"
        );
    }
}
