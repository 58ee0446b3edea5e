//! The `drove` command line. A library, so that a user's own binary can embed the same
//! commands (`coordinator`, `worker`, `sql`, ...) next to its own code.

mod demo;
mod fs;
pub mod gentext;
pub mod jobs;
mod output;
pub mod progress;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use drove_client::{LocalCluster, LocalClusterConfig, Session};
use drove_coordinator::CoordinatorConfig;
use drove_exec::datagen::Benchmark;
use drove_exec::tables::{Format, TableSpec, generated_tables};
use drove_exec::tls::ClusterTls;
use drove_worker::WorkerConfig;

/// The default gRPC address of a coordinator.
pub const DEFAULT_COORDINATOR_ADDR: &str = "127.0.0.1:7070";
/// The default HTTP address of a coordinator.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7071";

#[derive(Parser, Debug)]
#[command(
    name = "drove",
    version,
    about = "A distributed data processing engine: one binary, a coordinator and workers."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines on stderr look; RUST_LOG filters them (e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines on stderr look.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a coordinator.
    Coordinator(CoordinatorArgs),
    /// Run a worker that registers with a coordinator.
    Worker(WorkerArgs),
    /// Run a coordinator and N workers in this process until Ctrl-C.
    Local(LocalArgs),
    /// Run SQL on a cluster and print the last query's result.
    Sql(SqlArgs),
    /// Run a registered MapReduce job on a cluster.
    Mapreduce(MapReduceArgs),
    /// Generate data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Generate TPC-H data, start an embedded cluster and run a few queries on it.
    Demo(demo::DemoArgs),
    /// Print a coordinator's workers and recent jobs.
    Status(StatusArgs),
    /// Cancel a running job: its tasks stop and its blocks are freed.
    Cancel(CancelArgs),
    /// Print the result of a job submitted with `drove sql --detach`.
    Result(ResultArgs),
    /// Make the cluster's certificates, for mutual TLS between its nodes and clients.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Make, revoke and list clients' tokens (with an admin's token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Files kept in the workers, in replicated chunks (drove:// paths).
    #[command(subcommand)]
    Fs(fs::FsCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a token for a tenant and print it (shown only now).
    Create(TokenCreateArgs),
    /// Revoke a token, on every coordinator.
    Revoke(TokenRevokeArgs),
    /// List the live tokens: id, tenant, role (never their secrets).
    List(TokenListArgs),
}

#[derive(Args, Debug)]
struct TokenCreateArgs {
    /// The tenant the token acts for: its jobs and cached tables are that tenant's.
    #[arg(long)]
    tenant: String,
    /// admin (everything, every tenant), submit (run and manage the tenant's jobs) or
    /// read (see the tenant's jobs and the cluster).
    #[arg(long, default_value = "submit")]
    role: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
struct TokenRevokeArgs {
    /// The token's id, as `drove token list` shows it.
    id: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
struct TokenListArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The cluster a command talks to.
#[derive(Args, Debug)]
struct ClusterArgs {
    /// The coordinator's gRPC address, HOST:PORT (or several, comma-separated).
    #[arg(long, default_value = DEFAULT_COORDINATOR_ADDR)]
    coordinator: String,
    #[command(flatten)]
    auth: ClientAuthArgs,
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Make a certificate authority for a new cluster: ca.pem, and ca.key (keep it
    /// off the cluster's machines).
    Init(CertInitArgs),
    /// Issue a certificate for a node (coordinator or worker) or, with --client, a
    /// client: cert.pem, key.pem and a copy of ca.pem, for --tls-dir.
    Issue(CertIssueArgs),
}

#[derive(Args, Debug)]
struct CertInitArgs {
    /// Directory to write the CA into (created if missing; must not hold a CA).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct CertIssueArgs {
    /// The CA's directory, made by `drove cert init`.
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// The certificate's name, e.g. worker-1 or alice.
    #[arg(long)]
    name: String,
    /// Directory to write into (created if missing; must not hold a certificate).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A client's certificate: it may submit jobs and read results, but not join as
    /// a worker or coordinator.
    #[arg(long)]
    client: bool,
    /// Another DNS name or IP address the certificate is valid for, as a browser or
    /// curl checks it (e.g. the coordinator's host name for its HTTPS UI). Repeatable.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

/// How tenants share a cluster's slots.
#[derive(Args, Debug)]
struct SharingArgs {
    /// A tenant's share and quotas, NAME:weight=W,slots=S,jobs=J (each optional):
    /// slot time is shared by weight between tenants with work (1 by default); at
    /// most S attempts and J running jobs at once, the rest waiting their turn.
    /// Repeatable.
    #[arg(long = "tenant", value_name = "NAME:SETTINGS", value_parser = drove_core::scheduler::TenantPolicy::parse)]
    tenants: Vec<(String, drove_core::scheduler::TenantPolicy)>,
    /// A directory a tenant's jobs may read and write under, TENANT=DIR: a tenant
    /// named here is confined to its own directories instead of --allow-path's.
    /// Repeatable.
    #[arg(long = "tenant-path", value_name = "TENANT=DIR", value_parser = parse_tenant_path)]
    tenant_paths: Vec<(String, PathBuf)>,
}

fn parse_tenant_path(text: &str) -> Result<(String, PathBuf), String> {
    let (tenant, dir) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not TENANT=DIR, e.g. analytics=/data/analytics"))?;
    drove_core::access::check_tenant(tenant)?;
    if dir.is_empty() {
        return Err(format!("'{text}' names no directory: give TENANT=DIR"));
    }
    Ok((tenant.to_string(), PathBuf::from(dir)))
}

impl SharingArgs {
    /// Each named tenant's directories, checked.
    fn tenant_paths(
        &self,
    ) -> Result<std::collections::BTreeMap<String, drove_exec::confine::AllowedPaths>> {
        let mut dirs: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
        for (tenant, dir) in &self.tenant_paths {
            dirs.entry(tenant.clone()).or_default().push(dir.clone());
        }
        dirs.into_iter()
            .map(|(tenant, dirs)| {
                let allowed = drove_exec::confine::AllowedPaths::new(&dirs)
                    .map_err(|e| anyhow::anyhow!("--tenant-path {tenant}: {e}"))?;
                Ok((tenant, allowed))
            })
            .collect()
    }
}

/// Where a cluster's jobs may read and write.
#[derive(Args, Debug)]
struct AllowPathArgs {
    /// A directory jobs may read and write under (tables, external tables, MapReduce
    /// input and output); anything else is refused before it is opened. Repeatable.
    /// Default: wherever the coordinator and workers can.
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_paths: Vec<PathBuf>,
}

impl AllowPathArgs {
    fn load(&self) -> Result<Option<drove_exec::confine::AllowedPaths>> {
        if self.allow_paths.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            drove_exec::confine::AllowedPaths::new(&self.allow_paths)
                .map_err(anyhow::Error::msg)?,
        ))
    }
}

/// How a coordinator or worker secures what it serves.
#[derive(Args, Debug)]
struct ServeTlsArgs {
    /// The node's certificate directory, made by `drove cert issue`: serve, and reach
    /// the other nodes, over mutual TLS; only holders of the cluster's certificates
    /// get in.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Listen on a non-loopback address without --tls-dir: anyone who reaches the
    /// port can run jobs and read data. Only on a network you trust.
    #[arg(long)]
    insecure: bool,
}

impl ServeTlsArgs {
    fn load(&self) -> Result<Option<std::sync::Arc<ClusterTls>>> {
        load_tls(self.tls_dir.as_deref())
    }
}

/// How a client proves itself to a cluster.
#[derive(Args, Debug)]
struct ClientAuthArgs {
    /// A certificate directory made by `drove cert issue --client`, for a cluster
    /// that runs with --tls-dir.
    #[arg(long, value_name = "DIR", env = "DROVE_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// A token from `drove token create` (or the CA's admin.token): the tenant and
    /// role to act as. Without one, a cluster with TLS knows the client by its
    /// certificate's name, as a tenant of that name with the submit role.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DROVE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Read the token from this file (e.g. the CA's admin.token): unlike --token, it
    /// shows in no process list.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
}

impl ClientAuthArgs {
    /// Connects to `addr` with these credentials.
    async fn connect(&self, addr: &str) -> Result<Session> {
        let token = match &self.token_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("--token-file: cannot read {}", file.display()))?
                    .trim()
                    .to_string(),
            ),
            None => self.token.clone(),
        };
        let credentials = drove_client::Credentials {
            tls: load_tls(self.tls_dir.as_deref())?,
            token,
        };
        Ok(Session::connect_with(addr, &credentials).await?)
    }
}

