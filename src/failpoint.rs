//! Failure injection for the fault tests, compiled only with the `failpoints` feature (the test
//! script enables it; a release build has none of this): `IDSYNC_FAILPOINTS=name[,name=value...]`,
//! read once, makes the named points fail (a panic, an exit at a precise moment) so that a test
//! can force a window a real crash would hit only by chance.

use std::sync::OnceLock;

static ARMED: OnceLock<Vec<(String, Option<String>)>> = OnceLock::new();

fn points() -> &'static [(String, Option<String>)] {
    ARMED.get_or_init(|| {
        std::env::var("IDSYNC_FAILPOINTS")
            .map(|v| {
                v.split(',')
                    .map(|p| match p.split_once('=') {
                        Some((name, value)) => (name.trim().to_owned(), Some(value.to_owned())),
                        None => (p.trim().to_owned(), None),
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Whether the point `name` is armed.
pub fn armed(name: &str) -> bool {
    points().iter().any(|(p, _)| p == name)
}

/// The value the point `name` is armed with (`name=value`), if it is.
pub fn value(name: &str) -> Option<&'static str> {
    points()
        .iter()
        .find(|(p, _)| p == name)
        .and_then(|(_, v)| v.as_deref())
}
