//! The Rust API of drove.
//!
//! API boundary: this crate is what users program against. A [`Session`] talks to a
//! coordinator (one you started, or an embedded [`LocalCluster`]); [`Session::sql`] and
//! [`Session::read_parquet`] give lazy [`DataFrame`]s whose plans run on the cluster
//! when collected.
//!
//! ```no_run
//! # async fn demo() -> drove_client::Result<()> {
//! use drove_client::Session;
//! let session = Session::local(3).await?;
//! session.register_parquet("lineitem", "data/lineitem.parquet").await?;
//! let df = session.sql("SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1").await?;
//! let batches = df.collect().await?;
//! # Ok(())
//! # }
//! ```

pub mod cluster;
pub mod fs;
pub mod mapreduce;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{Expr, SortExpr};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use drove_exec::blocks::BlockKey;
use drove_exec::datagen::Benchmark;
use drove_exec::leader::{Bearer, CoordinatorRpc, Coordinators};
use drove_exec::net;
use drove_exec::shuffle::{FlightPool, open_block, schema_from_bytes};
use drove_exec::tables::{self, TableSpec};
use drove_proto as pb;
use futures::{Stream, StreamExt, TryStreamExt};

pub use arrow;
pub use cluster::{LocalCluster, LocalClusterConfig};
pub use datafusion;
pub use drove_coordinator::{CoordinatorConfig, JobLimits};
pub use drove_core::human_bytes;
pub use drove_exec::mapreduce::nodes::OutputFormat;
pub use drove_exec::mapreduce::{MapReduce, Partitioner, Record, register};
pub use drove_exec::tls::ClusterTls;
pub use drove_proto as proto;

/// Errors a drove client sees.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator could not be reached.
    #[error(
        "cannot reach the coordinator at {addr}: {message}; check that `drove coordinator` runs there and that the address is right"
    )]
    Connect { addr: String, message: String },
    /// The coordinator refused the request; the message says why.
    #[error("{0}")]
    Rejected(String),
    /// The job ran and failed; the message carries the worker's own error.
    #[error("job {job} failed: {message}")]
    JobFailed { job: u64, message: String },
    /// The connection broke or answered unexpectedly.
    #[error("talking to the coordinator failed: {0}")]
    Transport(String),
    /// Local planning or reading failed.
    #[error(transparent)]
    Exec(#[from] drove_exec::Error),
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// The cluster does not know the caller's token or certificate, or the caller's
    /// tenant or role may not do this; the message says which.
    #[error("{0}")]
    Denied(String),
}

/// Result type of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Exec(drove_exec::Error::DataFusion(e))
    }
}

fn status_error(s: tonic::Status) -> Error {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            Error::Rejected(s.message().to_string())
        }
        tonic::Code::Unavailable => {
            Error::Transport(format!("the coordinator is unavailable: {}", s.message()))
        }
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            Error::Denied(s.message().to_string())
        }
        _ => Error::Transport(s.message().to_string()),
    }
}

/// How long connecting to a coordinator may take.
pub const CONNECT_TIMEOUT: Duration = net::CONNECT_TIMEOUT;

/// How long a client waiting for a job keeps trying to reach a coordinator that went
/// away (one restarting on its data directory takes seconds).
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(60);

/// How long cancelling or releasing a job a caller let go of keeps looking for the
/// leader (`Session::shutdown` waits for it).
const ENDING_WINDOW: Duration = Duration::from_secs(5);

/// A result batch, if its columns are the ones the query's plan promised: a worker
/// that sends others (a bug, or a peer that is no worker of this cluster) fails the
/// read rather than have wrong rows printed as the answer.
fn of_schema(batch: RecordBatch, expected: &arrow::datatypes::Schema) -> Result<RecordBatch> {
    let got = batch.schema();
    let same = got.fields().len() == expected.fields().len()
        && (got.fields().iter().zip(expected.fields()))
            .all(|(g, e)| g.data_type() == e.data_type());
    if same {
        return Ok(batch);
    }
    let columns = |s: &arrow::datatypes::Schema| {
        (s.fields().iter())
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::Transport(format!(
        "a worker sent result rows with columns ({}), not the query's ({}); the result is refused",
        columns(&got),
        columns(expected)
    )))
}

/// A token just made ([`Session::create_token`]).
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The whole token, for its holder.
    pub token: String,
    /// Its id, for `drove token revoke`.
    pub id: String,
}

/// A live token as [`Session::tokens`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: String,
    pub role: String,
    pub created_unix_ms: u64,
}

/// How a client proves to a cluster who it is.
#[derive(Clone, Default)]
pub struct Credentials {
    /// A certificate of the cluster (`--tls-dir`), for mutual TLS; `None` connects
    /// over plain TCP, as to a cluster on loopback.
    pub tls: Option<Arc<ClusterTls>>,
    /// A token (`drove token create`, or the CA's `admin.token`), sent with every
    /// call to the coordinator; without one, a cluster with TLS knows the client by
    /// its certificate.
    pub token: Option<String>,
}

/// Never shows the token.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

/// A connection to a drove cluster, with the tables registered on it.
///
/// Cheap to clone; clones share the connection and the tables.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    coordinators: Arc<Coordinators>,
    flight: FlightPool,
    /// Reads drove fs chunks from the workers.
    chunks: drove_exec::dfs::ChunkReader,
    /// Plans lazy DataFrames locally; holds the same tables as `tables`.
    ctx: SessionContext,
    tables: Mutex<Vec<TableSpec>>,
    cluster: tokio::sync::Mutex<Option<LocalCluster>>,
    progress: Mutex<Option<ProgressFn>>,
    /// The priority its jobs are submitted with ([`Session::set_priority`]).
    priority: std::sync::atomic::AtomicI32,
    /// Releases (and cancellations) of jobs on their way out; `shutdown` waits for them.
    ending_jobs: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Ends a job's claim on the cluster when dropped: cancels it while `cancel` is set
/// (the future that waited for it was dropped: Ctrl-C, a timeout, a caller that gave
/// up, and nobody will read its result), and releases its blocks while `release` is.
struct JobGuard {
    session: Session,
    job: u64,
    /// The cluster the job belongs to (0 for any): see [`Session::wait`].
    cluster: u64,
    cancel: bool,
    release: bool,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (job, cancel) = (self.job, self.cancel);
        let request = pb::JobRequest {
            job_id: job,
            cluster_id: self.cluster,
        };
        if !cancel && !self.release {
            return;
        }
        let session = self.session.clone();
        let ending = runtime.spawn(async move {
            // At the leader, which may have changed since the job was submitted.
            if cancel
                && let Err(e) = session
                    .on_leader_within(
                        ENDING_WINDOW,
                        |mut c| async move { c.cancel_job(request).await },
                    )
                    .await
            {
                tracing::warn!(job, "cancelling an abandoned job failed: {}", e.message());
            }
            // A failure here only delays the freeing: the coordinator frees an unread
            // result after its time to live.
            let _ = session
                .on_leader_within(ENDING_WINDOW, |mut c| async move {
                    c.release_job(request).await
                })
                .await;
        });
        let mut ending_jobs = self
            .session
            .inner
            .ending_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ending_jobs.retain(|h| !h.is_finished());
        ending_jobs.push(ending);
    }
}

/// Called with every change of a running job's progress.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How far a job has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub job_id: u64,
    pub stages_done: u32,
    pub stages_total: u32,
    pub tasks_done: u32,
    pub tasks_total: u32,
    pub tasks_running: u32,
    pub elapsed_ms: u64,
    /// The job has ended (the last call for it).
    pub ended: bool,
}

