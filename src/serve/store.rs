//! Storage of templates, experiments (with their journal, report and JUnit), schedules, the
//! lever's history and replica heartbeats: one schema, in SQLite or PostgreSQL through sqlx's
//! `Any` driver. Times are Unix milliseconds; JSON is kept as text.

use serde::Serialize;
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};
use std::borrow::Cow;
use std::path::Path;

/// A storage failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one this server knows.
    #[error("unsupported database URL {0}: use sqlite:FILE or postgres://USER@HOST/DB")]
    Url(String),
    /// The database could not be opened.
    #[error("cannot open the database {url}: {source}")]
    Open {
        /// The URL, without its password.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A statement failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// A stored JSON column did not parse.
    #[error("corrupt JSON in the database: {0}")]
    Json(#[from] serde_json::Error),
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Whether it is SQLite (one process owns it; no other replica can hold a run).
    pub sqlite: bool,
}

/// One stored template version.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateVersion {
    pub name: String,
    /// 1, 2, …
    pub version: i64,
    /// The template.
    pub body: Value,
    /// When it was stored, ms.
    pub created_at: i64,
    /// Who stored it.
    pub created_by: String,
}

/// A stored experiment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentRow {
    pub id: String,
    /// The stored template it ran, if any.
    pub template_name: Option<String>,
    /// That template's version.
    pub template_version: Option<i64>,
    /// The schedule that started it, if any.
    pub schedule: Option<String>,
    /// FIS state name.
    pub state: String,
    /// Why it ended as it did.
    pub reason: Option<String>,
    /// Seed of its target selection.
    pub seed: Option<u64>,
    /// The hosts its targets resolved to when it started.
    pub hosts: Vec<String>,
    /// Who started it.
    pub created_by: String,
    /// When it was created, ms.
    pub created_at: i64,
    /// When it ended, ms.
    pub ended_at: Option<i64>,
    /// The report, once it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
    /// The template it ran.
    #[serde(skip)]
    pub template: Value,
    /// The journal file while it runs.
    #[serde(skip)]
    pub journal_path: String,
    /// The replica running it.
    #[serde(skip)]
    pub replica: String,
}

impl ExperimentRow {
    /// Why an experiment recorded without running (cancelled, failed to resolve) has no
    /// `what` (a report, a JUnit file): its state and reason.
    pub fn never_ran(&self, what: &str) -> String {
        format!(
            "{} has no {what}: it ended {} without running{}",
            self.id,
            self.state,
            self.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        )
    }
}

/// A new experiment.
pub struct NewExperiment<'a> {
    pub id: &'a str,
    /// Stored template name and version, if it came from one.
    pub template_ref: Option<(&'a str, i64)>,
    pub template: &'a Value,
    /// The schedule that started it.
    pub schedule: Option<&'a str>,
    /// Initial state.
    pub state: &'a str,
    /// Why, for a refused one.
    pub reason: Option<String>,
    pub seed: Option<u64>,
    pub hosts: Vec<String>,
    /// The journal file.
    pub journal_path: &'a str,
    pub replica: &'a str,
    /// Who.
    pub created_by: &'a str,
}

/// One lever change.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeverChange {
    /// Engaged after the change.
    pub engaged: bool,
    /// Why.
    pub reason: String,
    /// Who.
    pub changed_by: String,
    /// When, ms.
    pub changed_at: i64,
}

/// A stored schedule.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub name: String,
    /// Its definition as posted.
    pub spec: Value,
    pub paused: bool,
    /// Fire times up to this instant (ms) have been decided on.
    pub checked_until: i64,
}

/// What became of one fire time of a schedule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRun {
    pub schedule: String,
    /// The fire time, ms.
    pub fire_at: i64,
    /// `started`, `missed`, `skipped` or `cancelled`.
    pub outcome: String,
    /// The experiment, when one was created.
    pub experiment_id: Option<String>,
    /// Why it did not start.
    pub reason: Option<String>,
}

const INIT: &str = include_str!("migrations/0001_init.sql");

fn migrator() -> Migrator {
    Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            1,
            Cow::Borrowed("init"),
            MigrationType::Simple,
            Cow::Borrowed(INIT),
            false,
        )]),
        ..Migrator::DEFAULT
    }
}

fn opt_str(row: &AnyRow, col: &str) -> Result<Option<String>, sqlx::Error> {
    row.try_get::<Option<String>, _>(col)
}

