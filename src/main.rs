use std::process::ExitCode;

use clap::Parser;
use identity_sync::{cli, settings::Settings, telemetry};

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("identity-sync: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(cli::execute(args.command, settings)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("identity-sync: {error:#}");
            // A configuration mistake found late (a token variable missing, say) exits like one
            // found at load.
            if error
                .downcast_ref::<identity_sync::settings::SettingsError>()
                .is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
