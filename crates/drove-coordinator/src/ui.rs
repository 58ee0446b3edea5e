//! The web UI: server-rendered HTML with one stylesheet and inline SVG drawings, made with maud
//! templates (which escape every value they insert) from the REST API's own types, so
//! the pages and `/api/v1` show the same things. No script, no build step.

use std::collections::BTreeMap;

use drove_core::human_bytes;
use maud::{DOCTYPE, Markup, html};

use crate::rest::{
    Attempt, AttemptOutcome, Cluster, ClusterSample, Job, JobState, Stage, WorkerDetail,
    WorkerState,
};

fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// Where the pages' stylesheet is served: a file of its own, so the pages' content
/// security policy allows no inline style.
pub const STYLESHEET: &str = "/ui.css";

/// The pages' stylesheet.
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1 a{color:inherit;text-decoration:none}table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:left}th{background:#f3f3f3}\
.state{font-weight:600}.running{color:#1565c0}.succeeded{color:#2e7d32}\
.failed,.error{color:#c62828}.cancelled{color:#6d4c41}.draining{color:#ef6c00}\
.skew{background:#fff3e0}.error{border:1px solid #c62828;padding:.6em;white-space:pre-wrap}\
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:85%}\
nav{margin-bottom:1em}nav a{margin-right:1em}\
#timeline .attempt.speculative{stroke:#000;stroke-dasharray:3 2}\
#timeline .attempt.stopped{opacity:.35}#timeline .attempt.running{stroke:#1565c0}\
#timeline .attempt.failed{stroke:#c62828;stroke-width:2}\
.legend span{display:inline-block;margin-right:1em}\
.charts{display:flex;flex-wrap:wrap;gap:1.5em}.chart{margin:0}figcaption{font-size:90%}\
.legend svg{margin-right:.3em}";

fn page(title: &str, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                title { (title) " · drove" }
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                link rel="stylesheet" href=(STYLESHEET);
            }
            body {
                nav {
                    a href="/" { "overview" }
                    a href="/api/v1/cluster" { "JSON" }
                    a href="/metrics" { "metrics" }
                    a href="/api/v1/openapi.json" { "API" }
                    a href=(SIGN_IN) { "sign in" }
                }
                (body)
            }
        }
    }
}

fn state_cell(state: JobState) -> Markup {
    let name = state.name();
    html! { span class={ "state " (name) } { (name) } }
}

fn worker_state(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Active => "active",
        WorkerState::Draining => "draining",
    }
}

fn job_link(id: u64) -> Markup {
    html! { a href={ "/jobs/" (id) } { "job-" (id) } }
}

fn worker_link(id: u64) -> Markup {
    html! { a href={ "/workers/" (id) } { "worker-" (id) } }
}

/// A line of a chart: its name, colour, and the value each sample gives.
type Series = (&'static str, &'static str, fn(&ClusterSample) -> u64);

/// A line chart of the recent samples: a polyline per series over time, from zero to
/// the largest value, which `label` shows.
fn chart(
    id: &str,
    title: &str,
    samples: &[ClusterSample],
    series: &[Series],
    label: fn(u64) -> String,
) -> Markup {
    const W: u64 = 360;
    const H: u64 = 100;
    const TOP: u64 = 14;
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return html! { figure.chart id=(id) { figcaption { (title) ": no samples yet" } } };
    };
    let span_ms = last.unix_ms.saturating_sub(first.unix_ms).max(1);
    let top = series
        .iter()
        .flat_map(|(_, _, value)| samples.iter().map(value))
        .max()
        .unwrap_or(0)
        .max(1);
    let points = |value: fn(&ClusterSample) -> u64| {
        let point = |s: &ClusterSample| {
            let x = s.unix_ms.saturating_sub(first.unix_ms).min(span_ms) * W / span_ms;
            let y = TOP + H - value(s).min(top) * H / top;
            format!("{x},{y}")
        };
        samples.iter().map(point).collect::<Vec<_>>().join(" ")
    };
    html! {
        figure.chart id=(id) {
            figcaption { (title) " over the last " (millis(span_ms)) }
            svg xmlns="http://www.w3.org/2000/svg" width=(W) height=(TOP + H + 2) font-size="11" {
                line x1="0" y1=(TOP + H) x2=(W) y2=(TOP + H) stroke="#999" {}
                line x1="0" y1=(TOP) x2=(W) y2=(TOP) stroke="#eee" {}
                text x="2" y=(TOP - 3) { (label(top)) }
                @for (name, colour, value) in series {
                    polyline.series data-series=(name) fill="none" stroke=(colour) stroke-width="1.5"
                        points=(points(*value)) {}
                }
            }
            div.legend {
                @for (name, colour, _) in series {
                    span {
                        svg xmlns="http://www.w3.org/2000/svg" width="14" height="4" {
                            line x1="0" y1="2" x2="14" y2="2" stroke=(colour) stroke-width="3" {}
                        }
                        (name)
                    }
                }
            }
        }
    }
}

