//! The operational HTTP side: liveness, readiness and metrics.

use serde_json::{Value, json};

use idsync_test_support::*;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;

    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"ready": true, "database": true, "consumer": true, "publisher": true, "tasks": true, "faults": []})
    );

    broker.login(&login("plain", "m-1", json!({}))).await;
    broker.login(&login("only", "m-2", json!({}))).await;
    broker.publish_raw(b"nope", json_props()).await;
    broker.dead_letter().await;

    let response = reqwest::get(app.url("/metrics")).await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    assert_eq!(
        metric_value(&text, "idsync_decisions_total{outcome=\"user_created\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "idsync_decisions_total{outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&text, "idsync_decisions_total{outcome=\"error\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&text, "idsync_dead_letters_total{reason=\"not_json\"}"),
        1.0
    );
    assert_eq!(metric_value(&text, "idsync_processing_seconds_count"), 3.0);
    assert!(text.contains("# TYPE idsync_outbox_backlog gauge"));
    assert!(text.contains("idsync_processing_seconds_bucket{le="));
    app.stop().await;
}

#[tokio::test]
async fn not_ready_while_the_broker_is_unreachable() {
    let services = Services::new().await;
    let mut settings = services.settings();
    settings.amqp.url = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned().into();
    let app = identity_sync::startup::Application::build(settings)
        .await
        .unwrap();
    let url = format!("http://{}", app.address());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    wait_until(WAIT, || async {
        reqwest::get(format!("{url}/healthz")).await.is_ok()
    })
    .await
    .unwrap();
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["consumer"], false);
    assert_eq!(body["database"], true);
    assert_eq!(
        reqwest::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .status(),
        200,
        "alive all the same"
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
