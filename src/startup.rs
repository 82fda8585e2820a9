//! Wiring: `Application::build` connects, migrates, applies the configured connections and binds
//! the HTTP listener; `run_until_stopped` runs the worker, the outbox relay and the HTTP side
//! until the shutdown token is cancelled, then stops them in order.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    admin::Admin,
    amqp::consumer::Worker,
    db,
    health::Health,
    http::{self, AppState, auth::Tokens},
    metrics::Metrics,
    pipeline::{self, Pipeline},
    relay::Relay,
    settings::{Settings, SettingsError},
};

/// Everything in flight must be finished within this after a stop is requested.
const STOP_DEADLINE: Duration = Duration::from_secs(9);

pub struct Application {
    settings: Arc<Settings>,
    pool: PgPool,
    /// The relay's own small pool, whose commits do not wait for the disk.
    relay_pool: PgPool,
    listener: TcpListener,
    address: SocketAddr,
    origin: Uuid,
    metrics: Metrics,
    health: Health,
    tokens: Tokens,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let connections = settings.connection_settings()?;
        let tokens = Tokens::new(&settings.admin.tokens).map_err(SettingsError::Invalid)?;
        let pool = db::connect_and_migrate(&settings.database).await?;
        let relay_pool = db::relay_pool(&settings.database)?;
        pipeline::upsert_connections(&pool, &connections)
            .await
            .context("applying [[connections]] from the configuration")?;
        let listener = TcpListener::bind(&settings.admin.listen)
            .await
            .with_context(|| format!("admin.listen: cannot listen on {}", settings.admin.listen))?;
        let address = listener.local_addr()?;
        let health = Health::default();
        Ok(Self {
            settings: Arc::new(settings),
            pool,
            relay_pool,
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

        let pipeline = Pipeline::new(self.pool.clone(), self.origin);
        let worker = Worker::new(
            self.settings.clone(),
            pipeline,
            self.metrics.clone(),
            self.health.clone(),
            handoff.clone(),
            shutdown.clone(),
        );
        let admin = Admin::new(self.pool.clone(), self.origin, handoff);
        let retention = tokio::spawn(crate::retention::run(
            self.pool.clone(),
            self.settings.clone(),
            self.metrics.clone(),
            relay_stop.clone(),
        ));
        let expiry = tokio::spawn(admin.clone().run_expiry(
            self.settings.admin.expiry_sweep_interval,
            relay_stop.clone(),
        ));
        let router = http::router(AppState {
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            admin,
            tokens: self.tokens,
        });
        let http_shutdown = http_stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(http_shutdown.cancelled_owned())
                .await
        });
        let mut worker = tokio::spawn(worker.run());
        let mut relay = tokio::spawn(relay.run());

        shutdown.cancelled().await;
        tracing::info!("stopping: finishing messages in flight");
        let stop = async {
            // The worker first, so that the relay's last round includes its last commits.
            let _ = (&mut worker).await;
            relay_stop.cancel();
            let _ = expiry.await;
            let _ = retention.await;
            let _ = (&mut relay).await;
        };
        if tokio::time::timeout(STOP_DEADLINE, stop).await.is_err() {
            tracing::warn!("stop deadline reached; unacknowledged messages will be redelivered");
            worker.abort();
            relay.abort();
        }
        http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
        self.relay_pool.close().await;
        self.pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}