/// The overview's charts of the cluster's recent load.
fn load_charts(samples: &[ClusterSample]) -> Markup {
    html! {
        div.charts {
            (chart("chart-slots", "Slots busy", samples, &[
                ("busy", "#1565c0", |s| u64::from(s.slots_busy)),
                ("slots", "#aaa", |s| u64::from(s.slots)),
            ], |n| n.to_string()))
            (chart("chart-memory", "Memory held and spilled", samples, &[
                ("held", "#2e7d32", |s| s.memory_bytes),
                ("spilled on disk", "#ef6c00", |s| s.spill_disk_bytes),
            ], human_bytes))
            (chart("chart-traffic", "Shuffle and spill traffic", samples, &[
                ("shuffle", "#6a1b9a", |s| s.shuffle_bytes_per_second),
                ("spill", "#ef6c00", |s| s.spilled_bytes_per_second),
            ], |b| format!("{}/s", human_bytes(b))))
        }
    }
}

/// The cluster: its recent load, workers, then recent jobs and cached tables.
pub fn overview(c: &Cluster) -> Markup {
    let slots: u32 = c.workers.iter().map(|w| w.slots).sum();
    // Attempts queued behind busy slots do not make more slots busy.
    let running: u32 = c.workers.iter().map(|w| w.running_tasks.min(w.slots)).sum();
    let body = html! {
        h1 { "drove cluster" }
        p {
            (c.workers.len()) " workers, " (running) " of " (slots) " slots busy, "
            (c.jobs.len()) " jobs in the history"
        }
        @if c.fs.files > 0 {
            p #fs {
                "drove fs: " (c.fs.files) " files, " (drove_core::human_bytes(c.fs.bytes)) " in "
                (c.fs.chunks) " chunks; " (c.fs.under_replicated) " under-replicated, "
                (c.fs.missing) " with no live replica."
            }
        }
        p #metadata {
            @if c.metadata.data_dir.is_empty() {
                "Metadata in memory only: a restart forgets the jobs and cached tables."
            } @else {
                "Metadata in " code { (c.metadata.data_dir) } ", log entry "
                (c.metadata.log_index) " (snapshot at " (c.metadata.snapshot_index) ")."
            }
        }
        @if c.metadata.node_id != 0 {
            p #raft {
                "Coordinator " (c.metadata.node_id) ", " (c.metadata.role) ", Raft term "
                (c.metadata.term) ". "
                @if c.metadata.leader_id == 0 {
                    "No leader is known: an election is under way."
                } @else {
                    "Leader: " (c.metadata.leader_id) " at " code { (c.metadata.leader_addr) } "."
                }
            }
            @if !c.metadata.coordinators.is_empty() {
                table #coordinators {
                    tr { th { "coordinator" } th { "address" } th { "role" } th { "log matched to" } }
                    @for p in &c.metadata.coordinators {
                        tr {
                            td { (p.node_id) } td { code { (p.addr) } } td { (p.role) }
                            td { (p.matched_index) }
                        }
                    }
                }
            }
        }
        (load_charts(&c.recent))
        h2 { "Workers" }
        table #workers {
            tr {
                th { "worker" } th { "address" } th { "state" } th { "slots" } th { "running" }
                th { "block memory" } th { "task memory" } th { "peak / budget" }
                th { "spilled" } th { "heartbeat age" }
            }
            @for w in &c.workers {
                @let state = worker_state(w.state);
                tr.worker {
                    td { (worker_link(w.worker_id)) }
                    td { (w.flight_addr) }
                    td class=(state) { (state) }
                    td { (w.slots) }
                    td { (w.running_tasks) }
                    td { (human_bytes(w.block_bytes)) }
                    td { (human_bytes(w.memory.execution_bytes)) }
                    td { (human_bytes(w.memory.peak_bytes)) " / " (human_bytes(w.memory.budget_bytes)) }
                    td { (human_bytes(w.memory.spilled_bytes_total)) " in " (w.memory.spill_count) " spills" }
                    td { (millis(w.heartbeat_age_ms)) }
                }
            }
        }
        h2 { "Jobs" }
        table #jobs {
            tr {
                th { "job" } th { "name" } th { "state" } th { "stages" } th { "tasks" } th { "duration" }
            }
            @for j in &c.jobs {
                tr.job {
                    td { (job_link(j.job_id)) }
                    td { (j.name) }
                    td { (state_cell(j.state)) }
                    td { (j.stages) }
                    td { (j.tasks_done) "/" (j.tasks_total) }
                    td { (millis(j.elapsed_ms)) }
                }
            }
        }
        @if !c.tenants.is_empty() {
            h2 { "Tenants" }
            table #tenants {
                tr { th { "tenant" } th { "attempts on workers" } th { "running jobs" } th { "cached tables" } th { "weight" } }
                @for t in &c.tenants {
                    tr.tenant {
                        td { (t.tenant) }
                        td { (t.attempts) }
                        td { (t.running_jobs) }
                        td { (drove_core::human_bytes(t.cached_bytes)) }
                        td { (t.weight) }
                    }
                }
            }
        }
        @if !c.cached_tables.is_empty() {
            h2 { "Cached tables" }
            table #cached {
                tr { th { "table" } th { "partitions in memory or spilled" } th { "cached by" } }
                @for t in &c.cached_tables {
                    tr.cached {
                        td { (t.name) }
                        td { (t.partitions_available) "/" (t.partitions) }
                        td { (job_link(t.job_id)) }
                    }
                }
            }
        }
    };
    page("cluster", Some(5), body)
}

