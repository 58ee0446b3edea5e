//! The lazy DataFrame API runs on the cluster and equals single-process DataFusion.

use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::{ParquetReadOptions, SessionContext, col, lit};
use drove_testkit::{compare, tpch_data};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_parquet_filter_aggregate_sort_equals_datafusion() {
    let path = tpch_data(0.01).join("lineitem.parquet");
    let session = crate::cluster(2).await;
    let df = session
        .read_parquet(&path)
        .await
        .unwrap()
        .filter(col("l_quantity").gt(lit(10)))
        .unwrap()
        .aggregate(
            vec![col("l_returnflag")],
            vec![
                sum(col("l_quantity")).alias("qty"),
                count(lit(1)).alias("n"),
            ],
        )
        .unwrap()
        .sort(vec![col("l_returnflag").sort(true, true)])
        .unwrap();
    let actual = df.collect_with_summary().await.unwrap();
    assert!(actual.summary.stages.len() >= 2, "{}", actual.summary);

    let ctx = SessionContext::new();
    let expected = ctx
        .read_parquet(path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap()
        .filter(col("l_quantity").gt(lit(10)))
        .unwrap()
        .aggregate(
            vec![col("l_returnflag")],
            vec![
                sum(col("l_quantity")).alias("qty"),
                count(lit(1)).alias("n"),
            ],
        )
        .unwrap()
        .sort(vec![col("l_returnflag").sort(true, true)])
        .unwrap()
        .collect()
        .await
        .unwrap();
    compare(&actual.batches, &expected, true).unwrap();
    session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_dataframes_ship_their_logical_plan() {
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session.register_tpch(&dir).await.unwrap();
    let batches = session
        .sql("SELECT n_regionkey, count(*) AS n FROM nation GROUP BY n_regionkey ORDER BY n_regionkey")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 5, "five regions");
    session.shutdown().await;
}
