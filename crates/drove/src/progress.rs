//! Job progress on stderr while `drove sql` or `drove mapreduce` waits: a bar redrawn
//! in place on a terminal, plain lines otherwise (at most five a second, and always
//! the last one).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drove_client::{Progress, Session};

/// Plain lines are printed at most this often (the last one always).
const PLAIN_EVERY: Duration = Duration::from_millis(200);
const BAR_WIDTH: usize = 30;

/// One progress line, without a bar.
pub fn line(p: &Progress) -> String {
    format!(
        "job-{}: {}/{} stages, {}/{} tasks ({} running), {:.1} s{}",
        p.job_id,
        p.stages_done,
        p.stages_total,
        p.tasks_done,
        p.tasks_total,
        p.tasks_running,
        p.elapsed_ms as f64 / 1000.0,
        if p.ended { ", ended" } else { "" }
    )
}

/// A bar of `BAR_WIDTH` cells for the share of tasks done.
pub fn bar(p: &Progress) -> String {
    let filled = (p.tasks_done as usize * BAR_WIDTH)
        .checked_div(p.tasks_total as usize)
        .unwrap_or(0)
        .min(BAR_WIDTH);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled))
}

/// Shows the progress of the session's jobs on stderr.
pub fn show(session: &Session) {
    let terminal = std::io::stderr().is_terminal();
    let last: Mutex<Option<(Instant, (u32, u32))>> = Mutex::new(None);
    session.on_progress(move |p| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        if terminal {
            let _ = write!(err, "\r{} {}\x1b[K", bar(p), line(p));
            if p.ended {
                let _ = writeln!(err);
            }
            return;
        }
        let counts = (p.stages_done, p.tasks_done);
        let due = match *last {
            None => true,
            Some((at, seen)) => seen != counts && at.elapsed() >= PLAIN_EVERY,
        };
        if due || p.ended {
            let _ = writeln!(err, "progress: {}", line(p));
            *last = Some((Instant::now(), counts));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_and_line_follow_the_counts() {
        let mut p = Progress {
            job_id: 3,
            stages_done: 1,
            stages_total: 4,
            tasks_done: 5,
            tasks_total: 10,
            tasks_running: 2,
            elapsed_ms: 1500,
            ended: false,
        };
        assert_eq!(bar(&p), format!("[{}{}]", "#".repeat(15), "-".repeat(15)));
        assert_eq!(line(&p), "job-3: 1/4 stages, 5/10 tasks (2 running), 1.5 s");
        p.tasks_total = 0;
        assert_eq!(bar(&p), format!("[{}]", "-".repeat(30)));
    }
}
