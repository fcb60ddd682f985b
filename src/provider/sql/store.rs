//! [`SqlStore`]: the provider logic over one backend's pool, with the statements it runs.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sqlx::pool::{Pool, PoolOptions};
use sqlx::{
    AssertSqlSafe, ColumnIndex, Connection, Database, Decode, Encode, Executor, IntoArguments, Type,
};

use super::{
    CAS_ATTEMPTS, DEADLOCK_RETRIES, Dialect, GC_BATCH, RECENT_ENTRIES, RECENT_RECORD_BYTES,
    SqlOptions, Table,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::id::SessionId;
use crate::provider::Regenerated;
use crate::record::{ChangeSet, Record};

/// `template` with `{t}` as the table, `?` a bound value, `?key` a bound session key.
fn render<D: Dialect>(template: &str, table: &str) -> String {
    let template = template.replace("{t}", table);
    let mut out = String::with_capacity(template.len() + 16);
    let mut n = 0;
    let mut rest = template.as_str();
    while let Some(at) = rest.find('?') {
        out.push_str(&rest[..at]);
        n += 1;
        rest = &rest[at + 1..];
        let key = rest.starts_with("key");
        if key {
            rest = &rest[3..];
        }
        out.push_str(&D::placeholder(n, key));
    }
    out.push_str(rest);
    out
}

struct Statements {
    load: String,
    exists: String,
    insert: String,
    delete_expired: String,
    select: String,
    select_for_update: String,
    swap: String,
    write: String,
    touch: String,
    destroy: String,
    rename: String,
    count: String,
    gc: String,
    ddl: Vec<String>,
}

impl Statements {
    fn new<D: Dialect>(table: &Table) -> Self {
        let t = table.quoted(D::QUOTE);
        let r = |template: &str| render::<D>(template, &t);
        let live = "session_key = ?key AND session_expiry > ?";
        Statements {
            load: r(&format!(
                "SELECT session_data, session_expiry FROM {{t}} WHERE {live}"
            )),
            exists: r(&format!("SELECT COUNT(*) FROM {{t}} WHERE {live}")),
            insert: r(
                "INSERT INTO {t} (session_key, session_data, session_expiry) VALUES (?key, ?, ?)",
            ),
            delete_expired: r("DELETE FROM {t} WHERE session_key = ?key AND session_expiry <= ?"),
            select: r(&format!("SELECT session_data FROM {{t}} WHERE {live}")),
            select_for_update: r(&format!(
                "SELECT session_data FROM {{t}} WHERE {live} FOR UPDATE"
            )),
            swap: r("UPDATE {t} SET session_data = ?, session_expiry = ? \
                 WHERE session_key = ?key AND session_data = ? AND session_expiry > ?"),
            write: r(
                "UPDATE {t} SET session_data = ?, session_expiry = ? WHERE session_key = ?key",
            ),
            touch: r(&format!("UPDATE {{t}} SET session_expiry = ? WHERE {live}")),
            destroy: r("DELETE FROM {t} WHERE session_key = ?key"),
            rename: r(&format!("UPDATE {{t}} SET session_key = ?key WHERE {live}")),
            count: r("SELECT COUNT(*) FROM {t} WHERE session_expiry > ?"),
            gc: D::gc(&t, GC_BATCH),
            ddl: D::ddl(table),
        }
    }
}

/// A deadline as the `BIGINT` column holds it.
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The provider logic, over one backend's pool.
pub(crate) struct SqlStore<D: Dialect> {
    connect: <<D::Db as Database>::Connection as Connection>::Options,
    pool: OnceLock<Pool<D::Db>>,
    ready: tokio::sync::OnceCell<()>,
    sql: Statements,
    options: SqlOptions,
    /// The stored bytes of sessions this provider last loaded or saved, by storage key.
    recent: Mutex<HashMap<String, Vec<u8>>>,
    clock: Clock,
    /// Where it connects, for `Debug` (no password).
    summary: String,
}

impl<D: Dialect> fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(D::NAME)
            .field("server", &self.summary)
            .field("table", &self.options.table.to_string())
            .field("pool_size", &self.options.pool_size)
            .field("timeout", &self.options.timeout)
            .finish_non_exhaustive()
    }
}