/// The stage graph as SVG: one column per depth, edges from each input to its reader.
fn dag(stages: &[Stage]) -> Markup {
    const W: i64 = 215;
    const H: i64 = 58;
    const GAP_X: i64 = 60;
    const GAP_Y: i64 = 18;
    let mut depth: BTreeMap<u32, i64> = BTreeMap::new();
    for s in stages {
        let d = s
            .depends_on
            .iter()
            .map(|d| depth.get(d).copied().unwrap_or(0) + 1)
            .max()
            .unwrap_or(0);
        depth.insert(s.stage_id, d);
    }
    let mut rows: BTreeMap<i64, i64> = BTreeMap::new();
    let mut at: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    for s in stages {
        let d = depth[&s.stage_id];
        let row = rows.entry(d).or_insert(0);
        at.insert(s.stage_id, (10 + d * (W + GAP_X), 10 + *row * (H + GAP_Y)));
        *row += 1;
    }
    let width = at.values().map(|(x, _)| x + W + 10).max().unwrap_or(W);
    let height = at.values().map(|(_, y)| y + H + 10).max().unwrap_or(H);
    let edges = stages.iter().flat_map(|s| {
        let (x, y) = at[&s.stage_id];
        s.depends_on
            .iter()
            .filter_map(|d| at.get(d))
            .map(move |&(dx, dy)| (dx + W, dy + H / 2, x, y + H / 2))
    });
    html! {
        svg #dag xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) font-size="12" {
            @for (x1, y1, x2, y2) in edges {
                line.edge x1=(x1) y1=(y1) x2=(x2) y2=(y2) stroke="#888" stroke-width="1.5" {}
            }
            @for s in stages {
                @let (x, y) = at[&s.stage_id];
                @let fill = if s.tasks_done == s.tasks_total {
                    "#e8f5e9"
                } else if s.tasks_running > 0 {
                    "#e3f2fd"
                } else {
                    "#f5f5f5"
                };
                g.stage data-stage=(s.stage_id) {
                    a href={ "#stage-" (s.stage_id) } {
                        rect x=(x) y=(y) width=(W) height=(H) rx="6" fill=(fill) stroke="#555" {}
                        text x=(x + 8) y=(y + 16) font-weight="600" { "stage " (s.stage_id) }
                        text x=(x + 8) y=(y + 32) { (s.root.chars().take(28).collect::<String>()) }
                        text x=(x + 8) y=(y + 48) {
                            (s.tasks_done) "/" (s.tasks_total) " tasks, " (s.tasks_running) " running"
                        }
                    }
                }
            }
        }
    }
}

