//! Wiring: `Application::build` connects, migrates, applies the configured connections and binds
//! the HTTP listener; `run_until_stopped` runs the worker, the outbox relay and the HTTP side
//! until the shutdown token is cancelled, then stops them in order.

use std::{net::SocketAddr, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use anyhow::Context;
use futures_lite::FutureExt;
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    admin::Admin,
    db,
    health::Health,
    http::{self, AppState, ReadinessProbe, RequestLimits, auth::Tokens, serve::ConnectionLimits},
    metrics::Metrics,
    pipeline::{self, Pipeline},
    relay::Relay,
    settings::{Settings, SettingsError},
    worker::{Commands, Lane, Worker},
};

/// Everything in flight must be finished within this after a stop is requested.
const STOP_DEADLINE: Duration = Duration::from_secs(9);

pub struct Application {
    settings: Arc<Settings>,
    pool: PgPool,
    /// The relay's own small pool, whose commits do not wait for the disk.
    relay_pool: PgPool,
    /// The admin API's pool, apart from the worker's.
    admin_pool: PgPool,
    /// One connection for `/readyz`.
    probe_pool: PgPool,
    /// Webhook deliveries record their attempts here, apart from the logins' connections.
    webhook_pool: PgPool,
    listener: TcpListener,
    address: SocketAddr,
    origin: Uuid,
    metrics: Metrics,
    health: Health,
    tokens: Tokens,
}

/// Connections of the webhook deliveries: each delivery holds one only to record its attempt.
const WEBHOOK_CONNECTIONS: u32 = 4;

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let connections = settings.connection_settings()?;
        let tokens = Tokens::new(&settings.admin.tokens).map_err(SettingsError::Invalid)?;
        // Before the database: a port in use is a configuration mistake, found before anything
        // is created or migrated.
        let listener = TcpListener::bind(&settings.admin.listen)
            .await
            .map_err(|e| {
                SettingsError::Invalid(format!(
                    "admin.listen: cannot listen on {}: {e}",
                    settings.admin.listen
                ))
            })?;
        let pool = db::connect_and_migrate(&settings.database).await?;
        let relay_pool = db::relay_pool(&settings.database)?;
        let admin_pool = db::side_pool(
            &settings.database,
            "admin",
            settings.admin.database_connections,
        )?;
        let probe_pool = db::side_pool(&settings.database, "readiness", 1)?;
        let webhook_pool = db::side_pool(&settings.database, "webhooks", WEBHOOK_CONNECTIONS)?;
        pipeline::upsert_connections(&pool, &connections)
            .await
            .context("applying [[connections]] from the configuration")?;
        let address = listener.local_addr()?;
        let health = Health::default();
        Ok(Self {
            settings: Arc::new(settings),
            pool,
            relay_pool,
            admin_pool,
            probe_pool,
            webhook_pool,
            listener,
            address,
            origin: Uuid::now_v7(),
            metrics: Metrics::new(),
            health,
            tokens,
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(address = %self.address, origin = %self.origin, "identity-sync running");
        self.report_trusted_publishers();
        let (failed, mut failures) = mpsc::unbounded_channel();
        let running = self.start(&shutdown, &failed);
        let failure = tokio::select! {
            _ = shutdown.cancelled() => None,
            name = failures.recv() => name,
        };
        if let Some(name) = failure {
            // Half a process (consuming with no relay, say) is worse than none: stop, so that
            // the supervisor (systemd, compose, Kubernetes) starts a whole one.
            running.health.set_failed();
            tracing::error!(
                task = name,
                "a task of the process ended unexpectedly; stopping"
            );
            shutdown.cancel();
        }
        running.stop().await;
        match failure {
            Some(name) => Err(anyhow::anyhow!("the {name} task ended unexpectedly")),
            None => Ok(()),
        }
    }

    fn report_trusted_publishers(&self) {
        let trusted = &self.settings.amqp.trusted_publishers;
        self.metrics.trusted_publishers.set(trusted.len() as i64);
        if trusted.is_empty() {
            tracing::warn!(
                "amqp.trusted_publishers is empty: any broker user that can publish to the \
                 inbound exchange is heard for logins, and every command is dead-lettered; list \
                 the platform's broker user(s) there"
            );
        }
    }

    /// Spawns every task of the process under supervision: the worker stops with `shutdown`,
    /// the rest when [`Running::stop`] says so.
    fn start(
        self,
        shutdown: &CancellationToken,
        failed: &mpsc::UnboundedSender<&'static str>,
    ) -> Running {
        let relay_stop = CancellationToken::new();
        let http_stop = CancellationToken::new();
        let (relay, handoff) = Relay::new(
            self.settings.clone(),
            self.relay_pool.clone(),
            self.origin,
            self.metrics.clone(),
            self.health.clone(),
            relay_stop.clone(),
        );
        let directories = crate::directory::Directories::new(self.metrics.clone())
            .reporting_to(self.health.clone());
        let pipeline = Pipeline::new(
            self.pool.clone(),
            self.origin,
            handoff.clone(),
            self.settings.database.stall_timeout,
            directories.clone(),
        );
        let worker = Worker::new(
            self.settings.clone(),
            Lane::logins(&self.settings, self.origin),
            pipeline,
            self.metrics.clone(),
            self.health.clone(),
            shutdown.clone(),
        );
        let commands = Worker::new(
            self.settings.clone(),
            Lane::commands(&self.settings, self.origin),
            Commands::new(Admin::new(self.pool.clone(), self.origin, handoff.clone())),
            self.metrics.clone(),
            self.health.clone(),
            shutdown.clone(),
        );
        let workers = async {
            tokio::join!(worker.run(), commands.run());
        };
        // The sweeper works with the worker's pool, the API with a pool of its own.
        let sweeper = Admin::new(self.pool.clone(), self.origin, handoff.clone());
        let background = self.spawn_background(sweeper, &relay_stop, failed);
        let sender = crate::webhooks::Sender::new(&self.settings.webhooks);
        let deliverer = crate::webhooks::Deliverer::new(
            self.webhook_pool.clone(),
            self.origin,
            handoff.clone(),
            self.metrics.clone(),
            self.settings.clone(),
            sender.clone(),
            self.health.clone(),
        );
        let mut background = background;
        background.push(supervise(
            "webhook deliveries",
            deliverer.run(relay_stop.clone()),
            &relay_stop,
            failed,
        ));
        let router = self.router(
            Admin::new(self.admin_pool.clone(), self.origin, handoff)
                .with_directories(directories)
                .with_webhooks(crate::admin::webhooks::WebhookTools {
                    sender,
                    rotation_overlap: self.settings.webhooks.rotation_overlap,
                }),
        );
        let limits = ConnectionLimits {
            header_read_timeout: self.settings.admin.header_read_timeout,
            max_connections: self.settings.admin.max_connections,
        };
        let serve = http::serve::serve(self.listener, router, limits, http_stop.clone());
        Running {
            server: supervise("HTTP server", serve, &http_stop, failed),
            worker: supervise("worker", workers, shutdown, failed),
            relay: supervise("relay", relay.run(), &relay_stop, failed),
            background,
            relay_stop,
            http_stop,
            health: self.health,
            pools: [
                self.pool,
                self.relay_pool,
                self.admin_pool,
                self.probe_pool,
                self.webhook_pool,
            ],
        }
    }

    /// Retention, the expiry sweeper and the relay's heartbeat.
    fn spawn_background(
        &self,
        sweeper: Admin,
        stop: &CancellationToken,
        failed: &mpsc::UnboundedSender<&'static str>,
    ) -> Vec<JoinHandle<()>> {
        let settings = &self.settings;
        let retention = crate::retention::run(
            self.pool.clone(),
            settings.clone(),
            self.metrics.clone(),
            stop.clone(),
        );
        let expiry = sweeper.run_expiry(settings.admin.expiry_sweep_interval, stop.clone());
        let heartbeat = crate::relay::heartbeat(
            self.relay_pool.clone(),
            self.origin,
            settings.outbox.poll_interval,
            stop.clone(),
        );
        vec![
            supervise("retention", retention, stop, failed),
            supervise("expiry sweeper", expiry, stop, failed),
            supervise("relay heartbeat", heartbeat, stop, failed),
        ]
    }

    fn router(&self, admin: Admin) -> axum::Router {
        let admin_settings = &self.settings.admin;
        http::router(AppState {
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            admin,
            tokens: self.tokens.clone(),
            probe: Arc::new(ReadinessProbe::new(self.probe_pool.clone())),
            limits: RequestLimits::new(
                admin_settings.max_concurrent_requests,
                admin_settings.request_timeout,
            ),
        })
    }
}