impl Progress {
    fn of(status: &pb::JobStatus) -> Self {
        let stages = &status.stages;
        Self {
            job_id: status.job_id,
            stages_done: stages
                .iter()
                .filter(|s| s.tasks_done == s.tasks_total)
                .count() as u32,
            stages_total: stages.len() as u32,
            tasks_done: stages.iter().map(|s| s.tasks_done).sum(),
            tasks_total: stages.iter().map(|s| s.tasks_total).sum(),
            tasks_running: stages.iter().map(|s| s.tasks_running).sum(),
            elapsed_ms: status.elapsed_ms,
            ended: status.state() != pb::JobState::Running,
        }
    }
}

impl Session {
    /// Connects to the coordinator at `addr` (HOST:PORT), or to replicated coordinators
    /// (HOST:PORT,HOST:PORT,...): calls go to their leader, and follow it when another
    /// is elected.
    ///
    /// ```no_run
    /// # async fn demo() -> drove_client::Result<()> {
    /// let session = drove_client::Session::connect("127.0.0.1:7070").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(addr: &str) -> Result<Self> {
        Self::connect_with(addr, &Credentials::default()).await
    }

    /// [`Session::connect`] with credentials: over mutual TLS with a certificate of
    /// the cluster (`drove cert issue --client`), and a token naming the tenant and
    /// role to act as.
    ///
    /// ```no_run
    /// # async fn demo() -> drove_client::Result<()> {
    /// use drove_client::{ClusterTls, Credentials, Session};
    /// let tls = ClusterTls::load(std::path::Path::new("alice-tls")).map_err(drove_client::Error::Config)?;
    /// let session = Session::connect_with("10.0.0.1:7070", &Credentials { tls: Some(tls), token: None }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(addr: &str, credentials: &Credentials) -> Result<Self> {
        let tls = credentials.tls.clone();
        let connect_error = |message: String| Error::Connect {
            addr: addr.to_string(),
            message,
        };
        let bearer = Bearer::new(credentials.token.as_deref()).map_err(Error::Config)?;
        let coordinators = Coordinators::parse(addr, tls.clone(), bearer).map_err(connect_error)?;
        // The first that answers; the others are asked when it does not lead.
        let mut failures = Vec::new();
        for i in 0..coordinators.len() {
            coordinators.select(i);
            let (addr, _) = coordinators.current();
            let endpoint = net::endpoint(&addr, tls.as_deref()).map_err(connect_error)?;
            match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
                // Plain HTTP/2 "connects" to a TLS server too: ask it.
                Ok(Ok(_)) if tls.is_none() && net::speaks_tls(&addr).await => {
                    failures.push(drove_exec::tls::NEEDS_TLS.to_string());
                }
                Ok(Ok(_)) => {
                    failures.clear();
                    break;
                }
                Ok(Err(e)) => {
                    let e = net::error_chain(&e);
                    failures.push(match drove_exec::tls::mismatch(&e) {
                        Some(fix) => format!("{fix} ({e})"),
                        None => e,
                    });
                }
                Err(_) => failures.push(format!("no answer within {CONNECT_TIMEOUT:?}")),
            }
        }
        if !failures.is_empty() {
            return Err(connect_error(failures.join("; ")));
        }
        let coordinators = Arc::new(coordinators);
        let chunks = drove_exec::dfs::ChunkReader::new(
            Arc::new(drove_exec::dfs::ChunkClients::new(tls.clone())),
            None,
        );
        let stores = drove_exec::stores::Stores::new(Some(drove_exec::stores::DroveFs::new(
            Arc::clone(&coordinators) as _,
            chunks.clone(),
        )));
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::new(stores))
            .build_arc()?;
        Ok(Self {
            inner: Arc::new(Inner {
                coordinators,
                chunks,
                flight: FlightPool::new(tls),
                ctx: SessionContext::new_with_config_rt(
                    datafusion::prelude::SessionConfig::new(),
                    runtime,
                ),
                tables: Mutex::new(Vec::new()),
                ending_jobs: Mutex::new(Vec::new()),
                cluster: tokio::sync::Mutex::new(None),
                progress: Mutex::new(None),
                priority: std::sync::atomic::AtomicI32::new(0),
            }),
        })
    }

    /// Starts an embedded cluster of `workers` workers on loopback ports and connects to it.
    /// The cluster stops with [`Session::shutdown`].
    ///
    /// ```no_run
    /// # async fn demo() -> drove_client::Result<()> {
    /// let session = drove_client::Session::local(2).await?;
    /// session.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn local(workers: usize) -> Result<Self> {
        Self::with_cluster(
            LocalCluster::start(LocalClusterConfig {
                workers,
                ..Default::default()
            })
            .await?,
        )
        .await
    }

    /// Connects to an embedded cluster and takes ownership of it.
    ///
    /// ```no_run
    /// # async fn demo() -> drove_client::Result<()> {
    /// use drove_client::{LocalCluster, LocalClusterConfig, Session};
    /// let cluster = LocalCluster::start(LocalClusterConfig::default()).await?;
    /// let session = Session::with_cluster(cluster).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn with_cluster(cluster: LocalCluster) -> Result<Self> {
        let credentials = Credentials {
            tls: cluster.tls().cloned(),
            token: None,
        };
        Self::with_cluster_as(cluster, &credentials).await
    }

    /// [`Session::with_cluster`], connecting with `credentials` (a client's
    /// certificate and token) instead of the cluster's own node certificate.
    pub async fn with_cluster_as(cluster: LocalCluster, credentials: &Credentials) -> Result<Self> {
        let session = Self::connect_with(&cluster.coordinator_addrs(), credentials).await?;
        *session.inner.cluster.lock().await = Some(cluster);
        Ok(session)
    }

    /// The coordinator's address.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) {
    /// println!("connected to {}", session.coordinator_addr());
    /// # }
    /// ```
    pub fn coordinator_addr(&self) -> String {
        self.inner.coordinators.current().0
    }

    /// Makes a call to the leader: an answer that this coordinator does not lead, or
    /// none at all, moves to the leader named or the next coordinator, for up to
    /// [`RECONNECT_WINDOW`].
    async fn on_leader<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(CoordinatorRpc) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.on_leader_within(RECONNECT_WINDOW, call).await
    }

    /// [`Self::on_leader`], trying for up to `window`.
    async fn on_leader_within<T, F, Fut>(
        &self,
        window: Duration,
        call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(CoordinatorRpc) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.inner.coordinators.on_leader(window, call).await
    }

    /// Runs `f` on the embedded cluster, if this session owns one.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) {
    /// let workers = session.with_local_cluster(|c| c.worker_addrs()).await;
    /// # }
    /// ```
    pub async fn with_local_cluster<T>(&self, f: impl FnOnce(&mut LocalCluster) -> T) -> Option<T> {
        self.inner.cluster.lock().await.as_mut().map(f)
    }

    /// Registers a CSV or Parquet file, or a directory of them, as table `name`. The
    /// format follows the extension. The path must be readable by the coordinator and
    /// the workers (and by this process, for [`Session::sql`]).
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// session.register_table("orders", "data/orders.parquet").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn register_table(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        self.register(TableSpec {
            name: name.to_string(),
            path: path.as_ref().to_path_buf(),
            format: None,
        })
        .await
    }

    /// Forgets table `name` (registered by this session); false if there was none. Jobs
    /// submitted afterwards no longer carry it.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) {
    /// session.deregister_table("orders");
    /// # }
    /// ```
    pub fn deregister_table(&self, name: &str) -> bool {
        let mut tables = self.inner.tables.lock().unwrap_or_else(|p| p.into_inner());
        let before = tables.len();
        tables.retain(|t| t.name != name);
        let removed = tables.len() < before;
        if removed {
            let _ = self.inner.ctx.deregister_table(name);
        }
        removed
    }

    /// Registers a Parquet file or directory as table `name`.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// session.register_parquet("lineitem", "data/lineitem.parquet").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn register_parquet(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        self.register(TableSpec {
            name: name.to_string(),
            path: path.as_ref().to_path_buf(),
            format: Some(tables::Format::Parquet),
        })
        .await
    }

    /// Registers a CSV file (with a header row) or directory as table `name`.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// session.register_csv("events", "data/events.csv").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn register_csv(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        self.register(TableSpec {
            name: name.to_string(),
            path: path.as_ref().to_path_buf(),
            format: Some(tables::Format::Csv),
        })
        .await
    }

    /// Registers the eight TPC-H tables that `drove gen tpch` wrote into `dir`.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// session.register_tpch("data/tpch-sf0.1").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn register_tpch(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.register_benchmark(dir, Benchmark::Tpch).await
    }

    /// Registers the 24 TPC-DS tables that `drove gen tpcds` wrote into `dir`.
    pub async fn register_tpcds(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.register_benchmark(dir, Benchmark::Tpcds).await
    }

    /// Registers the tables of `benchmark` that `drove gen` wrote into `dir`.
    pub async fn register_benchmark(
        &self,
        dir: impl AsRef<Path>,
        benchmark: Benchmark,
    ) -> Result<()> {
        for table in tables::generated_tables(dir.as_ref(), benchmark)? {
            self.register(table).await?;
        }
        Ok(())
    }

    async fn register(&self, table: TableSpec) -> Result<()> {
        if self.table_names().contains(&table.name) {
            return Err(Error::Config(format!(
                "table '{}' is already registered; pick another name",
                table.name
            )));
        }
        tables::register(&self.inner.ctx, &table).await?;
        self.inner
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(table);
        Ok(())
    }

    /// The names of the registered tables.
    ///
    /// ```no_run
    /// # fn demo(session: drove_client::Session) {
    /// for name in session.table_names() { println!("{name}"); }
    /// # }
    /// ```
    pub fn table_names(&self) -> Vec<String> {
        self.tables().into_iter().map(|t| t.name).collect()
    }

    fn tables(&self) -> Vec<TableSpec> {
        self.inner
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes a scalar function callable by its name in this session's SQL and
    /// DataFrames. A [`drove_exec::python_udf::PythonUdf`] travels to the workers
    /// inside the plans that call it; any other function must be known by the same
    /// name where the plan is planned and run (the coordinator and the workers).
    ///
    /// ```no_run
    /// # fn demo(session: drove_client::Session, f: drove_client::datafusion::logical_expr::ScalarUDF) {
    /// session.register_udf(f);
    /// # }
    /// ```
    pub fn register_udf(&self, udf: datafusion::logical_expr::ScalarUDF) {
        self.inner.ctx.register_udf(udf);
    }

    /// A lazy DataFrame of one SQL query over the registered tables. It is planned here
    /// and runs on the cluster when collected.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let df = session.sql("SELECT count(*) FROM lineitem").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        // CACHE TABLE and UNCACHE TABLE act at once, as in Spark, and yield no rows.
        if CacheStatement::parse(sql)?.is_some() {
            self.run_sql(sql).await?;
            return Ok(DataFrame {
                session: self.clone(),
                df: self.inner.ctx.read_empty()?,
            });
        }
        let statements = datafusion::sql::parser::DFParser::parse_sql(sql)?;
        if statements.len() <= 1 {
            let df = self.inner.ctx.sql(sql).await?;
            return Ok(DataFrame {
                session: self.clone(),
                df,
            });
        }
        // A script (TPC-H Q15's CREATE VIEW, query, DROP VIEW): views are made and
        // dropped here, where the query is planned; its plan holds what it reads of them.
        // Views it made are dropped again if it fails.
        use datafusion::logical_expr::{DdlStatement, LogicalPlan};
        let mut made = Vec::new();
        let mut last = None;
        for statement in statements {
            let text = statement.to_string();
            let state = self.inner.ctx.state();
            let planned = async {
                match state.statement_to_plan(statement).await? {
                    plan @ LogicalPlan::Ddl(
                        DdlStatement::CreateView(_) | DdlStatement::DropView(_),
                    ) => {
                        if let LogicalPlan::Ddl(DdlStatement::CreateView(view)) = &plan {
                            made.push(view.name.clone());
                        }
                        self.inner.ctx.execute_logical_plan(plan).await?;
                        Ok(())
                    }
                    LogicalPlan::Ddl(_)
                    | LogicalPlan::Statement(_)
                    | LogicalPlan::Dml(_)
                    | LogicalPlan::Copy(_) => Err(Error::Config(format!(
                        "`{text}`: of several statements, Session::sql takes one query, CREATE VIEW and DROP VIEW; run this one alone, or the script with run_sql"
                    ))),
                    _ if last.is_some() => Err(Error::Config(format!(
                        "`{text}`: a script for Session::sql holds one query; run the others on their own, or the script with run_sql (which returns the last)"
                    ))),
                    query => {
                        last = Some(datafusion::dataframe::DataFrame::new(state.clone(), query));
                        Ok(())
                    }
                }
            };
            if let Err(e) = planned.await {
                for view in &made {
                    let _ = self.inner.ctx.deregister_table(view.clone());
                }
                return Err(e);
            }
        }
        let df = last.ok_or_else(|| {
            Error::Config("the SQL holds no query: give it a SELECT to return rows".into())
        })?;
        Ok(DataFrame {
            session: self.clone(),
            df,
        })
    }

    /// A lazy DataFrame over a Parquet file or directory.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let df = session.read_parquet("data/lineitem.parquet").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_parquet(&self, path: impl AsRef<Path>) -> Result<DataFrame> {
        let path = existing_path(path.as_ref())?;
        let df = self
            .inner
            .ctx
            .read_parquet(path, ParquetReadOptions::default())
            .await?;
        Ok(DataFrame {
            session: self.clone(),
            df,
        })
    }

    /// A lazy DataFrame over a CSV file (with a header row) or directory.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let df = session.read_csv("data/events.csv").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_csv(&self, path: impl AsRef<Path>) -> Result<DataFrame> {
        let path = existing_path(path.as_ref())?;
        let df = self
            .inner
            .ctx
            .read_csv(path, CsvReadOptions::new().has_header(true))
            .await?;
        Ok(DataFrame {
            session: self.clone(),
            df,
        })
    }

    /// Sends SQL text (one or more statements separated by `;`) to the coordinator, which
    /// resolves the registered tables itself, and returns the last query's result. Unlike
    /// [`Session::sql`], the files need not be readable here.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let result = session.run_sql("SELECT 1 AS one").await?;
    /// println!("{} rows, {} bytes shuffled", result.num_rows(), result.summary.remote_read_bytes());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_sql(&self, sql: &str) -> Result<QueryResult> {
        match CacheStatement::parse(sql)? {
            Some(CacheStatement::Cache { name, query }) => self.cache_sql(&name, query).await,
            Some(CacheStatement::Uncache { name, if_exists }) => {
                self.uncache(&name, if_exists).await?;
                Ok(QueryResult::empty())
            }
            None => {
                self.run(
                    pb::submit_job_request::Query::Sql(sql.to_string()),
                    name_of(sql),
                    String::new(),
                )
                .await
            }
        }
    }

    /// [`Session::run_sql`], with the result streamed from the workers as it is read
    /// instead of collected: the client's memory stays bounded however large it is.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// use futures::TryStreamExt;
    /// let mut rows = session.run_sql_stream("SELECT * FROM orders").await?;
    /// while let Some(batch) = rows.try_next().await? {
    ///     println!("{} rows", batch.num_rows());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_sql_stream(&self, sql: &str) -> Result<ResultStream> {
        if CacheStatement::parse(sql)?.is_some() {
            return Ok(ResultStream::from(self.run_sql(sql).await?));
        }
        self.run_stream(
            pb::submit_job_request::Query::Sql(sql.to_string()),
            name_of(sql),
            String::new(),
        )
        .await
    }

    /// Submits SQL as a detached job and returns its id at once. The job runs on
    /// without a client; [`Session::result`] (or `drove result JOB`) reads its result
    /// later, while the coordinator keeps it (by default 10 minutes after it ends).
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let job = session.submit_sql("SELECT count(*) FROM lineitem").await?;
    /// let result = session.result(job).await?.collect().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn submit_sql(&self, sql: &str) -> Result<u64> {
        if CacheStatement::parse(sql)?.is_some() {
            return Err(Error::Config(
                "CACHE TABLE and UNCACHE TABLE cannot run detached; run them without --detach"
                    .into(),
            ));
        }
        let (job, _) = self
            .submit(
                pb::submit_job_request::Query::Sql(sql.to_string()),
                name_of(sql),
                String::new(),
                true,
            )
            .await?;
        Ok(job)
    }

    /// Waits for a job, by id, to end and streams its result; the result is freed on
    /// the workers once read (or the stream dropped). Dropping the wait before the job
    /// ends leaves it running.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let rows = session.result(7).await?.collect().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn result(&self, job: u64) -> Result<ResultStream> {
        self.result_of(job, 0, false).await
    }

    /// Runs `query` (SQL) and keeps its result on the workers as the cached table
    /// `name`, which later queries read from memory (`CACHE TABLE name AS query`).
    /// Returns no rows: the summary says how the table was computed.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// session.cache_sql("big_orders", "SELECT * FROM orders WHERE o_totalprice > 1000").await?;
    /// let n = session.run_sql("SELECT count(*) FROM big_orders").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cache_sql(&self, name: &str, query: &str) -> Result<QueryResult> {
        let result = self
            .run(
                pb::submit_job_request::Query::Sql(query.to_string()),
                format!("CACHE TABLE {name}"),
                name.to_string(),
            )
            .await?;
        self.register_cached(name, Arc::clone(&result.schema))?;
        Ok(result)
    }

    /// Forgets the cached table `name` and frees its memory on every worker
    /// (`UNCACHE TABLE name`). An unknown name is an error unless `if_exists`.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// session.uncache("big_orders", false).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn uncache(&self, name: &str, if_exists: bool) -> Result<bool> {
        let request = pb::UncacheRequest {
            name: name.to_string(),
            if_exists,
        };
        let existed = self
            .on_leader(|mut c| {
                let request = request.clone();
                async move { c.uncache_table(request).await }
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .existed;
        let name = name.to_ascii_lowercase();
        let cached = self
            .inner
            .ctx
            .table_provider(name.as_str())
            .await
            .is_ok_and(|p| p.is::<drove_exec::cache::CachedTable>());
        if cached {
            let _ = self.inner.ctx.deregister_table(name.as_str());
        }
        Ok(existed)
    }

    /// Lets local planning ([`Session::sql`], DataFrames) see a cached table. Only its
    /// name and schema matter here: the coordinator resolves the name to where the
    /// partitions are.
    fn register_cached(&self, name: &str, schema: arrow::datatypes::SchemaRef) -> Result<()> {
        let name = name.to_ascii_lowercase();
        let table = drove_exec::cache::CachedTable {
            id: 0,
            name: name.clone(),
            schema,
            partitions: 1,
        };
        let _ = self.inner.ctx.deregister_table(name.as_str());
        self.inner
            .ctx
            .register_table(name.as_str(), Arc::new(table))?;
        Ok(())
    }

    async fn run(
        &self,
        query: pb::submit_job_request::Query,
        name: String,
        cache_as: String,
    ) -> Result<QueryResult> {
        self.run_stream(query, name, cache_as)
            .await?
            .collect()
            .await
    }

    /// Submits a job and streams its result once it has succeeded.
    async fn run_stream(
        &self,
        query: pb::submit_job_request::Query,
        name: String,
        cache_as: String,
    ) -> Result<ResultStream> {
        let (job, cluster) = self.submit(query, name, cache_as, false).await?;
        self.result_of(job, cluster, true).await
    }

    /// Submits a job; returns its id and the cluster's (see [`Session::wait`]).
    async fn submit(
        &self,
        query: pb::submit_job_request::Query,
        name: String,
        cache_as: String,
        detached: bool,
    ) -> Result<(u64, u64)> {
        let tables = self
            .tables()
            .into_iter()
            .map(|t| pb::TableSpec {
                name: t.name,
                path: t.path.to_string_lossy().into_owned(),
                format: t
                    .format
                    .map(|f| f.extension().to_string())
                    .unwrap_or_default(),
            })
            .collect();
        let request = pb::SubmitJobRequest {
            query: Some(query),
            tables,
            name,
            cache_as,
            detached,
            priority: self
                .inner
                .priority
                .load(std::sync::atomic::Ordering::Relaxed),
            // Sent with every retry, so that a submission the coordinator took before
            // it died is not run a second time by the next one.
            request_id: drove_core::ids::random_id(),
        };
        let submitted = self
            .on_leader(|mut c| {
                let request = request.clone();
                async move { c.submit_job(request).await }
            })
            .await
            .map_err(status_error)?
            .into_inner();
        Ok((submitted.job_id, submitted.cluster_id))
    }

    /// Waits for `job` to end and streams its result. `owned`: the job is this
    /// caller's, so a caller that stops waiting cancels it; otherwise (a detached job)
    /// it runs on. Once the job has ended, its blocks are released when the result has
    /// been read or dropped.
    async fn result_of(&self, job: u64, cluster: u64, owned: bool) -> Result<ResultStream> {
        let mut guard = JobGuard {
            session: self.clone(),
            job,
            cluster,
            cancel: owned,
            release: owned,
        };
        let status = self.wait(job, cluster).await;
        guard.cancel = false;
        // Released once it has ended; a wait that broke off (the connection failed)
        // leaves a job this caller does not own as it is.
        guard.release = owned
            || matches!(
                status,
                Ok(_) | Err(Error::JobFailed { .. } | Error::Rejected(_))
            );
        let status = status?;
        let schema = schema_from_bytes(&status.result_schema)?;
        let expected = Arc::clone(&schema);
        let session = self.clone();
        let stage = status.result_stage_id;
        let grant = Arc::new(status.result_grant.clone());
        let batches = futures::stream::iter(status.result.clone())
            .then(move |output| {
                let session = session.clone();
                let grant = Arc::clone(&grant);
                async move {
                    let key = BlockKey {
                        job,
                        stage,
                        map_partition: output.partition,
                        reduce_partition: 0,
                        attempt: output.attempt,
                    };
                    let flight = &session.inner.flight;
                    open_block(flight, &output.flight_addr, &key, &grant, |_| {}).await
                }
            })
            .try_flatten()
            .map_err(Error::from)
            .and_then(move |batch| futures::future::ready(of_schema(batch, &expected)))
            .boxed();
        Ok(ResultStream {
            schema,
            summary: JobSummary::from_status(&status),
            batches,
            _job: Some(guard),
        })
    }

    /// Follows the job until it ends; its final status if it succeeded. When the
    /// coordinator goes away (it restarts, on its data directory), the watch is taken
    /// up again once it answers, for up to [`RECONNECT_WINDOW`] without an answer.
    /// `cluster` (0 for any) is the cluster the job was submitted to: a coordinator
    /// that came back without its data directory has forgotten the job, and another
    /// of its jobs may have the same id.
    async fn wait(&self, job: u64, cluster: u64) -> Result<pb::JobStatus> {
        let progress = self
            .inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut last: Option<pb::JobStatus> = None;
        let mut backoff = Duration::from_millis(100);
        let mut unanswered_since: Option<tokio::time::Instant> = None;
        let mut cluster = cluster;
        loop {
            let (heard, outcome) = self.watch(job, cluster, &progress, &mut last).await;
            if heard {
                unanswered_since = None;
                backoff = Duration::from_millis(100);
            }
            // Whatever the caller knew, the job is the one the first answer was about.
            if cluster == 0 {
                cluster = last.as_ref().map_or(0, |s| s.cluster_id);
            }
            let ended = last
                .as_ref()
                .is_some_and(|s| s.state() != pb::JobState::Running);
            let cut_off = match outcome {
                Ok(()) if ended => break,
                // The stream ended, or broke, while the job ran: the coordinator went.
                Ok(()) => "its status stream ended".to_string(),
                Err(e) if drove_exec::leader::gone(&e) => {
                    // Another coordinator may lead now.
                    self.inner.coordinators.follow(&e);
                    e.message().to_string()
                }
                // Known before the coordinator went (submitted here, or heard of), and
                // unknown since it came back.
                Err(e) if e.code() == tonic::Code::NotFound && (cluster != 0 || last.is_some()) => {
                    return Err(Error::Rejected(format!(
                        "job {job} was lost: the coordinator restarted without it (it keeps jobs across a restart only with --data-dir); submit it again"
                    )));
                }
                Err(e) => return Err(status_error(e)),
            };
            let since = *unanswered_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > RECONNECT_WINDOW {
                return Err(Error::Transport(format!(
                    "job {job}: the coordinator has not answered for {} s ({cut_off}); `drove result {job}` takes the job up again once it is back, if it keeps its state (--data-dir)",
                    RECONNECT_WINDOW.as_secs(),
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.inner.coordinators.retry_max(Duration::from_secs(2)));
        }
        let status =
            last.ok_or_else(|| Error::Transport(format!("job {job}: no status arrived")))?;
        match status.state() {
            pb::JobState::Succeeded if status.result_released => Err(Error::Rejected(format!(
                "job {job}'s result was already read, or expired unread (the coordinator keeps a result for a while after its job ends, 10 minutes by default); run the query again"
            ))),
            pb::JobState::Succeeded => Ok(status),
            pb::JobState::Failed | pb::JobState::Cancelled => Err(Error::JobFailed {
                job,
                message: status.error,
            }),
            other => Err(Error::Transport(format!(
                "job {job}: the status stream ended while the job was {other:?}"
            ))),
        }
    }

    /// One watch of the job's status until the stream ends; every status goes to
    /// `last` (and to the progress report). Whether any arrived, and how it ended.
    async fn watch(
        &self,
        job: u64,
        cluster: u64,
        progress: &Option<ProgressFn>,
        last: &mut Option<pb::JobStatus>,
    ) -> (bool, Result<(), tonic::Status>) {
        let mut heard = false;
        let mut client = self.inner.coordinators.current().1;
        let outcome = async {
            let mut updates = client
                .watch_job(pb::JobRequest {
                    job_id: job,
                    cluster_id: cluster,
                })
                .await?
                .into_inner();
            while let Some(status) = updates.message().await? {
                heard = true;
                if let Some(report) = progress {
                    report(&Progress::of(&status));
                }
                *last = Some(status);
            }
            Ok(())
        }
        .await;
        (heard, outcome)
    }

    /// The cluster's workers and recent jobs.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let status = session.cluster_status().await?;
    /// println!("{} workers", status.workers.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse> {
        self.cluster(true).await
    }

    /// The cluster's workers and recent jobs, the jobs without their per-task runs:
    /// cheap however many tasks the history holds.
    pub async fn cluster_summary(&self) -> Result<pb::ClusterStatusResponse> {
        self.cluster(false).await
    }

    async fn cluster(&self, with_tasks: bool) -> Result<pb::ClusterStatusResponse> {
        Ok(self
            .on_leader(|mut c| async move {
                c.cluster_status(pb::ClusterStatusRequest { with_tasks })
                    .await
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Calls `f` with the progress of every job this session runs, each time it
    /// changes, until the job ends.
    ///
    /// ```no_run
    /// # fn demo(session: drove_client::Session) {
    /// session.on_progress(|p| eprintln!("{}/{} tasks", p.tasks_done, p.tasks_total));
    /// # }
    /// ```
    pub fn on_progress(&self, f: impl Fn(&Progress) + Send + Sync + 'static) {
        *self
            .inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    /// Cancels a job that has not ended: its tasks stop and its blocks are freed. Job
    /// ids are shown by `drove status` and in [`JobSummary::job_id`].
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let status = session.cancel(7).await?;
    /// println!("{:?}", status.state());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cancel(&self, job: u64) -> Result<pb::JobStatus> {
        let request = pb::JobRequest {
            job_id: job,
            cluster_id: 0,
        };
        Ok(self
            .on_leader(|mut c| async move { c.cancel_job(request).await })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// Sets the priority of the jobs this session submits from now on: among its
    /// tenant's jobs, higher goes first (-1000 to 1000; 0 by default). Between
    /// tenants, slots are shared by weight whatever the priorities.
    ///
    /// ```no_run
    /// # fn demo(session: drove_client::Session) {
    /// session.set_priority(10);
    /// # }
    /// ```
    pub fn set_priority(&self, priority: i32) {
        (self.inner.priority).store(priority, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes a token for `tenant` with `role` ("admin", "submit" or "read"); needs an
    /// admin's token. The token's text is shown only now: the cluster keeps its digest.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let made = session.create_token("analytics", "submit").await?;
    /// println!("{}", made.token);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_token(&self, tenant: &str, role: &str) -> Result<NewToken> {
        let request = pb::CreateTokenRequest {
            tenant: tenant.to_string(),
            role: role.to_string(),
        };
        let made = self
            .on_leader(|mut c| {
                let request = request.clone();
                async move { c.create_token(request).await }
            })
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(NewToken {
            token: made.token,
            id: made.id,
        })
    }

    /// Revokes the token with this id on every coordinator; needs an admin's token.
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let request = pb::RevokeTokenRequest { id: id.to_string() };
        self.on_leader(|mut c| {
            let request = request.clone();
            async move { c.revoke_token(request).await }
        })
        .await
        .map_err(status_error)?;
        Ok(())
    }

    /// The live tokens (never their secrets); needs an admin's token.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let listed = self
            .on_leader(|mut c| async move { c.list_tokens(pb::ListTokensRequest {}).await })
            .await
            .map_err(status_error)?
            .into_inner();
        Ok((listed.tokens.into_iter())
            .map(|t| TokenInfo {
                id: t.id,
                tenant: t.tenant,
                role: t.role,
                created_unix_ms: t.created_unix_ms,
            })
            .collect())
    }

    /// Stops the embedded cluster, if this session started one.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) {
    /// session.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        let ending_jobs = std::mem::take(
            &mut *self
                .inner
                .ending_jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for ending in ending_jobs {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, ending).await;
        }
        if let Some(cluster) = self.inner.cluster.lock().await.take() {
            cluster.shutdown().await;
        }
    }
}

fn existing_path(path: &Path) -> Result<&str> {
    if !path.exists() {
        return Err(Error::Config(format!(
            "path '{}' does not exist; pass an existing file or directory",
            path.display()
        )));
    }
    path.to_str()
        .ok_or_else(|| Error::Config(format!("path '{}' is not UTF-8", path.display())))
}

/// A short label for a job: the start of its SQL on one line.
/// `CACHE TABLE name AS query` and `UNCACHE TABLE [IF EXISTS] name`, which DataFusion's
/// SQL does not know; the client turns them into calls of its own. Names are folded to
/// lower case, as DataFusion folds unquoted names.
#[derive(Debug, PartialEq, Eq)]
enum CacheStatement<'a> {
    Cache { name: String, query: &'a str },
    Uncache { name: String, if_exists: bool },
}

impl<'a> CacheStatement<'a> {
    /// The statement `sql` is, if it is one of these; an error if it is one, malformed.
    fn parse(sql: &'a str) -> Result<Option<Self>> {
        let text = sql.trim().trim_end_matches(';').trim();
        // The words, each with where it starts in `text`.
        let words: Vec<(usize, &str)> = text
            .split_whitespace()
            .map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
            .collect();
        let is = |i: usize, word: &str| {
            words
                .get(i)
                .is_some_and(|(_, w)| w.eq_ignore_ascii_case(word))
        };
        let uncache = is(0, "UNCACHE");
        if !(uncache || is(0, "CACHE")) || !is(1, "TABLE") {
            return Ok(None);
        }
        if uncache {
            let usage = || Error::Rejected("write UNCACHE TABLE [IF EXISTS] name".into());
            return match words.len() {
                3 => Ok(Some(Self::Uncache {
                    name: words[2].1.to_ascii_lowercase(),
                    if_exists: false,
                })),
                5 if is(2, "IF") && is(3, "EXISTS") => Ok(Some(Self::Uncache {
                    name: words[4].1.to_ascii_lowercase(),
                    if_exists: true,
                })),
                _ => Err(usage()),
            };
        }
        let usage = || {
            Error::Rejected(
                "write CACHE TABLE name AS query, e.g. CACHE TABLE recent AS SELECT * FROM orders WHERE o_orderdate > '1998-01-01', as a statement of its own".into(),
            )
        };
        if words.len() < 5 || !is(3, "AS") {
            return Err(usage());
        }
        let query = &text[words[4].0..];
        if query.contains(';') {
            return Err(Error::Rejected(
                "CACHE TABLE takes a single query; run other statements separately".into(),
            ));
        }
        Ok(Some(Self::Cache {
            name: words[2].1.to_ascii_lowercase(),
            query,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{Arc, CacheStatement, RecordBatch};

    #[test]
    fn result_rows_of_other_columns_are_refused() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let expected = Schema::new(vec![Field::new("n", DataType::Int64, false)]);
        let right = RecordBatch::try_new(
            Arc::new(expected.clone()),
            vec![Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
        assert!(super::of_schema(right, &expected).is_ok());
        let made_up = RecordBatch::try_from_iter(vec![(
            "n",
            Arc::new(StringArray::from(vec!["forged"])) as _,
        )])
        .unwrap();
        let e = super::of_schema(made_up, &expected)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the query's (n Int64)"), "{e}");
    }

    #[test]
    fn cache_statements_parse_and_bad_ones_say_how_to_write_them() {
        let cache = |name: &str, query| {
            Some(CacheStatement::Cache {
                name: name.into(),
                query,
            })
        };
        assert_eq!(
            CacheStatement::parse("cache table t as select a from t;").unwrap(),
            cache("t", "select a from t")
        );
        assert_eq!(
            CacheStatement::parse("CACHE TABLE Big\n AS\tSELECT * FROM able").unwrap(),
            cache("big", "SELECT * FROM able")
        );
        assert_eq!(
            CacheStatement::parse("uncache table IF exists X").unwrap(),
            Some(CacheStatement::Uncache {
                name: "x".into(),
                if_exists: true
            })
        );
        // Any Unicode space separates words, and no offset lands inside a character.
        assert_eq!(
            CacheStatement::parse("CACHE TABLE\u{a0}tabl AS SELECT 'é'").unwrap(),
            cache("tabl", "SELECT 'é'")
        );
        assert_eq!(CacheStatement::parse("SELECT 1").unwrap(), None);
        assert_eq!(CacheStatement::parse("cache").unwrap(), None);
        for (bad, says) in [
            ("CACHE TABLE x", "CACHE TABLE name AS query"),
            ("CACHE TABLE x SELECT 1", "CACHE TABLE name AS query"),
            ("CACHE TABLE x AS SELECT 1; SELECT 2", "single query"),
            ("UNCACHE TABLE", "UNCACHE TABLE [IF EXISTS] name"),
            ("UNCACHE TABLE a b", "UNCACHE TABLE [IF EXISTS] name"),
        ] {
            let e = CacheStatement::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}

fn name_of(sql: &str) -> String {
    let line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(80).collect()
}

/// A lazy, distributed DataFrame: transformations build a plan, [`DataFrame::collect`]
/// runs it on the cluster.
///
/// ```no_run
/// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
/// use drove_client::datafusion::prelude::{col, lit};
/// let df = session.read_parquet("data/lineitem.parquet").await?
///     .filter(col("l_quantity").gt(lit(10)))?
///     .limit(0, Some(5))?;
/// let batches = df.collect().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DataFrame {
    session: Session,
    df: datafusion::dataframe::DataFrame,
}

impl DataFrame {
    /// Keeps the rows for which `predicate` is true.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// use drove_client::datafusion::prelude::{col, lit};
    /// let big = df.filter(col("amount").gt(lit(100)))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn filter(self, predicate: Expr) -> Result<Self> {
        self.transform(|df| df.filter(predicate))
    }

    /// Computes these expressions for every row.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// use drove_client::datafusion::prelude::col;
    /// let names = df.select(vec![col("name")])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn select(self, exprs: Vec<Expr>) -> Result<Self> {
        self.transform(|df| df.select(exprs))
    }

    /// Groups by `group` and computes the aggregates `aggr`.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// use drove_client::datafusion::functions_aggregate::expr_fn::sum;
    /// use drove_client::datafusion::prelude::col;
    /// let totals = df.aggregate(vec![col("region")], vec![sum(col("amount"))])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn aggregate(self, group: Vec<Expr>, aggr: Vec<Expr>) -> Result<Self> {
        self.transform(|df| df.aggregate(group, aggr))
    }

    /// Sorts by these expressions.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// use drove_client::datafusion::prelude::col;
    /// let sorted = df.sort(vec![col("amount").sort(false, true)])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn sort(self, exprs: Vec<SortExpr>) -> Result<Self> {
        self.transform(|df| df.sort(exprs))
    }

    /// Skips `skip` rows and keeps at most `fetch`.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// let first_ten = df.limit(0, Some(10))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn limit(self, skip: usize, fetch: Option<usize>) -> Result<Self> {
        self.transform(|df| df.limit(skip, fetch))
    }

    /// The DataFusion DataFrame underneath, for transformations not wrapped here.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) {
    /// println!("{}", df.inner().logical_plan().display_indent());
    /// # }
    /// ```
    pub fn inner(&self) -> &datafusion::dataframe::DataFrame {
        &self.df
    }

    /// Runs the plan on the cluster and returns its rows.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// let batches = df.collect().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn collect(self) -> Result<Vec<RecordBatch>> {
        Ok(self.collect_with_summary().await?.batches)
    }

    /// Runs the plan on the cluster and returns its rows with where the work ran.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// let result = df.collect_with_summary().await?;
    /// println!("{}", result.summary);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn collect_with_summary(self) -> Result<QueryResult> {
        self.stream().await?.collect().await
    }

    /// Runs the plan on the cluster and streams its rows, read from the workers a
    /// batch at a time.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// use futures::TryStreamExt;
    /// let mut rows = df.stream().await?;
    /// while let Some(batch) = rows.try_next().await? {
    ///     println!("{} rows", batch.num_rows());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stream(self) -> Result<ResultStream> {
        self.session
            .run_stream(self.encoded()?, "dataframe".to_string(), String::new())
            .await
    }

    fn encoded(&self) -> Result<pb::submit_job_request::Query> {
        use datafusion::common::tree_node::TreeNode;
        // DataFusion's plan encoding has no form for subqueries in expressions (IN,
        // EXISTS, correlated ones: TPC-H Q2, Q4, Q16, ...). Such a plan goes optimized,
        // its subqueries turned into joins; its scalar subqueries are checked first, as
        // the coordinator checks those of SQL it plans.
        let subquery = |e: &Expr| {
            matches!(
                e,
                Expr::Exists(_)
                    | Expr::InSubquery(_)
                    | Expr::ScalarSubquery(_)
                    | Expr::OuterReferenceColumn(..)
            )
        };
        let has_subqueries = self.df.logical_plan().exists(|node| {
            Ok(node
                .expressions()
                .iter()
                .any(|e| matches!(e.exists(|e| Ok(subquery(e))), Ok(true))))
        })?;
        let decorrelated;
        let plan = if has_subqueries {
            let (state, plan) = self.df.clone().into_parts();
            decorrelated = state.optimize(&drove_exec::subquery::check_scalar_subqueries(plan)?)?;
            &decorrelated
        } else {
            self.df.logical_plan()
        };
        let codec = drove_exec::cache::CacheCodec::new([]);
        let plan =
            datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec(plan, &codec)?;
        Ok(pb::submit_job_request::Query::LogicalPlan(plan.to_vec()))
    }

    /// Computes this DataFrame now and keeps its partitions in the workers' memory
    /// (spilling under pressure); returns a DataFrame that reads them, for reuse by
    /// later jobs. A partition lost with its worker is computed again from the
    /// DataFrame's plan. Free it with [`DataFrame::unpersist`].
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// let links = df.cache().await?;
    /// for _ in 0..10 {
    ///     let n = links.clone().collect().await?;
    /// }
    /// links.unpersist().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cache(self) -> Result<DataFrame> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let name = format!(
            "dataframe_cache_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.cache_as(&name).await
    }

    /// [`DataFrame::cache`] under a name that SQL can use.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// let points = df.cache_as("points").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cache_as(self, name: &str) -> Result<DataFrame> {
        let session = self.session.clone();
        let result = session
            .run(self.encoded()?, format!("cache {name}"), name.to_string())
            .await?;
        session.register_cached(name, result.schema)?;
        let df = session.inner.ctx.table(name.to_ascii_lowercase()).await?;
        Ok(DataFrame { session, df })
    }

    /// The same as [`DataFrame::cache`]: cached partitions always spill to disk under
    /// memory pressure rather than being dropped.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// let kept = df.persist().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn persist(self) -> Result<DataFrame> {
        self.cache().await
    }

    /// Frees the cached table this DataFrame reads (one [`DataFrame::cache`] returned);
    /// false if it reads none.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// df.unpersist().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unpersist(&self) -> Result<bool> {
        use datafusion::logical_expr::LogicalPlan;
        let mut plan = self.df.logical_plan();
        // A cached DataFrame's plan is a scan of the table, perhaps under a projection.
        loop {
            match plan {
                LogicalPlan::Projection(p) => plan = &p.input,
                LogicalPlan::SubqueryAlias(a) => plan = &a.input,
                LogicalPlan::TableScan(scan) => {
                    let cached = datafusion::datasource::source_as_provider(&scan.source)
                        .ok()
                        .is_some_and(|p| p.is::<drove_exec::cache::CachedTable>());
                    if !cached {
                        return Ok(false);
                    }
                    return self.session.uncache(scan.table_name.table(), true).await;
                }
                _ => return Ok(false),
            }
        }
    }

    /// This DataFrame with a DataFusion transformation applied to the DataFrame
    /// underneath, for the ones not wrapped here (joins, unions, distinct).
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// let rows = df.transform(|d| d.distinct())?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn transform(
        self,
        f: impl FnOnce(
            datafusion::dataframe::DataFrame,
        ) -> datafusion::error::Result<datafusion::dataframe::DataFrame>,
    ) -> Result<Self> {
        Ok(Self {
            session: self.session,
            df: f(self.df)?,
        })
    }
}

