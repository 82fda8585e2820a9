//! Failure injection for the fault tests: `IDSYNC_FAILPOINTS=name[,name...]`, read once, makes the
//! named points fail (a panic, an exit at a precise moment) so that a test can force a window a
//! real crash would hit only by chance. Unset in production, where a check costs one load.

use std::sync::OnceLock;

static ARMED: OnceLock<Vec<String>> = OnceLock::new();

/// Whether the point `name` is armed.
pub fn armed(name: &str) -> bool {
    ARMED
        .get_or_init(|| {
            std::env::var("IDSYNC_FAILPOINTS")
                .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|p| p == name)
}
