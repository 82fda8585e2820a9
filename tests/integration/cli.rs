//! The binary as an operator uses it: configuration errors, `migrate`, `users import` and
//! `send-login` and `send-command`.

use std::{io::Write, process::Stdio};

use serde_json::Value;

use idsync_test_support::*;

#[tokio::test]
async fn a_bad_configuration_stops_with_one_line_and_a_non_zero_exit() {
    let services = Services::new().await;
    let cases = [
        ("association = \"sometimes\"", "association"),
        ("match_fields = [\"email\", \"shoe_size\"]", "match_fields"),
        ("binding_ttl = \"whenever\"", "binding_ttl"),
    ];
    for (line, field) in cases {
        let path = services.dir.join("bad.toml");
        std::fs::write(
            &path,
            format!("[[connections]]\nidentifier = \"dingtalk\"\nuser_pool_id = \"p\"\n{line}\n"),
        )
        .unwrap();
        let (code, _, stderr) = run(std::process::Command::new(env!(
            "CARGO_BIN_EXE_identity-sync"
        ))
        .args(["--config", path.to_str().unwrap(), "run"]));
        assert_ne!(code, 0, "{line}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(field) && stderr.contains("connections[0] (dingtalk)"),
            "{stderr}"
        );
    }

    let path = services.dir.join("bad-id.toml");
    std::fs::write(
        &path,
        "[[connections]]\nidentifier = \"Ding_Talk\"\nuser_pool_id = \"p\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_identity-sync")).args([
            "--config",
            path.to_str().unwrap(),
            "run",
        ]),
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("identifier") && stderr.contains("Ding_Talk"),
        "{stderr}"
    );

    let (code, _, stderr) = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_identity-sync"))
            .arg("run")
            .env("IDSYNC__WORKER__MAX_MESSAGE_BYTES", "lots"),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("max_message_bytes"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_database_stops_the_program_after_retries() {
    let services = Services::new().await;
    let started = std::time::Instant::now();
    let (code, _, stderr) = run(services
        .command()
        .arg("migrate")
        .env(
            "IDSYNC__DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/nowhere",
        )
        .env("IDSYNC__DATABASE__STARTUP_TIMEOUT", "2s"));
    assert_ne!(code, 0);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "it retried first"
    );
    let last = stderr.trim().lines().last().unwrap();
    assert!(last.contains("database unreachable"), "{stderr}");
    let retries = stderr.matches("database not reachable yet").count();
    assert!(retries >= 2, "it retried ({retries} warnings): {stderr}");
}

#[tokio::test]
async fn migrate_creates_the_database_from_environment_settings() {
    let services = Services::new().await;
    let (code, stdout, stderr) = run(services.command().arg("migrate"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("up to date"), "{stdout}");
    let db = services.db().await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 0);
    let (code, _, _) = run(services.command().arg("migrate"));
    assert_eq!(code, 0, "migrating twice is fine");
}