fn load_tls(dir: Option<&std::path::Path>) -> Result<Option<std::sync::Arc<ClusterTls>>> {
    match dir {
        None => Ok(None),
        Some(dir) => Ok(Some(
            ClusterTls::load(dir).map_err(|e| anyhow::anyhow!("--tls-dir: {e}"))?,
        )),
    }
}

#[derive(Args, Debug)]
struct CoordinatorArgs {
    /// gRPC address to listen on.
    #[arg(long, default_value = DEFAULT_COORDINATOR_ADDR)]
    bind: SocketAddr,
    /// HTTP address (health, JSON status) to listen on.
    #[arg(long, default_value = DEFAULT_HTTP_ADDR)]
    http: SocketAddr,
    /// Keep the job history and spent worker and job ids in this directory, written
    /// to disk before they are acted on, so that a restarted coordinator goes on from
    /// them (default: in memory only).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// This coordinator's node id among --peers (with --peers).
    #[arg(long, value_name = "N", requires = "peers")]
    node_id: Option<u64>,
    /// Run as one of several coordinators that replicate the metadata with Raft:
    /// every coordinator's node id and gRPC address, this one's included, e.g.
    /// 1=10.0.0.1:7070,2=10.0.0.2:7070,3=10.0.0.3:7070. Needs --node-id and --data-dir.
    #[arg(long, value_name = "ID=HOST:PORT,...", requires = "node_id")]
    peers: Option<String>,
    /// How often workers send heartbeats.
    #[arg(long, default_value_t = 1_000)]
    heartbeat_interval_ms: u64,
    /// A worker silent for this long is declared lost.
    #[arg(long, default_value_t = 10_000)]
    heartbeat_timeout_ms: u64,
    /// Running jobs fail once no worker has been registered for this long.
    #[arg(long, default_value_t = 60)]
    no_worker_grace_secs: u64,
    /// Ended jobs kept for inspection in the UI, the API and `drove status`.
    #[arg(long, default_value_t = 100)]
    job_history: usize,
    /// Copies of under-replicated drove fs chunks under way at once, at most: what
    /// repair may take from the disks and the network.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    fs_copies_max: u32,
    /// Failed attempts a task may have (transient errors) before its job fails.
    #[arg(long, default_value_t = 4)]
    task_attempts: u32,
    /// A running task that does no work (computes nothing) for this long is stopped
    /// and retried on another worker.
    #[arg(long, default_value_t = 300)]
    task_progress_timeout_secs: u64,
    /// Tasks each worker slot holds queued behind the one it runs, so it starts the
    /// next as soon as one ends. 0 sends a task only once a slot is free.
    #[arg(long, default_value_t = drove_coordinator::CoordinatorConfig::default().task_queue_per_slot)]
    task_queue_per_slot: u32,
    /// How long a scan of drove:// files waits for a slot on a worker that holds its
    /// data before it runs a task elsewhere (delay scheduling).
    #[arg(long, default_value_t = drove_coordinator::CoordinatorConfig::default().locality_wait_ms)]
    locality_wait_ms: u64,
    /// Never start speculative twins of slow tasks.
    #[arg(long)]
    no_speculation: bool,
    /// Run every task of a stage, however small its partitions: no adaptive coalescing
    /// of adjacent small ones into one task.
    #[arg(long)]
    no_coalesce: bool,
    /// A task is slow once it has run this many times its stage's median task time...
    #[arg(long, default_value_t = 1.5)]
    speculation_multiplier: f64,
    /// ...once this fraction of its stage's tasks is done...
    #[arg(long, default_value_t = 0.75)]
    speculation_quantile: f64,
    /// ...and once it has run at least this long.
    #[arg(long, default_value_t = 1_000)]
    speculation_min_ms: u64,
    /// A running job that no client has watched for this long is cancelled (its
    /// client went away), unless it was submitted with `drove sql --detach`.
    #[arg(long, default_value_t = 60)]
    client_lease_secs: u64,
    /// After taking over running jobs (elected, or restarted on --data-dir), launch
    /// nothing for this long while the workers come back and report the task outputs
    /// they kept, so that those tasks do not run again.
    #[arg(long, default_value_t = drove_coordinator::CoordinatorConfig::default().held_outputs_wait_ms)]
    held_outputs_wait_ms: u64,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    tls: ServeTlsArgs,
    #[command(flatten)]
    paths: AllowPathArgs,
    #[command(flatten)]
    sharing: SharingArgs,
}

