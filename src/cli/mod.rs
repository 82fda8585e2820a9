//! The command line: `run`, `migrate`, `verify`, `users`, `send-login`, `send-command`,
//! `events`, `decisions`, `connections`, `policy`, `bindings` and `webhooks`.

mod admin_client;
mod check;
mod directory;
mod export;
mod import;
mod replay;
mod round_trip;
mod send_command;
mod send_login;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{db, settings::Settings, startup::Application};

#[derive(Debug, Parser)]
#[command(
    name = "identity-sync",
    version,
    about = "Links external identities to accounts after each login"
)]
pub struct Cli {
    /// TOML configuration file (defaults, then this file, then IDSYNC__SECTION__KEY variables).
    #[arg(long, global = true, value_name = "FILE", env = "IDSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker, the outbox relay and the HTTP side until SIGTERM or SIGINT.
    Run,
    /// Create the database if needed and apply the migrations.
    Migrate,
    /// Check every invariant the contract promises over the database (read-only); exit 1 on any
    /// violation.
    Verify,
    /// Manage accounts.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Publish one login.completed event and print the decision and the events it caused.
    SendLogin(send_login::SendLoginArgs),
    /// Publish one command (binding.resolve or user.unlink) as the platform would, and print
    /// the reply and the events that followed.
    SendCommand(send_command::SendCommandArgs),
    /// Stored outbound events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Why a login was decided as it was, through the admin API.
    Decisions {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        #[command(subcommand)]
        command: admin_client::DecisionsCommand,
    },
    /// Connections: as configured (`check`), or as stored, through the admin API (`list`,
    /// `show`).
    Connections {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Preview a change of a connection's settings, through the admin API.
    Policy {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        #[command(subcommand)]
        command: admin_client::PolicyCommand,
    },
    /// What a connection's directory (DingTalk, WeCom, Feishu) says about a person; the
    /// removals its guard holds.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Pending bindings, through the admin API.
    Bindings {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        #[command(subcommand)]
        command: admin_client::BindingsCommand,
    },
    /// Webhook endpoints and their deliveries, through the admin API.
    Webhooks {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        #[command(subcommand)]
        command: admin_client::WebhooksCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Check the [[connections]] of a configuration file (every problem, naming the connection
    /// and the key), and show what their mappings make of a sample profile.
    Check(check::CheckArgs),
    /// Every stored connection, through the admin API, with the problem of any whose stored
    /// settings no longer validate (its logins wait until it is mended).
    List,
    /// One stored connection's settings, through the admin API.
    Show {
        #[arg(long)]
        pool: String,
        /// The connection's identifier.
        connection: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Ask a stored connection's directory about one person (a call to the source's API, not
    /// cached): print the record and what the connection's mapping makes of it.
    Fetch(directory::FetchArgs),
    /// The removals a connection's guard holds, through the admin API.
    Held {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        #[command(flatten)]
        held: admin_client::HeldArgs,
    },
    /// Apply held removals (all, or --external-id ...) as the connection says now.
    Release {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        #[command(flatten)]
        held: admin_client::HeldArgs,
    },
    /// Drop held removals (all, or --external-id ...) without applying them.
    Discard {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        #[command(flatten)]
        held: admin_client::HeldArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish stored events again, with their original ids.
    Replay(replay::ReplayArgs),
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Import accounts from a JSON-lines or CSV file (one account per line).
    Import(import::ImportArgs),
    /// Write every account with its identities to standard output, as `users import` reads them.
    Export(export::ExportArgs),
    /// Find an account by email, phone or username, through the admin API.
    Find {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        #[command(flatten)]
        find: admin_client::FindArgs,
    },
    /// Reactivate a suspended account, through the admin API.
    Reactivate {
        #[command(flatten)]
        api: admin_client::ApiArgs,
        /// The account's id.
        id: uuid::Uuid,
        /// Why, for user.reactivated and the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn execute(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => {
            // Listening first: a stop requested while starting (the database may be slow to come
            // up) is a clean exit too.
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let app = tokio::select! {
                app = Application::build(settings) => app?,
                _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            };
            app.run_until_stopped(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let pool = db::connect_and_migrate(&settings.database).await?;
            let applied = db::MIGRATOR.iter().count();
            println!("database is up to date ({applied} migrations)");
            pool.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify => {
            let pool = db::connect_and_migrate(&settings.database).await?;
            let bounds = crate::verify::Bounds {
                orphan_after: settings.outbox.orphan_after,
                retention: settings.outbox.retention,
            };
            let violations = crate::verify::verify(&pool, bounds).await?;
            pool.close().await;
            for violation in &violations {
                println!("{violation}");
            }
            if violations.is_empty() {
                println!("every invariant holds");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{} violation(s)", violations.len());
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Users {
            command: UsersCommand::Import(args),
        } => import::run(args, &settings).await,
        Command::Webhooks { api, command } => admin_client::webhooks(command, api, &settings).await,
        Command::Users {
            command: UsersCommand::Export(args),
        } => export::run(args, &settings).await,
        Command::Users {
            command: UsersCommand::Find { api, find },
        } => admin_client::find_users(find, api, &settings).await,
        Command::Users {
            command: UsersCommand::Reactivate { api, id, reason },
        } => admin_client::reactivate(id, reason, api, &settings).await,
        Command::SendLogin(args) => send_login::run(args, &settings).await,
        Command::SendCommand(args) => send_command::run(args, &settings).await,
        Command::Events {
            command: EventsCommand::Replay(args),
        } => replay::run(args, &settings).await,
        Command::Directory { command } => {
            use admin_client::{HeldAction, held_removals};
            match command {
                DirectoryCommand::Fetch(args) => directory::fetch(args, &settings).await,
                DirectoryCommand::Held { api, held } => {
                    held_removals(HeldAction::List, held, api, &settings).await
                }
                DirectoryCommand::Release { api, held } => {
                    held_removals(HeldAction::Release, held, api, &settings).await
                }
                DirectoryCommand::Discard { api, held } => {
                    held_removals(HeldAction::Discard, held, api, &settings).await
                }
            }
        }
        Command::Bindings { api, command } => admin_client::bindings(command, api, &settings).await,
        Command::Policy { api, command } => admin_client::policy(command, api, &settings).await,
        Command::Connections { api, command } => {
            admin_client::connections(command, api, &settings).await
        }
        Command::Decisions { api, command } => {
            admin_client::decisions(command, api, &settings).await
        }
    }
}

async fn stop_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")
            .expect("signal handlers can be installed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("stop requested");
    token.cancel();
}
