//! Integration tests against the real PostgreSQL and RabbitMQ of the machine. Each test has its
//! own database and vhost (see the `idsync-test-support` crate), so they run in parallel and leave nothing behind.

mod admin;
mod admin_reads;
mod api_fuzz;
mod cli;
mod commands;
mod concurrency;
mod console;
mod content_modes;
mod crash;
mod dead_letters;
mod dedupe;
mod directory;
mod directory_api;
mod drift;
mod guarantees;
mod hostile;
mod http;
mod leavers;
mod mapping;
mod ordering;
mod outcomes;
mod publishers;
mod reliability;
mod simulation;
mod sources;
mod system_faults;
mod trust;
mod verify;
mod webhooks;
