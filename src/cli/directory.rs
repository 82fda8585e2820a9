//! `identity-sync directory fetch --connection C --external-id X [--pool P]`: asks a stored
//! connection's directory about one person, as the worker would (one call, not cached), and
//! prints the record and what the connection's mapping makes of it.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::{
    db,
    directory::{Directories, Lookup},
    domain::{
        MatchKey,
        directory::{Finding, merge_record},
        login::{DirectoryNote, NormalizedFields, Profile},
    },
    metrics::Metrics,
    settings::Settings,
};

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The connection's user pool; needed only when pools share the identifier.
    #[arg(long)]
    pool: Option<String>,
    /// The connection's identifier.
    #[arg(long)]
    connection: String,
    /// The person's id at the source, as a login's `external_id` carries it.
    #[arg(long)]
    external_id: String,
}

pub async fn fetch(args: FetchArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let pool = db::unbounded_side_pool(&settings.database, "directory", 1)?;
    let mut conn = pool.acquire().await.context("connecting to the database")?;
    let mut stored: Vec<_> = db::connections::list(&mut conn)
        .await
        .context("reading the connections")?
        .into_iter()
        .filter(|c| {
            let (pool, identifier) = match c {
                Ok(s) => (
                    s.user_pool_id.as_str().to_owned(),
                    s.identifier.as_str().to_owned(),
                ),
                Err(u) => u.key(),
            };
            identifier == args.connection && args.pool.as_ref().is_none_or(|p| *p == pool)
        })
        .collect();
    if stored.len() > 1 {
        anyhow::bail!(
            "user pools share the connection {:?}: name one with --pool",
            args.connection
        );
    }
    let connection = match stored.pop() {
        None => anyhow::bail!("no connection {:?} stored", args.connection),
        Some(Err(unreadable)) => anyhow::bail!(
            "connection {:?} cannot be read: {}",
            args.connection,
            unreadable.problem
        ),
        Some(Ok(connection)) => connection,
    };
    let Some(directory) = &connection.directory else {
        anyhow::bail!(
            "connection {:?} has no [connections.directory]",
            args.connection
        );
    };
    let directories = Directories::new(Metrics::new());
    let record = match directories
        .lookup(&args.connection, directory, &args.external_id)
        .await
    {
        Lookup::Found(record) => record,
        Lookup::NotFound => {
            println!("the directory does not know {:?}", args.external_id);
            return Ok(ExitCode::FAILURE);
        }
        Lookup::Unavailable(unavailable) => {
            println!(
                "the directory could not be asked ({}): {}",
                unavailable.state.as_str(),
                unavailable.detail
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(record.clone())).expect("JSON")
    );
    let inactive = directory.kind.inactive(&record);
    let mut raw = serde_json::Map::new();
    merge_record(&mut raw, &record);
    let profile = Profile::from_map(&raw).map_err(|e| anyhow::anyhow!("{e}"))?;
    let note = DirectoryNote {
        finding: Finding::Found { inactive },
        event_profile: Some(Profile::default()),
    };
    let fields = NormalizedFields::with_directory(&profile, &note, &connection);
    println!("what connection {:?} makes of it:", args.connection);
    for (target, template) in connection.mapping.effective() {
        let key: MatchKey = target.parse().expect("mapping targets are valid");
        println!(
            "  {target} = {template:?} -> {}",
            super::check::shown(&fields, &key)
                .as_deref()
                .unwrap_or("nothing")
        );
    }
    if inactive {
        println!(
            "the directory marks this person inactive: their logins are rejected (directory_inactive)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