/// Stage colours of the timeline, by stage id.
const STAGE_COLOURS: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
    "#e15759", "#bab0ac",
];

/// The most attempts a timeline draws; a job with more shows its latest ones.
const TIMELINE_ATTEMPTS_MAX: usize = 5_000;

/// Rows of the timeline: per worker, lanes in which attempts do not overlap (as many
/// as the attempts it ran at once, its slots and their queues). Returns the rows in
/// worker order, each with its worker and its attempts' indexes.
fn lanes(attempts: &[Attempt]) -> Vec<(u64, Vec<usize>)> {
    let mut order: Vec<usize> = (0..attempts.len()).collect();
    order.sort_by_key(|&i| (attempts[i].started_ms, attempts[i].ended_ms));
    let mut workers: BTreeMap<u64, Vec<Vec<usize>>> = BTreeMap::new();
    for i in order {
        let a = &attempts[i];
        let lanes = workers.entry(a.worker_id).or_default();
        let free = lanes.iter().position(|lane| {
            lane.last()
                .is_none_or(|&j| attempts[j].ended_ms <= a.started_ms)
        });
        match free {
            Some(lane) => lanes[lane].push(i),
            None => lanes.push(vec![i]),
        }
    }
    workers
        .into_iter()
        .flat_map(|(worker, lanes)| lanes.into_iter().map(move |lane| (worker, lane)))
        .collect()
}

fn outcome_name(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Running => "running",
        AttemptOutcome::Succeeded => "succeeded",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Stopped => "stopped",
    }
}