/// What one job may take; larger jobs are refused, naming the flag.
#[derive(Args, Debug)]
struct LimitArgs {
    /// Tasks (partitions) one stage may have.
    #[arg(long, default_value_t = drove_coordinator::JobLimits::default().stage_partitions_max)]
    stage_partitions_max: usize,
    /// Tasks one job may have, in all its stages.
    #[arg(long, default_value_t = drove_coordinator::JobLimits::default().job_tasks_max)]
    job_tasks_max: usize,
}

impl From<&LimitArgs> for drove_coordinator::JobLimits {
    fn from(args: &LimitArgs) -> Self {
        Self {
            stage_partitions_max: args.stage_partitions_max,
            job_tasks_max: args.job_tasks_max,
        }
    }
}

#[derive(Args, Debug)]
struct ResultArgs {
    /// The job's id, as `drove sql --detach` printed it.
    job: u64,
    /// The coordinator's gRPC address, HOST:PORT; for replicated coordinators, each
    /// of theirs, comma-separated (the leader is found and followed).
    #[arg(long, default_value = DEFAULT_COORDINATOR_ADDR)]
    coordinator: String,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = output::OutputFormat::Table)]
    format: output::OutputFormat,
    /// Print where the job's tasks ran, on stderr.
    #[arg(long)]
    summary: bool,
    #[command(flatten)]
    auth: ClientAuthArgs,
}

#[derive(Args, Debug)]
struct CancelArgs {
    /// The job's id, as `drove status` shows it.
    job: u64,
    /// The coordinator's gRPC address, HOST:PORT; for replicated coordinators, each
    /// of theirs, comma-separated (the leader is found and followed).
    #[arg(long, default_value = DEFAULT_COORDINATOR_ADDR)]
    coordinator: String,
    #[command(flatten)]
    auth: ClientAuthArgs,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// The coordinator's gRPC address, HOST:PORT; for replicated coordinators, each
    /// of theirs, comma-separated (the leader is found and followed).
    #[arg(long)]
    coordinator: String,
    /// Address for this worker's Flight service; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// The address other nodes reach this worker at, if not --bind (e.g. behind NAT).
    #[arg(long)]
    advertise: Option<String>,
    /// Tasks run at once (default: the number of CPUs).
    #[arg(long)]
    slots: Option<u32>,
    /// Give up, exiting non-zero, when no coordinator accepted us for this long, at
    /// start or after losing it (long enough for a coordinator to restart).
    #[arg(long, default_value_t = 300)]
    registration_timeout_secs: u64,
    /// On SIGTERM, wait at most this long for the coordinator to release this worker.
    #[arg(long, default_value_t = 60)]
    drain_timeout_secs: u64,
    /// Keep this worker's lasting identity (its node id) and its drove fs chunks in
    /// this directory, so that it is recognised, with its chunks, when it comes back
    /// (default: a new identity every start, and no drove fs chunks). Keep it apart
    /// from --work-dir, which is scratch space.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// This worker's failure domain (a rack, a zone): replicas of a drove fs chunk go
    /// to different zones where there are several.
    #[arg(long, default_value = "")]
    zone: String,
    /// The most bytes of drove fs chunks kept in --data-dir, e.g. 500GiB (default: no
    /// limit but the disk's); a full worker's writes go to others.
    #[arg(long, value_name = "SIZE", value_parser = drove_core::parse_bytes)]
    data_max: Option<u64>,
    /// Bytes a second the scrubber reads to check stored chunks, e.g. 8MiB; 0 turns it
    /// off.
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = drove_core::parse_bytes)]
    scrub_rate: u64,
    /// On SIGTERM, a worker that holds drove fs chunks waits at most this long for them
    /// to be copied to other workers before it leaves (in place of --drain-timeout-secs
    /// when longer).
    #[arg(long, default_value_t = 600)]
    chunk_drain_timeout_secs: u64,
    /// Fault injection: delay every task by this long (to see speculation work).
    #[arg(long, default_value_t = 0, hide = true)]
    inject_task_delay_ms: u64,
    #[command(flatten)]
    memory: MemoryArgs,
    #[command(flatten)]
    tls: ServeTlsArgs,
}