/// The tasks of a started [`Application`], and what they hold.
struct Running {
    health: Health,
    worker: JoinHandle<()>,
    relay: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    server: JoinHandle<()>,
    relay_stop: CancellationToken,
    http_stop: CancellationToken,
    pools: [PgPool; 5],
}

impl Running {
    /// Stops in order once the worker's stop was asked for: the worker finishes the messages in
    /// flight, then the relay publishes its last commits, then the HTTP side and the pools close.
    async fn stop(mut self) {
        tracing::info!("stopping: finishing messages in flight");
        let stop = async {
            // The worker first, so that the relay's last round includes its last commits.
            let _ = (&mut self.worker).await;
            self.relay_stop.cancel();
            for task in self.background.drain(..) {
                let _ = task.await;
            }
            let _ = (&mut self.relay).await;
        };
        if tokio::time::timeout(STOP_DEADLINE, stop).await.is_err() {
            tracing::warn!("stop deadline reached; unacknowledged messages will be redelivered");
            self.worker.abort();
            self.relay.abort();
        }
        self.http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server).await;
        for pool in &self.pools {
            pool.close().await;
        }
        tracing::info!("stopped");
    }
}

/// Spawns `task`; if it panics, or returns before `stop` asked it to, its name is sent on
/// `failed`.
fn supervise(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
    stop: &CancellationToken,
    failed: &mpsc::UnboundedSender<&'static str>,
) -> JoinHandle<()> {
    let (stop, failed) = (stop.clone(), failed.clone());
    tokio::spawn(async move {
        let outcome = AssertUnwindSafe(task).catch_unwind().await;
        if outcome.is_err() || !stop.is_cancelled() {
            let _ = failed.send(name);
        }
    })
}
