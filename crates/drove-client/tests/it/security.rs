//! What a peer may do, enforced on the wire whatever client makes the call: with
//! mutual TLS, what each certificate may do; a worker's claims when it registers; and
//! markup in a job's text, which the web UI shows as text.

use std::path::Path;
use std::sync::Arc;

use drove_client::proto as pb;
use drove_client::{ClusterTls, CoordinatorConfig, Credentials, LocalClusterConfig, Session};
use drove_exec::tls::{self, Role};

fn identity(root: &Path, ca: &str, name: &str, role: Role) -> Arc<ClusterTls> {
    let ca = root.join(ca);
    if !ca.exists() {
        tls::init(&ca).unwrap();
    }
    let out = root.join(name);
    tls::issue(&ca, name, role, &[], 1, &out).unwrap();
    ClusterTls::load(&out).unwrap()
}

/// A cluster with TLS (a node certificate of a CA made in `root`) and `config`'s
/// other settings, with a session of the CA's admin token.
struct Secured {
    cluster: drove_client::LocalCluster,
    node: Arc<ClusterTls>,
    /// The CA's admin token, and a session of it.
    admin_token: String,
    admin: Session,
}

impl Secured {
    async fn start(root: &Path, mut config: LocalClusterConfig) -> Self {
        let node = identity(root, "ca", "node", Role::Node);
        config.coordinator.tls = Some(node.clone());
        let (cluster, _) = crate::start(config).await;
        let admin_token = std::fs::read_to_string(root.join("ca").join("admin.token")).unwrap();
        let admin_token = admin_token.trim().to_string();
        let admin = connect(&cluster, &node, Some(&admin_token)).await;
        Self {
            cluster,
            node,
            admin_token,
            admin,
        }
    }

    /// A session of a new submit token of `tenant`.
    async fn tenant(&self, tenant: &str) -> Session {
        let made = self.admin.create_token(tenant, "submit").await.unwrap();
        connect(&self.cluster, &self.node, Some(&made.token)).await
    }
}

