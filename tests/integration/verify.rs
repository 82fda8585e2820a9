//! `identity-sync verify` as an operator runs it: silent on a sound database, and each of its
//! checks fires on a row corrupted to break exactly its invariant (exit 1, naming it), then is
//! silent again once the row is mended.

use serde_json::json;

use identity_sync::domain::decision::Outcome;
use idsync_test_support::*;

/// One invariant: its name as `verify` prints it, the statements breaking it, and those mending
/// it (run as the database's owner). `$A` is the first account's id, `$B` the second's.
struct Corruption {
    invariant: &'static str,
    break_it: &'static str,
    mend_it: &'static str,
}

/// Ann: the account of the identity `oidc-ann`; Bob: the other account of pool-1 (looked up by
/// what no corruption changes).
const A: &str = "(SELECT user_id FROM identities WHERE external_id = 'oidc-ann')";
const B: &str = "(SELECT id FROM users WHERE user_pool_id = 'pool-1'
                    AND id <> (SELECT user_id FROM identities WHERE external_id = 'oidc-ann'))";

const CORRUPTIONS: &[Corruption] = &[
    Corruption {
        invariant: "a suspended account holds a link made after its suspension",
        break_it: "UPDATE users SET suspended_at = now() - interval '1 hour',
                       suspension = '{\"reason\": \"source_removed\"}'
                   WHERE id = $A",
        mend_it: "UPDATE users SET suspended_at = NULL, suspension = NULL WHERE id = $A",
    },
    Corruption {
        invariant: "a user holds two identities of one connection",
        break_it: "ALTER TABLE identities DROP CONSTRAINT identities_one_per_connection;
                   INSERT INTO identities (user_pool_id, connection, external_id, user_id)
                   VALUES ('pool-1', 'plain', 'second', $A)",
        mend_it: "DELETE FROM identities WHERE external_id = 'second';
                  ALTER TABLE identities ADD CONSTRAINT identities_one_per_connection
                      UNIQUE (user_id, connection)",
    },
    Corruption {
        invariant: "an identity of a user of another pool",
        break_it: "INSERT INTO connections (user_pool_id, identifier, display_name, provider,
                       login_mode, association, match_fields, require_verified,
                       binding_ttl_seconds, trust_unverified_accounts, allowed_email_domains,
                       on_profile_change, mapping, verified_fields, settings_version,
                       match_rule, unique_attributes)
                   SELECT 'pool-2', identifier, display_name, provider, login_mode, association,
                          match_fields, require_verified, binding_ttl_seconds,
                          trust_unverified_accounts, allowed_email_domains, on_profile_change,
                          mapping, verified_fields, settings_version, match_rule,
                          unique_attributes
                   FROM connections WHERE user_pool_id = 'pool-1' AND identifier = 'only';
                   INSERT INTO identities (user_pool_id, connection, external_id, user_id)
                   VALUES ('pool-2', 'only', 'elsewhere', $A)",
        mend_it: "DELETE FROM identities WHERE external_id = 'elsewhere';
                  DELETE FROM connections WHERE user_pool_id = 'pool-2'",
    },
    Corruption {
        invariant: "an identity of a connection that belongs to another pool",
        break_it: "INSERT INTO users (id, user_pool_id, username) VALUES (gen_random_uuid(), 'pool-2', 'cy');
                   INSERT INTO identities (user_pool_id, connection, external_id, user_id)
                   SELECT 'pool-2', 'plain', 'borrowed', id FROM users WHERE username = 'cy'",
        mend_it: "DELETE FROM users WHERE username = 'cy'",
    },
    Corruption {
        invariant: "two users of one pool share a normalised field",
        break_it: "ALTER TABLE users DROP CONSTRAINT users_email_key;
                   UPDATE users SET email = 'ann@corp.example' WHERE id = $B",
        mend_it: "UPDATE users SET email = NULL WHERE id = $B;
                  ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email, user_pool_id)",
    },
    Corruption {
        invariant: "two users of one pool share a value of a unique attribute, or lookalikes",
        break_it: "UPDATE user_attributes SET value = 'E1', is_unique = false WHERE user_id = $B",
        mend_it: "UPDATE user_attributes SET value = 'E2', is_unique = true WHERE user_id = $B",
    },
    Corruption {
        invariant: "an account's attribute index out of step with its attributes",
        break_it: "DELETE FROM user_attributes WHERE user_id = $A",
        mend_it: "UPDATE users SET attributes = '{}' WHERE id = $A;
                  UPDATE users SET attributes = '{\"employee_id\": \"E1\"}' WHERE id = $A",
    },
    Corruption {
        invariant: "a pending binding for an identity that is linked",
        break_it: "INSERT INTO identities (user_pool_id, connection, external_id, user_id)
                   VALUES ('pool-1', 'asking', 'wc-ann', $B)",
        mend_it: "DELETE FROM identities WHERE external_id = 'wc-ann'",
    },
    Corruption {
        invariant: "two pending bindings for one identity",
        break_it: "DROP INDEX bindings_one_pending_per_identity;
                   INSERT INTO bindings (id, user_pool_id, connection, external_id, profile,
                                         reason, candidates, expires_at)
                   SELECT gen_random_uuid(), user_pool_id, connection, external_id, profile,
                          reason, candidates, expires_at
                   FROM bindings WHERE external_id = 'wc-ann'",
        mend_it: "DELETE FROM bindings WHERE external_id = 'wc-ann'
                      AND id <> (SELECT binding_id FROM processed_events
                                 WHERE outcome = 'binding_pending');
                  CREATE UNIQUE INDEX bindings_one_pending_per_identity
                      ON bindings (external_id, connection, user_pool_id)
                      WHERE status = 'pending'",
    },
    Corruption {
        invariant: "a processed login without the event its outcome publishes",
        break_it: "UPDATE outbox SET payload = jsonb_set(payload, '{data,cause_event_id}', '\"gone\"')
                   WHERE routing_key = 'user.created'",
        mend_it: "UPDATE outbox SET payload = jsonb_set(payload, '{data,cause_event_id}',
                      to_jsonb((SELECT event_id FROM processed_events
                                WHERE outcome = 'user_created')))
                   WHERE routing_key = 'user.created'",
    },
    Corruption {
        invariant: "a processed login naming a user or binding that does not exist",
        break_it: "ALTER TABLE processed_events ADD COLUMN kept uuid;
                   UPDATE processed_events SET kept = binding_id, binding_id = gen_random_uuid()
                   WHERE outcome = 'binding_pending'",
        mend_it: "UPDATE processed_events SET binding_id = kept WHERE outcome = 'binding_pending';
                  ALTER TABLE processed_events DROP COLUMN kept",
    },
    Corruption {
        invariant: "an outbox row left unpublished past the relay's bounds",
        break_it: "INSERT INTO outbox_pending (id, origin, created_at)
                   SELECT max(id), gen_random_uuid(), now() - interval '1 hour' FROM outbox",
        mend_it: "DELETE FROM outbox_pending",
    },
    Corruption {
        invariant: "a subject's sequence behind its events",
        break_it: "UPDATE event_sequences SET last = last - 1 WHERE subject = $A",
        mend_it: "UPDATE event_sequences SET last = last + 1 WHERE subject = $A",
    },
    Corruption {
        invariant: "a stored value not in canonical form",
        break_it: "UPDATE users SET username = 'Bob' WHERE id = $B",
        mend_it: "UPDATE users SET username = 'bob' WHERE id = $B",
    },
    Corruption {
        invariant: "an account holding the canonical form of a lookalike",
        break_it: "UPDATE users SET username = 'kevin' WHERE id = $A;
                   UPDATE identities SET profile = jsonb_set(profile, '{username}',
                       to_jsonb(U&'\\212Aevin'::text)) WHERE user_id = $A",
        mend_it: "UPDATE identities SET profile = profile - 'username' WHERE user_id = $A;
                  UPDATE users SET username = 'ann' WHERE id = $A",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_check_of_verify_fires_on_the_row_that_breaks_it() {
    let services = Services::new().await;
    let app = TestApp::spawn(&services).await;
    let mut broker = Broker::connect(&services).await;
    // `only` keeps employee numbers unique in the pool.
    let (status, body) = app
        .api()
        .put(
            "/v1/connections/pool-1/only",
            json!({"provider": "ldap", "login_mode": "login_only",
                   "association": "field_matching", "match_fields": ["email", "username"],
                   "unique_attributes": ["employee_id"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Ann logs in first (her account, identity and event), then through `asking` (a pending
    // binding); Bob is an admin's account.
    let reply = broker
        .login(&login(
            "plain",
            "oidc-ann",
            json!({"email": "ann@corp.example", "email_verified": true, "username": "ann"}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::UserCreated);
    let (status, body) = app
        .api()
        .patch(
            &format!("/v1/users/{}", reply.user_id.unwrap()),
            json!({"attributes": {"employee_id": "E1"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reply = broker
        .login(&login(
            "asking",
            "wc-ann",
            json!({"email": "ann@corp.example", "email_verified": true}),
        ))
        .await;
    assert_eq!(reply.outcome, Outcome::BindingPending);
    let (status, body) = app
        .api()
        .post(
            "/v1/users",
            json!({"user_pool_id": POOL, "username": "bob", "attributes": {"employee_id": "E2"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let db = services.db().await;
    outbox_drained(&db, WAIT, "every event published").await;
    app.stop().await;

    let verify = || {
        let mut command = services.command();
        command.arg("verify");
        run(&mut command)
    };
    let (code, stdout, stderr) = verify();
    assert_eq!(code, 0, "a sound database: {stdout}{stderr}");
    assert!(stdout.contains("every invariant holds"), "{stdout}");
    let owner = |sql: &'static str| {
        let db = db.clone();
        let sql = sql.replace("$A", A).replace("$B", B);
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&db)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
    for corruption in CORRUPTIONS {
        owner(corruption.break_it).await;
        let (code, stdout, stderr) = verify();
        assert_eq!(code, 1, "{}: {stdout}{stderr}", corruption.invariant);
        assert!(
            stdout
                .lines()
                .any(|line| line.starts_with(&format!("{}: ", corruption.invariant))),
            "verify names {:?}: {stdout}",
            corruption.invariant
        );
        owner(corruption.mend_it).await;
        let (code, stdout, stderr) = verify();
        assert_eq!(
            code, 0,
            "mended {:?}: {stdout}{stderr}",
            corruption.invariant
        );
    }
}
