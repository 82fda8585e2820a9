//! Onboarding a directory with the binary, as an operator does: `users import` with identities
//! linked ahead, every kind of bad line reported by number, an import racing the worker's logins,
//! and `users export` read back by `users import` with nothing added.

use std::io::Write;

use serde_json::{Value, json};

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

fn import(services: &Services, file: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let mut command = services.command();
    command.args(["users", "import", file.to_str().unwrap()]);
    command.args(extra);
    run(&mut command)
}

/// The line numbers a run reported on standard error, in order.
fn failed_lines(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(':').next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn every_kind_of_bad_line_is_reported_by_number_and_the_rest_is_added() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let existing = create_user(&db, Some("taken@corp.example"), None, Some("taken")).await;
    // An identity already linked to the existing account.
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let reply = broker
        .login(&login(
            "plain",
            "linked-elsewhere",
            json!({"username": "someone"}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    broker.next_event().await;

    let file = services.dir.join("directory.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    let lines = [
        // 1: a new account with an identity linked ahead and an attribute
        r#"{"user_pool_id": "pool-1", "email": "Zhang@Corp.Example", "email_verified": true, "username": "zhang", "name": "Zhang", "attributes": {"employee_id": "E1"}, "identities": [{"connection": "matching", "external_id": "dt-zhang"}]}"#,
        // 2: not JSON
        "{this is not json",
        // 3: a malformed email
        r#"{"user_pool_id": "pool-1", "email": "not-an-email"}"#,
        // 4: the email of line 1 on another account: a duplicate inside the file
        r#"{"user_pool_id": "pool-1", "email": "zhang@corp.example", "username": "other"}"#,
        // 5: the email of an account already there
        r#"{"user_pool_id": "pool-1", "email": "taken@corp.example", "username": "taken2"}"#,
        // 6: an identity linked to another account
        r#"{"user_pool_id": "pool-1", "username": "li", "identities": [{"connection": "plain", "external_id": "linked-elsewhere"}]}"#,
        // 7: a new account
        r#"{"user_pool_id": "pool-1", "phone": "+8613800138000", "phone_verified": true}"#,
        // 8: line 1 again: already present, not a failure
        r#"{"user_pool_id": "pool-1", "email": "Zhang@Corp.Example", "email_verified": true, "username": "zhang", "name": "Zhang", "attributes": {"employee_id": "E1"}, "identities": [{"connection": "matching", "external_id": "dt-zhang"}]}"#,
        // 9: a field the format does not have
        r#"{"user_pool_id": "pool-1", "username": "wang", "shoe_size": 42}"#,
        // 10: two identities of one connection
        r#"{"user_pool_id": "pool-1", "username": "zhao", "identities": [{"connection": "matching", "external_id": "a"}, {"connection": "matching", "external_id": "b"}]}"#,
    ];
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
    drop(f);

    let (code, stdout, stderr) = import(&services, &file, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(failed_lines(&stderr), [2, 3, 4, 5, 6, 9, 10], "{stderr}");
    assert!(
        stdout.contains("added 2, already present 1, failed 7, identities linked 1"),
        "{stdout}"
    );
    assert!(stderr.contains("line 4: email is held by user"), "{stderr}");
    assert!(
        stderr.contains(&format!("line 5: email is held by user {existing}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 6: identity plain/linked-elsewhere is linked to user"),
        "{stderr}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 4);

    // The identity linked ahead is the account's at its first login: existing_user, and its
    // snapshot is the account's values, so nothing reads as changed.
    let reply = broker
        .login(&login(
            "matching",
            "dt-zhang",
            json!({"email": "zhang@corp.example", "email_verified": true, "username": "zhang"}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::ExistingUser, "{reply:?}");
    broker.no_more_events().await;

    // --json prints the summary as one object; a clean re-import adds nothing.
    let (code, stdout, _) = import(&services, &file, &["--json"]);
    assert_eq!(code, 1);
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (
            &summary["lines"],
            &summary["added"],
            &summary["already_present"],
            &summary["failed"]
        ),
        (&json!(10), &json!(0), &json!(3), &json!(7)),
        "{summary}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_racing_an_import_of_the_same_person_gives_one_account() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let people = 600;
    let file = services.dir.join("people.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    for i in 0..people {
        writeln!(
            f,
            r#"{{"user_pool_id": "pool-1", "email": "p{i}@corp.example", "email_verified": true}}"#
        )
        .unwrap();
    }
    drop(f);

    // The same people log in (field matching on email) while the import runs.
    let importing = tokio::task::spawn_blocking({
        let mut command = services.command();
        command.args(["users", "import", file.to_str().unwrap()]);
        move || run(&mut command)
    });
    let mut pending = Vec::new();
    for i in (0..people).rev() {
        let event = login(
            "matching",
            &format!("dt-{i}"),
            json!({"email": format!("p{i}@corp.example"), "email_verified": true}),
        );
        pending.push(broker.request(&event).await);
    }
    let mut linked = 0;
    for correlation_id in pending {
        match broker.reply(&correlation_id).await.outcome {
            Outcome::UserLinked => linked += 1,
            Outcome::UserCreated => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let (_, stdout, stderr) = importing.await.unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM users").await,
        people as i64,
        "{stdout}{stderr}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM identities").await,
        people as i64
    );
    // Every person the import added first was linked by the login; every other one the login
    // created first, and the import found it already there.
    let added: i64 = stdout
        .split("added ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(added, linked, "{stdout}");
    app.stop().await;
}

#[tokio::test]
async fn export_then_import_adds_nothing_in_either_format() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let file = services.dir.join("seed.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"user_pool_id": "pool-1", "email": "a@corp.example", "email_verified": true, "name": "A, with a comma", "protected": true, "attributes": {"employee_id": "E1", "title": "says \"hi\""}, "identities": [{"connection": "matching", "external_id": "dt-a"}, {"connection": "plain", "external_id": "oidc-a"}]}"#,
            "\n",
            r#"{"user_pool_id": "pool-1", "phone": "+8613800138000", "username": "张三"}"#,
            "\n",
            r#"{"user_pool_id": "pool-2", "username": "other-pool"}"#,
            "\n",
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = import(&services, &file, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    let export = |format: &str, pool: Option<&str>| {
        let mut command = services.command();
        command.args(["users", "export", "--format", format]);
        if let Some(pool) = pool {
            command.args(["--pool", pool]);
        }
        let (code, stdout, stderr) = run(&mut command);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let jsonl = export("jsonl", None);
    let accounts: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(accounts.len(), 3, "{jsonl}");
    let a = accounts
        .iter()
        .find(|a| a["email"] == "a@corp.example")
        .unwrap();
    assert_eq!(a["protected"], true);
    assert_eq!(a["attributes"]["title"], "says \"hi\"");
    assert_eq!(
        a["identities"],
        json!([{"connection": "matching", "external_id": "dt-a"},
               {"connection": "plain", "external_id": "oidc-a"}])
    );
    assert_eq!(export("jsonl", Some("pool-2")).lines().count(), 1);

    for (format, text) in [("jsonl", jsonl.clone()), ("csv", export("csv", None))] {
        let path = services.dir.join(format!("export.{format}"));
        std::fs::write(&path, &text).unwrap();
        let (code, stdout, stderr) = import(&services, &path, &[]);
        assert_eq!(code, 0, "{format}: {stdout}{stderr}");
        assert!(
            stdout.contains("added 0, already present 3, failed 0"),
            "{format}: {stdout}"
        );
    }
    assert_eq!(export("jsonl", None), jsonl, "nothing changed");
    assert_eq!(count(&db, "SELECT count(*) FROM identities").await, 2);
}

#[tokio::test]
async fn the_admin_api_creates_an_account_with_identities_linked_ahead() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let (status, created) = app
        .api()
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "email": "ahead@corp.example", "email_verified": true,
                   "identities": [{"connection": "matching", "external_id": "dt-ahead"}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["identities"][0]["connection"], "matching");
    assert_eq!(created["identities"][0]["external_id"], "dt-ahead");

    for (body, expected) in [
        (
            json!({"user_pool_id": POOL, "username": "thief",
                   "identities": [{"connection": "matching", "external_id": "dt-ahead"}]}),
            (409, "identity_taken"),
        ),
        (
            json!({"user_pool_id": POOL, "username": "twice",
                   "identities": [{"connection": "plain", "external_id": "a"},
                                  {"connection": "plain", "external_id": "b"}]}),
            (422, "invalid_field"),
        ),
        (
            json!({"user_pool_id": POOL, "username": "bad",
                   "identities": [{"connection": "Not An Identifier", "external_id": "a"}]}),
            (422, "invalid_field"),
        ),
        (
            json!({"user_pool_id": POOL, "email": "ahead@corp.example", "email_verified": true}),
            (409, "user_exists"),
        ),
    ] {
        let (status, answer) = app.api().post("/v1/users", body.clone()).await;
        assert_eq!((status, error_code(&answer)), expected, "{body}: {answer}");
    }
    let db = services.db().await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);

    let reply = broker
        .login(&login(
            "matching",
            "dt-ahead",
            json!({"email": "ahead@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::ExistingUser, "{reply:?}");
    broker.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn unreadable_lines_fail_alone_and_identities_join_an_existing_account_only_by_its_id() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let existing = create_user(&db, Some("known@corp.example"), None, None).await;
    let file = services.dir.join("mixed.jsonl");
    let mut bytes = Vec::new();
    // 1: fine
    bytes.extend_from_slice(br#"{"user_pool_id": "pool-1", "username": "first"}"#);
    bytes.push(b'\n');
    // 2: not UTF-8
    bytes.extend_from_slice(b"{\"user_pool_id\": \"pool-1\", \"username\": \"\xff\xfe\"}\n");
    // 3: a line of 70,000 bytes
    bytes.extend_from_slice(br#"{"user_pool_id": "pool-1", "name": ""#);
    bytes.extend(std::iter::repeat_n(b'x', 70_000));
    bytes.extend_from_slice(b"\"}\n");
    // 4: the existing account by its values, with an identity: refused, equal values are no proof
    bytes.extend_from_slice(
        br#"{"user_pool_id": "pool-1", "email": "known@corp.example", "email_verified": true, "name": "Existing", "identities": [{"connection": "plain", "external_id": "known-1"}]}"#,
    );
    bytes.push(b'\n');
    // 5: the same, naming the account by its id: the identity is linked
    bytes.extend_from_slice(
        format!(
            r#"{{"user_pool_id": "pool-1", "id": "{existing}", "email": "known@corp.example", "email_verified": true, "name": "Existing", "identities": [{{"connection": "plain", "external_id": "known-1"}}]}}"#
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(b"\r\n");
    // 6: fine, after a CRLF line end and without a final newline
    bytes.extend_from_slice(br#"{"user_pool_id": "pool-1", "username": "last"}"#);
    std::fs::write(&file, bytes).unwrap();

    let (code, stdout, stderr) = import(&services, &file, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(failed_lines(&stderr), [2, 3, 4], "{stderr}");
    assert!(stderr.contains("line 2: not UTF-8 text"), "{stderr}");
    assert!(
        stderr.contains("line 3: longer than 65536 bytes"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "line 4: user {existing} exists: name it by its id"
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains("added 2, already present 1, failed 3, identities linked 1"),
        "{stdout}"
    );
    let linked: (uuid::Uuid,) =
        sqlx::query_as("SELECT user_id FROM identities WHERE external_id = 'known-1'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(linked.0, existing);
}
