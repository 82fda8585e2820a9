//! Why a login was decided as it was: the decision and its evidence (contract section 7).

use super::{
    Admin, AdminError,
    views::{DecisionCountView, DecisionStatsView, DecisionView},
};
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

    /// The decisions of the last `hours` hours (1 to 168), by hour, connection and outcome: what
    /// the console's dashboard draws.
    /// Gives up past `limit` (the query reads every decision of the window) with 503.
    pub async fn decision_stats(
        &self,
        hours: i64,
        limit: std::time::Duration,
    ) -> Result<DecisionStatsView, AdminError> {
        if !(1..=168).contains(&hours) {
            return Err(AdminError::invalid(
                "invalid_query",
                Some("hours"),
                format!("hours must be from 1 to 168, got {hours}"),
            ));
        }
        let to = chrono::Utc::now();
        let from = to - chrono::Duration::hours(hours);
        let mut tx = self.pool.begin_with("BEGIN READ ONLY").await?;
        let millis = limit.as_millis().clamp(1, i32::MAX as u128);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL statement_timeout = {millis}"
        )))
        .execute(&mut *tx)
        .await?;
        let rows = processed::counts(&mut tx, from).await?;
        tx.rollback().await?;
        Ok(DecisionStatsView {
            from,
            to,
            hours,
            rows: rows
                .into_iter()
                .map(|r| DecisionCountView {
                    hour: r.hour,
                    user_pool_id: r.user_pool_id,
                    connection: r.connection,
                    outcome: r.outcome,
                    count: r.count,
                })
                .collect(),
        })
    }
}