/// A job's rows and the summary of how it ran.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: arrow::datatypes::SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub summary: JobSummary,
}

impl QueryResult {
    fn empty() -> Self {
        Self {
            schema: Arc::new(arrow::datatypes::Schema::empty()),
            batches: Vec::new(),
            summary: JobSummary::default(),
        }
    }

    /// Rows in the result.
    ///
    /// ```no_run
    /// # fn demo(r: drove_client::QueryResult) { println!("{}", r.num_rows()); }
    /// ```
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A succeeded job's result, read from the workers as it is consumed: the client
/// holds only the batch in hand, however large the result. Dropping it frees the job's
/// blocks on the workers.
///
/// ```no_run
/// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
/// use futures::TryStreamExt;
/// let mut rows = session.run_sql_stream("SELECT * FROM lineitem").await?;
/// while let Some(batch) = rows.try_next().await? {
///     println!("{} rows", batch.num_rows());
/// }
/// # Ok(())
/// # }
/// ```
pub struct ResultStream {
    schema: arrow::datatypes::SchemaRef,
    summary: JobSummary,
    batches: futures::stream::BoxStream<'static, Result<RecordBatch>>,
    /// The job whose blocks are freed when the stream goes; none for a result made here.
    _job: Option<JobGuard>,
}

impl From<QueryResult> for ResultStream {
    fn from(result: QueryResult) -> Self {
        Self {
            schema: result.schema,
            summary: result.summary,
            batches: futures::stream::iter(result.batches.into_iter().map(Ok)).boxed(),
            _job: None,
        }
    }
}

impl ResultStream {
    /// The result's columns.
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Where the job's work ran and what it moved.
    pub fn summary(&self) -> &JobSummary {
        &self.summary
    }

