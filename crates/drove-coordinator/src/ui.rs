//! The web UI: server-rendered HTML with inline CSS and an SVG drawing of each job's
//! stage graph. No script, no build step: the pages are strings made here.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use drove_core::human_bytes;
use drove_proto as pb;

use crate::rest::{JobState, skewed, stage_median_ms};

/// Text made safe for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1 a{color:inherit;text-decoration:none}table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:left}th{background:#f3f3f3}\
.state{font-weight:600}.running{color:#1565c0}.succeeded{color:#2e7d32}\
.failed,.error{color:#c62828}.cancelled{color:#6d4c41}.draining{color:#ef6c00}\
.skew{background:#fff3e0}.error{border:1px solid #c62828;padding:.6em;white-space:pre-wrap}\
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:85%}\
nav{margin-bottom:1em}nav a{margin-right:1em}";

fn page(title: &str, refresh: Option<u32>, body: &str) -> String {
    let refresh = refresh.map_or(String::new(), |s| {
        format!("<meta http-equiv=\"refresh\" content=\"{s}\">")
    });
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} · drove</title>{refresh}<style>{STYLE}</style></head>\
         <body><nav><a href=\"/\">overview</a><a href=\"/api/v1/cluster\">JSON</a><a href=\"/metrics\">metrics</a><a href=\"/api/v1/openapi.json\">API</a></nav>{body}</body></html>",
        esc(title)
    )
}

fn state_cell(state: pb::JobState) -> String {
    let name = JobState::from(state).name();
    format!("<span class=\"state {name}\">{name}</span>")
}

/// The cluster: workers, then recent jobs.
pub fn overview(status: &pb::ClusterStatusResponse) -> String {
    let jobs = &status.jobs;
    let mut b = String::new();
    let slots: u32 = status.workers.iter().map(|w| w.slots).sum();
    let running: u32 = status.workers.iter().map(|w| w.running_tasks).sum();
    let _ = write!(
        b,
        "<h1>drove cluster</h1><p>{} workers, {running} of {slots} slots busy, {} jobs in the history</p>",
        status.workers.len(),
        jobs.len()
    );
    b.push_str("<h2>Workers</h2><table id=\"workers\"><tr><th>worker</th><th>address</th><th>state</th><th>slots</th><th>running</th><th>block memory</th><th>task memory</th><th>peak / budget</th><th>spilled</th><th>heartbeat age</th></tr>");
    for w in &status.workers {
        let state = if w.draining { "draining" } else { "active" };
        let memory = w.memory.unwrap_or_default();
        let _ = write!(
            b,
            "<tr class=\"worker\"><td><a href=\"/workers/{id}\">worker-{id}</a></td><td>{}</td><td class=\"{state}\">{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{} in {} spills</td><td>{}</td></tr>",
            esc(&w.flight_addr),
            w.slots,
            w.running_tasks,
            human_bytes(w.block_bytes),
            human_bytes(memory.execution_bytes),
            human_bytes(memory.peak_bytes),
            human_bytes(memory.budget_bytes),
            human_bytes(memory.spilled_bytes_total),
            memory.spill_count,
            millis(w.heartbeat_age_ms),
            id = w.worker_id,
        );
    }
    b.push_str("</table><h2>Jobs</h2><table id=\"jobs\"><tr><th>job</th><th>name</th><th>state</th><th>stages</th><th>tasks</th><th>duration</th></tr>");
    for j in jobs {
        let total: u32 = j.stages.iter().map(|s| s.tasks_total).sum();
        let done: u32 = j.stages.iter().map(|s| s.tasks_done).sum();
        let _ = write!(
            b,
            "<tr class=\"job\"><td><a href=\"/jobs/{id}\">job-{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{done}/{total}</td><td>{}</td></tr>",
            esc(&j.name),
            state_cell(j.state()),
            j.stages.len(),
            millis(j.elapsed_ms),
            id = j.job_id,
        );
    }
    b.push_str("</table>");
    if !status.cached_tables.is_empty() {
        b.push_str("<h2>Cached tables</h2><table id=\"cached\"><tr><th>table</th><th>partitions in memory or spilled</th><th>cached by</th></tr>");
        for t in &status.cached_tables {
            let _ = write!(
                b,
                "<tr class=\"cached\"><td>{}</td><td>{}/{}</td><td><a href=\"/jobs/{id}\">job-{id}</a></td></tr>",
                esc(&t.name),
                t.partitions_available,
                t.partitions,
                id = t.job_id,
            );
        }
        b.push_str("</table>");
    }
    page("cluster", Some(5), &b)
}

