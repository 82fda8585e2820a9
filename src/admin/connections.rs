//! Reading, creating and updating connections. A change applies to the next event: the worker
//! reads the connections of every batch inside its transaction.

use super::{Actor, Admin, AdminError, views::ConnectionView};
use crate::db::{audit, connections};
use crate::domain::connection::{ConnectionSettings, ConnectionSpec};

impl Admin {
    pub async fn list_connections(&self) -> Result<Vec<ConnectionView>, AdminError> {
        let mut conn = self.pool.acquire().await?;
        let held = crate::db::leavers::held_counts(&mut conn).await?;
        Ok(connections::list(&mut conn)
            .await?
            .iter()
            .map(|c| {
                let mut view = self.with_state(c);
                view.held_removals = held
                    .iter()
                    .find(|(pool, id, _)| *pool == view.user_pool_id && *id == view.identifier)
                    .map_or(0, |(_, _, n)| *n);
                view
            })
            .collect())
    }

    /// The view of a stored connection, with its directory's state in this process.
    fn with_state(&self, stored: &connections::Stored) -> ConnectionView {
        let mut view = ConnectionView::of_stored(stored);
        if let (Ok(settings), Some(directories)) = (stored, &self.directories)
            && let Some(directory) = &settings.directory
        {
            view.directory_state = Some(match directories.status(directory) {
                Some(status) => serde_json::to_value(status).expect("serialises"),
                None => serde_json::json!({"state": "ok", "token": false, "calls": 0}),
            });
        }
        view
    }

    pub async fn get_connection(
        &self,
        pool: &str,
        identifier: &str,
    ) -> Result<ConnectionView, AdminError> {
        let mut conn = self.pool.acquire().await?;
        let mut view = connections::get_stored(&mut conn, pool, identifier)
            .await?
            .map(|c| self.with_state(&c))
            .ok_or_else(|| {
                AdminError::NotFound(format!("no connection {identifier} in user pool {pool}"))
            })?;
        view.held_removals = i64::try_from(
            crate::db::leavers::held(&mut conn, pool, identifier)
                .await?
                .len(),
        )
        .unwrap_or(i64::MAX);
        Ok(view)
    }

    /// Creates or replaces a connection; returns it and whether it was created. The identifier and
    /// pool come from the path: a body naming others is refused.
    pub async fn put_connection(
        &self,
        pool: &str,
        identifier: &str,
        mut spec: ConnectionSpec,
        actor: &Actor,
    ) -> Result<(ConnectionView, bool), AdminError> {
        fix_path_keys(&mut spec, pool, identifier)?;
        let settings = ConnectionSettings::validate(&spec)
            .map_err(|e| AdminError::invalid("invalid_field", Some(e.field), e.to_string()))?;

        let mut tx = self.pool.begin().await?;
        let stored = connections::get_stored(&mut tx, pool, identifier).await?;
        keeps_secret_where_it_was(&settings, stored.as_ref())?;
        let before = stored.map(|c| ConnectionView::of_stored(&c));
        let upserted = connections::upsert(&mut tx, &settings).await?;
        if let Err(shared) =
            connections::sync_unique_attributes(&mut tx, &[pool.to_owned()]).await?
        {
            return Err(AdminError::invalid(
                "invalid_field",
                Some("unique_attributes"),
                format!("unique_attributes: {shared}"),
            ));
        }
        let created = upserted.created;
        let after = ConnectionView::from(&ConnectionSettings {
            version: upserted.version,
            ..settings
        });
        audit::record(
            &mut tx,
            &actor.name,
            if created {
                "connection.create"
            } else {
                "connection.update"
            },
            &format!("connection/{pool}/{identifier}"),
            before
                .as_ref()
                .map(|b| serde_json::to_value(b).expect("serialises")),
            Some(serde_json::to_value(&after).expect("serialises")),
        )
        .await?;
        tx.commit().await?;
        Ok((after, created))
    }

    pub async fn audit(
        &self,
        before: Option<i64>,
        limit: i64,
        filter: &audit::AuditFilter,
    ) -> Result<super::views::Page<super::views::AuditView>, AdminError> {
        let limit = super::page_limit(limit)?;
        let mut conn = self.pool.acquire().await?;
        let mut rows = audit::list(&mut conn, before, limit + 1, filter).await?;
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok(super::views::Page {
            items: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        })
    }
}

/// The identifier and pool of a connection come from the path: a body naming others is refused.
pub(super) fn fix_path_keys(
    spec: &mut ConnectionSpec,
    pool: &str,
    identifier: &str,
) -> Result<(), AdminError> {
    for (field, given, fixed) in [
        ("identifier", spec.identifier.as_deref(), identifier),
        ("user_pool_id", spec.user_pool_id.as_deref(), pool),
    ] {
        if let Some(given) = given
            && given != fixed
        {
            return Err(AdminError::invalid(
                "invalid_field",
                Some(field),
                format!("{field}: is fixed by the path ({fixed:?}), the body says {given:?}"),
            ));
        }
    }
    spec.identifier = Some(identifier.to_owned());
    spec.user_pool_id = Some(pool.to_owned());
    Ok(())
}

/// What an admin may write as a directory's secret through the API: the secret itself; `"set"`
/// (as shown) to keep the stored one, but only for the same kind, base and app, so that a stored
/// secret is never sent to a base it was not given for; a `${NAME}` reference only as stored
/// (written in the configuration file), since it would send the worker's environment variable
/// `NAME` to whichever base the connection names.
fn keeps_secret_where_it_was(
    settings: &ConnectionSettings,
    stored: Option<&connections::Stored>,
) -> Result<(), AdminError> {
    let Some(new) = settings.directory.as_ref() else {
        return Ok(());
    };
    let old = match stored {
        Some(Ok(old)) => old.directory.as_ref(),
        _ => None,
    };
    let same_place = old.is_some_and(|old| {
        old.kind == new.kind && old.api_base == new.api_base && old.app == new.app
    });
    let key = match new.kind {
        crate::domain::directory::DirectoryKind::WeCom => "directory.corp_secret",
        _ => "directory.app_secret",
    };
    if new.secret.is_shown_placeholder() && !same_place {
        return Err(AdminError::invalid(
            "invalid_field",
            Some(key),
            format!(
                "{key}: \"set\" keeps the stored secret only for the same kind, api_base and app; \
                 give the secret"
            ),
        ));
    }
    let unchanged = same_place && old.is_some_and(|old| old.secret == new.secret);
    if new.secret.variable().is_some() && !unchanged {
        return Err(AdminError::invalid(
            "invalid_field",
            Some(key),
            format!(
                "{key}: a ${{NAME}} reference to the worker's environment can be written only in \
                 the configuration file; give the secret itself"
            ),
        ));
    }
    Ok(())
}