#[tokio::test]
async fn users_import_reports_bad_lines_and_is_idempotent() {
    let services = Services::new().await;
    let file = services.dir.join("users.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    writeln!(f, r#"{{"user_pool_id": "pool-1", "email": "A@Example.com", "email_verified": true, "name": "A"}}"#).unwrap();
    writeln!(f, r#"{{"user_pool_id": "pool-1", "id": "0193a1b2-0000-7000-8000-000000000001", "phone": "138 0013 8000", "username": "bee"}}"#).unwrap();
    writeln!(f).unwrap();
    writeln!(
        f,
        r#"{{"user_pool_id": "pool-1", "email": "not-an-email"}}"#
    )
    .unwrap();
    writeln!(
        f,
        r#"{{"user_pool_id": "pool-1", "email": "a@example.com", "username": "other"}}"#
    )
    .unwrap();
    writeln!(f, r#"{{"email": "c@example.com"}}"#).unwrap();
    writeln!(f, "this is not json").unwrap();
    writeln!(
        f,
        r#"{{"user_pool_id": "pool-2", "email": "a@example.com"}}"#
    )
    .unwrap();
    drop(f);

    let import = |services: &Services| {
        run(services.command().args([
            "users",
            "import",
            file.to_str().unwrap(),
            "--default-country-code",
            "86",
        ]))
    };
    let (code, stdout, stderr) = import(&services);
    assert_eq!(code, 1, "some lines failed: {stderr}");
    assert!(
        stdout.contains("added 3, already present 0, failed 4"),
        "{stdout}"
    );
    assert!(stderr.contains("line 4: email:"), "{stderr}");
    assert!(stderr.contains("line 5: email is held by user"), "{stderr}");
    assert!(
        stderr.contains("line 6: user_pool_id: is required"),
        "{stderr}"
    );
    assert!(stderr.contains("line 7: not a valid account"), "{stderr}");

    let (_, stdout, _) = import(&services);
    assert!(
        stdout.contains("added 0, already present 3, failed 4"),
        "{stdout}"
    );

    let db = services.db().await;
    let (phone, username): (String, String) = sqlx::query_as(
        "SELECT phone, username FROM users WHERE id = '0193a1b2-0000-7000-8000-000000000001'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (phone.as_str(), username.as_str()),
        ("+8613800138000", "bee")
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM users WHERE user_pool_id = 'pool-2'"
        )
        .await,
        1,
        "pools are separate"
    );
}

#[tokio::test]
async fn a_clean_import_twice_is_not_an_error() {
    let services = Services::new().await;
    let mut child = services
        .command()
        .args(["users", "import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"user_pool_id\": \"pool-1\", \"username\": \"solo\"}\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("added 1"));
}

// The binary blocks this thread while the application serves it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_login_prints_the_decision_and_its_events() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let args = [
        "send-login",
        "--pool",
        "pool-1",
        "--connection",
        "matching",
        "--external-id",
        "cli-1",
        "--email",
        "Cli@Example.com",
        "--email-verified",
        "--name",
        "Cli",
        "--json",
    ];
    let (code, stdout, stderr) = run(services.command().args(args));
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(printed["reply"]["outcome"], "user_created");
    let events = printed["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{printed}");
    assert_eq!(events[0]["type"], "user.created");
    assert_eq!(events[0]["data"]["user"]["email"], "cli@example.com");

    let (code, stdout, _) = run(services.command().args(args));
    assert_eq!(code, 0);
    let printed: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(printed["reply"]["outcome"], "existing_user");

    let (code, stdout, _) = run(services.command().args([
        "send-login",
        "--connection",
        "unknown",
        "--external-id",
        "x",
    ]));
    assert_eq!(code, 1, "an error decision exits non-zero");
    assert!(stdout.contains("unknown_connection"), "{stdout}");
    app.stop().await;
}

// The binary blocks this thread while the application serves it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_and_users_from_the_command_line() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let user = create_user(&db, Some("cli-admin@example.com"), None, Some("cliadmin")).await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker
        .login(&login(
            "asking",
            "wc-cli",
            serde_json::json!({"email": "cli-admin@example.com", "email_verified": true}),
        ))
        .await;
    let binding = reply.binding_id.unwrap().to_string();
    let api = app.url("");
    let admin = |args: &[&str]| {
        let mut command = services.command();
        command.args(args).args(["--api", &api]);
        run(&mut command)
    };

    // The token comes from the configuration's first admin token.
    let (code, stdout, stderr) = admin(&["bindings", "list"]);
    assert_eq!(code, 0, "{stderr}");
    let mut lines = stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("CONNECTION") && header.contains("CANDIDATES"),
        "{header}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&binding) && row.contains("wc-cli") && row.contains("ask_binding"),
        "{row}"
    );
    let column = header.find("CONNECTION").unwrap();
    assert_eq!(&row[column..column + 6], "asking", "columns are aligned");

    let (code, stdout, _) = admin(&["bindings", "show", &binding]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("status:") && stdout.contains("pending"),
        "{stdout}"
    );
    assert!(
        stdout.contains("c***@example.com"),
        "candidates are masked: {stdout}"
    );

    let (code, stdout, _) = admin(&["bindings", "list", "--json"]);
    assert_eq!(code, 0);
    let page: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(page["items"][0]["id"], binding);

    let (code, _, stderr) = admin(&[
        "bindings",
        "resolve",
        &binding,
        "--link",
        &user.to_string(),
        "--token",
        VIEWER_TOKEN,
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("403 forbidden"), "{stderr}");
    let (code, stdout, stderr) =
        admin(&["bindings", "resolve", &binding, "--link", &user.to_string()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("resolved") && stdout.contains("ops-alice"),
        "{stdout}"
    );
    let (code, _, stderr) = admin(&[
        "bindings", "resolve", &binding, "--reject", "--reason", "late",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("409 binding_not_pending"), "{stderr}");

    let (code, stdout, _) = admin(&[
        "users",
        "find",
        "--pool",
        "pool-1",
        "--email",
        "CLI-Admin@example.com",
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&user.to_string()) && stdout.contains("asking/wc-cli"),
        "{stdout}"
    );
    let (code, stdout, _) = admin(&["users", "find", "--pool", "pool-1", "--username", "nobody"]);
    assert_eq!((code, stdout.trim()), (1, "no such user"));
    app.stop().await;
}

/// The README's Asking-for-Binding walkthrough, command by command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_command_finishes_asking_for_binding() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let chen = create_user(&db, Some("chen@example.com"), None, None).await;
    let boss = create_user(&db, Some("boss@example.com"), None, None).await;
    // send-login and send-command publish as the URL's user (guest), which commands need trusted.
    let app = TestApp::spawn_with(services.trusting_guest()).await;
    let login = [
        "send-login",
        "--connection",
        "asking",
        "--external-id",
        "wc-chen",
        "--email",
        "chen@example.com",
        "--email-verified",
        "--json",
    ];
    let json =
        |stdout: &str| -> Value { serde_json::from_str(stdout.trim()).expect("one JSON object") };

    // 1. The login matches an account: the person is asked.
    let (code, stdout, stderr) = run(services.command().args(login));
    assert_eq!(code, 0, "{stderr}");
    let pending = json(&stdout);
    assert_eq!(pending["reply"]["outcome"], "binding_pending");
    let binding = pending["reply"]["binding_id"].as_str().unwrap().to_owned();

    // 2. A proof for someone else's account is refused, with exit code 1.
    let (code, stdout, _) = run(services.command().args([
        "send-command",
        "binding.resolve",
        "--binding",
        &binding,
        "--link",
        &boss.to_string(),
        "--proof",
        "password",
        "--actor",
        "chen",
        "--json",
    ]));
    assert_eq!(code, 1);
    assert_eq!(json(&stdout)["reply"]["code"], "not_a_candidate");

    // 3. The person proved with their password that the account is theirs.
    let (code, stdout, stderr) = run(services.command().args([
        "send-command",
        "binding.resolve",
        "--binding",
        &binding,
        "--link",
        &chen.to_string(),
        "--proof",
        "password",
        "--actor",
        "chen",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let resolved = json(&stdout);
    assert_eq!(resolved["reply"]["outcome"], "done", "{resolved}");
    assert_eq!(resolved["reply"]["binding"]["resolution"], "linked");
    let kinds: Vec<_> = resolved["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["binding.resolved", "user.linked"], "{resolved}");

    // 4. The next login is the account's.
    let (code, stdout, _) = run(services.command().args(login));
    assert_eq!(code, 0);
    let next = json(&stdout);
    assert_eq!(next["reply"]["outcome"], "existing_user");
    assert_eq!(next["reply"]["user_id"], chen.to_string());

    // The binding is gone from the pending list; unlinking by command publishes user.unlinked.
    let (code, stdout, stderr) = run(services.command().args([
        "send-command",
        "user.unlink",
        "--user",
        &chen.to_string(),
        "--connection",
        "asking",
        "--external-id",
        "wc-chen",
        "--actor",
        "hr-sync",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let unlinked = json(&stdout);
    assert_eq!(unlinked["events"][0]["type"], "user.unlinked", "{unlinked}");
    app.stop().await;
}
