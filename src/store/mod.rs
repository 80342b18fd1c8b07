//! The review store (sqlx): recommendations and their lifecycle, the audit log, per-workload
//! controls and scheduled overrides. SQLite in the data directory by default (WAL,
//! `synchronous=FULL`), PostgreSQL when several replicas run; the same migrations and queries
//! run on both through sqlx's `Any` driver.
//!
//! Every state change is one conditional `UPDATE ... WHERE state = <expected>` in a
//! transaction with its audit row, committed before the caller answers: two racing decisions
//! on one recommendation cannot both win, and a repeated one changes nothing.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};
use utoipa::ToSchema;

use crate::domain::Timestamp;

/// Longest wait for a database connection before a store call fails as unavailable.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A recommendation's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecState {
    /// Waiting for a decision.
    Pending,
    /// Approved; not applied yet.
    Approved,
    /// Rejected by a person.
    Rejected,
    /// Not decided before `valid_until`.
    Expired,
    /// A newer recommendation for the same workload replaced it while pending.
    Superseded,
    /// Applied to the cluster (or published to KEDA).
    Applied,
    /// Applying it failed (`outcome` says why).
    Failed,
}

impl RecState {
    /// Every state.
    pub const ALL: [RecState; 7] = [
        RecState::Pending,
        RecState::Approved,
        RecState::Rejected,
        RecState::Expired,
        RecState::Superseded,
        RecState::Applied,
        RecState::Failed,
    ];

    /// Stable name (also the stored value).
    pub fn as_str(self) -> &'static str {
        match self {
            RecState::Pending => "pending",
            RecState::Approved => "approved",
            RecState::Rejected => "rejected",
            RecState::Expired => "expired",
            RecState::Superseded => "superseded",
            RecState::Applied => "applied",
            RecState::Failed => "failed",
        }
    }

    /// Parses a stored or query value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Why prescale recommends a change: the policy's reason, as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecommendationReason {
    /// Policy term that decided (`forecast`, `reactive_floor`, ...).
    pub term: String,
    /// Upper-quantile demand at its peak over the lead window.
    pub forecast_peak: f64,
    /// When that peak is expected (Unix seconds).
    pub forecast_peak_at: Option<Timestamp>,
    /// Quantile of the forecast.
    pub quantile: f64,
    /// Lead window (startup plus one loop), seconds.
    pub lead_seconds: u64,
    /// Model in use.
    pub model: String,
    /// False when the workload's real replicas were not known when this was made (nothing
    /// published or applied yet): `from_replicas` is then only the configured minimum, and
    /// the change is never approved automatically.
    #[serde(default = "yes")]
    pub from_known: bool,
}

fn yes() -> bool {
    true
}

/// One recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recommendation {
    /// Unique id.
    pub id: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// Workload name.
    pub workload: String,
    /// Replicas when it was made.
    pub from_replicas: u32,
    /// Replicas it asks for.
    pub to_replicas: u32,
    /// Creation time (Unix seconds).
    pub created_at: Timestamp,
    /// It expires if not decided by then (Unix seconds).
    pub valid_until: Timestamp,
    /// Lifecycle state.
    pub state: RecState,
    /// Why.
    pub reason: RecommendationReason,
    /// Who decided (token name, or `prescale:auto` / `prescale:autonomy`).
    pub decided_by: Option<String>,
    /// When it was decided.
    pub decided_at: Option<Timestamp>,
    /// The decider's comment.
    pub comment: Option<String>,
    /// How applying it went (for `applied` and `failed`).
    pub outcome: Option<String>,
}

/// One audit entry: who did what to which target, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Unique id.
    pub id: String,
    /// Order of writing.
    pub seq: i64,
    /// When (Unix seconds).
    pub at: Timestamp,
    /// Who (token name or `prescale:*`).
    pub actor: String,
    /// What (`approve`, `reject`, `create`, `apply`, `pause`, ...).
    pub action: String,
    /// A recommendation id or `namespace/workload`.
    pub target: String,
    /// Details (JSON text).
    pub detail: String,
}

/// Pause and pin of a workload.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Controls {
    /// No recommendation is made or applied while paused.
    pub paused: bool,
    /// Replicas held until `pinned_until`, whatever the forecast says.
    pub pinned_replicas: Option<u32>,
    /// End of the pin (Unix seconds).
    pub pinned_until: Option<Timestamp>,
}