/// The stage graph as SVG: one column per depth, edges from each input to its reader.
fn dag(stages: &[pb::StageStatus]) -> String {
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
    let mut svg = format!(
        "<svg id=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-size=\"12\">"
    );
    for s in stages {
        let (x, y) = at[&s.stage_id];
        for d in &s.depends_on {
            if let Some((dx, dy)) = at.get(d) {
                let _ = write!(
                    svg,
                    "<line class=\"edge\" x1=\"{}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#888\" stroke-width=\"1.5\"/>",
                    dx + W,
                    dy + H / 2,
                    y + H / 2
                );
            }
        }
    }
    for s in stages {
        let (x, y) = at[&s.stage_id];
        let fill = if s.tasks_done == s.tasks_total {
            "#e8f5e9"
        } else if s.tasks_running > 0 {
            "#e3f2fd"
        } else {
            "#f5f5f5"
        };
        let _ = write!(
            svg,
            "<g class=\"stage\" data-stage=\"{id}\"><a href=\"#stage-{id}\"><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"6\" fill=\"{fill}\" stroke=\"#555\"/>\
             <text x=\"{}\" y=\"{}\" font-weight=\"600\">stage {id}</text><text x=\"{}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\">{}/{} tasks, {} running</text></a></g>",
            x + 8,
            y + 16,
            x + 8,
            y + 32,
            esc(&s.root.chars().take(28).collect::<String>()),
            x + 8,
            y + 48,
            s.tasks_done,
            s.tasks_total,
            s.tasks_running,
            id = s.stage_id,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One job: state, failure cause, stage graph, a task table per stage, SQL and plans.
pub fn job(j: &pb::JobStatus) -> String {
    let mut b = String::new();
    let running = j.state() == pb::JobState::Running;
    let _ = write!(
        b,
        "<h1>job-{} {}</h1><p>{} · {} stages · {} · blocks in memory {} · operator peak {} · spilled {} in {} spills</p>",
        j.job_id,
        state_cell(j.state()),
        esc(&j.name),
        j.stages.len(),
        millis(j.elapsed_ms),
        human_bytes(j.memory_bytes),
        human_bytes(j.peak_memory_bytes),
        human_bytes(j.spilled_bytes),
        j.spill_count
    );
    if !j.error.is_empty() {
        let _ = write!(
            b,
            "<div class=\"error\" id=\"error\">{}</div>",
            esc(&j.error)
        );
    }
    b.push_str("<h2>Stages</h2>");
    b.push_str(&dag(&j.stages));
    for s in &j.stages {
        let _ = write!(
            b,
            "<h3 id=\"stage-{id}\">stage {id}: {}</h3><p>{}/{} tasks done, {} running; attempts launched {}, failed {}, speculative {}</p>",
            esc(&s.root),
            s.tasks_done,
            s.tasks_total,
            s.tasks_running,
            s.attempts_launched,
            s.attempts_failed,
            s.attempts_speculative,
            id = s.stage_id,
        );
        b.push_str("<table class=\"tasks\"><tr><th>partition</th><th>worker</th><th>attempt</th><th>duration</th><th>rows out</th><th>bytes out</th><th>read local</th><th>read remote</th><th>spilled</th><th></th></tr>");
        let median = stage_median_ms(s);
        for t in &s.tasks {
            let skew = skewed(t.elapsed_ms, median);
            let _ = write!(
                b,
                "<tr class=\"task{}\"><td>{}</td><td><a href=\"/workers/{w}\">worker-{w}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if skew { " skew" } else { "" },
                t.partition,
                t.attempt,
                millis(t.elapsed_ms),
                t.output_rows,
                human_bytes(t.output_bytes),
                human_bytes(t.local_read_bytes),
                human_bytes(t.remote_read_bytes),
                human_bytes(t.spilled_bytes),
                if skew {
                    "skewed: far above the stage median"
                } else {
                    ""
                },
                w = t.worker_id,
            );
        }
        b.push_str("</table>");
        let _ = write!(
            b,
            "<details><summary>stage {} plan</summary><pre>{}</pre></details>",
            s.stage_id,
            esc(&s.plan)
        );
    }
    if !j.sql.is_empty() {
        let _ = write!(b, "<h2>SQL</h2><pre id=\"sql\">{}</pre>", esc(&j.sql));
    }
    let _ = write!(
        b,
        "<h2>Physical plan</h2><pre id=\"plan\">{}</pre>",
        esc(&j.physical_plan)
    );
    page(&format!("job-{}", j.job_id), running.then_some(2), &b)
}

/// One worker and the tasks it ran in the jobs still in the history.
pub fn worker(w: &pb::WorkerStatus, tasks: &[(u64, u32, pb::TaskRun)]) -> String {
    let mut b = String::new();
    let state = if w.draining { "draining" } else { "active" };
    let _ = write!(
        b,
        "<h1>worker-{}</h1><p>{} · <span class=\"{state}\">{state}</span> · {} slots, {} running · block memory {} · heartbeat {} ago</p>",
        w.worker_id,
        esc(&w.flight_addr),
        w.slots,
        w.running_tasks,
        human_bytes(w.block_bytes),
        millis(w.heartbeat_age_ms)
    );
    b.push_str("<h2>Tasks in recent jobs</h2><table class=\"tasks\"><tr><th>job</th><th>stage</th><th>partition</th><th>attempt</th><th>duration</th><th>bytes out</th></tr>");
    for (job, stage, t) in tasks {
        let _ = write!(
            b,
            "<tr class=\"task\"><td><a href=\"/jobs/{job}\">job-{job}</a></td><td>{stage}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.partition,
            t.attempt,
            millis(t.elapsed_ms),
            human_bytes(t.output_bytes)
        );
    }
    b.push_str("</table>");
    page(&format!("worker-{}", w.worker_id), Some(5), &b)
}

pub fn not_found(message: &str) -> String {
    page(
        "not found",
        None,
        &format!("<h1>Not found</h1><p class=\"error\">{}</p>", esc(message)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_the_graph_has_a_node_per_stage() {
        assert_eq!(
            esc("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
        let stage = |id, deps: Vec<u32>| pb::StageStatus {
            stage_id: id,
            depends_on: deps,
            tasks_total: 2,
            root: "<Hash>".into(),
            ..Default::default()
        };
        let svg = dag(&[stage(0, vec![]), stage(1, vec![]), stage(2, vec![0, 1])]);
        assert_eq!(svg.matches("class=\"stage\"").count(), 3);
        assert_eq!(svg.matches("class=\"edge\"").count(), 2);
        assert!(svg.contains("&lt;Hash&gt;") && !svg.contains("<Hash>"));
    }
}
