//! MapReduce jobs on embedded clusters, checked against plain reference code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use drove_client::mapreduce::{MapReduceOptions, MapReduceResult};
use drove_client::{
    Error, LocalCluster, LocalClusterConfig, MapReduce, OutputFormat, Record, Session,
};

/// The words of a text as the built-in jobs define them, written plainly: maximal runs
/// of Unicode alphanumeric characters, lowercased.
pub(crate) fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Bytes of generated text for the wordcount check: `DROVE_MR_BYTES`, else 4 MB.
fn corpus_bytes() -> u64 {
    std::env::var("DROVE_MR_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_000_000)
}

async fn cluster(workers: usize) -> Session {
    drove::jobs::register_builtin();
    let cluster = LocalCluster::start(LocalClusterConfig {
        workers,
        ..Default::default()
    })
    .await
    .unwrap();
    Session::with_cluster(cluster).await.unwrap()
}

fn options(job: &str, inputs: Vec<PathBuf>, output: &Path) -> MapReduceOptions {
    MapReduceOptions {
        job: job.into(),
        args: Default::default(),
        inputs,
        output: output.to_path_buf(),
        reducers: 3,
        format: OutputFormat::Text,
        overwrite: false,
        combine: true,
    }
}

fn generate(dir: &Path, bytes: u64, files: usize) -> PathBuf {
    let input = dir.join("in");
    let out = crate::run(
        &[
            "gen",
            "text",
            "--size",
            &bytes.to_string(),
            "--files",
            &files.to_string(),
            "--out",
            input.to_str().unwrap(),
        ],
        std::time::Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    input
}

/// The lines of the part files, in reducer order.
fn output_lines(result: &MapReduceResult) -> Vec<String> {
    let mut lines = Vec::new();
    for f in &result.files {
        lines.extend(
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string),
        );
    }
    lines
}

fn input_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wordcount_equals_a_single_threaded_count_and_the_combiner_cuts_the_shuffle() {
    let tmp = tempfile::tempdir().unwrap();
    let input = generate(tmp.path(), corpus_bytes(), 6);
    let session = cluster(3).await;

    let mut reference: BTreeMap<String, u64> = BTreeMap::new();
    for f in input_files(&input) {
        for w in words(&std::fs::read_to_string(f).unwrap()) {
            *reference.entry(w).or_default() += 1;
        }
    }

    let combined = session
        .run_mapreduce(options(
            "wordcount",
            vec![input.clone()],
            &tmp.path().join("out"),
        ))
        .await
        .unwrap();
    assert!(tmp.path().join("out/_SUCCESS").exists());
    assert!(!tmp.path().join("out/_temporary").exists());
    let counts: BTreeMap<String, u64> = output_lines(&combined)
        .iter()
        .map(|l| {
            let (w, n) = l.split_once('\t').unwrap();
            (w.to_string(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(counts.len(), reference.len());
    assert!(counts == reference, "counts differ from the reference");

    let mut plain = options("wordcount", vec![input], &tmp.path().join("out-plain"));
    plain.combine = false;
    let plain = session.run_mapreduce(plain).await.unwrap();
    let (with, without) = (
        combined.summary.shuffle_write_bytes(),
        plain.summary.shuffle_write_bytes(),
    );
    assert!(
        with > 0 && with * 2 < without,
        "combiner: {with} bytes shuffled, without: {without}"
    );
    session.shutdown().await;
}

/// Writes `files` text files of `lines` records each under `dir/records`, line `i` of
/// file `f` being `record(f, i)`; returns the directory and every record in order.
fn write_records(
    dir: &Path,
    files: usize,
    lines: usize,
    mut record: impl FnMut(usize, usize) -> String,
) -> (PathBuf, Vec<String>) {
    let input = dir.join("records");
    std::fs::create_dir_all(&input).unwrap();
    let mut all = Vec::new();
    for f in 0..files {
        let mut text = String::new();
        for i in 0..lines {
            let line = record(f, i);
            text.push_str(&line);
            text.push('\n');
            all.push(line);
        }
        std::fs::write(input.join(format!("r{f:02}.txt")), text).unwrap();
    }
    (input, all)
}

/// A stream of pseudo-random numbers from `seed`.
fn lcg(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sort_output_is_globally_sorted_and_a_permutation_of_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let mut next = lcg(7);
    let (input, mut all) = write_records(tmp.path(), 4, 3000, |f, i| {
        format!("{:010}\tvalue-{f}-{i}", (next() >> 33) % 100_000)
    });
    let session = cluster(3).await;
    let mut opts = options("sort", vec![input], &tmp.path().join("sorted"));
    opts.reducers = 4;
    let result = session.run_mapreduce(opts).await.unwrap();
    let lines = output_lines(&result);
    let keys: Vec<&str> = lines
        .iter()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "not globally sorted");
    let nonempty = result
        .files
        .iter()
        .filter(|f| std::fs::metadata(f).unwrap().len() > 0)
        .count();
    assert!(nonempty >= 2, "range partitioning used {nonempty} reducers");
    let mut got = lines.clone();
    got.sort();
    all.sort();
    assert_eq!(got, all, "not a permutation of the input");
    session.shutdown().await;
}

/// A reduce task sorts its partition with DataFusion's sort, which spills under the
/// task's memory share, and holds one key's values at a time: a sort of more records
/// than the workers' memory spills, stays within the share, and comes out sorted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sort_larger_than_memory_spills_and_stays_sorted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut next = lcg(11);
    // Eight map tasks, each sorting more than its share of memory.
    let (input, mut all) = write_records(tmp.path(), 8, 75_000, |f, i| {
        format!("{:016x}\t{f}-{i}-{}", next(), "v".repeat(100))
    });
    let memory = drove_worker::MEMORY_MIN_BYTES;
    drove::jobs::register_builtin();
    let cluster = LocalCluster::start(LocalClusterConfig {
        workers: 2,
        memory_bytes: Some(memory),
        ..Default::default()
    })
    .await
    .unwrap();
    let session = Session::with_cluster(cluster).await.unwrap();
    let mut opts = options("sort", vec![input], &tmp.path().join("sorted"));
    opts.reducers = 2;
    let result = session.run_mapreduce(opts).await.unwrap();
    let input_bytes: usize = all.iter().map(|l| l.len() + 1).sum();
    // Each of the two reduce tasks gets more than a worker's whole budget.
    assert!(input_bytes as u64 > 2 * memory, "the input fits in memory");
    assert!(
        result.summary.spill_count > 0,
        "nothing spilled: {:?}",
        result.summary
    );
    // The sort reserved its memory, within a task's share: less than half the worker's
    // budget.
    assert!(
        result.summary.peak_memory_bytes > 0 && result.summary.peak_memory_bytes <= memory / 2,
        "a task held {} bytes",
        result.summary.peak_memory_bytes
    );
    let lines = output_lines(&result);
    assert!(
        lines.windows(2).all(|w| w[0] <= w[1]),
        "not globally sorted"
    );
    all.sort();
    assert_eq!(lines.len(), all.len());
    assert!(lines == all, "not a permutation of the input");
    session.shutdown().await;
}

/// The stages of the built-in sort over `files` text files of a few lines each, shown
/// one per string.
async fn sort_stages(dir: &Path, files: usize) -> Vec<String> {
    use drove_exec::mapreduce::nodes::{OutputFormat, OutputSpec};
    use drove_exec::mapreduce::plan::{MapReduceSpec, build};
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for f in 0..files {
        std::fs::write(
            input.join(format!("r{f:03}.txt")),
            format!("k{f}\tv\nz{f}\tw\n"),
        )
        .unwrap();
    }
    drove::jobs::register_builtin();
    let plan = build(
        &MapReduceSpec {
            job: "sort".into(),
            args: Default::default(),
            inputs: vec![input.to_string_lossy().into_owned()],
            output: OutputSpec {
                dir: dir.join("out").to_string_lossy().into_owned(),
                format: OutputFormat::Text,
                token: "t".into(),
            },
            reducers: 2,
            combine: true,
        },
        Default::default(),
    )
    .await
    .unwrap();
    drove_exec::planner::split(plan)
        .unwrap()
        .stages
        .into_iter()
        .map(|s| {
            datafusion::physical_plan::displayable(s.plan.as_ref())
                .indent(true)
                .to_string()
        })
        .collect()
}

/// Each map task sorts its output and a reducer merges the map tasks' sorted blocks of
/// its partition (a sort-based shuffle), so the reduce stage sorts nothing; past the
/// number of map outputs one reader merges, it gathers and sorts instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reducers_merge_sorted_map_outputs_instead_of_sorting_again() {
    let tmp = tempfile::tempdir().unwrap();
    let merged = sort_stages(&tmp.path().join("few"), 3).await;
    assert_eq!(merged.len(), 2, "{merged:#?}");
    assert!(merged[0].contains("SortExec"), "{}", merged[0]);
    assert!(merged[1].contains("mode=Merge"), "{}", merged[1]);
    assert!(!merged[1].contains("SortExec"), "{}", merged[1]);

    let many = drove_exec::shuffle::MERGE_INPUTS_MAX + 1;
    let gathered = sort_stages(&tmp.path().join("many"), many).await;
    assert!(gathered[1].contains("mode=Gather"), "{}", gathered[1]);
    assert!(gathered[1].contains("SortExec"), "{}", gathered[1]);
    // Both shapes give the sorted input.
    let session = cluster(2).await;
    for (dir, files) in [("few", 3), ("many", many)] {
        let mut opts = options(
            "sort",
            vec![tmp.path().join(dir).join("in")],
            &tmp.path().join(dir).join("sorted"),
        );
        opts.reducers = 2;
        let result = session.run_mapreduce(opts).await.unwrap();
        let mut expected: Vec<String> = (0..files)
            .flat_map(|f| [format!("k{f}\tv"), format!("z{f}\tw")])
            .collect();
        expected.sort();
        assert_eq!(output_lines(&result), expected, "{dir}");
    }
    session.shutdown().await;
}

/// A merge reads whichever input holds the next key. With keys in file order it drains
/// one map output while the others from the same worker sit unread: were they on one
/// connection, what they had received would fill its flow-control window, and the
/// input being drained could receive nothing more (the job stalled for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_that_drains_one_input_while_others_wait_does_not_stall() {
    let tmp = tempfile::tempdir().unwrap();
    // Sixteen map tasks of about 3 MB, each file's keys above the one before it.
    let (input, all) = write_records(tmp.path(), 16, 24_000, |f, i| {
        format!("{f:02}-{i:06}\t{}", "v".repeat(120))
    });
    let session = cluster(2).await;
    let mut opts = options("sort", vec![input], &tmp.path().join("sorted"));
    opts.reducers = 1;
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        session.run_mapreduce(opts),
    )
    .await
    .expect("the sort stalled")
    .unwrap();
    assert!(output_lines(&result) == all, "not the input in order");
    session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inverted_index_and_grep_equal_reference_code() {
    let tmp = tempfile::tempdir().unwrap();
    let input = generate(tmp.path(), 300_000, 3);
    let files = input_files(&input);
    let session = cluster(2).await;

    let result = session
        .run_mapreduce(options(
            "inverted-index",
            vec![input.clone()],
            &tmp.path().join("index"),
        ))
        .await
        .unwrap();
    let mut reference: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        for w in words(&std::fs::read_to_string(f).unwrap()) {
            reference
                .entry(w)
                .or_default()
                .insert(f.to_string_lossy().into_owned());
        }
    }
    let got: BTreeMap<String, BTreeSet<String>> = output_lines(&result)
        .iter()
        .map(|l| {
            let (w, fs) = l.split_once('\t').unwrap();
            (w.to_string(), fs.split(',').map(str::to_string).collect())
        })
        .collect();
    assert_eq!(got, reference);

    let mut grep = options("grep", vec![input], &tmp.path().join("grep"));
    grep.args.insert("pattern".into(), "^Lo .*ne".into());
    let result = session.run_mapreduce(grep).await.unwrap();
    let re = regex::Regex::new("^Lo .*ne").unwrap();
    let mut expected = BTreeSet::new();
    for f in &files {
        for (i, line) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
            if re.is_match(line) {
                expected.insert(format!("{}:{}\t{line}", f.display(), i + 1));
            }
        }
    }
    let got: BTreeSet<String> = output_lines(&result).into_iter().collect();
    assert!(!expected.is_empty(), "the pattern should match something");
    assert_eq!(got, expected);
    session.shutdown().await;
}