/// Every attempt of a job as a Gantt chart: a row per worker lane, a bar per attempt
/// from its launch to its end, coloured by stage; failed attempts have a red outline,
/// speculative ones a dashed one, stopped ones are faint.
fn timeline(attempts: &[Attempt]) -> Markup {
    const LEFT: u64 = 90;
    const WIDTH: u64 = 1000;
    const ROW: u64 = 14;
    const TOP: u64 = 22;
    // The latest attempts, which someone watching a running job wants to see.
    let mut shown = attempts.to_vec();
    shown.sort_by_key(|a| (a.started_ms, a.stage_id, a.partition, a.attempt));
    let shown = &shown[shown.len().saturating_sub(TIMELINE_ATTEMPTS_MAX)..];
    let span_ms = shown.iter().map(|a| a.ended_ms).max().unwrap_or(0).max(1);
    let x = |ms: u64| LEFT + ms * WIDTH / span_ms;
    let rows = lanes(shown);
    let height = TOP + rows.len() as u64 * ROW + 4;
    let mut stages: Vec<u32> = shown.iter().map(|a| a.stage_id).collect();
    stages.sort_unstable();
    stages.dedup();
    let colour = |stage: u32| STAGE_COLOURS[stage as usize % STAGE_COLOURS.len()];
    html! {
        @if shown.len() < attempts.len() {
            p { "The timeline shows the latest " (shown.len()) " of " (attempts.len()) " attempts." }
        }
        p { "A bar runs from the attempt's assignment to its worker (time queued behind a busy slot included) to its end. Failed attempts are outlined red, speculative ones dashed; stopped ones are faint." }
        p.legend {
            @for stage in &stages {
                span { svg width="12" height="12" { rect width="12" height="12" fill=(colour(*stage)) {} } " stage " (stage) }
            }
        }
        svg #timeline xmlns="http://www.w3.org/2000/svg" width=(LEFT + WIDTH + 10) height=(height) font-size="11" {
            @for quarter in 0..=4u64 {
                @let at = x(span_ms * quarter / 4);
                line x1=(at) y1=(TOP - 4) x2=(at) y2=(height) stroke="#ddd" {}
                text x=(at) y="12" text-anchor=(if quarter == 4 { "end" } else { "middle" }) {
                    (millis(span_ms * quarter / 4))
                }
            }
            @for (row, (worker, lane)) in rows.iter().enumerate() {
                @let y = TOP + row as u64 * ROW;
                // A worker's name beside its first lane.
                @if row == 0 || rows[row - 1].0 != *worker {
                    text x="0" y=(y + 11) { "worker-" (worker) }
                }
                @for &i in lane {
                    @let a = &shown[i];
                    @let outcome = outcome_name(a.outcome);
                    rect class={ "attempt " (outcome) @if a.speculative { " speculative" } }
                        data-stage=(a.stage_id)
                        x=(x(a.started_ms)) y=(y + 1) height=(ROW - 2)
                        width=(x(a.ended_ms).saturating_sub(x(a.started_ms)).max(1))
                        fill=(colour(a.stage_id)) {
                        title {
                            "stage " (a.stage_id) " partition " (a.partition) " attempt " (a.attempt)
                            " on worker-" (a.worker_id) ": " (millis(a.ended_ms.saturating_sub(a.started_ms))) ", " (outcome)
                            @if a.speculative { " (speculative)" }
                        }
                    }
                }
            }
        }
    }
}

/// One stage: its counts, a table of its completed tasks, and its plan.
fn stage(s: &Stage) -> Markup {
    html! {
        h3 id={ "stage-" (s.stage_id) } { "stage " (s.stage_id) ": " (s.root) }
        p {
            (s.tasks_done) "/" (s.tasks_total) " tasks done, " (s.tasks_running) " running; attempts launched "
            (s.attempts_launched) ", failed " (s.attempts_failed) ", speculative " (s.attempts_speculative)
        }
        table.tasks {
            tr {
                th { "partition" } th { "worker" } th { "attempt" } th { "duration" } th { "rows out" }
                th { "bytes out" } th { "read local" } th { "read remote" } th { "spilled" } th {}
            }
            @for t in &s.tasks {
                tr.task.skew[t.skewed] {
                    td { (t.partition) }
                    td { (worker_link(t.worker_id)) }
                    td { (t.attempt) }
                    td { (millis(t.elapsed_ms)) }
                    td { (t.output_rows) }
                    td { (human_bytes(t.output_bytes)) }
                    td { (human_bytes(t.local_read_bytes)) }
                    td { (human_bytes(t.remote_read_bytes)) }
                    td { (human_bytes(t.spilled_bytes)) }
                    td { @if t.skewed { "skewed: far above the stage median" } }
                }
            }
        }
        details {
            summary { "stage " (s.stage_id) " plan" }
            pre { (s.plan) }
        }
    }
}

/// One job: state, failure cause, stage graph, a task table per stage, SQL and plans.
pub fn job(j: &Job) -> Markup {
    let body = html! {
        h1 { "job-" (j.job_id) " " (state_cell(j.state)) }
        p {
            (j.name) " · " (j.stages.len()) " stages · " (millis(j.elapsed_ms))
            " · blocks in memory " (human_bytes(j.memory_bytes))
            " · operator peak " (human_bytes(j.peak_memory_bytes))
            " · spilled " (human_bytes(j.spilled_bytes)) " in " (j.spill_count) " spills"
        }
        @let l = j.locality;
        @if l.node_local + l.zone_local + l.remote > 0 {
            p #locality {
                "drove fs scans: " (l.node_local) " attempts node-local · "
                (l.zone_local) " zone-local · " (l.remote) " remote"
            }
        }
        @if !j.error.is_empty() {
            div.error #error { (j.error) }
        }
        h2 { "Stages" }
        (dag(&j.stages))
        h2 { "Timeline" }
        (timeline(&j.attempts))
        @for s in &j.stages {
            (stage(s))
        }
        @if !j.sql.is_empty() {
            h2 { "SQL" }
            pre #sql { (j.sql) }
        }
        h2 { "Physical plan" }
        pre #plan { (j.physical_plan) }
    };
    let refresh = (j.state == JobState::Running).then_some(2);
    page(&format!("job-{}", j.job_id), refresh, body)
}

