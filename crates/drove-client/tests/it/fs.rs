//! drove fs through the Rust API, on an embedded cluster whose workers keep their
//! chunks under `drove local --data-dir`'s directories.

use drove_client::cluster::LocalClusterConfig;
use drove_client::fs::PutOptions;
use drove_client::{LocalCluster, Session};
use futures::StreamExt;

#[tokio::test]
async fn put_read_list_and_remove_through_the_rust_api() {
    let root = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalClusterConfig {
        workers: 2,
        data_dir: Some(root.path().join("data")),
        ..Default::default()
    })
    .await
    .unwrap();
    let session = Session::with_cluster(cluster).await.unwrap();
    let local = root.path().join("local.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&local, &bytes).unwrap();
    let options = PutOptions {
        chunk_bytes: 64 << 10,
        ..Default::default()
    };
    // Two workers: the default factor of 3 is lowered, with a warning.
    let put = session
        .fs_put(&local, "drove://a/b.bin", &options)
        .await
        .unwrap();
    assert_eq!((put.bytes, put.chunks, put.replication), (300_000, 5, 2));
    assert!(put.warning.unwrap().contains("only 2 worker(s)"));
    let mut read = Vec::new();
    let mut pieces = session.fs_read("drove://a/b.bin").await.unwrap();
    while let Some(piece) = pieces.next().await {
        read.extend(piece.unwrap());
    }
    assert!(read == bytes);
    let stat = session.fs_stat("drove://a/b.bin").await.unwrap();
    assert_eq!(stat.chunks.len(), 5);
    assert!(stat.chunks.iter().all(|c| c.replicas.len() == 2));
    let listed = session.fs_list("drove://a").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].size),
        ("b.bin", 300_000)
    );

    // Bad input is refused with a message that names the fix.
    let three = PutOptions {
        replication: 3,
        ..options.clone()
    };
    let e = session
        .fs_put(&local, "drove://c", &three)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("give at most 2"), "{e}");
    let tiny = PutOptions {
        chunk_bytes: 1,
        ..options.clone()
    };
    let e = session
        .fs_put(&local, "drove://c", &tiny)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--chunk-size"), "{e}");
    let e = session
        .fs_put(root.path(), "drove://c", &options)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
    let e = session
        .fs_read("drove://a")
        .await
        .err()
        .expect("a directory");
    assert!(e.to_string().contains("is a directory"), "{e}");
    let e = session
        .fs_get("drove://a/b.bin", &local, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists; pass overwrite"), "{e}");
    assert_eq!(
        std::fs::read(&local).unwrap(),
        bytes,
        "the local file is untouched"
    );

    let e = session.fs_remove("drove://a", false).await.unwrap_err();
    assert!(e.to_string().contains("--recursive"), "{e}");
    session.fs_remove("drove://a", true).await.unwrap();
    let e = session.fs_stat("drove://a/b.bin").await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    session.shutdown().await;
}