struct Panics;

impl MapReduce for Panics {
    type Key = String;
    type Value = u64;
    type Output = u64;

    fn map(&self, record: &Record<'_>, emit: &mut impl FnMut(&str, &u64)) {
        if record.line == 3 {
            panic!("the user's map function gave up on line 3");
        }
        emit(record.text, &1);
    }

    fn reduce(&self, _key: &String, values: Vec<u64>, emit: &mut dyn FnMut(u64)) {
        emit(values.len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_named_and_nothing_partial_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("a.txt"),
        b"one two\n\xff\xfe broken\nthree one\n",
    )
    .unwrap();
    drove_client::register("panics", Panics);
    let session = cluster(2).await;

    // Missing input.
    let e = session
        .run_mapreduce(options(
            "wordcount",
            vec![tmp.path().join("nope")],
            &tmp.path().join("o1"),
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    // Unknown job: the message lists the registered ones.
    let e = session
        .run_mapreduce(options(
            "wordcnt",
            vec![input.clone()],
            &tmp.path().join("o2"),
        ))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("registered jobs:") && e.to_string().contains("wordcount"),
        "{e}"
    );
    // Invalid UTF-8 lines are counted, and the job goes on.
    let out = tmp.path().join("o3");
    let result = session
        .run_mapreduce(options("wordcount", vec![input.clone()], &out))
        .await
        .unwrap();
    assert_eq!(result.summary.counters.get("invalid_utf8_lines"), Some(&1));
    let lines = output_lines(&result);
    assert!(lines.contains(&"one\t2".to_string()), "{lines:?}");
    // An existing output directory is refused without --overwrite, and kept intact.
    let e = session
        .run_mapreduce(options("wordcount", vec![input.clone()], &out))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("already exists") && e.to_string().contains("--overwrite"),
        "{e}"
    );
    assert!(out.join("_SUCCESS").exists());
    let mut again = options("wordcount", vec![input.clone()], &out);
    again.overwrite = true;
    session.run_mapreduce(again).await.unwrap();
    // A panicking map function fails the job cleanly, with its message; no output looks complete.
    let failed_out = tmp.path().join("o4");
    let e = session
        .run_mapreduce(options("panics", vec![input.clone()], &failed_out))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::JobFailed { .. }), "{e:?}");
    assert!(e.to_string().contains("gave up on line 3"), "{e}");
    assert!(!failed_out.join("_SUCCESS").exists());
    assert!(
        !failed_out.exists(),
        "a failed job left {failed_out:?} behind"
    );
    // The workers survived: the next job runs.
    let result = session
        .run_mapreduce(options("wordcount", vec![input], &tmp.path().join("o5")))
        .await
        .unwrap();
    assert!(result.records > 0);
    session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csv_and_parquet_inputs_and_outputs() {
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    let tmp = tempfile::tempdir().unwrap();
    // The same rows as CSV and as Parquet: each row's values joined by commas are its text.
    let csv = tmp.path().join("rows.csv");
    std::fs::write(&csv, "a,b\nred fish,1\nblue fish,2\n").unwrap();
    let ctx = SessionContext::new();
    let parquet = tmp.path().join("rows.parquet");
    ctx.sql("SELECT 'red fish' AS a, 1 AS b UNION ALL SELECT 'blue fish', 2")
        .await
        .unwrap()
        .write_parquet(parquet.to_str().unwrap(), Default::default(), None)
        .await
        .unwrap();
    let session = cluster(2).await;

    let mut opts = options("wordcount", vec![csv, parquet], &tmp.path().join("csv-out"));
    opts.format = OutputFormat::Csv;
    opts.reducers = 1;
    let result = session.run_mapreduce(opts).await.unwrap();
    assert_eq!(result.files.len(), 1);
    assert!(
        result.files[0]
            .to_string_lossy()
            .ends_with("part-r-00000.csv")
    );
    let text = std::fs::read_to_string(&result.files[0]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["key,value", "1,2", "2,2", "blue,2", "fish,4", "red,2"]
    );

    // More reducers than keys: a part file of no rows still has its header.
    let mut opts = options(
        "wordcount",
        vec![tmp.path().join("rows.csv")],
        &tmp.path().join("csv-wide"),
    );
    opts.format = OutputFormat::Csv;
    opts.reducers = 12;
    let result = session.run_mapreduce(opts).await.unwrap();
    assert_eq!(result.files.len(), 12);
    for f in &result.files {
        let text = std::fs::read_to_string(f).unwrap();
        assert_eq!(text.lines().next(), Some("key,value"), "{}", f.display());
    }

    let mut opts = options(
        "wordcount",
        vec![tmp.path().join("rows.csv")],
        &tmp.path().join("pq-out"),
    );
    opts.format = OutputFormat::Parquet;
    let result = session.run_mapreduce(opts).await.unwrap();
    let out_dir = tmp.path().join("pq-out");
    let batches = ctx
        .read_parquet(out_dir.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, result.records);
    assert_eq!(rows, 5);
    session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wordcount_survives_a_worker_killed_mid_job() {
    drove::jobs::register_builtin();
    let tmp = tempfile::tempdir().unwrap();
    let input = generate(tmp.path(), corpus_bytes(), 6);
    let mut reference: BTreeMap<String, u64> = BTreeMap::new();
    for f in input_files(&input) {
        for w in words(&std::fs::read_to_string(f).unwrap()) {
            *reference.entry(w).or_default() += 1;
        }
    }
    let mut cluster = LocalCluster::start(LocalClusterConfig {
        workers: 3,
        // Every task takes a little while, so the kill lands mid-job.
        task_delay_ms: vec![200; 3],
        ..Default::default()
    })
    .await
    .unwrap();
    let session = Session::connect(&cluster.coordinator_addr().to_string())
        .await
        .unwrap();
    let run = session.run_mapreduce(options("wordcount", vec![input], &tmp.path().join("out")));
    let (result, ()) = tokio::join!(run, async {
        // Kill a worker once the map stage is done and its outputs are spread around.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let status = session.cluster_status().await.unwrap();
            let past_maps = status.jobs.iter().any(|j| {
                j.state() == drove_client::proto::JobState::Running
                    && j.stages
                        .first()
                        .is_some_and(|s| s.tasks_done == s.tasks_total)
            });
            if past_maps {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the map stage never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        cluster.kill_worker(1);
    });
    let result = result.unwrap();
    assert!(
        result.summary.extra_attempts() > 0,
        "nothing was re-run: {}",
        result.summary
    );
    assert!(tmp.path().join("out/_SUCCESS").exists());
    assert!(!tmp.path().join("out/_temporary").exists());
    let counts: BTreeMap<String, u64> = output_lines(&result)
        .iter()
        .map(|l| {
            let (w, n) = l.split_once('\t').unwrap();
            (w.to_string(), n.parse().unwrap())
        })
        .collect();
    assert!(counts == reference, "counts differ from the reference");
    cluster.shutdown().await;
}