    /// Reads the whole result into memory.
    pub async fn collect(self) -> Result<QueryResult> {
        let Self {
            schema,
            summary,
            batches,
            _job,
        } = self;
        Ok(QueryResult {
            schema,
            batches: batches.try_collect().await?,
            summary,
        })
    }
}

impl Stream for ResultStream {
    type Item = Result<RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.batches.poll_next_unpin(cx)
    }
}

/// Where one stage's tasks ran and what they moved.
#[derive(Debug, Clone, Default)]
pub struct StageSummary {
    pub stage_id: u32,
    pub root: String,
    pub depends_on: Vec<u32>,
    /// Tasks per worker id.
    pub tasks_by_worker: BTreeMap<u64, u32>,
    pub output_rows: u64,
    pub output_bytes: u64,
    pub local_read_bytes: u64,
    pub remote_read_bytes: u64,
    /// The slowest task's run time, in milliseconds.
    pub task_ms_max: u64,
    pub tasks_total: u32,
    /// Tasks whose partitions another task of the stage read with its own, since they
    /// were small (adaptive coalescing): they never ran.
    pub tasks_coalesced: u32,
    /// Attempts launched: one per task that ran, plus re-runs and speculative twins.
    pub attempts: u32,
    /// Attempts that failed and were retried.
    pub attempts_failed: u32,
    /// Speculative twins launched for slow tasks.
    pub attempts_speculative: u32,
}

