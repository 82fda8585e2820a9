//! Why a login was decided as it was: the decision and its evidence (contract section 7).

use super::{Admin, AdminError, views::DecisionView};
use crate::db::processed;

impl Admin {
    /// The decision of one login. Several sources may use the same event id: then `source` is
    /// needed to say which.
    pub async fn get_decision(
        &self,
        event_id: &str,
        source: Option<&str>,
    ) -> Result<DecisionView, AdminError> {
        let mut conn = self.pool.acquire().await?;
        let mut rows = processed::decisions(&mut conn, event_id, source).await?;
        match rows.len() {
            0 => Err(AdminError::NotFound(format!(
                "no decision for event {event_id:?}{}",
                source
                    .map(|s| format!(" of source {s:?}"))
                    .unwrap_or_default()
            ))),
            1 => Ok(rows.remove(0).into()),
            _ => Err(AdminError::invalid(
                "source_required",
                Some("source"),
                format!(
                    "event id {event_id:?} was used by {} sources: say which with source",
                    rows.len()
                ),
            )),
        }
    }
}