/// A session on `cluster` with the certificate in `tls` and `token`.
async fn connect(
    cluster: &drove_client::LocalCluster,
    tls: &Arc<ClusterTls>,
    token: Option<&str>,
) -> Session {
    let credentials = Credentials {
        tls: Some(tls.clone()),
        token: token.map(str::to_string),
    };
    let addr = cluster.coordinator_addr().to_string();
    Session::connect_with(&addr, &credentials).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_cannot_join_as_a_worker_and_flight_admits_only_the_cluster() {
    let root = tempfile::tempdir().unwrap();
    let node = identity(root.path(), "ca", "node", Role::Node);
    let client = identity(root.path(), "ca", "alice", Role::Client);
    let rogue = identity(root.path(), "other-ca", "rogue", Role::Node);
    let (cluster, _) = crate::start(LocalClusterConfig {
        workers: 2,
        coordinator: CoordinatorConfig {
            tls: Some(node),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let addr = cluster.coordinator_addr().to_string();

    // The client's certificate runs a query whose result it reads from the workers.
    let session = Session::connect_with(
        &addr,
        &Credentials {
            tls: Some(client.clone()),
            token: None,
        },
    )
    .await
    .expect("connecting with a client certificate");
    let result = session
        .run_sql("SELECT value % 2 AS k, count(*) AS n FROM generate_series(1, 10) GROUP BY k ORDER BY k")
        .await
        .expect("a query over TLS");
    let text = drove_client::arrow::util::pretty::pretty_format_batches(&result.batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains("| 0 | 5 |") && text.contains("| 1 | 5 |"),
        "{text}"
    );

    // It cannot open a worker's session: only nodes may.
    let endpoint = drove_exec::net::endpoint(&addr, Some(&client)).unwrap();
    let mut coordinator = pb::coordinator_client::CoordinatorClient::new(endpoint.connect_lazy());
    let register = pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Register(Default::default())),
    };
    let refused = coordinator
        .worker_session(futures::stream::iter(vec![register]))
        .await
        .expect_err("a client's certificate opened a worker session");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("client's"), "{refused}");
    session.shutdown().await;

    // A worker's Flight service answers no one without a certificate of the cluster.
    let worker = cluster.worker_addrs()[0].to_string();
    let ticket = drove_exec::shuffle::ticket(&Default::default(), &[]);
    for (who, identity, says) in [
        // The TLS server answers plain HTTP/2 with an alert and closes: how that
        // shows depends on timing (a protocol error, a broken pipe).
        ("no certificate", None, ""),
        ("another CA's", Some(rogue), "invalid peer certificate"),
    ] {
        let pool = drove_exec::shuffle::FlightPool::new(identity);
        let answer = pool.client(&worker).unwrap().do_get(ticket.clone()).await;
        let e = answer.expect_err(who);
        let chain = drove_exec::net::error_chain(&e);
        assert!(chain.contains(says), "{who}: {chain}");
    }
    cluster.shutdown().await;
}

/// A Flight ticket is a capability: a client reads a job's blocks only with the grant
/// the coordinator gave its certificate for that job. Block ids alone (as the REST
/// API shows them), a forged grant, another job's grant or another client's are
/// refused by the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_reads_blocks_only_with_its_grant_for_their_job() {
    let root = tempfile::tempdir().unwrap();
    let config = LocalClusterConfig {
        workers: 2,
        ..Default::default()
    };
    let secured = Secured::start(root.path(), config).await;
    let alice = identity(root.path(), "ca", "alice", Role::Client);
    let bob = identity(root.path(), "ca", "bob", Role::Client);
    let addr = secured.cluster.coordinator_addr().to_string();
    // Two finished jobs whose results wait on the workers, submitted as alice.
    let session = connect(&secured.cluster, &alice, None).await;
    let jobs = [
        session.submit_sql("SELECT 1 AS one").await.unwrap(),
        session.submit_sql("SELECT 2 AS two").await.unwrap(),
    ];
    // Alice's grant for each, as her client gets it: from watching the job.
    let endpoint = drove_exec::net::endpoint(&addr, Some(&alice)).unwrap();
    let mut rpc = pb::coordinator_client::CoordinatorClient::new(endpoint.connect_lazy());
    let mut finished = Vec::new();
    for job in jobs {
        let request = pb::JobRequest {
            job_id: job,
            cluster_id: 0,
        };
        let mut updates = rpc.watch_job(request).await.unwrap().into_inner();
        let mut last = None;
        while let Some(status) = updates.message().await.unwrap() {
            last = Some(status);
        }
        let last = last.unwrap();
        assert_eq!(last.state(), pb::JobState::Succeeded, "{last:?}");
        assert_eq!(
            last.result_grant.len(),
            40,
            "a grant (an expiry and a signature) for alice's certificate"
        );
        finished.push(last);
    }
    // Where the first job's result is, as anyone who sees the job could learn it.
    let status = &finished[0];
    let output = &status.result[0];
    let key = drove_exec::blocks::BlockKey {
        job: status.job_id,
        stage: status.result_stage_id,
        map_partition: output.partition,
        reduce_partition: 0,
        attempt: output.attempt,
    };
    let read = async |who: &Arc<ClusterTls>, grant: &[u8]| {
        let pool = drove_exec::shuffle::FlightPool::new(Some(who.clone()));
        let mut client = pool.client(&output.flight_addr).unwrap();
        client
            .do_get(drove_exec::shuffle::ticket(&key, grant))
            .await
            .map(|_| ())
    };
    read(&alice, &status.result_grant)
        .await
        .expect("alice's grant for the job");
    // A far expiry, and a signature made up.
    let forged = [u64::MAX.to_le_bytes().to_vec(), vec![0u8; 32]].concat();
    for (who, identity, grant) in [
        ("no grant", &alice, &[][..]),
        ("a forged grant", &alice, &forged[..]),
        (
            "the other job's grant",
            &alice,
            &finished[1].result_grant[..],
        ),
        (
            "alice's grant in bob's hands",
            &bob,
            &status.result_grant[..],
        ),
    ] {
        let e = read(identity, grant).await.expect_err(who);
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}: {e}");
        assert!(
            e.message().contains("no grant gives certificate"),
            "{who}: {e}"
        );
    }
    // The cluster's own nodes read without one (the admin session here holds a
    // node's certificate).
    secured
        .admin
        .result(jobs[1])
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    session.shutdown().await;
    secured.cluster.shutdown().await;
}

