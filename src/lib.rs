//! identity-sync: decides which account an external identity belongs to after a login.
//!
//! `domain` holds the pure rules; `pipeline` applies them to batches of events in the database;
//! `amqp`, `db` and `http` are the adapters; `startup` wires them into the running service.

pub mod accounts;
pub mod admin;
pub mod amqp;
pub mod bulk;
pub mod cli;
pub mod db;
pub mod directory;
pub mod domain;
#[cfg(feature = "failpoints")]
pub(crate) mod failpoint;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod pipeline;
pub(crate) mod relay;
pub(crate) mod retention;
pub(crate) mod retry;
pub mod settings;
pub mod startup;
pub mod telemetry;
pub mod verify;
pub mod webhooks;
pub(crate) mod worker;
