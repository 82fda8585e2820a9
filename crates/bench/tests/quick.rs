//! The benchmark's quick mode, so that it never rots: `identity-sync-bench` in both modes with a
//! small load, checking that it completes and that every login got exactly one decision. No
//! timing is asserted here; figures belong to docs/BENCHMARKS.md.

use std::process::Command;

use serde_json::Value;

// The benchmark drives child processes and blocks on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_runs_in_quick_mode() {
    let dir = std::env::temp_dir().join(format!(
        "idsync-bench-test-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str], json: &std::path::Path| {
        let output = Command::new(env!("CARGO_BIN_EXE_identity-sync-bench"))
            .args(args)
            // The worker of the same build (`cargo test` at the root builds it).
            .arg("--worker-bin")
            .arg(idsync_test_support::binary())
            .args(["--runs", "1", "--json", json.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            // The shell's settings for a real deployment must not reach the benchmark's workers.
            .env(
                "IDSYNC__DATABASE__URL",
                "postgres://postgres@127.0.0.1:1/elsewhere",
            )
            .env("IDSYNC__AMQP__PREFETCH", "1")
            .output()
            .expect("the benchmark runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        (stdout, report)
    };

    let drain_json = dir.join("drain.json");
    let (stdout, report) =
        tokio::task::spawn_blocking(move || run(&["drain", "--events", "1000"], &drain_json))
            .await
            .unwrap();
    assert!(stdout.contains("one decision per event yes"), "{stdout}");
    let drain = &report["runs"][0];
    assert_eq!(drain["one_decision_per_event"], true);
    assert_eq!(drain["events"], 1000);
    assert_eq!(drain["outcomes"]["existing_user"], 600);
    assert_eq!(drain["outcomes"]["user_created"], 200);
    assert_eq!(drain["outcomes"]["user_linked"], 150);
    assert_eq!(drain["outcomes"]["binding_pending"], 50);
    assert!(drain["baseline_events_per_second"].as_f64().unwrap() > 0.0);
    // The same-work baseline decided the same logins on a database of its own.
    assert!(drain["same_work_per_second"].as_f64().unwrap() > 0.0);
    assert!(drain["same_work_ratio"].as_f64().unwrap() > 0.0);
    // The database's and the broker's CPU were read from /proc for both pipelines.
    for (pipeline, part) in [
        ("services_cpu_us_per_event", "database"),
        ("services_cpu_us_per_event", "broker"),
        ("same_work_cpu_us_per_event", "database"),
        ("same_work_cpu_us_per_event", "broker"),
        ("same_work_cpu_us_per_event", "own"),
    ] {
        assert!(
            drain[pipeline][part].as_f64().unwrap() > 0.0,
            "{pipeline}.{part}"
        );
    }

    let latency_json = dir.join("latency.json");
    let (_, report) = tokio::task::spawn_blocking({
        let dir = latency_json.clone();
        move || {
            run(
                &[
                    "latency",
                    "--rate",
                    "200",
                    "--duration",
                    "2s",
                    "--warmup",
                    "1s",
                ],
                &dir,
            )
        }
    })
    .await
    .unwrap();
    let latency = &report["runs"][0];
    assert_eq!(latency["missing_replies"], 0);
    assert_eq!(latency["reply"]["count"], 400);
    assert!(latency["downstream_event"]["count"].as_u64().unwrap() > 0);
    assert!(latency["baseline_reply"]["count"].as_u64().unwrap() > 0);
    // The same-work pipeline answered every measured login at the same rate, and its events
    // name the logins that caused them.
    // The worker's memory was sampled over the measured two seconds.
    assert!(latency["rss_mib_by_30s"][0].as_f64().unwrap() > 0.0);
    assert_eq!(latency["same_work_reply"]["count"], 400);
    assert!(latency["same_work_event"]["count"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_dir_all(dir);
}
