//! identity-sync: decides which account an external identity belongs to after a login.
//!
//! `domain` holds the pure rules; `pipeline` applies them to batches of events in the database;
//! `amqp`, `db` and `http` are the adapters; `startup` wires them into the running service.

pub mod accounts;
pub mod admin;
pub mod amqp;
pub mod cli;
pub mod db;
pub mod domain;
pub mod failpoint;
pub mod health;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod relay;
pub mod retention;
pub mod retry;
pub mod settings;
pub mod startup;
pub mod telemetry;
pub mod verify;
pub mod worker;
