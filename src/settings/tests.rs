//! The settings as a user writes them: defaults, files, the environment, and every refusal.

use super::*;

fn load(toml: &str) -> Result<Settings, SettingsError> {
    let dir = std::env::temp_dir().join(format!("idsync-settings-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let loaded = Settings::load_file(&path);
    let _ = std::fs::remove_dir_all(dir);
    loaded
}

fn error(toml: &str) -> String {
    load(toml).unwrap_err().to_string()
}

#[test]
fn concurrent_batches_leave_connections_for_the_rest() {
    assert_eq!(load("").unwrap().worker.concurrent_batches, 2);
    assert!(load("[worker]\nconcurrent_batches = 8").is_ok());
    for bad in [
        "[worker]\nconcurrent_batches = 0",
        "[worker]\nconcurrent_batches = 9",
        "[worker]\nconcurrent_batches = 3\n[database]\nmax_connections = 4",
    ] {
        let error = load(bad).unwrap_err().to_string();
        assert!(
            error.contains("worker.concurrent_batches"),
            "{bad}: {error}"
        );
    }
}

#[test]
fn the_broker_is_one_url_or_a_clusters_nodes() {
    let one = load("[amqp]\nurl = \"amqp://u:p@rabbit:5672/%2f\"").unwrap();
    assert_eq!(one.amqp.url.len(), 1);
    let list =
        load("[amqp]\nurl = [\"amqp://u:p@n1:5672/%2f\", \"amqp://u:p@n2:5673/%2f\"]").unwrap();
    assert_eq!(list.amqp.url.address(1), "n2:5673");
    // As an environment variable gives it.
    let commas = load("[amqp]\nurl = \"amqp://u:p@n1:5672/%2f,amqp://u:p@n2:5672/%2f\"").unwrap();
    assert_eq!(commas.amqp.url.len(), 2);
    for bad in ["url = []", "url = \"\"", "url = \"http://n1/\""] {
        let error = load(&format!("[amqp]\n{bad}")).unwrap_err().to_string();
        assert!(error.contains("amqp.url"), "{bad}: {error}");
        assert!(!error.contains("u:p"), "credentials never shown: {error}");
    }
}

#[test]
fn zero_intervals_and_timeouts_are_refused() {
    for key in [
        "[outbox]\nconfirm_timeout = \"0s\"",
        "[outbox]\npoll_interval = \"0s\"",
        "[outbox]\nprune_interval = \"0s\"",
        "[admin]\nexpiry_sweep_interval = \"0s\"",
    ] {
        let message = error(key);
        assert!(
            message.contains("must be longer than 0"),
            "{key}: {message}"
        );
    }
}

#[test]
fn out_of_range_durations_are_refused() {
    let message = error("[outbox]\nretention = \"100000000d\"");
    assert!(
        message.contains("outbox.retention must be at most 100 years"),
        "{message}"
    );
    let message = error("[worker]\ndedupe_retention = \"100000000d\"");
    assert!(message.contains("worker.dedupe_retention"), "{message}");
    assert!(load("[outbox]\nretention = \"3650d\"").is_ok());
}

#[test]
fn the_listen_address_is_checked_at_load() {
    for bad in ["notanaddr", "127.0.0.1", "host:99999", ":8080", "a b:80"] {
        let message = error(&format!("[admin]\nlisten = \"{bad}\""));
        assert!(message.contains("admin.listen"), "{bad}: {message}");
    }
    for good in ["127.0.0.1:0", "[::1]:8080", "localhost:8080", "0.0.0.0:80"] {
        assert!(
            load(&format!("[admin]\nlisten = \"{good}\"")).is_ok(),
            "{good}"
        );
    }
}

#[test]
fn the_reply_queue_prefix_cannot_open_every_queue() {
    assert!(error("[amqp]\nreply_queue_prefix = \"\"").contains("reply_queue_prefix"));
    assert!(error("[amqp]\nreply_queue_prefix = \"amq.\"").contains("reply_queue_prefix"));
    let message = error("[amqp]\nreply_queue_prefix = \"idsync.\"");
    assert!(message.contains("idsync.login-completed"), "{message}");
}

#[test]
fn a_zero_dedupe_retention_is_refused() {
    let message = error("[worker]\ndedupe_retention = \"0s\"");
    assert!(
        message.contains("worker.dedupe_retention must be longer than 0"),
        "{message}"
    );
}