/// A worker's registration claims no more than a real worker makes: absurd slot
/// counts, kept-output lists or names are refused, naming the limit, and the
/// coordinator goes on serving.
/// Tokens name a tenant and a role: a tenant sees, cancels and uncaches only its own
/// jobs and tables; a read token submits nothing; only admins manage tokens; an
/// unknown, forged or revoked token is refused, the CA's first admin token too once
/// revoked. Without a token, a client certificate is a tenant of its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_keep_tenants_apart_and_revoked_tokens_out() {
    let root = tempfile::tempdir().unwrap();
    let config = LocalClusterConfig {
        workers: 1,
        ..Default::default()
    };
    let secured = Secured::start(root.path(), config).await;
    let client = identity(root.path(), "ca", "alice", Role::Client);
    let admin_token = &secured.admin_token;
    let addr = secured.cluster.coordinator_addr().to_string();
    // Every session of this test holds alice's client certificate.
    let as_alice = async |token: Option<&str>| connect(&secured.cluster, &client, token).await;
    let denied = |e: drove_client::Error, says: &str| match e {
        drove_client::Error::Denied(m) => assert!(m.contains(says), "{m}"),
        other => panic!("expected a refusal saying '{says}', got {other:?}"),
    };

    let admin = as_alice(Some(admin_token)).await;
    let a_token = admin.create_token("team-a", "submit").await.unwrap();
    let b_token = admin.create_token("team-b", "submit").await.unwrap();
    let reader_token = admin.create_token("team-a", "read").await.unwrap();
    let listed = admin.tokens().await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|t| t.id == a_token.id && t.tenant == "team-a" && t.role == "submit")
    );
    let a = as_alice(Some(&a_token.token)).await;
    let b = as_alice(Some(&b_token.token)).await;
    let reader = as_alice(Some(&reader_token.token)).await;

    // A's job and cached table are A's.
    let job = a.run_sql("SELECT 1 AS one").await.unwrap().summary.job_id;
    a.run_sql("CACHE TABLE mine AS SELECT value FROM generate_series(1, 3)")
        .await
        .unwrap();
    let jobs_of = async |s: &Session| -> Vec<(u64, String)> {
        let status = s.cluster_summary().await.unwrap();
        status
            .jobs
            .iter()
            .map(|j| (j.job_id, j.tenant.clone()))
            .collect()
    };
    let seen_by_a = jobs_of(&a).await;
    assert!(seen_by_a.contains(&(job, "team-a".into())), "{seen_by_a:?}");
    assert!(
        seen_by_a.iter().all(|(_, t)| t == "team-a"),
        "{seen_by_a:?}"
    );
    assert!(jobs_of(&b).await.is_empty(), "B sees none of A's jobs");
    assert_eq!(
        jobs_of(&reader).await,
        seen_by_a,
        "a reader sees its tenant's"
    );
    assert_eq!(
        jobs_of(&admin).await,
        seen_by_a,
        "an admin sees every tenant's"
    );
    assert_eq!(b.cluster_summary().await.unwrap().cached_tables.len(), 0);

    // B can neither cancel nor release A's job, nor read or uncache A's table.
    let e = b.cancel(job).await.unwrap_err();
    assert!(
        matches!(e, drove_client::Error::Rejected(ref m) if m.contains("not")),
        "{e:?}"
    );
    let bearer = drove_exec::leader::Bearer::new(Some(&b_token.token)).unwrap();
    let rpc = drove_exec::leader::Coordinators::parse(&addr, Some(client.clone()), bearer).unwrap();
    let request = pb::JobRequest {
        job_id: job,
        cluster_id: 0,
    };
    let e = rpc.current().1.release_job(request).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    b.run_sql("SELECT * FROM mine")
        .await
        .expect_err("another tenant's cached table");
    let e = b.uncache("mine", false).await.unwrap_err();
    assert!(e.to_string().contains("no table 'mine' is cached"), "{e}");
    let rows = a.run_sql("SELECT count(*) AS n FROM mine").await.unwrap();
    assert_eq!(rows.num_rows(), 1, "A's table is still there for A");
    // Names are each tenant's own: B caches a `mine` of its own, apart from A's.
    b.run_sql("CACHE TABLE mine AS SELECT value FROM generate_series(1, 5)")
        .await
        .unwrap();
    let rows = |s: &Session| {
        let s = s.clone();
        async move {
            s.run_sql("SELECT value FROM mine")
                .await
                .unwrap()
                .num_rows()
        }
    };
    assert_eq!((rows(&a).await, rows(&b).await), (3, 5));
    let listed = admin.cluster_summary().await.unwrap().cached_tables;
    let mut names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["team-a/mine", "team-b/mine"],
        "an admin sees both, by tenant"
    );
    b.uncache("mine", false).await.unwrap();

    // A reader submits nothing and changes nothing; only admins manage tokens.
    denied(reader.run_sql("SELECT 1").await.unwrap_err(), "read role");
    denied(
        reader.uncache("mine", false).await.unwrap_err(),
        "read role",
    );
    denied(
        a.create_token("team-a", "admin").await.unwrap_err(),
        "not an admin",
    );
    denied(b.tokens().await.unwrap_err(), "not an admin");
    let e = admin.create_token("bad name", "submit").await.unwrap_err();
    assert!(e.to_string().contains("tenant"), "{e}");

    // Without a token, the client certificate is tenant "alice".
    let alice = as_alice(None).await;
    alice.run_sql("SELECT 2").await.unwrap();
    assert!(jobs_of(&alice).await.iter().all(|(_, t)| t == "alice"));

    // Unknown, forged and malformed tokens are refused.
    let forged = format!("drove_{}_{}", a_token.id, "0".repeat(64));
    for (token, says) in [
        (forged.as_str(), "unknown or revoked"),
        ("drove_0123456789abcdef_0", "not a drove token"),
    ] {
        let s = as_alice(Some(token)).await;
        denied(s.run_sql("SELECT 1").await.unwrap_err(), says);
    }

    // Revoked, a token stops working at once; so does the CA's admin token.
    admin.revoke_token(&a_token.id).await.unwrap();
    denied(
        a.run_sql("SELECT 1").await.unwrap_err(),
        "unknown or revoked",
    );
    let e = admin.revoke_token(&a_token.id).await.unwrap_err();
    assert!(e.to_string().contains("no live token"), "{e}");
    assert_eq!(admin.tokens().await.unwrap().len(), 2);
    let admin_id = drove_exec::token::parse(admin_token).unwrap().id;
    admin.revoke_token(&admin_id).await.unwrap();
    denied(admin.tokens().await.unwrap_err(), "unknown or revoked");
    b.run_sql("SELECT 1")
        .await
        .expect("other tokens still work");
    for s in [admin, a, b, reader, alice] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_claiming_too_much_is_refused_and_the_coordinator_carries_on() {
    let (cluster, session) = crate::start(LocalClusterConfig {
        workers: 1,
        ..Default::default()
    })
    .await;
    let addr = cluster.coordinator_addr().to_string();
    let endpoint = drove_exec::net::endpoint(&addr, None).unwrap();
    let mut coordinator = pb::coordinator_client::CoordinatorClient::new(endpoint.connect_lazy());
    let held = pb::HeldOutput {
        task: Some(Default::default()),
        ..Default::default()
    };
    for (claim, says) in [
        (
            pb::RegisterWorker {
                slots: u32::MAX,
                ..Default::default()
            },
            "slots",
        ),
        (
            pb::RegisterWorker {
                slots: 0,
                ..Default::default()
            },
            "slots",
        ),
        (
            pb::RegisterWorker {
                slots: 1,
                held: vec![held; drove_core::scheduler::HELD_OUTPUTS_MAX + 1],
                ..Default::default()
            },
            "kept task outputs",
        ),
        (
            pb::RegisterWorker {
                slots: 1,
                flight_addr: "x".repeat(10_000),
                ..Default::default()
            },
            "at most 256 bytes",
        ),
    ] {
        let register = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Register(claim)),
        };
        let refused = coordinator
            .worker_session(futures::stream::iter(vec![register]))
            .await
            .expect_err("an absurd registration was taken");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains(says), "{refused}");
    }
    let result = session.run_sql("SELECT 41 + 1 AS n").await.unwrap();
    assert_eq!(
        result.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        1
    );
    assert_eq!(session.cluster_status().await.unwrap().workers.len(), 1);
    session.shutdown().await;
    cluster.shutdown().await;
}

