//! What admins (and the platform) do outside the login flow: resolve pending bindings, look up,
//! create and unlink accounts, manage connections, read the audit log, and expire overdue
//! bindings. Every write takes the same advisory locks as the worker, commits its rows, its
//! outbox events and its audit record in one transaction, and wakes the relay.

pub mod bindings;
mod commands;
pub mod connections;
pub mod decisions;
pub mod expiry;
pub mod leavers;
pub mod simulation;
pub mod user_update;
pub mod users;
pub mod views;
pub mod webhooks;

use crate::{db::outbox::OutboxRow, relay::Handoff};
use sqlx::PgPool;
use uuid::Uuid;

/// Why an admin operation did not happen. The HTTP layer maps each kind to a status code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409: the operation conflicts with the current state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 422: the request is well-formed but names something unacceptable.
    #[error("{message}")]
    Invalid {
        code: &'static str,
        field: Option<&'static str>,
        message: String,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl AdminError {
    /// The stable code of the error body, and of a command's `refused` reply.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Conflict { code, .. } | Self::Invalid { code, .. } => code,
            Self::Database(_) => "internal",
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(
        code: &'static str,
        field: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            code,
            field,
            message: message.into(),
        }
    }
}

/// What an operation inside a caller's transaction did: its result (a refusal may come after
/// writes that must be committed anyway), and the outbox rows to hand to the relay once the
/// caller commits.
pub(crate) struct Applied<T> {
    pub result: Result<T, AdminError>,
    pub published: Vec<OutboxRow>,
}

impl<T> Applied<T> {
    /// The same, with the result's value mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Applied<U> {
        Applied {
            result: self.result.map(f),
            published: self.published,
        }
    }
}

/// Most items a list returns per page.
pub const MAX_PAGE: i64 = 200;

/// A page size as asked: 1 to `MAX_PAGE`; anything else is refused rather than silently changed.
pub fn page_limit(limit: i64) -> Result<i64, AdminError> {
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(AdminError::invalid(
            "invalid_query",
            Some("limit"),
            format!("limit must be from 1 to {MAX_PAGE}, got {limit}"),
        ))
    }
}

/// Who is acting: the name of the admin token, recorded in the audit log and in events, and its
/// role.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub role: crate::settings::Role,
}

impl Actor {
    /// Viewers see emails and phone numbers masked (contract section 5).
    pub fn sees_masked(&self) -> bool {
        self.role == crate::settings::Role::Viewer
    }
}

#[derive(Clone)]
pub struct Admin {
    pub(crate) pool: PgPool,
    origin: Uuid,
    relay: Handoff,
    /// The process's directory clients, whose state the connection views show.
    directories: Option<crate::directory::Directories>,
    /// The webhook client and settings, for the API's endpoint calls.
    webhooks: Option<webhooks::WebhookTools>,
}

impl Admin {
    pub fn new(pool: PgPool, origin: Uuid, relay: Handoff) -> Self {
        Self {
            pool,
            origin,
            relay,
            directories: None,
            webhooks: None,
        }
    }

    /// Serves the webhook endpoints' calls with `tools`.
    pub fn with_webhooks(mut self, tools: webhooks::WebhookTools) -> Self {
        self.webhooks = Some(tools);
        self
    }

    /// Shows the state of `directories` in the connection views.
    pub fn with_directories(mut self, directories: crate::directory::Directories) -> Self {
        self.directories = Some(directories);
        self
    }

    /// The process's id, which its outbox rows carry.
    pub fn origin(&self) -> Uuid {
        self.origin
    }

    /// Commits `tx` and hands the outbox rows it wrote to the relay.
    async fn commit(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Postgres>,
        rows: Vec<OutboxRow>,
    ) -> sqlx::Result<()> {
        self.relay.commit(tx, rows).await
    }
}