/// Where a job's stages and tasks ran, and how many bytes moved between workers.
#[derive(Debug, Clone, Default)]
pub struct JobSummary {
    pub job_id: u64,
    pub elapsed_ms: u64,
    pub stages: Vec<StageSummary>,
    /// Named counts summed over the job's tasks (e.g. `invalid_utf8_lines`).
    pub counters: BTreeMap<String, u64>,
    /// Bytes its tasks spilled to disk, and how many spills.
    pub spilled_bytes: u64,
    pub spill_count: u64,
    /// Bytes of its blocks kept in memory, and the most the operators of any one of
    /// its tasks held at once.
    pub memory_bytes: u64,
    pub peak_memory_bytes: u64,
    /// Attempts of its tasks that scan drove fs files: (node-local, zone-local,
    /// remote), by where they ran against the workers that hold their data.
    pub locality: (u32, u32, u32),
}

impl JobSummary {
    fn from_status(status: &pb::JobStatus) -> Self {
        let mut counters = BTreeMap::new();
        for t in status.stages.iter().flat_map(|s| &s.tasks) {
            for (name, n) in &t.counters {
                *counters.entry(name.clone()).or_default() += n;
            }
        }
        let stages = status
            .stages
            .iter()
            .map(|s| {
                let mut summary = StageSummary {
                    stage_id: s.stage_id,
                    root: s.root.clone(),
                    depends_on: s.depends_on.clone(),
                    tasks_total: s.tasks_total,
                    tasks_coalesced: s.tasks_coalesced,
                    attempts: s.attempts_launched,
                    attempts_failed: s.attempts_failed,
                    attempts_speculative: s.attempts_speculative,
                    ..Default::default()
                };
                for t in &s.tasks {
                    *summary.tasks_by_worker.entry(t.worker_id).or_default() += 1;
                    summary.output_rows += t.output_rows;
                    summary.output_bytes += t.output_bytes;
                    summary.local_read_bytes += t.local_read_bytes;
                    summary.remote_read_bytes += t.remote_read_bytes;
                    summary.task_ms_max = summary.task_ms_max.max(t.elapsed_ms);
                }
                summary
            })
            .collect();
        Self {
            job_id: status.job_id,
            elapsed_ms: status.elapsed_ms,
            stages,
            counters,
            spilled_bytes: status.spilled_bytes,
            spill_count: status.spill_count,
            memory_bytes: status.memory_bytes,
            peak_memory_bytes: status.peak_memory_bytes,
            locality: status
                .locality
                .map_or((0, 0, 0), |l| (l.node_local, l.zone_local, l.remote)),
        }
    }

