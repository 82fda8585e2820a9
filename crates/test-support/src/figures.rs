//! The figures a fault or reliability test reports.

use serde_json::Value;

/// The figures a reliability test reports: printed, and written to
/// `target/reliability/<name>.json` for docs/RELIABILITY.md.
#[derive(Debug, Default, serde::Serialize)]
pub struct Figures {
    pub name: String,
    pub sent: i64,
    pub decided: i64,
    pub lost: i64,
    pub doubled: i64,
    pub faults: i64,
    pub notes: serde_json::Map<String, Value>,
}

impl Figures {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    pub fn note(&mut self, key: &str, value: impl serde::Serialize) -> &mut Self {
        self.notes
            .insert(key.to_owned(), serde_json::to_value(value).unwrap());
        self
    }

    pub fn report(&self) {
        let line = serde_json::to_string(self).unwrap();
        eprintln!("RELIABILITY {line}");
        // The workspace's target directory (this crate lives in crates/test-support).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/reliability");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{}.json", self.name)), line);
    }
}