/// One change of a workload's controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlChange {
    /// Pause (true) or resume (false).
    Paused(bool),
    /// Pin to replicas until a time, or unpin (`None`).
    Pin(Option<(u32, Timestamp)>),
}

/// A minimum number of replicas during a recurring window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Override {
    /// Unique id.
    pub id: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// Workload name.
    pub workload: String,
    /// Replicas at least, while the window is open.
    pub min_replicas: u32,
    /// When windows open: five-field cron (minute hour day-of-month month day-of-week).
    pub cron: String,
    /// IANA time zone of the cron expression, e.g. `Europe/Paris`.
    pub timezone: String,
    /// How long each window stays open, seconds.
    pub duration_seconds: u64,
    /// Creation time (Unix seconds).
    pub created_at: Timestamp,
}

impl Override {
    /// Checks the cron expression (five fields) and the time zone.
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn validate(cron: &str, timezone: &str) -> Result<(), String> {
        if cron.split_whitespace().count() != 5 {
            return Err(
                "cron must have five fields: minute hour day-of-month month day-of-week".into(),
            );
        }
        cron.parse::<croner::Cron>()
            .map_err(|e| format!("cron: {e}"))?;
        jiff::tz::TimeZone::get(timezone).map_err(|e| format!("timezone: {e}"))?;
        Ok(())
    }

    /// Whether a window is open at `now`: the latest cron time at or before `now`, in the
    /// override's time zone, is less than `duration_seconds` ago.
    pub fn is_open(&self, now: Timestamp) -> bool {
        let (Ok(cron), Ok(tz), Ok(at)) = (
            self.cron.parse::<croner::Cron>(),
            jiff::tz::TimeZone::get(&self.timezone),
            jiff::Timestamp::from_second(now),
        ) else {
            return false;
        };
        let zoned = at.to_zoned(tz);
        cron.find_previous_occurrence(&zoned, true)
            .is_ok_and(|start| now - start.timestamp().as_second() < self.duration_seconds as i64)
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the statement.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// No such record.
    #[error("not found")]
    NotFound,
    /// The record is not in a state that allows this (it is `state` now).
    #[error("recommendation is {} and cannot be changed", .0.as_str())]
    Conflict(RecState),
    /// A stored value prescale cannot read.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Every kind.
    pub const KINDS: [&'static str; 4] = ["unavailable", "not_found", "conflict", "corrupt"];

    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::NotFound => "not_found",
            StoreError::Conflict(_) => "conflict",
            StoreError::Corrupt(_) => "corrupt",
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Unavailable(format!("migration: {e}"))
    }
}

/// Filters of a recommendation listing.
#[derive(Debug, Clone, Default)]
pub struct RecFilter {
    /// Only this state.
    pub state: Option<RecState>,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this workload (with `namespace`).
    pub workload: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Rows skipped.
    pub offset: u32,
}

/// A new random id (128 bits, hex).
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

const REC_COLUMNS: &str = "id, namespace, workload, from_replicas, to_replicas, created_at, \
     valid_until, state, reason, decided_by, decided_at, comment, outcome";

fn rec_from_row(row: &AnyRow) -> Result<Recommendation, StoreError> {
    let state: String = row.try_get("state")?;
    let reason: String = row.try_get("reason")?;
    let replicas = |c: &str| -> Result<u32, StoreError> {
        let v: i64 = row.try_get(c)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{c} = {v}")))
    };
    Ok(Recommendation {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        workload: row.try_get("workload")?,
        from_replicas: replicas("from_replicas")?,
        to_replicas: replicas("to_replicas")?,
        created_at: row.try_get("created_at")?,
        valid_until: row.try_get("valid_until")?,
        state: RecState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("state {state}")))?,
        reason: serde_json::from_str(&reason).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        decided_by: row.try_get("decided_by")?,
        decided_at: row.try_get("decided_at")?,
        comment: row.try_get("comment")?,
        outcome: row.try_get("outcome")?,
    })
}