    /// Bytes the job's stages wrote for other stages to read (the shuffle's size).
    ///
    /// ```no_run
    /// # fn demo(s: drove_client::JobSummary) { println!("{}", s.shuffle_write_bytes()); }
    /// ```
    pub fn shuffle_write_bytes(&self) -> u64 {
        let read: std::collections::BTreeSet<u32> = self
            .stages
            .iter()
            .flat_map(|s| s.depends_on.iter().copied())
            .collect();
        self.stages
            .iter()
            .filter(|s| read.contains(&s.stage_id))
            .map(|s| s.output_bytes)
            .sum()
    }

    /// Shuffle bytes that crossed from one worker to another.
    ///
    /// ```no_run
    /// # fn demo(s: drove_client::JobSummary) { println!("{}", s.remote_read_bytes()); }
    /// ```
    pub fn remote_read_bytes(&self) -> u64 {
        self.stages.iter().map(|s| s.remote_read_bytes).sum()
    }

    /// Shuffle bytes a task read from its own worker.
    ///
    /// ```no_run
    /// # fn demo(s: drove_client::JobSummary) { println!("{}", s.local_read_bytes()); }
    /// ```
    pub fn local_read_bytes(&self) -> u64 {
        self.stages.iter().map(|s| s.local_read_bytes).sum()
    }