/// The historical class of UI injection: a job's SQL text carries markup, and the
/// pages that show it show it as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn markup_in_a_jobs_sql_is_shown_as_text_in_the_web_ui() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cluster, session) = crate::start(LocalClusterConfig {
        workers: 1,
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await;
    let attack = "<script>alert(1)</script>";
    session
        .run_sql(&format!(
            "SELECT '{attack}' AS \"<img src=x onerror=alert(2)>\""
        ))
        .await
        .unwrap();
    let http = cluster.http_addr().unwrap();
    let get = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
        let request = format!("GET {path} HTTP/1.0\r\nHost: {http}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut page = String::new();
        stream.read_to_string(&mut page).await.unwrap();
        page
    };
    for path in ["/", "/jobs/1"] {
        let page = get(path).await;
        assert!(page.contains("200 OK"), "{path}: {page}");
        assert!(
            page.contains("&lt;script&gt;"),
            "{path} does not show the text: {page}"
        );
        assert!(
            !page.contains("<script") && !page.contains("<img"),
            "{path}: {page}"
        );
    }
    session.shutdown().await;
    cluster.shutdown().await;
}

/// Fair share on a real cluster: tenant A queues a backlog of jobs first, then tenant
/// B submits one; B's job is not held behind A's backlog (slots were handed out oldest
/// job first before), and ends before A's last job does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_job_is_not_queued_behind_another_tenants_backlog() {
    let root = tempfile::tempdir().unwrap();
    let secured = Secured::start(
        root.path(),
        LocalClusterConfig {
            workers: 2,
            slots: 1,
            // Every task takes at least this long, so that jobs wait for slots.
            task_delay_ms: vec![150, 150],
            ..Default::default()
        },
    )
    .await;
    let admin = &secured.admin;
    let (a, b) = (secured.tenant("a").await, secured.tenant("b").await);
    // A job of 8 tasks (and a final one).
    const JOB: &str = "SET datafusion.execution.target_partitions = 8; \
        SELECT value % 8 AS k, count(*) AS n FROM generate_series(1, 800) GROUP BY k";
    let mut a_jobs = Vec::new();
    for _ in 0..4 {
        a_jobs.push(a.submit_sql(JOB).await.unwrap());
    }
    // B comes once A's backlog holds the slots.
    let waiting = std::time::Instant::now();
    loop {
        assert!(
            waiting.elapsed() < std::time::Duration::from_secs(120),
            "A's jobs never started"
        );
        let status = admin.cluster_summary().await.unwrap();
        let running: u32 = (status.jobs.iter())
            .flat_map(|j| &j.stages)
            .map(|s| s.tasks_running + s.tasks_done)
            .sum();
        if running > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let b_job = b.submit_sql(JOB).await.unwrap();
    let mut ends = std::collections::BTreeMap::new();
    for (session, job) in a_jobs.iter().map(|j| (&a, *j)).chain([(&b, b_job)]) {
        let rows = session.result(job).await.unwrap().collect().await.unwrap();
        assert_eq!(rows.num_rows(), 8);
        let status = admin.cluster_summary().await.unwrap();
        let j = status.jobs.iter().find(|s| s.job_id == job).unwrap();
        assert_eq!(j.state(), pb::JobState::Succeeded, "{j:?}");
        ends.insert(job, j.submitted_unix_ms + j.elapsed_ms);
    }
    let last_a = a_jobs.iter().map(|j| ends[j]).max().unwrap();
    assert!(
        ends[&b_job] < last_a,
        "B's job ended at {} ms, after A's whole backlog ({last_a} ms): {ends:?}",
        ends[&b_job]
    );
    for s in [&a, &b, admin] {
        s.shutdown().await;
    }
}