/// One worker and the last tasks it completed.
pub fn worker(w: &WorkerDetail) -> Markup {
    let state = worker_state(w.state);
    let body = html! {
        h1 { "worker-" (w.worker_id) }
        p {
            (w.flight_addr) " · " span class=(state) { (state) } " · " (w.slots) " slots, "
            (w.running_tasks) " running · block memory " (human_bytes(w.block_bytes))
            " · heartbeat " (millis(w.heartbeat_age_ms)) " ago"
            @if !w.node_id.is_empty() {
                " · node " code { (w.node_id) }
            }
        }
        h2 { "Its last tasks" }
        table.tasks {
            tr {
                th { "job" } th { "stage" } th { "partition" } th { "attempt" } th { "duration" } th { "bytes out" }
            }
            @for t in &w.tasks {
                tr.task {
                    td { (job_link(t.job_id)) }
                    td { (t.stage_id) }
                    td { (t.partition) }
                    td { (t.attempt) }
                    td { (millis(t.elapsed_ms)) }
                    td { (human_bytes(t.output_bytes)) }
                }
            }
        }
    };
    page(&format!("worker-{}", w.worker_id), Some(5), body)
}

/// Where the UI takes a token.
pub const SIGN_IN: &str = "/sign-in";

/// The sign-in page: a token, sent back with `csrf` (which must match the cookie the
/// page came with); `error` says why the last try failed.
pub fn sign_in(csrf: &str, error: Option<&str>) -> Markup {
    page(
        "sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "A token from " code { "drove token create" } " (or the CA's " code { "admin.token" } ") acts as its tenant and role in this browser, instead of your certificate." }
            @if let Some(error) = error {
                p.error { (error) }
            }
            form method="post" action=(SIGN_IN) {
                input type="hidden" name="csrf" value=(csrf);
                label { "token " input type="password" name="token" autocomplete="off" required; }
                " "
                button type="submit" { "sign in" }
            }
        },
    )
}

