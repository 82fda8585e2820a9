//! `identity-sync users import FILE`: one JSON account per line, each line all-or-nothing, bad or
//! conflicting lines reported with their number and skipped; importing the same file again adds
//! nothing.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    accounts::{self, AccountError, AccountInput, Created},
    db,
    domain::CountryCode,
    settings::Settings,
};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// JSON-lines file; `-` reads standard input.
    pub file: PathBuf,
    /// Calling code for phone numbers written without `+` (e.g. 86).
    #[arg(long, value_name = "CODE")]
    pub default_country_code: Option<String>,
}

pub async fn run(args: ImportArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let default_country = args
        .default_country_code
        .as_deref()
        .map(CountryCode::parse)
        .transpose()
        .map_err(|m| anyhow::anyhow!("--default-country-code: {m}"))?;
    let reader: Box<dyn tokio::io::AsyncRead + Unpin> = if args.file.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&args.file)
                .await
                .with_context(|| format!("cannot open {}", args.file.display()))?,
        )
    };
    let pool = db::connect_and_migrate(&settings.database).await?;
    let mut lines = BufReader::new(reader).lines();
    let (mut added, mut unchanged, mut failed, mut number) = (0u64, 0u64, 0u64, 0u64);
    while let Some(line) = lines.next_line().await.context("reading the file")? {
        number += 1;
        // Excel and PowerShell start UTF-8 files with a byte order mark.
        let line = if number == 1 {
            line.strip_prefix('\u{feff}')
                .map(str::to_owned)
                .unwrap_or(line)
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        let result = match serde_json::from_str::<AccountInput>(&line) {
            Err(e) => Err(format!("not a valid account: {e}")),
            Ok(input) => match input.normalise(default_country.as_ref()) {
                Err(e) => Err(e.to_string()),
                Ok(record) => match accounts::create(&pool, &record, input.id.is_some()).await {
                    Ok(created) => Ok(created),
                    Err(AccountError::Database(e)) if db::is_transient(&e) => {
                        return Err(e).context(format!("line {number}: database unavailable"));
                    }
                    Err(e) => Err(e.to_string()),
                },
            },
        };
        match result {
            Ok(Created::Added(_)) => added += 1,
            Ok(Created::Unchanged(_)) => unchanged += 1,
            Err(reason) => {
                failed += 1;
                eprintln!("line {number}: {reason}");
            }
        }
    }
    println!("added {added}, already present {unchanged}, failed {failed}");
    pool.close().await;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