/// `--tenant-path`: a tenant named there reads only under its own directories;
/// another tenant keeps the cluster's rule (here: none).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_is_confined_to_its_own_directories() {
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (root.path().join("a"), root.path().join("b"));
    for (dir, value) in [(&a_dir, 1), (&b_dir, 2)] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("t.csv"), format!("v\n{value}\n")).unwrap();
    }
    let confined = drove_exec::confine::AllowedPaths::new(std::slice::from_ref(&a_dir)).unwrap();
    let config = LocalClusterConfig {
        workers: 1,
        coordinator: CoordinatorConfig {
            tenant_paths: [("team-a".to_string(), confined)].into_iter().collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    let secured = Secured::start(root.path(), config).await;
    let (a, b) = (
        secured.tenant("team-a").await,
        secured.tenant("team-b").await,
    );
    let read = async |s: &Session, dir: &Path| {
        let sql = format!(
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true'); SELECT v FROM t",
            dir.join("t.csv").display()
        );
        s.run_sql(&sql).await.map(|r| r.num_rows())
    };
    assert_eq!(read(&a, &a_dir).await.unwrap(), 1);
    let e = read(&a, &b_dir).await.unwrap_err().to_string();
    assert!(e.contains("outside") || e.contains("allow"), "{e}");
    assert!(
        e.contains(&a_dir.display().to_string()),
        "names the allowed directory: {e}"
    );
    assert_eq!(read(&b, &b_dir).await.unwrap(), 1, "team-b is not confined");
    for s in [&a, &b, &secured.admin] {
        s.shutdown().await;
    }
}

/// A tenant's cache quota: past it, it caches no more tables until it uncaches one;
/// what its tables hold is shown as its usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_over_its_cache_quota_caches_no_more_until_it_uncaches() {
    let root = tempfile::tempdir().unwrap();
    let policy = drove_core::scheduler::TenantPolicy::parse("team-a:cache=1KiB").unwrap();
    let config = LocalClusterConfig {
        workers: 1,
        coordinator: CoordinatorConfig {
            tenants: [policy].into_iter().collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    let secured = Secured::start(root.path(), config).await;
    let a = secured.tenant("team-a").await;
    let cache =
        |name: &str| format!("CACHE TABLE {name} AS SELECT value FROM generate_series(1, 10000)");
    a.run_sql(&cache("first")).await.unwrap();
    let usage = a.cluster_summary().await.unwrap().tenants;
    assert!(
        usage
            .iter()
            .any(|t| t.tenant == "team-a" && t.cached_bytes > 1024),
        "{usage:?}"
    );
    let e = a.run_sql(&cache("second")).await.unwrap_err().to_string();
    assert!(e.contains("quota") && e.contains("UNCACHE TABLE"), "{e}");
    a.uncache("first", false).await.unwrap();
    a.run_sql(&cache("second")).await.unwrap();
    for s in [&a, &secured.admin] {
        s.shutdown().await;
    }
}
