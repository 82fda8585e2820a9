//! Logging: `tracing` with an `EnvFilter` (`RUST_LOG` wins over `log.level`), human-readable text
//! by default and JSON lines with `log.format = "json"`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::settings::{LogFormat, LogSettings};

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // lapin logs every returned (unroutable) message with its whole body, which holds
        // personal data; the relay reports those itself, without the body.
        .add_directive(
            "lapin::returned_messages=error"
                .parse()
                .expect("valid directive"),
        );
    let registry = tracing_subscriber::registry().with(filter);
    // A second initialisation (tests run several applications in one process) is harmless.
    let _ = match settings.format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}