pub fn not_found(message: &str) -> Markup {
    page(
        "not found",
        None,
        html! { h1 { "Not found" } p.error { (message) } },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(id: u32, depends_on: Vec<u32>, root: &str) -> Stage {
        Stage {
            stage_id: id,
            root: root.into(),
            depends_on,
            tasks_total: 2,
            tasks_done: 0,
            tasks_running: 0,
            attempts_launched: 0,
            attempts_failed: 0,
            attempts_speculative: 0,
            plan: String::new(),
            tasks: Vec::new(),
        }
    }

    #[test]
    fn text_is_escaped_and_the_graph_has_a_node_per_stage() {
        let svg = dag(&[
            stage(0, vec![], "<Hash>"),
            stage(1, vec![], "a & 'b'"),
            stage(2, vec![0, 1], "\"x\""),
        ])
        .into_string();
        assert_eq!(svg.matches("class=\"stage\"").count(), 3);
        assert_eq!(svg.matches("class=\"edge\"").count(), 2);
        assert!(
            svg.contains("&lt;Hash&gt;") && !svg.contains("<Hash>"),
            "{svg}"
        );
        assert!(
            svg.contains("a &amp; 'b'") && svg.contains("&quot;x&quot;"),
            "{svg}"
        );
    }

    fn attempt(worker_id: u64, started_ms: u64, ended_ms: u64, outcome: AttemptOutcome) -> Attempt {
        Attempt {
            stage_id: (started_ms % 3) as u32,
            partition: 0,
            attempt: 0,
            worker_id,
            started_ms,
            ended_ms,
            outcome,
            speculative: false,
        }
    }

    #[test]
    fn attempts_that_overlap_on_a_worker_get_lanes_of_their_own() {
        use AttemptOutcome::Succeeded;
        let attempts = [
            attempt(2, 0, 10, Succeeded),
            attempt(1, 0, 10, Succeeded),
            attempt(1, 5, 15, Succeeded),
            attempt(1, 10, 20, Succeeded),
            attempt(1, 12, 14, Succeeded),
        ];
        let rows = lanes(&attempts);
        let workers: Vec<u64> = rows.iter().map(|(w, _)| *w).collect();
        assert_eq!(workers, [1, 1, 1, 2]);
        for (_, lane) in &rows {
            for pair in lane.windows(2) {
                assert!(attempts[pair[0]].ended_ms <= attempts[pair[1]].started_ms);
            }
        }
        let placed: usize = rows.iter().map(|(_, l)| l.len()).sum();
        assert_eq!(placed, attempts.len());
    }

    #[test]
    fn the_timeline_draws_every_attempt_and_marks_failed_and_speculative_ones() {
        let mut attempts = vec![
            attempt(1, 0, 100, AttemptOutcome::Succeeded),
            attempt(1, 0, 40, AttemptOutcome::Failed),
            attempt(2, 50, 120, AttemptOutcome::Stopped),
            attempt(2, 60, 130, AttemptOutcome::Running),
        ];
        attempts[2].speculative = true;
        let svg = timeline(&attempts).into_string();
        assert_eq!(svg.matches("<rect class=\"attempt ").count(), 4, "{svg}");
        assert_eq!(svg.matches("class=\"attempt failed\"").count(), 1);
        assert_eq!(
            svg.matches("class=\"attempt stopped speculative\"").count(),
            1
        );
        assert!(svg.contains("worker-1") && svg.contains("worker-2"));

        // The earliest attempt (of stage 9) is the one left out.
        let mut many = vec![attempt(1, 10, 11, AttemptOutcome::Succeeded); TIMELINE_ATTEMPTS_MAX];
        many.push(Attempt {
            stage_id: 9,
            ..attempt(1, 0, 1, AttemptOutcome::Succeeded)
        });
        let svg = timeline(&many).into_string();
        assert!(!svg.contains("data-stage=\"9\""));
        assert_eq!(
            svg.matches("<rect class=\"attempt ").count(),
            TIMELINE_ATTEMPTS_MAX
        );
        assert!(
            svg.contains("shows the latest 5000 of 5001 attempts"),
            "cap not said"
        );
    }

    #[test]
    fn load_charts_draw_a_point_per_sample_within_the_chart() {
        let samples: Vec<ClusterSample> = (0..5u64)
            .map(|i| ClusterSample {
                unix_ms: 1_000 * i,
                slots: 4,
                slots_busy: i as u32,
                memory_bytes: i << 20,
                spill_disk_bytes: 0,
                spilled_bytes_per_second: 0,
                shuffle_bytes_per_second: 10 * i,
            })
            .collect();
        let html = load_charts(&samples).into_string();
        for id in ["chart-slots", "chart-memory", "chart-traffic"] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id} missing");
        }
        let lines: Vec<&str> = html
            .split("points=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert_eq!(lines.len(), 6);
        for line in lines {
            let points: Vec<(u64, u64)> = line
                .split(' ')
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            assert_eq!(points.len(), samples.len());
            assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "{line}");
            assert!(
                points
                    .iter()
                    .all(|&(x, y)| x <= 360 && (14..=114).contains(&y)),
                "{line}"
            );
        }
        // The busiest sample is at the top of the slots chart: 4 of 4 slots.
        assert!(html.contains(" 360,14\""), "{html}");
        assert!(load_charts(&[]).into_string().contains("no samples yet"));
    }

    #[test]
    fn an_error_message_cannot_inject_markup() {
        let shown = not_found("<script>alert(1)</script>").into_string();
        assert!(!shown.contains("<script>"), "{shown}");
        assert!(shown.contains("&lt;script&gt;"), "{shown}");
    }
}