#[derive(Args, Debug)]
struct MemoryArgs {
    /// Memory budget per worker process, e.g. 256MiB or 2GiB: an eighth (up to 64MiB)
    /// left for what is not counted, then half the rest for the blocks it holds, half
    /// for its tasks; the rest spills to disk (default: half the machine's memory,
    /// shared between the workers; at least 32MiB).
    #[arg(long, value_name = "SIZE", value_parser = drove_core::parse_bytes)]
    memory: Option<u64>,
    /// Where workers keep spill files; each makes its own directory under it, and
    /// removes what stopped workers left there.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// How spilled blocks are compressed: lz4, zstd or none.
    #[arg(long, default_value = "lz4", value_name = "CODEC")]
    spill_codec: drove_exec::blocks::SpillCodec,
}

#[derive(Args, Debug)]
struct LocalArgs {
    /// Number of workers.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// The coordinator's gRPC address; workers bind to the same IP on free ports.
    #[arg(long, default_value = DEFAULT_COORDINATOR_ADDR)]
    bind: SocketAddr,
    /// HTTP address of the coordinator.
    #[arg(long, default_value = DEFAULT_HTTP_ADDR)]
    http: SocketAddr,
    /// Task slots per worker.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Keep the coordinator's metadata under DIR/coordinator and each worker's identity
    /// under DIR/worker-N, so that a restarted `drove local` goes on from them
    /// (default: in memory only).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Coordinators: 1, or 3 or 5 that replicate the metadata with Raft (the first on
    /// --bind, the others on free ports; their logs under DIR/coordinator-N with
    /// --data-dir, else in a temporary directory).
    #[arg(long, default_value_t = 1)]
    coordinators: usize,
    /// Run every task of a stage, however small its partitions (see `drove coordinator
    /// --no-coalesce`).
    #[arg(long)]
    no_coalesce: bool,
    #[command(flatten)]
    memory: MemoryArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    tls: ServeTlsArgs,
    #[command(flatten)]
    paths: AllowPathArgs,
    #[command(flatten)]
    sharing: SharingArgs,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("cluster").required(true).args(["coordinator", "local"]))]
#[command(group = clap::ArgGroup::new("query").required(true).args(["execute", "file"]))]
struct SqlArgs {
    /// A running coordinator's gRPC address, HOST:PORT; for replicated coordinators,
    /// each of theirs, comma-separated (the leader is found and followed).
    #[arg(long)]
    coordinator: Option<String>,
    /// Start an embedded cluster of N workers for this command.
    #[arg(long, value_name = "N")]
    local: Option<usize>,
    /// Register a table: NAME=PATH, a CSV or Parquet file or directory. Repeatable.
    #[arg(long = "table", value_name = "NAME=PATH")]
    tables: Vec<String>,
    /// Register the eight TPC-H tables written by `drove gen tpch` in DIR.
    #[arg(long, value_name = "DIR")]
    tpch: Option<PathBuf>,
    /// Register the 24 TPC-DS tables written by `drove gen tpcds` in DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "tpch")]
    tpcds: Option<PathBuf>,
    /// SQL to run; several statements may be separated by ';'.
    #[arg(short = 'e', long = "execute", value_name = "SQL")]
    execute: Option<String>,
    /// A file of SQL to run.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = output::OutputFormat::Table)]
    format: output::OutputFormat,
    /// Also print where the job's tasks ran and what moved between workers (to stderr).
    #[arg(long)]
    summary: bool,
    /// Do not show progress on stderr while the job runs.
    #[arg(long)]
    no_progress: bool,
    /// Submit the query and print its job id at once; the job runs on without this
    /// client, and `drove result JOB` prints its result later.
    #[arg(long, requires = "coordinator")]
    detach: bool,
    /// Among your tenant's jobs, higher priority goes first (-1000 to 1000).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    priority: i32,
    #[command(flatten)]
    auth: ClientAuthArgs,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("cluster").required(true).args(["coordinator", "local"]))]