/// The store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`) and runs the migrations.
    ///
    /// # Errors
    /// The database cannot be opened or migrated.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // sqlx retries a refused connection until this passes (30 s by default): with the
            // database gone, the API should answer "store unavailable" in seconds, well
            // inside `api.request_timeout`, and the loop should not stall for long.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        // Durable before the API answers: WAL with a sync at every commit.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let migration = |version, name, sql| {
            Migration::new(
                version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                sqlx::SqlStr::from_static(sql),
                false,
            )
        };
        let mut migrator = Migrator::with_migrations(vec![
            migration(
                1,
                "review store",
                include_str!("../../migrations/0001_review.sql"),
            ),
            migration(
                2,
                "one pending recommendation per workload",
                include_str!("../../migrations/0002_one_pending.sql"),
            ),
            migration(
                3,
                "applied recommendations by workload",
                include_str!("../../migrations/0003_applied_by_workload.sql"),
            ),
            migration(
                4,
                "each workload's newest recommendation and newest applied one",
                include_str!("../../migrations/0004_heads.sql"),
            ),
        ]);
        // A binary older than the database (a rollback, an old pod during a rolling update)
        // keeps working: every migration so far only adds.
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        let store = Self {
            pool,
            sqlite: url.starts_with("sqlite:"),
        };
        store.rebuild_heads().await?;
        Ok(store)
    }

    /// Rebuilds `heads` from the recommendations (one scan, at start): it then holds what
    /// writes made by a binary that did not keep it (before migration 4) changed.
    async fn rebuild_heads(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        if !self.sqlite {
            // Another replica's write that already refreshed its row waits to commit before
            // this rebuild reads, and one still to refresh its row does so after the rebuild
            // commits, seeing what the rebuild saw and its own write: no head goes stale.
            // (SQLite's immediate transaction already excludes every other writer.)
            sqlx::query("LOCK TABLE heads IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM heads").execute(&mut *tx).await?;
        let [state, applied] = head_values("w.namespace", "w.workload");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO heads (namespace, workload, newest_state, applied_replicas) \
             SELECT w.namespace, w.workload, {state}, {applied} \
             FROM (SELECT DISTINCT namespace, workload FROM recommendations) w"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A transaction that reads before it writes. SQLite's default deferred transaction
    /// would fail at once (busy, not waiting) when another writer committed since its read;
    /// an immediate one takes the write lock first, waiting for it on `busy_timeout`.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let begin = if self.sqlite {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN"
        };
        Ok(self.pool.begin_with(begin).await?)
    }

    /// The SQLite file in `data_dir`.
    pub fn sqlite_url(data_dir: &std::path::Path) -> String {
        format!("sqlite://{}", data_dir.join("prescale.db").display())
    }

    /// Inserts a new pending recommendation (superseding the workload's older pending one),
    /// or, with `state` other than pending, one recorded as already decided. Returns false,
    /// writing nothing, when it is pending or approved and a pending or approved one not yet
    /// applied already asks for the same replicas: several replicas of prescale on one
    /// database then propose a change once, not once each (a unique index keeps at most one
    /// pending per workload even when they race).
    ///
    /// # Errors
    /// Database errors.
    pub async fn create(&self, rec: &Recommendation, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let live: Vec<(String, i64, String)> = sqlx::query(
            "SELECT id, to_replicas, state FROM recommendations WHERE namespace = $1 AND workload = $2 AND state IN ('pending', 'approved')",
        )
        .bind(&rec.namespace)
        .bind(&rec.workload)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("to_replicas")?, r.try_get("state")?)))
        .collect::<Result<_, sqlx::Error>>()?;
        // A proposal (pending, or approved by autonomy) of what a live one already asks for.
        if matches!(rec.state, RecState::Pending | RecState::Approved)
            && live
                .iter()
                .any(|(_, to, _)| *to == i64::from(rec.to_replicas))
        {
            tx.rollback().await?;
            return Ok(false);
        }
        let pending = live.iter().filter(|(_, _, state)| state == "pending");
        for (id, _, _) in pending {
            sqlx::query("UPDATE recommendations SET state = 'superseded', updated_at = $1 WHERE id = $2 AND state = 'pending'")
                .bind(rec.created_at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit(
                &mut tx,
                rec.created_at,
                actor,
                "supersede",
                id,
                &format!("{{\"by\":\"{}\"}}", rec.id),
            )
            .await?;
        }
        let reason =
            serde_json::to_string(&rec.reason).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let inserted = sqlx::query(
            "INSERT INTO recommendations (id, namespace, workload, from_replicas, to_replicas, created_at, valid_until, state, reason, decided_by, decided_at, comment, outcome, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&rec.id)
        .bind(&rec.namespace)
        .bind(&rec.workload)
        .bind(i64::from(rec.from_replicas))
        .bind(i64::from(rec.to_replicas))
        .bind(rec.created_at)
        .bind(rec.valid_until)
        .bind(rec.state.as_str())
        .bind(reason)
        .bind(rec.decided_by.clone())
        .bind(rec.decided_at)
        .bind(rec.comment.clone())
        .bind(rec.outcome.clone())
        .bind(rec.created_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            // Another replica inserted its pending one between our read and our insert (the
            // unique index refused ours): theirs stands; dropping `tx` undoes our supersede.
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => return Ok(false),
            other => other?,
        };
        let detail = serde_json::json!({
            "workload": format!("{}/{}", rec.namespace, rec.workload),
            "from": rec.from_replicas, "to": rec.to_replicas, "state": rec.state.as_str(),
        });
        audit(
            &mut tx,
            rec.created_at,
            actor,
            "create",
            &rec.id,
            &detail.to_string(),
        )
        .await?;
        refresh_head(&mut tx, &rec.namespace, &rec.workload).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// One recommendation.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], database errors.
    pub async fn get(&self, id: &str) -> Result<Recommendation, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REC_COLUMNS} FROM recommendations WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        rec_from_row(&row)
    }

    /// Moves a pending recommendation to `approved` or `rejected`, durably and with one audit
    /// entry. Returns it and whether this call changed it: repeating the same decision is a
    /// no-op (no second audit entry); a different one, or one on an expired, superseded or
    /// applied recommendation, is [`StoreError::Conflict`].
    ///
    /// # Errors
    /// Not found, conflict, database errors.
    pub async fn decide(
        &self,
        id: &str,
        to: RecState,
        actor: &str,
        comment: Option<&str>,
        now: Timestamp,
    ) -> Result<(Recommendation, bool), StoreError> {
        debug_assert!(matches!(to, RecState::Approved | RecState::Rejected));
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE recommendations SET state = $1, decided_by = $2, decided_at = $3, comment = $4, updated_at = $3 \
             WHERE id = $5 AND state = 'pending' AND valid_until >= $3 RETURNING namespace, workload",
        )
        .bind(to.as_str())
        .bind(actor)
        .bind(now)
        .bind(comment.map(str::to_string))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = changed {
            refresh_head(&mut tx, row.try_get("namespace")?, row.try_get("workload")?).await?;
            let action = if to == RecState::Approved {
                "approve"
            } else {
                "reject"
            };
            let detail = serde_json::json!({ "comment": comment });
            audit(&mut tx, now, actor, action, id, &detail.to_string()).await?;
            tx.commit().await?;
            return Ok((self.get(id).await?, true));
        }
        tx.rollback().await?;
        let rec = self.get(id).await?;
        if rec.state == RecState::Pending {
            // Past valid_until: it expires now, and the decision is refused.
            self.expire(now).await?;
            return Err(StoreError::Conflict(RecState::Expired));
        }
        // Repeating the decision that won (an approval that was applied since included) is a
        // no-op; anything else conflicts.
        let repeated = rec.state == to
            || (to == RecState::Approved
                && matches!(rec.state, RecState::Applied | RecState::Failed));
        if repeated {
            return Ok((rec, false));
        }
        Err(StoreError::Conflict(rec.state))
    }

    /// Marks every pending recommendation past `valid_until` expired (audited). Returns how
    /// many.
    ///
    /// # Errors
    /// Database errors.
    pub async fn expire(&self, now: Timestamp) -> Result<usize, StoreError> {
        let ids: Vec<String> = sqlx::query(
            "SELECT id FROM recommendations WHERE state = 'pending' AND valid_until < $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
        let mut n = 0;
        for id in ids {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query("UPDATE recommendations SET state = 'expired', updated_at = $1 WHERE id = $2 AND state = 'pending' RETURNING namespace, workload")
                .bind(now)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = done {
                refresh_head(&mut tx, row.try_get("namespace")?, row.try_get("workload")?).await?;
                audit(&mut tx, now, "prescale", "expire", &id, "{}").await?;
                n += 1;
            }
            tx.commit().await?;
        }
        Ok(n)
    }

    /// Records the outcome of applying an approved recommendation, exactly once: `applied` or
    /// `failed` with `outcome`. Returns false when it was not `approved` (already recorded).
    ///
    /// # Errors
    /// Database errors.
    pub async fn finish(
        &self,
        id: &str,
        to: RecState,
        outcome: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        debug_assert!(matches!(to, RecState::Applied | RecState::Failed));
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE recommendations SET state = $1, outcome = $2, updated_at = $3 WHERE id = $4 AND state = 'approved' RETURNING namespace, workload")
            .bind(to.as_str())
            .bind(outcome)
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = &done {
            refresh_head(&mut tx, row.try_get("namespace")?, row.try_get("workload")?).await?;
            let action = if to == RecState::Applied {
                "apply"
            } else {
                "fail"
            };
            let detail = serde_json::json!({ "outcome": outcome });
            audit(&mut tx, now, "prescale", action, id, &detail.to_string()).await?;
        }
        tx.commit().await?;
        Ok(done.is_some())
    }

    /// Recommendations, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list(&self, f: &RecFilter) -> Result<Vec<Recommendation>, StoreError> {
        let mut sql = format!("SELECT {REC_COLUMNS} FROM recommendations WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if f.state.is_some() {
            sql += &format!(" AND state = {}", next());
        }
        if f.namespace.is_some() {
            sql += &format!(" AND namespace = {}", next());
        }
        if f.workload.is_some() {
            sql += &format!(" AND workload = {}", next());
        }
        sql += &format!(
            " ORDER BY created_at DESC, id DESC LIMIT {} OFFSET {}",
            next(),
            next()
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(s) = f.state {
            q = q.bind(s.as_str());
        }
        if let Some(ns) = &f.namespace {
            q = q.bind(ns.clone());
        }
        if let Some(w) = &f.workload {
            q = q.bind(w.clone());
        }
        let rows = q
            .bind(i64::from(f.limit))
            .bind(i64::from(f.offset))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rec_from_row).collect()
    }

    /// Approved recommendations not yet applied, oldest first (what to apply, also after a
    /// restart).
    ///
    /// # Errors
    /// Database errors.
    pub async fn approved(&self) -> Result<Vec<Recommendation>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REC_COLUMNS} FROM recommendations WHERE state = 'approved' ORDER BY decided_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rec_from_row).collect()
    }

    /// The newest applied recommendation of each workload (what was last put in place).
    ///
    /// # Errors
    /// Database errors.
    pub async fn last_applied(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<Option<Recommendation>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REC_COLUMNS} FROM recommendations WHERE namespace = $1 AND workload = $2 AND state = 'applied' \
             ORDER BY updated_at DESC, id DESC LIMIT 1"
        )))
        .bind(namespace)
        .bind(workload)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rec_from_row).transpose()
    }

    /// Every workload's controls, by `namespace/workload`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn all_controls(
        &self,
    ) -> Result<std::collections::HashMap<String, Controls>, StoreError> {
        let rows = sqlx::query(
            "SELECT namespace, workload, paused, pinned_replicas, pinned_until FROM controls",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((row_key(r)?, controls_from_row(r)?)))
            .collect()
    }

    /// Every workload's overrides, by `namespace/workload`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn all_overrides(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<Override>>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {OVERRIDE_COLUMNS} FROM overrides ORDER BY namespace, workload, created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashMap::<String, Vec<Override>>::new();
        for r in &rows {
            let o = override_from_row(r)?;
            out.entry(format!("{}/{}", o.namespace, o.workload))
                .or_default()
                .push(o);
        }
        Ok(out)
    }

    /// The replicas of each workload's newest applied recommendation, by `namespace/workload`
    /// (one row per workload, from `heads`: the loop reads it every loop).
    ///
    /// # Errors
    /// Database errors.
    pub async fn all_last_applied(
        &self,
    ) -> Result<std::collections::HashMap<String, u32>, StoreError> {
        let rows = sqlx::query(
            "SELECT namespace, workload, applied_replicas FROM heads \
             WHERE applied_replicas IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let to: i64 = r.try_get("applied_replicas")?;
                Ok((
                    row_key(r)?,
                    u32::try_from(to)
                        .map_err(|_| StoreError::Corrupt("applied_replicas".into()))?,
                ))
            })
            .collect()
    }

    /// Workloads (`namespace/workload`) whose newest recommendation ended without being
    /// applied or rejected (expired or failed): a wish proposed then may be proposed again.
    /// One row per workload, from `heads`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn lapsed(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT namespace, workload FROM heads WHERE newest_state IN ('expired', 'failed')",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_key).collect()
    }

    /// Deletes what `cutoff` (Unix seconds) makes old: recommendations that ended (applied,
    /// rejected, expired, failed, superseded) and were last changed before it, and audit
    /// entries from before it. Kept whatever their age: pending and approved ones, each
    /// workload's newest recommendation (which says whether its last wish lapsed) and its
    /// newest applied one (what KEDA is served after a restart). At most `batch` of each per
    /// call, so the write lock is held briefly (call again while a batch comes back full). The
    /// prune itself is audited. Returns (recommendations, audit entries) deleted; (0, 0)
    /// without waiting when another replica on the same PostgreSQL is pruning.
    ///
    /// # Errors
    /// Database errors.
    pub async fn prune(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
        batch: u32,
    ) -> Result<(u64, u64), StoreError> {
        let mut tx = self.begin_write().await?;
        // Several replicas on one PostgreSQL prune at the same hour: one is enough, and two
        // identical DELETEs could deadlock on each other's rows.
        if !self.sqlite {
            let got: bool = sqlx::query("SELECT pg_try_advisory_xact_lock(7233051938)")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if !got {
                tx.rollback().await?;
                return Ok((0, 0));
            }
        }
        let recs = sqlx::query(
            "DELETE FROM recommendations WHERE id IN (SELECT r.id FROM recommendations r \
             WHERE r.updated_at < $1 \
             AND r.state IN ('applied', 'rejected', 'expired', 'failed', 'superseded') \
             AND EXISTS (SELECT 1 FROM recommendations n WHERE n.namespace = r.namespace \
                 AND n.workload = r.workload AND n.created_at > r.created_at) \
             AND (r.state <> 'applied' OR EXISTS (SELECT 1 FROM recommendations n \
                 WHERE n.namespace = r.namespace AND n.workload = r.workload \
                 AND n.state = 'applied' AND n.updated_at > r.updated_at)) \
             LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let entries = sqlx::query(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recs > 0 || entries > 0 {
            let detail = serde_json::json!({
                "before": cutoff,
                "recommendations": recs,
                "audit_entries": entries,
            });
            audit(
                &mut tx,
                now,
                "prescale",
                "prune",
                "store",
                &detail.to_string(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok((recs, entries))
    }

    /// The audit log, newest first; only entries about `target` when given.
    ///
    /// # Errors
    /// Database errors.
    pub async fn audit_log(
        &self,
        target: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let (sql, bind_target) = match target {
            Some(_) => (
                "SELECT id, seq, at, actor, action, target, detail FROM audit WHERE target = $1 ORDER BY seq DESC, id DESC LIMIT $2 OFFSET $3",
                true,
            ),
            None => (
                "SELECT id, seq, at, actor, action, target, detail FROM audit ORDER BY seq DESC, id DESC LIMIT $1 OFFSET $2",
                false,
            ),
        };
        let mut q = sqlx::query(sql);
        if bind_target {
            q = q.bind(target.map(str::to_string));
        }
        let rows = q
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// A workload's controls (defaults when none were set).
    ///
    /// # Errors
    /// Database errors.
    pub async fn controls(&self, namespace: &str, workload: &str) -> Result<Controls, StoreError> {
        let row = sqlx::query("SELECT paused, pinned_replicas, pinned_until FROM controls WHERE namespace = $1 AND workload = $2")
            .bind(namespace)
            .bind(workload)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map_or(Ok(Controls::default()), controls_from_row)
    }

    /// Changes one of a workload's controls, audited as `action` by `actor`, and returns
    /// them all as they are after the change. Only the field changed is written, so a pause
    /// and a pin made at once through two replicas both stand.
    ///
    /// # Errors
    /// Database errors.
    pub async fn change_controls(
        &self,
        namespace: &str,
        workload: &str,
        change: ControlChange,
        actor: &str,
        action: &str,
        now: Timestamp,
    ) -> Result<Controls, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A write first, so SQLite takes its write lock (waiting on busy_timeout) before any
        // read, and two first writers on PostgreSQL meet in the insert, not in a 503.
        sqlx::query(
            "INSERT INTO controls (namespace, workload, paused, pinned_replicas, pinned_until, updated_at) \
             VALUES ($1, $2, 0, NULL, NULL, $3) ON CONFLICT (namespace, workload) DO NOTHING",
        )
        .bind(namespace)
        .bind(workload)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let update = match change {
            ControlChange::Paused(p) => sqlx::query(
                "UPDATE controls SET paused = $1, updated_at = $2 WHERE namespace = $3 AND workload = $4",
            )
            .bind(i64::from(p)),
            ControlChange::Pin(pin) => sqlx::query(
                "UPDATE controls SET pinned_replicas = $1, pinned_until = $2, updated_at = $3 WHERE namespace = $4 AND workload = $5",
            )
            .bind(pin.map(|(r, _)| i64::from(r)))
            .bind(pin.map(|(_, u)| u)),
        };
        update
            .bind(now)
            .bind(namespace)
            .bind(workload)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("SELECT paused, pinned_replicas, pinned_until FROM controls WHERE namespace = $1 AND workload = $2")
            .bind(namespace)
            .bind(workload)
            .fetch_one(&mut *tx)
            .await?;
        let c = controls_from_row(&r)?;
        let detail = serde_json::to_string(&c).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        audit(
            &mut tx,
            now,
            actor,
            action,
            &format!("{namespace}/{workload}"),
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(c)
    }

    /// Adds a scheduled override (audited).
    ///
    /// # Errors
    /// Database errors.
    pub async fn add_override(&self, o: &Override, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO overrides (id, namespace, workload, min_replicas, cron, timezone, duration_seconds, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&o.id)
            .bind(&o.namespace)
            .bind(&o.workload)
            .bind(i64::from(o.min_replicas))
            .bind(&o.cron)
            .bind(&o.timezone)
            .bind(i64::try_from(o.duration_seconds).unwrap_or(i64::MAX))
            .bind(o.created_at)
            .execute(&mut *tx)
            .await?;
        let detail = serde_json::to_string(o).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        audit(
            &mut tx,
            o.created_at,
            actor,
            "add_override",
            &format!("{}/{}", o.namespace, o.workload),
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an override (audited). False when there was none.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete_override(
        &self,
        namespace: &str,
        workload: &str,
        id: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n =
            sqlx::query("DELETE FROM overrides WHERE id = $1 AND namespace = $2 AND workload = $3")
                .bind(id)
                .bind(namespace)
                .bind(workload)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if n == 1 {
            audit(
                &mut tx,
                now,
                actor,
                "delete_override",
                &format!("{namespace}/{workload}"),
                &format!("{{\"id\":\"{id}\"}}"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// A workload's overrides.
    ///
    /// # Errors
    /// Database errors.
    pub async fn overrides(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<Vec<Override>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {OVERRIDE_COLUMNS} FROM overrides WHERE namespace = $1 AND workload = $2 ORDER BY created_at, id"
        )))
        .bind(namespace)
        .bind(workload)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(override_from_row).collect()
    }
}

const OVERRIDE_COLUMNS: &str =
    "id, namespace, workload, min_replicas, cron, timezone, duration_seconds, created_at";

fn override_from_row(r: &AnyRow) -> Result<Override, StoreError> {
    let min: i64 = r.try_get("min_replicas")?;
    let dur: i64 = r.try_get("duration_seconds")?;
    Ok(Override {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        workload: r.try_get("workload")?,
        min_replicas: u32::try_from(min).map_err(|_| StoreError::Corrupt("min_replicas".into()))?,
        cron: r.try_get("cron")?,
        timezone: r.try_get("timezone")?,
        duration_seconds: u64::try_from(dur).map_err(|_| StoreError::Corrupt("duration".into()))?,
        created_at: r.try_get("created_at")?,
    })
}

/// `namespace/workload` of a row that has both columns.
fn row_key(r: &AnyRow) -> Result<String, StoreError> {
    let ns: String = r.try_get("namespace")?;
    let wl: String = r.try_get("workload")?;
    Ok(format!("{ns}/{wl}"))
}

fn controls_from_row(r: &AnyRow) -> Result<Controls, StoreError> {
    let pinned: Option<i64> = r.try_get("pinned_replicas")?;
    Ok(Controls {
        paused: r.try_get::<i64, _>("paused")? != 0,
        pinned_replicas: pinned.and_then(|p| u32::try_from(p).ok()),
        pinned_until: r.try_get("pinned_until")?,
    })
}

/// The two values of a workload's `heads` row (`newest_state`, `applied_replicas`) computed
/// from its recommendations, for the workload named by the SQL expressions `ns` and `wl`;
/// each is found through an index without visiting the workload's other rows.
fn head_values(ns: &str, wl: &str) -> [String; 2] {
    let of = format!("FROM recommendations r WHERE r.namespace = {ns} AND r.workload = {wl}");
    [
        format!("(SELECT r.state {of} ORDER BY r.created_at DESC, r.id DESC LIMIT 1)"),
        format!(
            "(SELECT r.to_replicas {of} AND r.state = 'applied' \
             ORDER BY r.updated_at DESC, r.id DESC LIMIT 1)"
        ),
    ]
}

/// Brings a workload's `heads` row up to date with its recommendations, in a transaction after
/// its changes to them. The row is locked by a statement of its own before it is
/// computed: on PostgreSQL a concurrent writer of the same workload then waits for this
/// transaction to commit, and its own computation, a later statement, sees this write.
async fn refresh_head(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    namespace: &str,
    workload: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO heads (namespace, workload) VALUES ($1, $2) \
         ON CONFLICT (namespace, workload) DO UPDATE SET namespace = excluded.namespace",
    )
    .bind(namespace)
    .bind(workload)
    .execute(&mut **tx)
    .await?;
    let [state, applied] = head_values("$1", "$2");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE heads SET newest_state = {state}, applied_replicas = {applied} \
         WHERE namespace = $1 AND workload = $2"
    )))
    .bind(namespace)
    .bind(workload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    at: Timestamp,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit (id, seq, at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(new_id())
        .bind(now_micros())
        .bind(at)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(cron: &str, tz: &str, secs: u64) -> Override {
        Override {
            id: "o".into(),
            namespace: "n".into(),
            workload: "w".into(),
            min_replicas: 5,
            cron: cron.into(),
            timezone: tz.into(),
            duration_seconds: secs,
            created_at: 0,
        }
    }

    #[test]
    fn windows_open_in_their_time_zone() {
        // Weekdays 09:00 Paris for an hour. 2026-11-23 is a Monday; Paris is UTC+1 then.
        let o = window("0 9 * * 1-5", "Europe/Paris", 3600);
        let monday_0800_utc = 1_795_420_800; // 2026-11-23T08:00:00Z = 09:00 Paris
        assert!(o.is_open(monday_0800_utc));
        assert!(o.is_open(monday_0800_utc + 3599));
        assert!(!o.is_open(monday_0800_utc + 3600));
        assert!(!o.is_open(monday_0800_utc - 1));
        // The same wall time in UTC is an hour later.
        let utc = window("0 9 * * 1-5", "UTC", 3600);
        assert!(!utc.is_open(monday_0800_utc));
        assert!(utc.is_open(monday_0800_utc + 3600));
        // Saturday: closed.
        assert!(!o.is_open(monday_0800_utc - 2 * 86_400));
    }

    #[test]
    fn bad_cron_and_zones_are_refused() {
        assert!(Override::validate("0 9 * * 1-5", "Europe/Paris").is_ok());
        assert!(Override::validate("0 9 * *", "UTC").is_err());
        assert!(Override::validate("0 25 * * *", "UTC").is_err());
        assert!(Override::validate("0 9 * * *", "Mars/Olympus").is_err());
    }
}