    /// The ids of the workers that ran at least one task.
    ///
    /// ```no_run
    /// # fn demo(s: drove_client::JobSummary) { println!("{:?}", s.workers_used()); }
    /// ```
    pub fn workers_used(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .stages
            .iter()
            .flat_map(|s| s.tasks_by_worker.keys().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Attempts beyond one per task: re-runs after failures or lost workers, and
    /// speculative twins.
    ///
    /// ```no_run
    /// # fn demo(s: drove_client::JobSummary) { println!("{}", s.extra_attempts()); }
    /// ```
    pub fn extra_attempts(&self) -> u32 {
        self.stages
            .iter()
            .map(|s| (s.attempts).saturating_sub(s.tasks_total.saturating_sub(s.tasks_coalesced)))
            .sum()
    }

    /// Tasks run in all.
    ///
    /// ```no_run
    /// # fn demo(s: drove_client::JobSummary) { println!("{}", s.tasks()); }
    /// ```
    pub fn tasks(&self) -> u32 {
        self.stages
            .iter()
            .flat_map(|s| s.tasks_by_worker.values())
            .sum()
    }
}

impl fmt::Display for JobSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "job {}: {} stages, {} tasks on {} workers in {} ms; shuffle read {} across workers, {} locally",
            self.job_id,
            self.stages.len(),
            self.tasks(),
            self.workers_used().len(),
            self.elapsed_ms,
            human_bytes(self.remote_read_bytes()),
            human_bytes(self.local_read_bytes()),
        )?;
        if self.extra_attempts() > 0 {
            let failed: u32 = self.stages.iter().map(|s| s.attempts_failed).sum();
            let speculative: u32 = self.stages.iter().map(|s| s.attempts_speculative).sum();
            writeln!(
                f,
                "  {} extra attempts: {failed} after failures, {speculative} speculative, the rest after lost workers",
                self.extra_attempts()
            )?;
        }
        let (node, zone, remote) = self.locality;
        if node + zone + remote > 0 {
            writeln!(
                f,
                "  drove fs scans: {node} attempts node-local, {zone} zone-local, {remote} remote"
            )?;
        }
        for (name, n) in &self.counters {
            writeln!(f, "  counter {name}: {n}")?;
        }
        for s in &self.stages {
            let placement: Vec<String> = s
                .tasks_by_worker
                .iter()
                .map(|(w, n)| format!("worker-{w}×{n}"))
                .collect();
            let mut reads = if s.depends_on.is_empty() {
                String::new()
            } else {
                let deps: Vec<String> = s.depends_on.iter().map(|d| d.to_string()).collect();
                format!(" reads stage {}", deps.join(","))
            };
            if s.tasks_coalesced > 0 {
                reads += &format!(
                    " ({} partitions coalesced into {} tasks)",
                    s.tasks_total,
                    s.tasks_total.saturating_sub(s.tasks_coalesced)
                );
            }
            writeln!(
                f,
                "  stage {} {}{}: tasks on [{}], {} rows out, read {} remote / {} local, slowest task {} ms",
                s.stage_id,
                s.root,
                reads,
                placement.join(" "),
                s.output_rows,
                human_bytes(s.remote_read_bytes),
                human_bytes(s.local_read_bytes),
                s.task_ms_max,
            )?;
        }
        Ok(())
    }
}