impl<D: Dialect> SqlStore<D>
where
    for<'c> &'c mut <D::Db as Database>::Connection: Executor<'c, Database = D::Db>,
    for<'q> String: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> &'q [u8]: Encode<'q, D::Db> + Type<D::Db>,
    for<'r> Vec<u8>: Decode<'r, D::Db> + Type<D::Db>,
    for<'q, 'r> i64: Encode<'q, D::Db> + Decode<'r, D::Db> + Type<D::Db>,
    usize: ColumnIndex<<D::Db as Database>::Row>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
{
    pub(crate) fn new(
        connect: <<D::Db as Database>::Connection as Connection>::Options,
        options: SqlOptions,
        clock: Clock,
        summary: String,
    ) -> Self {
        SqlStore {
            connect,
            pool: OnceLock::new(),
            ready: tokio::sync::OnceCell::new(),
            sql: Statements::new::<D>(&options.table),
            options,
            recent: Mutex::new(HashMap::new()),
            clock,
            summary,
        }
    }

    pub(crate) fn table(&self) -> &Table {
        &self.options.table
    }

    /// The statements that create the table and its index.
    pub(crate) fn ddl(&self) -> &[String] {
        &self.sql.ddl
    }

    /// The pool, made (without connecting) on first use, inside the runtime.
    fn pool(&self) -> &Pool<D::Db> {
        self.pool.get_or_init(|| {
            PoolOptions::<D::Db>::new()
                .max_connections(self.options.pool_size)
                .min_connections(0)
                .acquire_timeout(self.options.timeout)
                // A read costs one round trip; a connection the server dropped fails once
                // (a 503) and is replaced.
                .test_before_acquire(false)
                .idle_timeout(Duration::from_secs(300))
                .connect_lazy_with(self.connect.clone())
        })
    }

    /// Runs `op` once the table exists, bounded by the timeout.
    async fn call<T>(&self, op: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T> {
        let run = async {
            if self.options.create_table {
                self.ready.get_or_try_init(|| self.create_table()).await?;
            }
            op.await
        };
        match tokio::time::timeout(self.options.timeout, run).await {
            Ok(result) => result.map_err(classify::<D>),
            Err(_) => Err(Error::unavailable(
                D::NAME,
                "the database did not answer within timeout_ms",
            )),
        }
    }

    async fn create_table(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        for statement in &self.sql.ddl {
            tx.execute(AssertSqlSafe(statement.as_str())).await?;
        }
        tx.commit().await
    }

    async fn execute(&self, sql: &str, bind: &[Param<'_>]) -> Result<u64, sqlx::Error> {
        let result = self.pool().execute(query::<D>(sql, bind)).await?;
        Ok(D::rows_affected(&result))
    }

    async fn blob(&self, sql: &str, key: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
        let now = ms(self.clock.now_ms());
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(key.to_owned())
            .bind(now)
            .fetch_optional(self.pool())
            .await
    }

    fn remember(&self, key: &str, blob: Option<Vec<u8>>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        match blob {
            Some(blob) if blob.len() <= RECENT_RECORD_BYTES => {
                if recent.len() >= RECENT_ENTRIES && !recent.contains_key(key) {
                    recent.clear();
                }
                recent.insert(key.to_owned(), blob);
            }
            _ => {
                recent.remove(key);
            }
        }
    }

    fn recalled(&self, key: &str) -> Option<Vec<u8>> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
    }

    pub(crate) async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        let key = id.storage_key();
        let now = ms(self.clock.now_ms());
        let row: Option<(Vec<u8>, i64)> = self
            .call(
                sqlx::query_as(AssertSqlSafe(self.sql.load.as_str()))
                    .bind(key.clone())
                    .bind(now)
                    .fetch_optional(self.pool()),
            )
            .await?;
        let Some((blob, expiry)) = row else {
            return Ok(None);
        };
        let mut record = Record::decode(&blob)?;
        record.expires_at = u64::try_from(expiry).unwrap_or(0);
        self.remember(&key, Some(blob));
        Ok(Some(record))
    }

    pub(crate) async fn exists(&self, id: &SessionId) -> Result<bool> {
        let now = ms(self.clock.now_ms());
        let n: i64 = self
            .call(
                sqlx::query_scalar(AssertSqlSafe(self.sql.exists.as_str()))
                    .bind(id.storage_key())
                    .bind(now)
                    .fetch_one(self.pool()),
            )
            .await?;
        Ok(n > 0)
    }

    pub(crate) async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        let key = id.storage_key();
        let blob = record.encode();
        let now = self.clock.now_ms();
        let insert = [
            Param::Key(&key),
            Param::Bytes(&blob),
            Param::Ms(record.expires_at),
        ];
        let created = self
            .call(async {
                // Insert; on a taken key, free it if its row has expired and insert again.
                for attempt in 0..2 {
                    match self.execute(&self.sql.insert, &insert).await {
                        Ok(_) => return Ok(true),
                        Err(e) if !is_unique_violation(&e) => return Err(e),
                        Err(_) if attempt == 1 => return Ok(false),
                        Err(_) => {}
                    }
                    let freed = self
                        .execute(
                            &self.sql.delete_expired,
                            &[Param::Key(&key), Param::Ms(now)],
                        )
                        .await?;
                    if freed == 0 {
                        return Ok(false);
                    }
                }
                Ok(false)
            })
            .await?;
        if created {
            self.remember(&key, None);
        }
        Ok(created)
    }

    pub(crate) async fn save(&self, id: &SessionId, changes: &ChangeSet) -> Result<bool> {
        let key = id.storage_key();
        let now = self.clock.now_ms();
        if changes.is_touch_only() {
            let bind = [
                Param::Ms(changes.expires_at),
                Param::Key(&key),
                Param::Ms(now),
            ];
            return Ok(self.call(self.execute(&self.sql.touch, &bind)).await? == 1);
        }
        let mut known = self.recalled(&key);
        let saved = self
            .call(async {
                // Compare and swap; after repeated conflicts, lock the row. A deadlock the
                // server broke (InnoDB, on the row and its expiry index) starts over.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let outcome = if attempt <= CAS_ATTEMPTS {
                        self.swap(&key, known.take(), changes, now).await
                    } else {
                        self.save_locked(&key, changes).await.map(Some)
                    };
                    match outcome {
                        Ok(Some(saved)) => return Ok(saved),
                        Ok(None) => {}
                        Err(e) if is_deadlock(&e) && attempt < CAS_ATTEMPTS + DEADLOCK_RETRIES => {
                            tracing::debug!(provider = D::NAME, "save retried after a deadlock");
                        }
                        Err(e) => return Err(e),
                    }
                }
            })
            .await?;
        let done = saved.is_some();
        self.remember(&key, saved);
        Ok(done)
    }

    /// One compare-and-swap of `changes` onto `known` (else the stored bytes): `Some(None)`
    /// if the session is gone, `Some(Some(new bytes))` if saved, `None` on a conflict.
    async fn swap(
        &self,
        key: &str,
        known: Option<Vec<u8>>,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<Option<Option<Vec<u8>>>, sqlx::Error> {
        let old = match known {
            Some(old) => old,
            None => match self.blob(&self.sql.select, key).await? {
                Some(old) => old,
                None => return Ok(Some(None)),
            },
        };
        let new = merge(&old, changes)?;
        let bind = [
            Param::Bytes(&new),
            Param::Ms(changes.expires_at),
            Param::Key(key),
            Param::Bytes(&old),
            Param::Ms(now),
        ];
        Ok((self.execute(&self.sql.swap, &bind).await? == 1).then_some(Some(new)))
    }

    /// The contended save: merge under a row lock, in one transaction.
    async fn save_locked(
        &self,
        key: &str,
        changes: &ChangeSet,
    ) -> Result<Option<Vec<u8>>, sqlx::Error> {
        let now = ms(self.clock.now_ms());
        let mut tx = self.pool().begin().await?;
        let old: Option<Vec<u8>> =
            sqlx::query_scalar(AssertSqlSafe(self.sql.select_for_update.as_str()))
                .bind(key.to_owned())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(old) = old else {
            return Ok(None);
        };
        let new = merge(&old, changes)?;
        let bind = [
            Param::Bytes(&new),
            Param::Ms(changes.expires_at),
            Param::Key(key),
        ];
        tx.execute(query::<D>(&self.sql.write, &bind)).await?;
        tx.commit().await?;
        Ok(Some(new))
    }

    pub(crate) async fn destroy(&self, id: &SessionId) -> Result<()> {
        let key = id.storage_key();
        self.remember(&key, None);
        self.call(self.execute(&self.sql.destroy, &[Param::Key(&key)]))
            .await?;
        Ok(())
    }

    pub(crate) async fn regenerate(&self, old: &SessionId, new: &SessionId) -> Result<Regenerated> {
        let (old_key, new_key) = (old.storage_key(), new.storage_key());
        let now = self.clock.now_ms();
        let rename = [Param::Key(&new_key), Param::Key(&old_key), Param::Ms(now)];
        self.remember(&old_key, None);
        self.call(async {
            // One atomic UPDATE of the key; a taken new key is freed only if expired.
            for attempt in 0..2 {
                match self.execute(&self.sql.rename, &rename).await {
                    Ok(1) => return Ok(Regenerated::Moved),
                    Ok(_) => return Ok(Regenerated::Missing),
                    Err(e) if !is_unique_violation(&e) => return Err(e),
                    Err(_) if attempt == 1 => return Ok(Regenerated::Collision),
                    Err(_) => {}
                }
                let freed = self
                    .execute(
                        &self.sql.delete_expired,
                        &[Param::Key(&new_key), Param::Ms(now)],
                    )
                    .await?;
                if freed == 0 {
                    return Ok(Regenerated::Collision);
                }
            }
            Ok(Regenerated::Collision)
        })
        .await
    }

    pub(crate) async fn count(&self) -> Result<usize> {
        let now = ms(self.clock.now_ms());
        let n: i64 = self
            .call(
                sqlx::query_scalar(AssertSqlSafe(self.sql.count.as_str()))
                    .bind(now)
                    .fetch_one(self.pool()),
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Deletes expired rows, [`GC_BATCH`] per statement (each its own call and timeout), until
    /// a statement finds fewer.
    pub(crate) async fn gc(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let mut total = 0usize;
        loop {
            let deleted = self
                .call(self.execute(&self.sql.gc, &[Param::Ms(now)]))
                .await?;
            total += usize::try_from(deleted).unwrap_or(usize::MAX);
            if deleted < GC_BATCH {
                return Ok(total);
            }
        }
    }
}

/// A bound parameter.
enum Param<'a> {
    Key(&'a str),
    Bytes(&'a [u8]),
    Ms(u64),
}

fn query<'a, D: Dialect>(
    sql: &'a str,
    bind: &[Param<'a>],
) -> sqlx::query::Query<'a, D::Db, <D::Db as Database>::Arguments>
where
    for<'q> String: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> &'q [u8]: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    <D::Db as Database>::Arguments: IntoArguments<D::Db>,
{
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for p in bind {
        q = match *p {
            Param::Key(key) => q.bind(key.to_owned()),
            Param::Bytes(bytes) => q.bind(bytes),
            Param::Ms(value) => q.bind(ms(value)),
        };
    }
    q
}

/// The stored bytes `old` with `changes` applied.
fn merge(old: &[u8], changes: &ChangeSet) -> Result<Vec<u8>, sqlx::Error> {
    let mut record = Record::decode(old).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    record.apply(changes);
    Ok(record.encode())
}

/// A deadlock or serialization failure the server resolved by rolling back (SQLSTATE 40001,
/// PostgreSQL's 40P01).
fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Connection trouble, a full pool and transient server conditions are `Unavailable` (503);
/// an undecodable row is `Corrupt`; the rest is `Backend`.
fn classify<D: Dialect>(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Error::unavailable(D::NAME, e),
        sqlx::Error::Database(ref db) if D::is_transient(db.as_ref()) => {
            Error::unavailable(D::NAME, e)
        }
        // Our record decoder's verdict passes through; a driver that cannot decode a column
        // means the table has another shape, a backend error: "corrupt" would make the
        // middleware delete every session it loads.
        sqlx::Error::Decode(source) => match source.downcast::<Error>() {
            Ok(inner) => *inner,
            Err(source) => Error::backend(D::NAME, source),
        },
        _ => Error::backend(D::NAME, e),
    }
}
