//! `identity-sync connections check FILE [--profile PROFILE]`: checks the `[[connections]]` of a
//! configuration file without starting anything, and shows what each mapping makes of a sample
//! profile. Every problem is reported, each naming its connection and its key.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use config::{Config, File, FileFormat};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::directory::Directories;
use crate::domain::{
    ConnectionSettings, MatchKey,
    connection::ConnectionSpec,
    directory::DirectorySettings,
    login::{Field, NormalizedFields, Profile},
};
use crate::metrics::Metrics;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file whose `[[connections]]` to check.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// A login's `data.profile` as JSON: show what each connection's mapping makes of it, and
    /// report a mapping or a match field it leaves empty.
    #[arg(long, value_name = "PROFILE")]
    profile: Option<PathBuf>,
    /// Try the profile on this connection only (the others are still checked).
    #[arg(long, value_name = "IDENTIFIER", requires = "profile")]
    connection: Option<String>,
    /// Also obtain a token from each connection's directory with its credentials (a call to
    /// the source's API): whether they work.
    #[arg(long)]
    online: bool,
}

#[derive(Deserialize)]
struct OnlyConnections {
    #[serde(default)]
    connections: Vec<ConnectionSpec>,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let specs: OnlyConnections = Config::builder()
        .add_source(File::from(args.file.as_path()).format(FileFormat::Toml))
        .build()
        .and_then(Config::try_deserialize)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let profile = match &args.profile {
        None => None,
        Some(path) => Some(read_profile(path)?),
    };
    let mut problems = 0;
    for (i, spec) in specs.connections.iter().enumerate() {
        let name = format!(
            "connections[{i}] ({})",
            spec.identifier.as_deref().unwrap_or("?")
        );
        let settings = match ConnectionSettings::validate(spec) {
            Ok(settings) => settings,
            Err(error) => {
                println!("{name}: {error}");
                problems += 1;
                continue;
            }
        };
        println!("{name}: {}", summary(&settings));
        if let Some(directory) = &settings.directory {
            problems += check_directory(&name, &settings, directory, args.online).await;
        }
        let tried = args
            .connection
            .as_deref()
            .is_none_or(|c| c == settings.identifier.as_str());
        if let (Some(profile), true) = (&profile, tried) {
            problems += against(&name, &settings, profile);
        }
    }
    if specs.connections.is_empty() {
        println!("no [[connections]] in {}", args.file.display());
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{problems} problem(s)");
        ExitCode::FAILURE
    })
}

/// Shows a connection's directory and, `online`, tries its credentials; returns the number of
/// problems.
async fn check_directory(
    name: &str,
    settings: &ConnectionSettings,
    directory: &DirectorySettings,
    online: bool,
) -> usize {
    println!(
        "  directory: {} app {} at {} (id_field {}, fetch {}, on_unavailable {})",
        directory.kind,
        directory.app,
        directory.api_base,
        directory.id_field,
        directory.fetch,
        directory.on_unavailable
    );
    if let Err(error) = directory.secret.reveal() {
        println!("{name}: directory secret: {error}");
        return 1;
    }
    if !online {
        return 0;
    }
    let directories = Directories::new(Metrics::new());
    match directories
        .check(settings.identifier.as_str(), directory)
        .await
    {
        Ok(()) => {
            println!("  directory: the credentials work (a token was obtained)");
            0
        }
        Err(error) => {
            println!("{name}: directory: no token: {error}");
            1
        }
    }
}

fn read_profile(path: &PathBuf) -> anyhow::Result<Profile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Value::Object(map) = value else {
        anyhow::bail!("{} is not a JSON object", path.display());
    };
    Profile::from_map(&map).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn summary(settings: &ConnectionSettings) -> String {
    let fields: Vec<String> = settings
        .match_fields
        .iter()
        .map(|f| f.to_string())
        .collect();
    let mapped = settings.mapping.effective().len();
    format!(
        "ok (association {}, match_fields [{}] with match_rule {}, {mapped} mapped field(s))",
        settings.association,
        fields.join(", "),
        settings.match_rule
    )
}

/// Prints what the mapping makes of `profile`; returns the number of problems: a mapping that
/// finds nothing, or match fields all left empty (the login could match nobody).
fn against(name: &str, settings: &ConnectionSettings, profile: &Profile) -> usize {
    let fields = NormalizedFields::of(profile, settings);
    let mut problems = 0;
    for (target, template) in settings.mapping.effective() {
        let key: MatchKey = target.parse().expect("mapping targets are valid");
        let shown = shown(&fields, &key);
        println!(
            "  {target} = {template:?} -> {}",
            shown.as_deref().unwrap_or("nothing")
        );
        if shown.is_none() && !standard_present(&key, &profile.raw) {
            println!("{name}: mapping {target:?} finds nothing in the profile");
            problems += 1;
        }
    }
    let empty: Vec<String> = settings
        .match_fields
        .iter()
        .filter(|k| shown(&fields, k).is_none())
        .map(|k| k.to_string())
        .collect();
    if empty.len() == settings.match_fields.len() {
        println!(
            "{name}: every match field is empty for this profile ({}): it can match nobody",
            empty.join(", ")
        );
        problems += 1;
    } else if !empty.is_empty() {
        println!("  not in this profile: {}", empty.join(", "));
    }
    problems
}

/// Whether a preset's template stood aside for the profile's own standard name.
fn standard_present(key: &MatchKey, raw: &Map<String, Value>) -> bool {
    key.field()
        .is_some_and(|f| raw.get(f.as_str()).is_some_and(|v| !v.is_null()))
}

/// What the login carries in `key`, as the check prints it; `None` when it carries nothing.
pub(super) fn shown(fields: &NormalizedFields, key: &MatchKey) -> Option<String> {
    fn of<T: std::fmt::Display>(field: &Field<T>, verified: Option<bool>) -> Option<String> {
        let flag = match verified {
            Some(true) => " (verified)",
            Some(false) => " (not verified)",
            None => "",
        };
        Some(match field {
            Field::Absent => return None,
            Field::Malformed(raw) => format!("{raw:?}, malformed"),
            Field::Valid {
                suspicious: Some(raw),
                ..
            } => format!("{raw:?}, a lookalike"),
            Field::Valid { value, .. } => format!("{value}{flag}"),
        })
    }
    match key {
        MatchKey::Field(crate::domain::MatchField::Email) => {
            of(&fields.email, Some(fields.email_verified))
        }
        MatchKey::Field(crate::domain::MatchField::Phone) => {
            of(&fields.phone, Some(fields.phone_verified))
        }
        MatchKey::Field(crate::domain::MatchField::Username) => of(&fields.username, None),
        MatchKey::Attribute(name) => fields
            .attributes
            .get(name)
            .and_then(|f| of(f, Some(fields.verified_attributes.contains(name)))),
    }
}
