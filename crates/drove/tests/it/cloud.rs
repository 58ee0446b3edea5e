//! Tables and MapReduce in object stores other than S3: over HTTP, an HTTP server on
//! loopback that speaks WebDAV (`pip install wsgidav cheroot`), whose files are a
//! local directory the test reads; and the errors of Google Cloud Storage and Azure
//! stores that cannot be reached. (No emulator of theirs on PyPI speaks the API as
//! object_store does: gcp-storage-emulator answers neither HEAD nor a PUT of an
//! encoded object name.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::s3::python_server;

/// Text files of words under `dir`, and their plain word count.
fn corpus(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    let mut reference = BTreeMap::new();
    for f in 0..3 {
        let text: String = (0..1500)
            .map(|i| format!("Ñandú {f} cloud{} gate. {}\n", i % 23, i % 5))
            .collect();
        for w in crate::mapreduce::words(&text) {
            *reference.entry(w).or_default() += 1;
        }
        std::fs::write(dir.join(format!("f{f}.txt")), text).unwrap();
    }
    reference
}

/// Runs `command` with `args`; it must succeed. Returns its stdout.
fn ok(mut command: Command, args: &[&str]) -> String {
    command.args(args);
    let out = crate::run_command(command, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "drove {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `drove sql` CSV output of a word count table, as a map.
pub(crate) fn counts(csv: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let (word, n) = line.split_once(',').unwrap();
        assert!(
            counts
                .insert(word.to_string(), n.parse().unwrap())
                .is_none()
        );
    }
    counts
}

/// Over `http://`: word count reads text from a WebDAV server and commits its CSV
/// output there, which reads back as a table; TPC-H Parquet tables there answer as
/// local ones do.
#[test]
fn wordcount_and_tpch_over_http() {
    let root = tempfile::tempdir().unwrap();
    let reference = corpus(&root.path().join("corpus"));
    let tpch = drove_testkit::tpch_data(0.01);
    std::fs::create_dir(root.path().join("tpch")).unwrap();
    for entry in std::fs::read_dir(&tpch).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            root.path().join("tpch").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    let root_arg = root.path().to_str().unwrap().to_string();
    let (_dav, dav) = python_server("wsgidav cheroot", |port| {
        [
            "-m",
            "wsgidav.server.server_cli",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--root",
            &root_arg,
            "--auth",
            "anonymous",
        ]
        .map(String::from)
        .to_vec()
    });
    let (_coordinator, _worker, addr, _work) = crate::cluster_with(crate::drove);
    let input = format!("http://{dav}/corpus");
    let output = format!("http://{dav}/counts");
    let mapreduce = [
        "mapreduce",
        "wordcount",
        "--coordinator",
        &addr,
        "--no-progress",
        "--input",
        &input,
        "--output",
        &output,
        "--reducers",
        "2",
        "--format",
        "csv",
    ];
    ok(crate::drove(), &mapreduce);
    let out = root.path().join("counts");
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "_temporary")
        .collect();
    names.sort();
    assert_eq!(names, ["_SUCCESS", "part-r-00000.csv", "part-r-00001.csv"]);
    // No temporary file is left (WebDAV keeps the empty directories).
    let mut stack = vec![out.join("_temporary")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            assert!(path.is_dir(), "{} was left", path.display());
            stack.push(path);
        }
    }
    let table = format!("counts={output}");
    let csv = ok(
        crate::drove(),
        &[
            "sql",
            "--coordinator",
            &addr,
            "--table",
            &table,
            "--format",
            "csv",
            "-e",
            "SELECT * FROM counts",
        ],
    );
    assert_eq!(counts(&csv), reference);

    // An existing output is refused without --overwrite.
    let mut again = crate::drove();
    again.args(mapreduce);
    let refused = crate::run_command(again, Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--overwrite"),
        "{stderr}"
    );

    let tables = format!("http://{dav}/tpch");
    for q in [3, 6] {
        let sql = drove_exec::tpch::QUERIES[q - 1];
        let got = ok(
            crate::drove(),
            &[
                "sql",
                "--coordinator",
                &addr,
                "--tpch",
                &tables,
                "--format",
                "csv",
                "-e",
                sql,
            ],
        );
        assert_eq!(got, crate::multiprocess::expected_csv(&tpch, sql), "Q{q}");
    }
}

/// Google Cloud Storage and Azure containers that cannot be reached (a loopback port
/// nothing listens on) are refused with a message that names the table, not a panic.
#[test]
fn unreachable_google_and_azure_stores_are_clear_errors() {
    let port = drove_testkit::unused_addr().port();
    let nowhere = format!("http://127.0.0.1:{port}");
    // A key that turns authentication off, so nothing asks a metadata server for a
    // token.
    let key = r#"{"private_key":"-","private_key_id":"-","client_email":"-","disable_oauth":true}"#;
    for (table, env) in [
        (
            "t=gs://nothing/t.parquet",
            [
                ("GOOGLE_BASE_URL", nowhere.as_str()),
                ("GOOGLE_ALLOW_HTTP", "true"),
                ("GOOGLE_SERVICE_ACCOUNT_KEY", key),
            ],
        ),
        (
            "t=az://nothing/t.parquet",
            [
                ("AZURE_STORAGE_USE_EMULATOR", "true"),
                ("AZURITE_BLOB_STORAGE_URL", nowhere.as_str()),
                ("AZURE_ALLOW_HTTP", "true"),
            ],
        ),
    ] {
        let mut command = crate::drove();
        command.envs(env).args([
            "sql",
            "--local",
            "1",
            "--table",
            table,
            "-e",
            "SELECT 1 FROM t",
        ]);
        let out = crate::run_command(command, Duration::from_secs(300));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table} was read");
        assert!(stderr.contains(&table[2..]), "{table}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");

        // Tables generated for the store are not written anywhere else, such as a
        // local directory named like the URL.
        let cwd = tempfile::tempdir().unwrap();
        let store = table[2..].trim_end_matches("/t.parquet");
        let mut command = crate::drove();
        command
            .current_dir(cwd.path())
            .envs(env)
            .args(["gen", "tpch", "--scale", "0.01", "--out", store]);
        let out = crate::run_command(command, Duration::from_secs(300));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "gen --out {store} succeeded");
        assert!(stderr.contains("nothing"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(std::fs::read_dir(cwd.path()).unwrap().next().is_none());
    }
}