struct MapReduceArgs {
    /// The registered job: wordcount, inverted-index, grep, sort, or one of your own.
    job: String,
    /// Input files or directories (text, .csv or .parquet): local paths, or drove:// or
    /// s3:// URLs.
    #[arg(long = "input", value_name = "PATH", required = true, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// The output directory, local or at a drove:// or s3:// URL: one part file per
    /// reducer, and _SUCCESS when complete.
    #[arg(long)]
    output: PathBuf,
    /// Number of reducers.
    #[arg(long, default_value_t = 4)]
    reducers: usize,
    #[arg(long, value_enum, default_value_t = MrFormat::Text)]
    format: MrFormat,
    /// A running coordinator's gRPC address, HOST:PORT; for replicated coordinators,
    /// each of theirs, comma-separated (the leader is found and followed).
    #[arg(long)]
    coordinator: Option<String>,
    /// Start an embedded cluster of N workers for this command.
    #[arg(long, value_name = "N")]
    local: Option<usize>,
    /// Replace the part files of an existing output directory.
    #[arg(long)]
    overwrite: bool,
    /// A job parameter, KEY=VALUE (e.g. --arg pattern=error for grep). Repeatable.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// Do not run the job's combiner.
    #[arg(long)]
    no_combine: bool,
    /// Do not show progress on stderr while the job runs.
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    auth: ClientAuthArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MrFormat {
    Text,
    Csv,
    Parquet,
}

#[derive(Subcommand, Debug)]
enum GenCommand {
    /// Write the eight TPC-H tables.
    Tpch(GenTablesArgs),
    /// Write the 24 TPC-DS tables.
    Tpcds(GenTablesArgs),
    /// Write deterministic text with Zipf-distributed words.
    Text(GenTextArgs),
}

#[derive(Args, Debug)]
struct GenTextArgs {
    /// Total bytes to write.
    #[arg(long)]
    size: u64,
    /// Number of files to spread them over.
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// Directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Seed; the same seed gives the same text.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FileFormat {
    Parquet,
    Csv,
}

#[derive(Args, Debug)]
struct GenTablesArgs {
    /// Scale factor: 1 is about 1 GB of raw data.
    #[arg(long, allow_negative_numbers = true)]
    scale: f64,
    /// Directory to write into (created if missing): a local one, or drove://DIR in
    /// the cluster's drove fs (no shared mount needed).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = FileFormat::Parquet)]
    format: FileFormat,
    /// With --out drove://: replicas of each chunk (default: 3, or as many workers as
    /// store chunks, with a warning).
    #[arg(long)]
    replication: Option<u32>,
    /// With --out drove://: replace tables that exist there.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The coordinator's gRPC address, HOST:PORT; for replicated coordinators, each
    /// of theirs, comma-separated (the leader is found and followed).
    #[arg(long, default_value = DEFAULT_COORDINATOR_ADDR)]
    coordinator: String,
    #[command(flatten)]
    auth: ClientAuthArgs,
}

/// Parses the process arguments, runs the command and returns the exit code. Errors are
/// printed to stderr.
///
/// The built-in MapReduce jobs are registered first; a binary that embeds these commands
/// registers its own jobs before calling this.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// [`main`] with these arguments (the program name first) instead of the process's:
/// the Python package's `drove` command runs the CLI this way.
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    jobs::register_builtin();
    let cli = Cli::parse_from(args);
    let quiet = matches!(
        cli.command,
        Command::Sql(_)
            | Command::Mapreduce(_)
            | Command::Gen(_)
            | Command::Status(_)
            | Command::Cancel(_)
            | Command::Demo(_)
            | Command::Cert(_)
            | Command::Token(_)
            | Command::Fs(_)
    );
    init_logging(if quiet { "warn" } else { "info" }, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at the level RUST_LOG sets, else `default` (e.g. "warn"); does
/// nothing if the process already logs.
pub fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: a log kept in a file stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // One JSON object a line, with the fields of the enclosing spans (job, task).
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Coordinator(args) => coordinator(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Local(args) => local(args).await,
        Command::Sql(args) => sql(args).await,
        Command::Mapreduce(args) => mapreduce(args).await,
        Command::Gen(GenCommand::Tpch(args)) => gen_tables(Benchmark::Tpch, args).await,
        Command::Gen(GenCommand::Tpcds(args)) => gen_tables(Benchmark::Tpcds, args).await,
        Command::Gen(GenCommand::Text(args)) => gen_text(args),
        Command::Demo(args) => demo::run(args).await,
        Command::Status(args) => status(args).await,
        Command::Cancel(args) => cancel(args).await,
        Command::Result(args) => result(args).await,
        Command::Cert(CertCommand::Init(args)) => cert_init(args),
        Command::Cert(CertCommand::Issue(args)) => cert_issue(args),
        Command::Token(command) => token(command).await,
        Command::Fs(command) => fs::run(command).await,
    }
}

async fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let config = CoordinatorConfig {
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        heartbeat_timeout_ms: args.heartbeat_timeout_ms,
        no_worker_grace_ms: args.no_worker_grace_secs.saturating_mul(1000),
        task_attempt_max: args.task_attempts,
        task_progress_timeout_ms: args.task_progress_timeout_secs.saturating_mul(1000),
        task_queue_per_slot: args.task_queue_per_slot,
        locality_wait_ms: args.locality_wait_ms,
        job_history_max: args.job_history,
        fs_copies_max: args.fs_copies_max as usize,
        speculation: (!args.no_speculation).then_some(drove_coordinator::SpeculationConfig {
            multiplier: args.speculation_multiplier,
            quantile: args.speculation_quantile,
            min_ms: args.speculation_min_ms,
        }),
        coalesce: (!args.no_coalesce).then(drove_coordinator::CoalesceConfig::default),
        job_limits: (&args.limits).into(),
        client_lease_ms: args.client_lease_secs.saturating_mul(1000),
        held_outputs_wait_ms: args.held_outputs_wait_ms,
        data_dir: args.data_dir,
        peers: match (args.node_id, &args.peers) {
            (Some(id), Some(peers)) => Some(drove_coordinator::replica::Peers::parse(id, peers)?),
            _ => None,
        },
        tls: args.tls.load()?,
        insecure: args.tls.insecure,
        allowed_paths: args.paths.load()?,
        tenant_paths: args.sharing.tenant_paths()?,
        tenants: args.sharing.tenants.into_iter().collect(),
        ..Default::default()
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let handle = drove_coordinator::start(config, args.bind, Some(args.http)).await?;
    let http = handle.http_addr.map_or_else(String::new, |a| a.to_string());
    println!(
        "coordinator listening on {} (HTTP on {scheme}://{http})",
        handle.addr
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    handle.shutdown().await;
    Ok(())
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    let memory = args
        .memory
        .memory
        .unwrap_or_else(|| drove_worker::default_memory_bytes(1));
    let handle = drove_worker::start(WorkerConfig {
        coordinator: args.coordinator,
        bind: args.bind,
        advertise: args.advertise,
        slots,
        registration_timeout_ms: args.registration_timeout_secs.saturating_mul(1000),
        drain_timeout_ms: args.drain_timeout_secs.saturating_mul(1000),
        task_delay_ms: args.inject_task_delay_ms,
        memory_bytes: memory,
        work_dir: args
            .memory
            .work_dir
            .unwrap_or_else(drove_worker::default_work_dir),
        spill_codec: args.memory.spill_codec,
        data_dir: args.data_dir,
        tls: args.tls.load()?,
        insecure: args.tls.insecure,
        data_max_bytes: args.data_max.unwrap_or(u64::MAX),
        zone: args.zone,
        scrub_bytes_per_s: args.scrub_rate,
        chunk_drain_timeout_ms: args.chunk_drain_timeout_secs.saturating_mul(1000),
    })
    .await?;
    println!(
        "worker Flight service on {} with {slots} slots, {} of memory, spilling under {}{}",
        handle.flight_addr,
        drove_core::human_bytes(memory),
        handle.work_dir.display(),
        handle
            .node_id
            .as_ref()
            .map_or(String::new(), |id| format!(", node {id}"))
    );
    // SIGTERM drains: no new tasks, the running ones finish, and the worker leaves once
    // the coordinator no longer needs its blocks. Ctrl-C stops at once.
    let drain = handle.drainer();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        if sigterm.recv().await.is_some() {
            eprintln!("SIGTERM: draining, then leaving");
            drain();
        }
    });
    tokio::select! {
        result = handle.wait() => result?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn local(args: LocalArgs) -> Result<()> {
    let cluster = LocalCluster::start(LocalClusterConfig {
        workers: args.workers,
        slots: args.slots,
        bind_ip: args.bind.ip(),
        coordinator_port: args.bind.port(),
        http: Some(args.http),
        memory_bytes: args.memory.memory,
        work_dir: args.memory.work_dir,
        spill_codec: args.memory.spill_codec,
        coordinator: CoordinatorConfig {
            job_limits: (&args.limits).into(),
            tls: args.tls.load()?,
            insecure: args.tls.insecure,
            allowed_paths: args.paths.load()?,
            tenant_paths: args.sharing.tenant_paths()?,
            tenants: args.sharing.tenants.into_iter().collect(),
            coalesce: (!args.no_coalesce).then(drove_coordinator::CoalesceConfig::default),
            ..Default::default()
        },
        data_dir: args.data_dir,
        coordinators: args.coordinators,
        ..Default::default()
    })
    .await?;
    let (scheme, tls_flag) = match &args.tls.tls_dir {
        Some(dir) => ("https", format!(" --tls-dir {}", dir.display())),
        None => ("http", String::new()),
    };
    println!("coordinator: {}", cluster.coordinator_addrs());
    if let Some(http) = cluster.http_addr() {
        println!("http:        {scheme}://{http}");
    }
    for (i, w) in cluster.worker_addrs().iter().enumerate() {
        println!("worker {}:    {w}", i + 1);
    }
    println!(
        "run queries with: drove sql --coordinator {}{tls_flag} -e 'SELECT 1'",
        cluster.coordinator_addrs()
    );
    println!("press Ctrl-C to stop");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    cluster.shutdown().await;
    Ok(())
}

async fn sql(args: SqlArgs) -> Result<()> {
    let text = match (&args.execute, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the SQL file '{}'", file.display()))?,
        (None, None) => bail!("pass the SQL with -e SQL or -f FILE"),
    };
    // Check every flag before starting anything.
    let mut tables = args
        .tables
        .iter()
        .map(|t| TableSpec::parse(t))
        .collect::<drove_exec::Result<Vec<_>>>()?;
    if let Some(dir) = &args.tpch {
        tables.extend(generated_tables(dir, Benchmark::Tpch)?);
    }
    if let Some(dir) = &args.tpcds {
        tables.extend(generated_tables(dir, Benchmark::Tpcds)?);
    }
    let session = match (&args.coordinator, args.local) {
        (Some(addr), _) => args.auth.connect(addr).await?,
        (None, Some(workers)) => Session::local(workers).await?,
        (None, None) => bail!("pass --coordinator HOST:PORT or --local N"),
    };
    if !args.no_progress {
        progress::show(&session);
    }
    session.set_priority(args.priority);
    let run = async {
        for t in tables {
            session.register_table(&t.name, &t.path).await?;
        }
        if args.detach {
            let job = session.submit_sql(&text).await?;
            println!("{job}");
            eprintln!(
                "job {job} submitted; `drove result {job}` prints its result, `drove cancel {job}` stops it"
            );
            return Ok(());
        }
        let mut result = session.run_sql_stream(&text).await?;
        output::print(&mut result, args.format).await?;
        if args.summary {
            eprint!("{}", result.summary());
        }
        anyhow::Ok(())
    };
    finish(&session, run, "the job was cancelled").await
}

/// Runs a client command to its end or to Ctrl-C, which drops it (and so cancels the
/// job it waits for, if it owns it); then closes the session, waiting for that.
/// `interrupted` says what Ctrl-C did.
async fn finish(
    session: &Session,
    run: impl Future<Output = Result<()>>,
    interrupted: &str,
) -> Result<()> {
    let outcome = tokio::select! {
        outcome = run => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    session.shutdown().await;
    outcome.unwrap_or_else(|| bail!("interrupted: {interrupted}"))
}

async fn result(args: ResultArgs) -> Result<()> {
    let session = args.auth.connect(&args.coordinator).await?;
    let run = async {
        // Interrupting a read leaves the job as it is: it was detached.
        let mut result = session.result(args.job).await?;
        output::print(&mut result, args.format).await?;
        if args.summary {
            eprint!("{}", result.summary());
        }
        anyhow::Ok(())
    };
    finish(&session, run, "a job still running runs on").await
}

async fn mapreduce(args: MapReduceArgs) -> Result<()> {
    let mut job_args = std::collections::BTreeMap::new();
    for a in &args.args {
        let Some((k, v)) = a.split_once('=') else {
            bail!("--arg '{a}' has no '='; write it as KEY=VALUE, e.g. --arg pattern=error");
        };
        job_args.insert(k.to_string(), v.to_string());
    }
    // Check the job and its parameters before starting anything.
    drove_exec::mapreduce::job(&args.job, &job_args)?;
    let format = match args.format {
        MrFormat::Text => drove_client::OutputFormat::Text,
        MrFormat::Csv => drove_client::OutputFormat::Csv,
        MrFormat::Parquet => drove_client::OutputFormat::Parquet,
    };
    let session = match (&args.coordinator, args.local) {
        (Some(addr), _) => args.auth.connect(addr).await?,
        (None, Some(workers)) => Session::local(workers).await?,
        (None, None) => bail!("pass --coordinator HOST:PORT or --local N"),
    };
    if !args.no_progress {
        progress::show(&session);
    }
    let run = async {
        let result = session
            .run_mapreduce(drove_client::mapreduce::MapReduceOptions {
                job: args.job.clone(),
                args: job_args,
                inputs: args.inputs.clone(),
                output: args.output.clone(),
                reducers: args.reducers,
                format,
                overwrite: args.overwrite,
                combine: !args.no_combine,
            })
            .await?;
        println!(
            "{}: {} records in {} files under {}; shuffled {}",
            args.job,
            result.records,
            result.files.len(),
            args.output.display(),
            drove_client::human_bytes(result.summary.shuffle_write_bytes()),
        );
        print!("{}", result.summary);
        anyhow::Ok(())
    };
    finish(&session, run, "the job was cancelled").await
}

fn cert_init(args: CertInitArgs) -> Result<()> {
    drove_exec::tls::init(&args.out).map_err(anyhow::Error::msg)?;
    println!(
        "made the cluster's CA in {}; issue each node a certificate with `drove cert issue --ca {} --name NAME --out DIR`, and keep ca.key off the cluster's machines. {} is the first admin token (`--token $(cat {})`): make others with `drove token create`",
        args.out.display(),
        args.out.display(),
        args.out.join(drove_exec::token::ADMIN_TOKEN).display(),
        args.out.join(drove_exec::token::ADMIN_TOKEN).display(),
    );
    Ok(())
}

async fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create(args) => {
            drove_core::access::check_tenant(&args.tenant)
                .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
            drove_core::access::Role::parse(&args.role)
                .map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            let made = session.create_token(&args.tenant, &args.role).await?;
            // The token alone on stdout, for `$(drove token create ...)`.
            println!("{}", made.token);
            eprintln!(
                "made token {} for tenant {} ({}); it is shown only now",
                made.id, args.tenant, args.role
            );
        }
        TokenCommand::Revoke(args) => {
            drove_exec::token::check_id(&args.id).map_err(anyhow::Error::msg)?;
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            session.revoke_token(&args.id).await?;
            eprintln!("revoked token {}", args.id);
        }
        TokenCommand::List(args) => {
            let session = args.cluster.auth.connect(&args.cluster.coordinator).await?;
            println!(
                "{:<16}  {:<20}  {:<6}  created (unix s)",
                "id", "tenant", "role"
            );
            for t in session.tokens().await? {
                println!(
                    "{:<16}  {:<20}  {:<6}  {}",
                    t.id,
                    t.tenant,
                    t.role,
                    t.created_unix_ms / 1000
                );
            }
        }
    }
    Ok(())
}

fn cert_issue(args: CertIssueArgs) -> Result<()> {
    let role = if args.client {
        drove_exec::tls::Role::Client
    } else {
        drove_exec::tls::Role::Node
    };
    drove_exec::tls::issue(
        &args.ca,
        &args.name,
        role,
        &args.hosts,
        args.days,
        &args.out,
    )
    .map_err(anyhow::Error::msg)?;
    println!(
        "issued {} certificate '{}' into {}, valid for {} days; pass --tls-dir {}",
        if args.client { "a client" } else { "a node" },
        args.name,
        args.out.display(),
        args.days,
        args.out.display()
    );
    Ok(())
}

fn gen_text(args: GenTextArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let files = gentext::generate(args.size, args.files, &args.out, args.seed)?;
    println!(
        "wrote {} bytes of text in {} files into {} in {:.1}s",
        args.size,
        files.len(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Where `drove gen` copies the tables it generated locally.
enum GenTarget {
    /// drove fs, with the put's options.
    Drove(Session, drove_client::fs::PutOptions),
    /// An object store's directory (`s3://BUCKET/DIR/`, `gs://`, `az://`).
    Store(url::Url),
}

async fn gen_tables(benchmark: Benchmark, args: GenTablesArgs) -> Result<()> {
    let format = match args.format {
        FileFormat::Parquet => Format::Parquet,
        FileFormat::Csv => Format::Csv,
    };
    let started = std::time::Instant::now();
    let out = args.out.to_string_lossy().trim_end_matches('/').to_string();
    let url = drove_exec::stores::url_of(&out).map_err(anyhow::Error::msg)?;
    let in_drove = (url.as_ref()).is_some_and(|u| u.scheme() == drove_exec::stores::SCHEME);
    if !in_drove && (args.replication.is_some() || args.overwrite) {
        bail!(
            "--replication and --overwrite are for --out drove://DIR; a local directory or an object store is written in place"
        );
    }
    if url.is_none() {
        let paths = benchmark.generate(args.scale, &args.out, format)?;
        println!(
            "wrote {} {} tables at scale {} into {} in {:.1}s",
            paths.len(),
            benchmark.name(),
            args.scale,
            args.out.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    if args.replication == Some(0) {
        bail!("--replication 0 keeps no copy; give 1 or more");
    }
    benchmark.check_scale(args.scale)?;
    // Where the tables go is checked (and a cluster reached) before any is generated.
    let target = if in_drove {
        drove_core::fs::normalize(&out).map_err(anyhow::Error::msg)?;
        let options = drove_client::fs::PutOptions {
            replication: args.replication.unwrap_or(0),
            overwrite: args.overwrite,
            ..Default::default()
        };
        GenTarget::Drove(
            args.cluster.auth.connect(&args.cluster.coordinator).await?,
            options,
        )
    } else {
        GenTarget::Store(url::Url::parse(&format!("{out}/")).with_context(|| {
            format!("--out {out} is not a URL; write it as s3://BUCKET/DIR (or gs://, az://)")
        })?)
    };
    let scratch = tempfile::Builder::new()
        .prefix("drove-gen-")
        .tempdir()
        .context("cannot make a local directory to generate the tables in")?;
    let dir = scratch.path().to_path_buf();
    let paths =
        tokio::task::spawn_blocking(move || benchmark.generate(args.scale, &dir, format)).await??;
    let mut bytes = 0;
    let mut warned = false;
    for path in &paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        bytes += match &target {
            GenTarget::Drove(session, options) => {
                let put = session
                    .fs_put(path, &format!("{out}/{name}"), options)
                    .await?;
                if let Some(warning) = put.warning.as_ref().filter(|_| !warned) {
                    eprintln!("warning: {warning}");
                    warned = true;
                }
                put.bytes
            }
            GenTarget::Store(base) => {
                let url =
                    (base.join(&name)).with_context(|| format!("{out}/{name} is not a URL"))?;
                drove_exec::stores::upload(&url, path).await?
            }
        };
    }
    println!(
        "wrote {} {} tables ({}) at scale {} into {out} in {:.1}s",
        paths.len(),
        benchmark.name(),
        drove_core::human_bytes(bytes),
        args.scale,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn status(args: StatusArgs) -> Result<()> {
    let session = args.auth.connect(&args.coordinator).await?;
    let status = session.cluster_summary().await?;
    println!("{} workers", status.workers.len());
    for w in &status.workers {
        let memory = w.memory.unwrap_or_default();
        println!(
            "  worker-{} at {}: {} slots, {} running, heartbeat {} ms ago, memory {} of {} (peak {}), spilled {}{}",
            w.worker_id,
            w.flight_addr,
            w.slots,
            w.running_tasks,
            w.heartbeat_age_ms,
            drove_core::human_bytes(memory.block_bytes + memory.execution_bytes),
            drove_core::human_bytes(memory.budget_bytes),
            drove_core::human_bytes(memory.peak_bytes),
            drove_core::human_bytes(memory.spilled_bytes_total),
            if w.draining { ", draining" } else { "" }
        );
    }
    if !status.cached_tables.is_empty() {
        println!("{} cached tables", status.cached_tables.len());
        for t in &status.cached_tables {
            println!(
                "  {}: {}/{} partitions available, cached by job {}",
                t.name, t.partitions_available, t.partitions, t.job_id
            );
        }
    }
    println!("{} recent jobs", status.jobs.len());
    for j in &status.jobs {
        let error = if j.error.is_empty() {
            String::new()
        } else {
            format!(": {}", j.error)
        };
        println!(
            "  job {} {:?} in {} ms: {}{}",
            j.job_id,
            j.state(),
            j.elapsed_ms,
            j.name,
            error
        );
    }
    if let Some(fs) = status.fs.filter(|f| f.files > 0) {
        println!(
            "drove fs: {} files, {} in {} chunks; {} under-replicated, {} with no live replica",
            fs.files,
            drove_core::human_bytes(fs.bytes),
            fs.chunks,
            fs.under_replicated,
            fs.missing
        );
    }
    let m = status.metadata.clone().unwrap_or_default();
    match m.data_dir.as_str() {
        "" => println!("coordinator: {}, metadata in memory", m.role),
        dir => println!(
            "coordinator: {}, metadata in {dir} (log entry {}, snapshot at {})",
            m.role, m.log_index, m.snapshot_index
        ),
    }
    if m.node_id != 0 {
        let leader = match m.leader_id {
            0 => "none known (an election is under way)".to_string(),
            id => format!("node {id} at {}", m.leader_addr),
        };
        println!("raft: node {}, term {}, leader {leader}", m.node_id, m.term);
        for c in &m.coordinators {
            println!(
                "  coordinator {} at {}: {}, log matched to entry {}",
                c.node_id, c.addr, c.role, c.matched_index
            );
        }
    }
    Ok(())
}

async fn cancel(args: CancelArgs) -> Result<()> {
    let session = args.auth.connect(&args.coordinator).await?;
    let status = session.cancel(args.job).await?;
    match status.state() {
        drove_client::proto::JobState::Cancelled => println!("job {} cancelled", args.job),
        other => println!(
            "job {} had already ended: {:?}{}",
            args.job,
            other,
            if status.error.is_empty() {
                String::new()
            } else {
                format!(": {}", status.error)
            }
        ),
    }
    Ok(())
}