impl Store {
    /// Opens (creating a SQLite file and its directory when missing) and migrates.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, sqlite) = if let Some(file) = url.strip_prefix("sqlite:") {
            let file = file.trim_start_matches("//");
            let path = file.split('?').next().unwrap_or(file);
            if path != ":memory:" {
                if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                        url: url.to_string(),
                        source: sqlx::Error::Io(e),
                    })?;
                }
            }
            let url = if file.contains('?') {
                format!("sqlite:{file}")
            } else {
                format!("sqlite:{file}?mode=rwc")
            };
            (url, true)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_string(), false)
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        // An in-memory SQLite database lives as long as its one connection.
        let max = if url.contains(":memory:") { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(&url)
            .await
            .map_err(|source| StoreError::Open {
                url: redact(&url),
                source,
            })?;
        migrator().run(&pool).await?;
        Ok(Store { pool, sqlite })
    }

    /// Stores a new version of a template; returns the version.
    pub async fn put_template(&self, name: &str, body: &Value, by: &str) -> Result<i64, StoreError> {
        let text = body.to_string();
        loop {
            let latest: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM templates WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?
                .try_get("v")?;
            let version = latest.unwrap_or(0) + 1;
            let r = sqlx::query(
                "INSERT INTO templates (name, version, body, created_at, created_by) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(name)
            .bind(version)
            .bind(&text)
            .bind(now_ms())
            .bind(by)
            .execute(&self.pool)
            .await;
            match r {
                Ok(_) => return Ok(version),
                // Another writer took this version number: take the next.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn template_row(row: &AnyRow) -> Result<TemplateVersion, StoreError> {
        Ok(TemplateVersion {
            name: row.try_get("name")?,
            version: row.try_get("version")?,
            body: serde_json::from_str(&row.try_get::<String, _>("body")?)?,
            created_at: row.try_get("created_at")?,
            created_by: row.try_get("created_by")?,
        })
    }

    /// A template's latest version, or a given one.
    pub async fn template(&self, name: &str, version: Option<i64>) -> Result<Option<TemplateVersion>, StoreError> {
        let row = match version {
            Some(v) => {
                sqlx::query("SELECT * FROM templates WHERE name = $1 AND version = $2")
                    .bind(name)
                    .bind(v)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM templates WHERE name = $1 ORDER BY version DESC LIMIT 1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.as_ref().map(Self::template_row).transpose()
    }

    /// Every version of a template, oldest first.
    pub async fn template_versions(&self, name: &str) -> Result<Vec<TemplateVersion>, StoreError> {
        sqlx::query("SELECT * FROM templates WHERE name = $1 ORDER BY version")
            .bind(name)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Self::template_row)
            .collect()
    }

    /// The latest version of every template, by name.
    pub async fn templates(&self) -> Result<Vec<TemplateVersion>, StoreError> {
        sqlx::query(
            "SELECT t.* FROM templates t JOIN (SELECT name, MAX(version) AS v FROM templates GROUP BY name) l \
             ON t.name = l.name AND t.version = l.v ORDER BY t.name",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(Self::template_row)
        .collect()
    }

    /// Records a new experiment.
    pub async fn insert_experiment(&self, e: NewExperiment<'_>) -> Result<(), StoreError> {
        let final_state = matches!(e.state, "cancelled" | "failed");
        sqlx::query(
            "INSERT INTO experiments (id, template_name, template_version, template, schedule, state, reason, seed, \
             hosts, journal_path, replica, created_by, created_at, ended_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(e.id)
        .bind(e.template_ref.map(|(n, _)| n.to_string()))
        .bind(e.template_ref.map(|(_, v)| v))
        .bind(e.template.to_string())
        .bind(e.schedule.map(str::to_string))
        .bind(e.state)
        .bind(e.reason)
        // Seeds are u64; the column is signed: stored as the same 64 bits.
        .bind(e.seed.map(|s| s as i64))
        .bind(serde_json::to_string(&e.hosts)?)
        .bind(e.journal_path)
        .bind(e.replica)
        .bind(e.created_by)
        .bind(now_ms())
        .bind(final_state.then(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records how an experiment ended, with its journal lines.
    pub async fn finish_experiment(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        report: Option<&Value>,
        junit: &str,
        journal: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (seq, line) in journal.iter().enumerate() {
            sqlx::query("INSERT INTO journal (experiment_id, seq, entry) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(seq as i64)
                .bind(line)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "UPDATE experiments SET state = $1, reason = $2, report = $3, junit = $4, ended_at = $5 WHERE id = $6",
        )
        .bind(state)
        .bind(reason.map(str::to_string))
        .bind(report.map(Value::to_string))
        .bind(junit)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks a running experiment `stopping` (not one that has ended meanwhile).
    pub async fn stopping(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE experiments SET state = 'stopping' WHERE id = $1 AND state = 'running'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn experiment_row(row: &AnyRow) -> Result<ExperimentRow, StoreError> {
        Ok(ExperimentRow {
            id: row.try_get("id")?,
            template_name: opt_str(row, "template_name")?,
            template_version: row.try_get("template_version")?,
            schedule: opt_str(row, "schedule")?,
            state: row.try_get("state")?,
            reason: opt_str(row, "reason")?,
            // Stored as the same 64 bits in a signed column.
            seed: row.try_get::<Option<i64>, _>("seed")?.map(|s| s as u64),
            hosts: serde_json::from_str(&row.try_get::<String, _>("hosts")?)?,
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
            ended_at: row.try_get("ended_at")?,
            report: opt_str(row, "report")?.map(|r| serde_json::from_str(&r)).transpose()?,
            template: serde_json::from_str(&row.try_get::<String, _>("template")?)?,
            journal_path: row.try_get("journal_path")?,
            replica: row.try_get("replica")?,
        })
    }

    /// One experiment.
    pub async fn experiment(&self, id: &str) -> Result<Option<ExperimentRow>, StoreError> {
        sqlx::query("SELECT * FROM experiments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(Self::experiment_row)
            .transpose()
    }

    /// Experiments, newest first, optionally in one state, at most `limit`.
    pub async fn experiments(&self, state: Option<&str>, limit: i64) -> Result<Vec<ExperimentRow>, StoreError> {
        let rows = match state {
            Some(s) => {
                sqlx::query("SELECT * FROM experiments WHERE state = $1 ORDER BY created_at DESC, id LIMIT $2")
                    .bind(s)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM experiments ORDER BY created_at DESC, id LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(Self::experiment_row).collect()
    }

    /// Experiments not in a final state.
    pub async fn unfinished(&self) -> Result<Vec<ExperimentRow>, StoreError> {
        sqlx::query("SELECT * FROM experiments WHERE state IN ('pending', 'initiating', 'running', 'stopping')")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Self::experiment_row)
            .collect()
    }

    /// The stored journal lines of an experiment.
    pub async fn journal(&self, id: &str) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query("SELECT entry FROM journal WHERE experiment_id = $1 ORDER BY seq")
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("entry"))
                .collect::<Result<_, _>>()?,
        )
    }

    /// The stored JUnit XML of an experiment.
    pub async fn junit(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query("SELECT junit FROM experiments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| opt_str(&r, "junit"))
            .transpose()?
            .flatten())
    }

    /// Experiment counts by state.
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            sqlx::query("SELECT state, COUNT(*) AS n FROM experiments GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok::<_, sqlx::Error>((r.try_get("state")?, r.try_get("n")?)))
                .collect::<Result<_, _>>()?,
        )
    }

    /// The lever now (disengaged when it never changed).
    pub async fn lever(&self) -> Result<Option<LeverChange>, StoreError> {
        Ok(self.lever_history(1).await?.into_iter().next())
    }

    /// The lever's last `limit` changes, newest first.
    pub async fn lever_history(&self, limit: i64) -> Result<Vec<LeverChange>, StoreError> {
        sqlx::query("SELECT * FROM lever_history ORDER BY seq DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(LeverChange {
                    engaged: r.try_get::<i64, _>("engaged")? != 0,
                    reason: r.try_get("reason")?,
                    changed_by: r.try_get("changed_by")?,
                    changed_at: r.try_get("changed_at")?,
                })
            })
            .collect()
    }

    /// Records a lever change.
    pub async fn set_lever(&self, engaged: bool, reason: &str, by: &str) -> Result<LeverChange, StoreError> {
        loop {
            let latest: Option<i64> = sqlx::query("SELECT MAX(seq) AS s FROM lever_history")
                .fetch_one(&self.pool)
                .await?
                .try_get("s")?;
            let change = LeverChange {
                engaged,
                reason: reason.to_string(),
                changed_by: by.to_string(),
                changed_at: now_ms(),
            };
            let r = sqlx::query(
                "INSERT INTO lever_history (seq, engaged, reason, changed_by, changed_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(latest.unwrap_or(0) + 1)
            .bind(i64::from(engaged))
            .bind(reason)
            .bind(by)
            .bind(change.changed_at)
            .execute(&self.pool)
            .await;
            match r {
                Ok(_) => return Ok(change),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Creates a schedule; false when the name is taken.
    pub async fn insert_schedule(&self, name: &str, spec: &Value, by: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO schedules (name, spec, paused, checked_until, created_at, created_by) VALUES ($1, $2, 0, $3, $4, $5)",
        )
        .bind(name)
        .bind(spec.to_string())
        .bind(now)
        .bind(now)
        .bind(by)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every schedule.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        sqlx::query("SELECT * FROM schedules ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(ScheduleRow {
                    name: r.try_get("name")?,
                    spec: serde_json::from_str(&r.try_get::<String, _>("spec")?)?,
                    paused: r.try_get::<i64, _>("paused")? != 0,
                    checked_until: r.try_get("checked_until")?,
                })
            })
            .collect()
    }

    /// Replaces a schedule's definition (paused or not, it stays so); false when there is none.
    pub async fn update_schedule(&self, name: &str, spec: &Value) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE schedules SET spec = $1 WHERE name = $2")
            .bind(spec.to_string())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Pauses or resumes a schedule; false when there is none by that name.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE schedules SET paused = $1 WHERE name = $2")
            .bind(i64::from(paused))
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Removes a schedule (its runs stay in the history); false when there is none.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM schedules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Moves a schedule's decided-until mark forward (never back: replicas share it).
    pub async fn checked(&self, name: &str, until: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE schedules SET checked_until = $1 WHERE name = $2 AND checked_until < $1")
            .bind(until)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims a fire time of a schedule for this replica; false when another already decided it.
    pub async fn claim_run(
        &self,
        schedule: &str,
        fire_at: i64,
        outcome: &str,
        reason: Option<&str>,
        replica: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO schedule_runs (schedule, fire_at, outcome, reason, replica) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(schedule)
        .bind(fire_at)
        .bind(outcome)
        .bind(reason.map(str::to_string))
        .bind(replica)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Settles a claimed fire time: what became of it.
    pub async fn settle_run(
        &self,
        schedule: &str,
        fire_at: i64,
        outcome: &str,
        experiment_id: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE schedule_runs SET outcome = $1, experiment_id = $2, reason = $3 WHERE schedule = $4 AND fire_at = $5")
            .bind(outcome)
            .bind(experiment_id.map(str::to_string))
            .bind(reason.map(str::to_string))
            .bind(schedule)
            .bind(fire_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The decided fire times of a schedule (or of all), newest first.
    pub async fn schedule_runs(&self, schedule: Option<&str>, limit: i64) -> Result<Vec<ScheduleRun>, StoreError> {
        let rows = match schedule {
            Some(s) => {
                sqlx::query("SELECT * FROM schedule_runs WHERE schedule = $1 ORDER BY fire_at DESC LIMIT $2")
                    .bind(s)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM schedule_runs ORDER BY fire_at DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(ScheduleRun {
                    schedule: r.try_get("schedule")?,
                    fire_at: r.try_get("fire_at")?,
                    outcome: r.try_get("outcome")?,
                    experiment_id: opt_str(r, "experiment_id")?,
                    reason: opt_str(r, "reason")?,
                })
            })
            .collect()
    }

    /// The last time a schedule started a run, ms.
    pub async fn last_started(&self, schedule: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT MAX(fire_at) AS f FROM schedule_runs WHERE schedule = $1 AND outcome = 'started'")
                .bind(schedule)
                .fetch_one(&self.pool)
                .await?
                .try_get("f")?,
        )
    }

    /// Records that a replica is alive.
    pub async fn heartbeat(&self, replica: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let updated = sqlx::query("UPDATE replicas SET heartbeat_at = $1 WHERE id = $2")
            .bind(now)
            .bind(replica)
            .execute(&self.pool)
            .await?;
        if updated.rows_affected() == 0 {
            sqlx::query("INSERT INTO replicas (id, heartbeat_at) VALUES ($1, $2)")
                .bind(replica)
                .bind(now)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Replicas that have sent a heartbeat since `since` ms.
    pub async fn live_replicas(&self, since: i64) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query("SELECT id FROM replicas WHERE heartbeat_at >= $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?)
    }
}

/// The URL without the password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn templates_get_versions_and_the_lever_its_history() {
        let s = Store::open("sqlite::memory:").await.unwrap();
        let v1 = s
            .put_template("t", &serde_json::json!({"a": 1}), "alice")
            .await
            .unwrap();
        let v2 = s.put_template("t", &serde_json::json!({"a": 2}), "bob").await.unwrap();
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(s.template("t", None).await.unwrap().unwrap().body["a"], 2);
        assert_eq!(s.template("t", Some(1)).await.unwrap().unwrap().created_by, "alice");
        assert_eq!(s.templates().await.unwrap().len(), 1);

        assert!(s.lever().await.unwrap().is_none());
        s.set_lever(true, "incident", "carol").await.unwrap();
        s.set_lever(false, "over", "dave").await.unwrap();
        let h = s.lever_history(10).await.unwrap();
        assert_eq!(h.len(), 2);
        assert!(!h[0].engaged && h[0].changed_by == "dave");
        assert!(h[1].engaged && h[1].reason == "incident");
    }

    #[tokio::test]
    async fn a_fire_time_is_claimed_once() {
        let s = Store::open("sqlite::memory:").await.unwrap();
        assert!(s.claim_run("s", 1000, "started", None, "r1").await.unwrap());
        assert!(!s.claim_run("s", 1000, "started", None, "r2").await.unwrap());
        assert!(s.claim_run("s", 2000, "missed", None, "r2").await.unwrap());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite:x.db"), "sqlite:x.db");
    }
}
