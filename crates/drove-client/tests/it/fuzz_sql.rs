//! Grammar-based SQL fuzzing, in the manner of SQLsmith: random SELECT queries over the
//! TPC-H tables run on a 2-worker cluster and on single-process DataFusion, and the two
//! must agree. A query DataFusion rejects must fail on drove too, without a panic or a
//! hang.
//!
//! The grammar covers filters, arithmetic, CASE, CAST, string functions, joins on key
//! columns (inner, outer, cross), GROUP BY with HAVING and grouping sets, scalar, IN and
//! EXISTS subqueries (correlated or not), window functions, derived tables and CTEs, set
//! operations, DISTINCT, and ORDER BY with LIMIT. It avoids what two correct engines may
//! answer differently: LIMIT only under an ORDER BY of every output column, window
//! functions that depend on row order only over a total order, no sums of floats, no
//! division by anything but a non-zero literal, no random() or now().
//!
//! `DROVE_FUZZ_SQL_QUERIES` sets how many queries run (500 by default, about 90 s) and
//! `DROVE_FUZZ_SQL_SEED` the seed. Query N depends only on the seed and N, so
//! `DROVE_FUZZ_SQL_INDEX=N` replays one query alone. `DROVE_FUZZ_SQL_VERBOSE=1` prints
//! every query DataFusion rejects, with its reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use drove_client::Session;
use drove_testkit::{compare, tpch_data, tpch_tables};

const SEED_DEFAULT: u64 = 0x5E_ED0F_D20E;
const QUERIES_DEFAULT: u64 = 500;
/// How long one query may take on either engine before it counts as a hang.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);
/// The most rows a join in a generated FROM clause may be estimated to produce.
const JOIN_ROWS_MAX: f64 = 30_000.0;
/// Failures spelled out in full in the assertion message.
const FAILURES_SHOWN_MAX: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_queries_equal_single_process_datafusion() {
    let seed = env_u64("DROVE_FUZZ_SQL_SEED").unwrap_or(SEED_DEFAULT);
    let queries = env_u64("DROVE_FUZZ_SQL_QUERIES").unwrap_or(QUERIES_DEFAULT);
    let indices: Vec<u64> = match env_u64("DROVE_FUZZ_SQL_INDEX") {
        Some(i) => vec![i],
        None => (0..queries).collect(),
    };
    let verbose = env_u64("DROVE_FUZZ_SQL_VERBOSE").is_some_and(|v| v != 0);
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session
        .register_tpch(&dir)
        .await
        .expect("registering TPC-H");
    let ctx = SessionContext::new();
    for table in tpch_tables(&dir) {
        drove_exec::tables::register(&ctx, &table)
            .await
            .expect("registering TPC-H with DataFusion");
    }

    let started = Instant::now();
    let mut stats = Stats::default();
    let mut failures = Vec::new();
    for &index in &indices {
        let (sql, ordered) = generate(seed, index);
        stats.tried += 1;
        let outcome = check(&session, &ctx, &sql, ordered).await;
        match outcome {
            Outcome::Equal => stats.equal += 1,
            Outcome::BothRejected(reason) => {
                if verbose {
                    eprintln!("fuzz_sql: query {index} rejected: {reason}\n  {sql}");
                }
                stats.rejected += 1;
                *stats.reasons.entry(reason).or_default() += 1;
            }
            Outcome::Failed(kind, why) => {
                *stats.failed.entry(kind).or_default() += 1;
                failures.push(format!(
                    "seed {seed} query {index} ({kind}): {why}\n  sql: {sql}\n  replay: DROVE_FUZZ_SQL_SEED={seed} DROVE_FUZZ_SQL_INDEX={index} cargo test -p drove-client --test it fuzz_sql"
                ));
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "fuzz_sql: seed {seed}: {} queries in {:.1} s: {} rejected by DataFusion (and by drove), {} equal, {} differed {:?}",
        stats.tried,
        elapsed.as_secs_f64(),
        stats.rejected,
        stats.equal,
        failures.len(),
        stats.failed,
    );
    let mut reasons: Vec<_> = stats.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (reason, n) in reasons.iter().take(8) {
        eprintln!("fuzz_sql:   rejected {n}x: {reason}");
    }

    // The cluster survived everything it was sent.
    match session.cluster_status().await {
        Ok(status) if status.workers.len() == 2 => {}
        Ok(status) => failures.push(format!(
            "after the run the cluster has {} workers, not 2: {:?}",
            status.workers.len(),
            status.workers
        )),
        Err(e) => failures.push(format!(
            "after the run the coordinator does not answer: {e}"
        )),
    }
    let trivial = "SELECT count(*) AS n FROM region";
    match tokio::time::timeout(QUERY_TIMEOUT, session.run_sql(trivial)).await {
        Ok(Ok(result)) if result.num_rows() == 1 => {}
        Ok(Ok(result)) => failures.push(format!(
            "after the run `{trivial}` returned {} rows",
            result.num_rows()
        )),
        Ok(Err(e)) => failures.push(format!("after the run `{trivial}` failed: {e}")),
        Err(_) => failures.push(format!("after the run `{trivial}` hung")),
    }
    session.shutdown().await;

    let shown: Vec<&str> = failures
        .iter()
        .take(FAILURES_SHOWN_MAX)
        .map(String::as_str)
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures in {} random queries (seed {seed}); the first {}:\n\n{}",
        failures.len(),
        stats.tried,
        shown.len(),
        shown.join("\n\n")
    );
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value} is not a number: {e}")))
}

#[derive(Default)]
struct Stats {
    tried: u64,
    rejected: u64,
    equal: u64,
    failed: BTreeMap<&'static str, u64>,
    reasons: BTreeMap<String, u64>,
}

enum Outcome {
    Equal,
    /// DataFusion rejected the query and so did drove; the reason is DataFusion's.
    BothRejected(String),
    Failed(&'static str, String),
}

/// Runs `sql` on drove and on DataFusion at once, and compares.
async fn check(session: &Session, ctx: &SessionContext, sql: &str, ordered: bool) -> Outcome {
    let drove = tokio::spawn({
        let session = session.clone();
        let sql = sql.to_string();
        async move { tokio::time::timeout(QUERY_TIMEOUT, session.run_sql(&sql)).await }
    });
    let reference = tokio::spawn({
        let ctx = ctx.clone();
        let sql = sql.to_string();
        async move { tokio::time::timeout(QUERY_TIMEOUT, reference(&ctx, &sql)).await }
    });
    let (drove, reference) = tokio::join!(drove, reference);
    let reference = match reference {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return Outcome::Failed("reference hung", "DataFusion timed out".into()),
        Err(e) => Err(format!("DataFusion panicked: {e}")),
    };
    let drove = match drove {
        Ok(Ok(r)) => r.map_err(|e| e.to_string()),
        Ok(Err(_)) => {
            return Outcome::Failed("hang", format!("drove gave no answer in {QUERY_TIMEOUT:?}"));
        }
        Err(e) => return Outcome::Failed("panic", format!("running the query panicked: {e}")),
    };
    match (drove, reference) {
        (Err(_), Err(reason)) => Outcome::BothRejected(reason_of(&reason)),
        (Ok(actual), Err(reason)) => Outcome::Failed(
            "accepted",
            format!(
                "DataFusion rejects the query ({reason}) but drove returned {} rows",
                actual.num_rows()
            ),
        ),
        (Err(e), Ok(_)) => Outcome::Failed("error", format!("drove failed: {e}")),
        (Ok(actual), Ok((schema, expected))) => {
            if let Some(diff) = schema_diff(&actual.schema, &schema) {
                return Outcome::Failed("schema", diff);
            }
            let (actual, expected) = if ordered {
                (actual.batches, expected)
            } else {
                (sorted(actual.batches), sorted(expected))
            };
            match compare(&actual, &expected, true) {
                Ok(()) => Outcome::Equal,
                Err(diff) => Outcome::Failed("rows", diff),
            }
        }
    }
}

/// `batches` as one batch with its rows sorted on every column, values exactly.
///
/// `compare` sorts unordered results itself, but on floats rounded to 7 digits, so that
/// floats that differ in the 8th digit can pair up wrongly; an exact sort leaves nothing
/// to chance but values within rounding error of each other.
fn sorted(batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
    let Some(schema) = batches.first().map(RecordBatch::schema) else {
        return batches;
    };
    let Ok(batch) = arrow::compute::concat_batches(&schema, &batches) else {
        return batches;
    };
    let columns: Vec<arrow::compute::SortColumn> = batch
        .columns()
        .iter()
        .map(|values| arrow::compute::SortColumn {
            values: Arc::clone(values),
            options: None,
        })
        .collect();
    if columns.is_empty() {
        return vec![batch];
    }
    match arrow::compute::lexsort_to_indices(&columns, None)
        .and_then(|indices| arrow::compute::take_record_batch(&batch, &indices))
    {
        Ok(sorted) => vec![sorted],
        // A type arrow cannot sort: leave the order to `compare`.
        Err(_) => batches,
    }
}

/// DataFusion's rows for `sql`, and the schema of the physical plan that made them.
async fn reference(
    ctx: &SessionContext,
    sql: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
    let plan = df.create_physical_plan().await.map_err(|e| e.to_string())?;
    let schema = plan.schema();
    let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
        .await
        .map_err(|e| e.to_string())?;
    Ok((schema, batches))
}

/// The gist of a DataFusion error, to count rejections by kind.
fn reason_of(message: &str) -> String {
    let gist: String = message
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(110)
        .collect();
    gist.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// How drove's result schema differs from DataFusion's: names and types, taking string
/// and binary views for what they are a view of, and not nullability.
fn schema_diff(actual: &Schema, expected: &Schema) -> Option<String> {
    fn plain(t: &DataType) -> DataType {
        match t {
            DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
            DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
            other => other.clone(),
        }
    }
    let describe = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), plain(f.data_type())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (a, e) = (describe(actual), describe(expected));
    (a != e).then(|| format!("schema ({a}), expected ({e})"))
}

// ---------------------------------------------------------------------------------
// The schema the grammar knows.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    Int,
    Dec,
    Str,
    Date,
    Float,
    Bool,
}

const TYPES: [Ty; 6] = [Ty::Int, Ty::Dec, Ty::Str, Ty::Date, Ty::Float, Ty::Bool];

impl Ty {
    fn sql(self) -> &'static str {
        match self {
            Ty::Int => "BIGINT",
            Ty::Dec => "DECIMAL(15,2)",
            Ty::Str => "VARCHAR",
            Ty::Date => "DATE",
            Ty::Float => "DOUBLE",
            Ty::Bool => "BOOLEAN",
        }
    }
}

/// The entity a key column names; columns of one kind join.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Key {
    Nation,
    Region,
    Supp,
    Cust,
    Part,
    Order,
}

impl Key {
    /// Distinct values at scale 0.01.
    fn distinct(self) -> f64 {
        match self {
            Key::Nation => 25.0,
            Key::Region => 5.0,
            Key::Supp => 100.0,
            Key::Cust => 1_500.0,
            Key::Part => 2_000.0,
            Key::Order => 15_000.0,
        }
    }

    fn range(self) -> (i64, i64) {
        match self {
            Key::Nation => (0, 24),
            Key::Region => (0, 4),
            Key::Supp => (1, 100),
            Key::Cust => (1, 1_500),
            Key::Part => (1, 2_000),
            Key::Order => (1, 60_000),
        }
    }
}

/// What values a column holds, so that literals hit some rows.
#[derive(Clone, Copy, Debug)]
enum Dom {
    Key(Key),
    Int(i64, i64),
    /// In cents.
    Dec(i64, i64),
    /// Sample values (or words the values contain).
    Str(&'static [&'static str]),
    Date,
    Any,
}

struct Column {
    name: &'static str,
    ty: Ty,
    dom: Dom,
}

struct Table {
    name: &'static str,
    rows: f64,
    key: &'static [&'static str],
    columns: &'static [Column],
}

const fn c(name: &'static str, ty: Ty, dom: Dom) -> Column {
    Column { name, ty, dom }
}

const NATIONS: &[&str] = &[
    "ALGERIA",
    "ARGENTINA",
    "BRAZIL",
    "CANADA",
    "EGYPT",
    "FRANCE",
    "GERMANY",
    "INDIA",
    "JAPAN",
    "PERU",
    "CHINA",
    "UNITED KINGDOM",
    "UNITED STATES",
];
const REGIONS: &[&str] = &["AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"];
const COMMENT: &[&str] = &[
    "carefully",
    "furiously",
    "quickly",
    "regular",
    "deposits",
    "requests",
    "special",
    "final",
    "ironic",
    "the",
    "blithely",
    "packages",
    "accounts",
];
const CUSTOMERS: &[&str] = &[
    "Customer#000000001",
    "Customer#000000750",
    "Customer#000001499",
];
const SUPPLIERS: &[&str] = &[
    "Supplier#000000001",
    "Supplier#000000050",
    "Supplier#000000099",
];
const ADDRESS: &[&str] = &["IVhzIApeRb", "XSTf4", "a", "0", "Q"];
const PHONES: &[&str] = &["10-", "13-", "25-", "29-", "31-", "34-"];
const SEGMENTS: &[&str] = &[
    "AUTOMOBILE",
    "BUILDING",
    "FURNITURE",
    "MACHINERY",
    "HOUSEHOLD",
];
const PART_NAMES: &[&str] = &[
    "almond",
    "green",
    "forest",
    "blue",
    "chocolate",
    "lace",
    "navy",
    "rose",
];
const MFGRS: &[&str] = &[
    "Manufacturer#1",
    "Manufacturer#2",
    "Manufacturer#3",
    "Manufacturer#4",
    "Manufacturer#5",
];
const BRANDS: &[&str] = &["Brand#12", "Brand#23", "Brand#34", "Brand#45", "Brand#51"];
const PART_TYPES: &[&str] = &[
    "PROMO BURNISHED COPPER",
    "STANDARD POLISHED TIN",
    "ECONOMY ANODIZED STEEL",
    "LARGE BRUSHED BRASS",
    "MEDIUM PLATED NICKEL",
    "SMALL PLATED COPPER",
];
const CONTAINERS: &[&str] = &[
    "SM CASE",
    "SM BOX",
    "SM PKG",
    "MED BAG",
    "MED BOX",
    "LG CASE",
    "LG PACK",
    "JUMBO BOX",
    "WRAP CASE",
];
const ORDER_STATUS: &[&str] = &["F", "O", "P"];
const PRIORITIES: &[&str] = &["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"];
const CLERKS: &[&str] = &["Clerk#000000001", "Clerk#000000500", "Clerk#000000999"];
const RETURN_FLAGS: &[&str] = &["R", "A", "N"];
const LINE_STATUS: &[&str] = &["O", "F"];
const INSTRUCTIONS: &[&str] = &[
    "DELIVER IN PERSON",
    "COLLECT COD",
    "NONE",
    "TAKE BACK RETURN",
];
const SHIP_MODES: &[&str] = &["REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB"];
const WORDS: &[&str] = &["a", "AB", "the", "x", "", "Z", "19", "ly"];

const NATION: Table = Table {
    name: "nation",
    rows: 25.0,
    key: &["n_nationkey"],
    columns: &[
        c("n_nationkey", Ty::Int, Dom::Key(Key::Nation)),
        c("n_name", Ty::Str, Dom::Str(NATIONS)),
        c("n_regionkey", Ty::Int, Dom::Key(Key::Region)),
        c("n_comment", Ty::Str, Dom::Str(COMMENT)),
    ],
};
const REGION: Table = Table {
    name: "region",
    rows: 5.0,
    key: &["r_regionkey"],
    columns: &[
        c("r_regionkey", Ty::Int, Dom::Key(Key::Region)),
        c("r_name", Ty::Str, Dom::Str(REGIONS)),
        c("r_comment", Ty::Str, Dom::Str(COMMENT)),
    ],
};
const SUPPLIER: Table = Table {
    name: "supplier",
    rows: 100.0,
    key: &["s_suppkey"],
    columns: &[
        c("s_suppkey", Ty::Int, Dom::Key(Key::Supp)),
        c("s_name", Ty::Str, Dom::Str(SUPPLIERS)),
        c("s_address", Ty::Str, Dom::Str(ADDRESS)),
        c("s_nationkey", Ty::Int, Dom::Key(Key::Nation)),
        c("s_phone", Ty::Str, Dom::Str(PHONES)),
        c("s_acctbal", Ty::Dec, Dom::Dec(-99_999, 999_999)),
        c("s_comment", Ty::Str, Dom::Str(COMMENT)),
    ],
};
const CUSTOMER: Table = Table {
    name: "customer",
    rows: 1_500.0,
    key: &["c_custkey"],
    columns: &[
        c("c_custkey", Ty::Int, Dom::Key(Key::Cust)),
        c("c_name", Ty::Str, Dom::Str(CUSTOMERS)),
        c("c_address", Ty::Str, Dom::Str(ADDRESS)),
        c("c_nationkey", Ty::Int, Dom::Key(Key::Nation)),
        c("c_phone", Ty::Str, Dom::Str(PHONES)),
        c("c_acctbal", Ty::Dec, Dom::Dec(-99_999, 999_999)),
        c("c_mktsegment", Ty::Str, Dom::Str(SEGMENTS)),
        c("c_comment", Ty::Str, Dom::Str(COMMENT)),
    ],
};
const PART: Table = Table {
    name: "part",
    rows: 2_000.0,
    key: &["p_partkey"],
    columns: &[
        c("p_partkey", Ty::Int, Dom::Key(Key::Part)),
        c("p_name", Ty::Str, Dom::Str(PART_NAMES)),
        c("p_mfgr", Ty::Str, Dom::Str(MFGRS)),
        c("p_brand", Ty::Str, Dom::Str(BRANDS)),
        c("p_type", Ty::Str, Dom::Str(PART_TYPES)),
        c("p_size", Ty::Int, Dom::Int(1, 50)),
        c("p_container", Ty::Str, Dom::Str(CONTAINERS)),
        c("p_retailprice", Ty::Dec, Dom::Dec(90_000, 210_000)),
        c("p_comment", Ty::Str, Dom::Str(COMMENT)),
    ],
};
const PARTSUPP: Table = Table {
    name: "partsupp",
    rows: 8_000.0,
    key: &["ps_partkey", "ps_suppkey"],
    columns: &[
        c("ps_partkey", Ty::Int, Dom::Key(Key::Part)),
        c("ps_suppkey", Ty::Int, Dom::Key(Key::Supp)),
        c("ps_availqty", Ty::Int, Dom::Int(1, 9_999)),
        c("ps_supplycost", Ty::Dec, Dom::Dec(100, 100_000)),
        c("ps_comment", Ty::Str, Dom::Str(COMMENT)),
    ],
};
const ORDERS: Table = Table {
    name: "orders",
    rows: 15_000.0,
    key: &["o_orderkey"],
    columns: &[
        c("o_orderkey", Ty::Int, Dom::Key(Key::Order)),
        c("o_custkey", Ty::Int, Dom::Key(Key::Cust)),
        c("o_orderstatus", Ty::Str, Dom::Str(ORDER_STATUS)),
        c("o_totalprice", Ty::Dec, Dom::Dec(80_000, 50_000_000)),
        c("o_orderdate", Ty::Date, Dom::Date),
        c("o_orderpriority", Ty::Str, Dom::Str(PRIORITIES)),
        c("o_clerk", Ty::Str, Dom::Str(CLERKS)),
        c("o_shippriority", Ty::Int, Dom::Int(0, 1)),
        c("o_comment", Ty::Str, Dom::Str(COMMENT)),
    ],
};
const LINEITEM: Table = Table {
    name: "lineitem",
    rows: 60_000.0,
    key: &["l_orderkey", "l_linenumber"],
    columns: &[
        c("l_orderkey", Ty::Int, Dom::Key(Key::Order)),
        c("l_partkey", Ty::Int, Dom::Key(Key::Part)),
        c("l_suppkey", Ty::Int, Dom::Key(Key::Supp)),
        c("l_linenumber", Ty::Int, Dom::Int(1, 7)),
        c("l_quantity", Ty::Dec, Dom::Dec(100, 5_000)),
        c("l_extendedprice", Ty::Dec, Dom::Dec(90_000, 10_000_000)),
        c("l_discount", Ty::Dec, Dom::Dec(0, 10)),
        c("l_tax", Ty::Dec, Dom::Dec(0, 8)),
        c("l_returnflag", Ty::Str, Dom::Str(RETURN_FLAGS)),
        c("l_linestatus", Ty::Str, Dom::Str(LINE_STATUS)),
        c("l_shipdate", Ty::Date, Dom::Date),
        c("l_commitdate", Ty::Date, Dom::Date),
        c("l_receiptdate", Ty::Date, Dom::Date),
        c("l_shipinstruct", Ty::Str, Dom::Str(INSTRUCTIONS)),
        c("l_shipmode", Ty::Str, Dom::Str(SHIP_MODES)),
        c("l_comment", Ty::Str, Dom::Str(COMMENT)),
    ],
};

const TABLES: [&Table; 8] = [
    &NATION, &REGION, &SUPPLIER, &CUSTOMER, &PART, &PARTSUPP, &ORDERS, &LINEITEM,
];
/// How often each of `TABLES` starts a FROM clause: small tables keep queries cheap.
const FROM_WEIGHTS: [u32; 8] = [22, 12, 18, 12, 10, 8, 4, 2];
/// How often each of `TABLES` is a subquery's table.
const SUBQUERY_WEIGHTS: [u32; 8] = [22, 12, 18, 8, 8, 5, 2, 1];

// ---------------------------------------------------------------------------------
// A seeded random source (splitmix64).

struct Rng(u64);

impl Rng {
    fn new(seed: u64, index: u64) -> Self {
        let mut r = Rng(seed);
        let mixed = r.next() ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Rng(mixed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "choosing among nothing");
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + (self.next() % ((hi - lo) as u64 + 1)) as i64
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// An index into `weights`, chosen in proportion to them.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut x = self.next() % total;
        for (i, w) in weights.iter().enumerate() {
            if x < u64::from(*w) {
                return i;
            }
            x -= u64::from(*w);
        }
        unreachable!("weights sum to {total}")
    }
}

// ---------------------------------------------------------------------------------
// The generator.

/// A column in scope: how to name it, its type and what values it holds.
#[derive(Clone, Debug)]
struct Col {
    sql: String,
    ty: Ty,
    dom: Dom,
}

/// What a FROM clause brings into scope.
#[derive(Clone, Debug, Default)]
struct Scope {
    cols: Vec<Col>,
    /// Expressions that together tell the rows apart, where known.
    key: Option<Vec<String>>,
    /// Join conditions a comma join left for the WHERE clause.
    conditions: Vec<String>,
    rows: f64,
}

/// A generated query: its text and its output columns, named `c0`, `c1`, ...
#[derive(Clone, Debug)]
struct Query {
    sql: String,
    cols: Vec<(Ty, Dom)>,
    /// Output columns that together tell the rows apart, where known.
    key: Option<Vec<usize>>,
    rows: f64,
}

impl Query {
    fn types(&self) -> Vec<Ty> {
        self.cols.iter().map(|(t, _)| *t).collect()
    }
}

/// Where an expression is generated: the columns it may name, those of enclosing queries
/// (for correlation) and whether it may hold subqueries.
#[derive(Clone, Copy)]
struct Env<'a> {
    cols: &'a [Col],
    outer: &'a [Col],
    subqueries: bool,
}

struct Gen {
    rng: Rng,
    aliases: usize,
    /// Common table expressions for the top-level WITH, in order of definition.
    ctes: Vec<(String, String, Query)>,
    subqueries_left: u32,
}

/// The SQL of query `index` of the sequence `seed`, and whether its rows come ordered.
fn generate(seed: u64, index: u64) -> (String, bool) {
    let mut g = Gen {
        rng: Rng::new(seed, index),
        aliases: 0,
        ctes: Vec::new(),
        subqueries_left: 0,
    };
    g.subqueries_left = g.rng.weighted(&[35, 35, 20, 10]) as u32;
    let q = g.query(0, None, &[]);
    let mut sql = String::new();
    if !g.ctes.is_empty() {
        let defs: Vec<String> = g
            .ctes
            .iter()
            .map(|(name, body, _)| format!("{name} AS ({body})"))
            .collect();
        sql.push_str(&format!("WITH {} ", defs.join(", ")));
    }
    sql.push_str(&q.sql);
    let ordered = g.rng.chance(45);
    if ordered {
        sql.push_str(&g.order_by_all(q.cols.len()));
        if g.rng.chance(65) {
            sql.push_str(&format!(" LIMIT {}", g.rng.range(0, 25)));
            if g.rng.chance(20) {
                sql.push_str(&format!(" OFFSET {}", g.rng.range(1, 5)));
            }
        }
    }
    (sql, ordered)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn join_or(items: &[String], sep: &str, empty: &str) -> String {
    if items.is_empty() {
        empty.to_string()
    } else {
        items.join(sep)
    }
}

impl Gen {
    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases - 1)
    }

    /// ` ORDER BY 1, 2, ...` over all `n` output columns: a total order of the rows up
    /// to rows equal in every column, so LIMIT is deterministic.
    fn order_by_all(&mut self, n: usize) -> String {
        let keys: Vec<String> = (1..=n)
            .map(|i| format!("{i}{}", self.direction()))
            .collect();
        format!(" ORDER BY {}", keys.join(", "))
    }

    fn direction(&mut self) -> &'static str {
        self.rng.pick(&[
            "",
            " ASC",
            " DESC",
            " ASC NULLS FIRST",
            " DESC NULLS LAST",
            " NULLS FIRST",
        ])
    }

    // ----- queries

    fn query(&mut self, depth: u32, want: Option<&[Ty]>, outer: &[Col]) -> Query {
        let set_op_percent = match depth {
            0 => 18,
            1 => 8,
            _ => 0,
        };
        if !self.rng.chance(set_op_percent) {
            return self.select(depth, want, outer);
        }
        let first = self.select(depth + 1, want, outer);
        let types = first.types();
        let mut sql = self.arm(first.sql.clone());
        let arms = if self.rng.chance(25) { 2 } else { 1 };
        for _ in 0..arms {
            let next = self.select(depth + 1, Some(&types), outer);
            let op = self.rng.pick(&[
                "UNION ALL",
                "UNION ALL",
                "UNION",
                "UNION",
                "INTERSECT",
                "EXCEPT",
                "INTERSECT ALL",
                "EXCEPT ALL",
            ]);
            sql = format!("{sql} {op} {}", self.arm(next.sql));
        }
        Query {
            sql,
            cols: first.cols,
            key: None,
            rows: first.rows * 2.0,
        }
    }

    fn arm(&mut self, sql: String) -> String {
        if self.rng.chance(30) {
            format!("({sql})")
        } else {
            sql
        }
    }

    fn select(&mut self, depth: u32, want: Option<&[Ty]>, outer: &[Col]) -> Query {
        let kind = if depth <= 1 {
            self.rng.weighted(&[45, 35, 20])
        } else {
            self.rng.weighted(&[55, 45, 0])
        };
        match kind {
            0 => self.plain_select(depth, want, outer),
            1 => self.aggregate_select(depth, want, outer),
            _ => self.window_select(depth, want, outer),
        }
    }

    /// Output types for a select without a required shape: mostly those of columns in
    /// scope.
    fn some_types(&mut self, scope: &Scope, n: usize) -> Vec<Ty> {
        (0..n)
            .map(|_| {
                if !scope.cols.is_empty() && self.rng.chance(75) {
                    scope.cols[self.rng.below(scope.cols.len())].ty
                } else {
                    self.rng.pick(&TYPES)
                }
            })
            .collect()
    }

    /// A projection of type `ty`: a column as it is (keeping what it holds) or an
    /// expression.
    fn item(&mut self, ty: Ty, env: Env) -> (String, Dom) {
        if self.rng.chance(50)
            && let Some(col) = self.column(ty, env.cols)
        {
            return (col.sql, col.dom);
        }
        let depth = self.rng.range(0, 3) as u32;
        (self.expr(ty, env, depth), Dom::Any)
    }

    fn where_clause(&mut self, scope: &Scope, env: Env, percent: u64) -> String {
        let mut conditions = scope.conditions.clone();
        if self.rng.chance(percent) {
            let depth = self.rng.range(0, 3) as u32;
            conditions.push(self.pred(env, depth));
        }
        if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        }
    }

    fn plain_select(&mut self, depth: u32, want: Option<&[Ty]>, outer: &[Col]) -> Query {
        let (from, scope) = self.relations(depth);
        let env = Env {
            cols: &scope.cols,
            outer,
            subqueries: true,
        };
        let types = match want {
            Some(w) => w.to_vec(),
            None => {
                let n = self.rng.range(1, 4) as usize;
                self.some_types(&scope, n)
            }
        };
        let mut items = Vec::new();
        let mut cols = Vec::new();
        for (i, ty) in types.iter().enumerate() {
            let (sql, dom) = self.item(*ty, env);
            items.push(format!("{sql} AS c{i}"));
            cols.push((*ty, dom));
        }
        let distinct = if self.rng.chance(15) { "DISTINCT " } else { "" };
        let filter = self.where_clause(&scope, env, 70);
        Query {
            sql: format!("SELECT {distinct}{} FROM {from}{filter}", items.join(", ")),
            cols,
            key: None,
            rows: scope.rows,
        }
    }

    fn aggregate_select(&mut self, depth: u32, want: Option<&[Ty]>, outer: &[Col]) -> Query {
        let (from, scope) = self.relations(depth);
        let env = Env {
            cols: &scope.cols,
            outer,
            subqueries: true,
        };
        let plain = Env {
            subqueries: false,
            ..env
        };
        // Group keys, and the output: (expression, type, domain, which key it is).
        let mut keys: Vec<(String, Ty, Dom)> = Vec::new();
        let mut items: Vec<(String, Ty, Dom, Option<usize>)> = Vec::new();
        match want {
            Some(types) => {
                for ty in types {
                    if self.rng.chance(40) {
                        let (sql, dom) = self.item(*ty, plain);
                        keys.push((sql.clone(), *ty, dom));
                        items.push((sql, *ty, dom, Some(keys.len() - 1)));
                    } else {
                        items.push((self.agg_item(*ty, plain, true), *ty, Dom::Any, None));
                    }
                }
            }
            None => {
                let n = self.rng.weighted(&[25, 40, 25, 10]);
                let key_types = self.some_types(&scope, n);
                for ty in key_types {
                    let (sql, dom) = self.item(ty, plain);
                    keys.push((sql.clone(), ty, dom));
                    if keys.len() > 1 && self.rng.chance(10) {
                        continue; // grouped by but not shown
                    }
                    items.push((sql, ty, dom, Some(keys.len() - 1)));
                }
                for _ in 0..self.rng.range(1, 3) {
                    let ty = self.rng.pick(&[
                        Ty::Int,
                        Ty::Int,
                        Ty::Dec,
                        Ty::Dec,
                        Ty::Float,
                        Ty::Str,
                        Ty::Date,
                        Ty::Bool,
                    ]);
                    items.push((self.agg_item(ty, plain, true), ty, Dom::Any, None));
                }
            }
        }
        let select: Vec<String> = items
            .iter()
            .enumerate()
            .map(|(i, (sql, ..))| format!("{sql} AS c{i}"))
            .collect();
        let filter = self.where_clause(&scope, env, 60);
        let mut grouping_sets = false;
        let group_by = if keys.is_empty() {
            String::new()
        } else {
            // A bare integer in GROUP BY would be a position.
            let exprs: Vec<String> = keys
                .iter()
                .map(|k| match k.0.parse::<i64>() {
                    Ok(_) => format!("({} + 0)", k.0),
                    Err(_) => k.0.clone(),
                })
                .collect();
            let positions: Option<Vec<String>> = (0..keys.len())
                .map(|k| {
                    items
                        .iter()
                        .position(|it| it.3 == Some(k))
                        .map(|p| (p + 1).to_string())
                })
                .collect();
            // Grouping sets only of columns: DataFusion takes a constant key for a
            // constant even in the rows where a grouping set nulls it, and drops an
            // ORDER BY on it, so the order of the rows is left to chance.
            let columns_only = keys.iter().all(|k| !matches!(k.2, Dom::Any));
            let sets = if columns_only { 15 } else { 0 };
            match self.rng.weighted(&[65, 20, sets]) {
                1 if positions.is_some() => {
                    format!(" GROUP BY {}", positions.unwrap_or_default().join(", "))
                }
                2 => {
                    grouping_sets = true;
                    match self.rng.below(3) {
                        0 => format!(" GROUP BY ROLLUP ({})", exprs.join(", ")),
                        1 => format!(" GROUP BY CUBE ({})", exprs.join(", ")),
                        _ => {
                            let sets: Vec<String> =
                                exprs.iter().map(|e| format!("({e})")).collect();
                            format!(" GROUP BY GROUPING SETS ({}, ())", sets.join(", "))
                        }
                    }
                }
                _ => format!(" GROUP BY {}", exprs.join(", ")),
            }
        };
        let having = if self.rng.chance(35) {
            let depth = self.rng.range(0, 2) as u32;
            format!(" HAVING {}", self.having(env, &keys, depth))
        } else {
            String::new()
        };
        let all_keys_shown = (0..keys.len()).all(|k| items.iter().any(|it| it.3 == Some(k)));
        let key = (!grouping_sets && all_keys_shown).then(|| {
            items
                .iter()
                .enumerate()
                .filter(|(_, it)| it.3.is_some())
                .map(|(i, _)| i)
                .collect()
        });
        Query {
            sql: format!(
                "SELECT {} FROM {from}{filter}{group_by}{having}",
                select.join(", ")
            ),
            cols: items.iter().map(|it| (it.1, it.2)).collect(),
            key,
            rows: if keys.is_empty() {
                1.0
            } else {
                scope.rows.min(100.0)
            },
        }
    }

    fn window_select(&mut self, depth: u32, want: Option<&[Ty]>, outer: &[Col]) -> Query {
        let (from, scope) = self.relations(depth);
        let env = Env {
            cols: &scope.cols,
            outer,
            subqueries: true,
        };
        let plain = Env {
            subqueries: false,
            ..env
        };
        // The items from `windows_from` on are window functions.
        let (types, windows_from) = match want {
            Some(w) => {
                let windows = self.rng.range(1, 2) as usize;
                (w.to_vec(), w.len().saturating_sub(windows))
            }
            None => {
                let n = self.rng.range(1, 3) as usize;
                let mut types = self.some_types(&scope, n);
                for _ in 0..self.rng.range(1, 2) {
                    types.push(self.rng.pick(&[
                        Ty::Int,
                        Ty::Int,
                        Ty::Dec,
                        Ty::Float,
                        Ty::Str,
                        Ty::Date,
                    ]));
                }
                (types, n)
            }
        };
        let mut items = Vec::new();
        let mut cols = Vec::new();
        for (i, ty) in types.iter().enumerate() {
            let (sql, dom) = if i >= windows_from && *ty != Ty::Bool {
                (self.window_item(*ty, plain, &scope), Dom::Any)
            } else {
                self.item(*ty, env)
            };
            items.push(format!("{sql} AS c{i}"));
            cols.push((*ty, dom));
        }
        let filter = self.where_clause(&scope, env, 50);
        Query {
            sql: format!("SELECT {} FROM {from}{filter}", items.join(", ")),
            cols,
            key: None,
            rows: scope.rows,
        }
    }

    // ----- FROM

    fn relations(&mut self, depth: u32) -> (String, Scope) {
        let (mut sql, mut scope) = if depth < 2 && self.rng.chance(12) {
            self.derived_source(depth)
        } else {
            let t = TABLES[self.rng.weighted(&FROM_WEIGHTS)];
            self.table_source(t)
        };
        let joins = self.rng.weighted(&[45, 38, 17]);
        for i in 0..joins {
            // A comma join only last: `a, b JOIN c ON ...` cannot name `a` in the ON.
            if let Some((join, joined)) = self.join(&scope, i + 1 == joins) {
                sql.push_str(&join);
                scope = joined;
            }
        }
        (sql, scope)
    }

    fn table_source(&mut self, t: &'static Table) -> (String, Scope) {
        let (sql, scope, _) = self.table_source_as(t);
        (sql, scope)
    }

    fn table_source_as(&mut self, t: &'static Table) -> (String, Scope, String) {
        let alias = self.alias("t");
        let sql = if self.rng.chance(20) {
            format!("{} {alias}", t.name)
        } else {
            format!("{} AS {alias}", t.name)
        };
        let scope = Scope {
            cols: t
                .columns
                .iter()
                .map(|c| Col {
                    sql: format!("{alias}.{}", c.name),
                    ty: c.ty,
                    dom: c.dom,
                })
                .collect(),
            key: Some(t.key.iter().map(|k| format!("{alias}.{k}")).collect()),
            conditions: Vec::new(),
            rows: t.rows,
        };
        (sql, scope, alias)
    }

    /// A derived table or a CTE (new or already defined).
    fn derived_source(&mut self, depth: u32) -> (String, Scope) {
        let alias = self.alias("d");
        let (source, q) = if !self.ctes.is_empty() && self.rng.chance(35) {
            let (name, _, q) = self.ctes[self.rng.below(self.ctes.len())].clone();
            (format!("{name} AS {alias}"), q)
        } else {
            let mut q = self.query(depth + 1, None, &[]);
            if self.rng.chance(15) {
                let order = self.order_by_all(q.cols.len());
                q.sql = format!("{}{order} LIMIT {}", q.sql, self.rng.range(1, 30));
            }
            if self.rng.chance(40) {
                let name = format!("cte{}", self.ctes.len());
                self.ctes.push((name.clone(), q.sql.clone(), q.clone()));
                (format!("{name} AS {alias}"), q)
            } else {
                (format!("({}) AS {alias}", q.sql), q)
            }
        };
        let scope = Scope {
            cols: q
                .cols
                .iter()
                .enumerate()
                .map(|(i, (ty, dom))| Col {
                    sql: format!("{alias}.c{i}"),
                    ty: *ty,
                    dom: *dom,
                })
                .collect(),
            key: q
                .key
                .as_ref()
                .map(|k| k.iter().map(|i| format!("{alias}.c{i}")).collect()),
            conditions: Vec::new(),
            rows: q.rows,
        };
        (source, scope)
    }

    /// Joins one more table to `scope` on a key column, if one fits the row budget.
    fn join(&mut self, scope: &Scope, comma_ok: bool) -> Option<(String, Scope)> {
        // A cross join of tiny inputs.
        if scope.rows <= 25.0 && self.rng.chance(6) {
            let t = self.rng.pick(&[&NATION, &REGION, &REGION]);
            let (source, right) = self.table_source(t);
            return Some((format!(" CROSS JOIN {source}"), merge(scope, right)));
        }
        let mut candidates: Vec<(String, &'static Table, &'static str, f64)> = Vec::new();
        for col in &scope.cols {
            let Dom::Key(k) = col.dom else { continue };
            for t in TABLES {
                for tc in t.columns {
                    let rows = scope.rows * t.rows / k.distinct();
                    if matches!(tc.dom, Dom::Key(k2) if k2 == k) && rows <= JOIN_ROWS_MAX {
                        candidates.push((col.sql.clone(), t, tc.name, rows));
                    }
                }
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let weights: Vec<u32> = candidates
            .iter()
            .map(|(.., rows)| (100_000.0 / (rows + 100.0)).ceil() as u32)
            .collect();
        let (left, t, right_col, rows) = candidates[self.rng.weighted(&weights)].clone();
        let (source, right, alias) = self.table_source_as(t);
        let right_key = format!("{alias}.{right_col}");
        let mut on = if self.rng.chance(50) {
            format!("{left} = {right_key}")
        } else {
            format!("{right_key} = {left}")
        };
        let kind = self.rng.weighted(&[40, 8, 22, 6, 8, 6, 10]);
        if kind == 6 && comma_ok {
            let mut joined = merge(scope, right);
            joined.rows = rows;
            joined.conditions.push(on);
            return Some((format!(", {source}"), joined));
        }
        if self.rng.chance(25) {
            // On the joined table's columns, which makes an outer join pad rows; or on
            // both sides'.
            let both = merge(scope, right.clone());
            let cols = if self.rng.chance(60) {
                &right.cols
            } else {
                &both.cols
            };
            let env = Env {
                cols,
                outer: &[],
                subqueries: false,
            };
            on = format!("{on} AND {}", self.pred(env, 1));
        }
        let join = match kind {
            0 | 6 => "JOIN",
            1 => "INNER JOIN",
            2 => "LEFT JOIN",
            3 => "LEFT OUTER JOIN",
            4 => "RIGHT JOIN",
            _ => "FULL OUTER JOIN",
        };
        let mut joined = merge(scope, right);
        joined.rows = rows.max(scope.rows);
        Some((format!(" {join} {source} ON {on}"), joined))
    }

    // ----- expressions

    fn column(&mut self, ty: Ty, cols: &[Col]) -> Option<Col> {
        let of_type: Vec<&Col> = cols.iter().filter(|c| c.ty == ty).collect();
        if of_type.is_empty() {
            None
        } else {
            Some(of_type[self.rng.below(of_type.len())].clone())
        }
    }

    fn literal(&mut self, ty: Ty, dom: Dom) -> String {
        match (ty, dom) {
            (_, Dom::Key(k)) => {
                let (lo, hi) = k.range();
                self.rng.range(lo, hi).to_string()
            }
            (_, Dom::Int(lo, hi)) => self.rng.range(lo, hi).to_string(),
            (_, Dom::Dec(lo, hi)) => {
                let cents = self.rng.range(lo, hi);
                let text = format!(
                    "{}{}.{:02}",
                    if cents < 0 { "-" } else { "" },
                    cents.abs() / 100,
                    cents.abs() % 100
                );
                if self.rng.chance(30) {
                    format!("CAST({text} AS DECIMAL(15,2))")
                } else {
                    text
                }
            }
            (_, Dom::Str(samples)) => {
                let s = self.rng.pick(samples);
                match self.rng.below(6) {
                    0 => quote(&s.to_lowercase()),
                    1 => quote(&s[..s.len().min(self.rng.range(0, 4) as usize)]),
                    _ => quote(s),
                }
            }
            (_, Dom::Date) => self.date(),
            (Ty::Int, Dom::Any) => self.rng.range(-5, 100).to_string(),
            (Ty::Dec, Dom::Any) => self.literal(Ty::Dec, Dom::Dec(-1_000, 100_000)),
            (Ty::Str, Dom::Any) => self.literal(Ty::Str, Dom::Str(WORDS)),
            (Ty::Date, Dom::Any) => self.date(),
            (Ty::Float, Dom::Any) => {
                format!("{}.{}e0", self.rng.range(0, 500), self.rng.range(0, 9))
            }
            (Ty::Bool, Dom::Any) => self.rng.pick(&["TRUE", "FALSE"]).to_string(),
        }
    }

    /// A literal to compute with. Unlike in a comparison, where `1.50` will do, a
    /// decimal must be cast: `1.50` is a float, which would turn the whole expression
    /// into a float, and its sum into one that depends on the order of the rows.
    fn value(&mut self, ty: Ty) -> String {
        let literal = self.literal(ty, Dom::Any);
        if ty == Ty::Dec && !literal.starts_with("CAST") {
            format!("CAST({literal} AS DECIMAL(15,2))")
        } else {
            literal
        }
    }

    fn date(&mut self) -> String {
        let (y, m, d) = (
            self.rng.range(1992, 1998),
            self.rng.range(1, 12),
            self.rng.range(1, 28),
        );
        if self.rng.chance(85) {
            format!("DATE '{y}-{m:02}-{d:02}'")
        } else {
            format!("CAST('{y}-{m:02}-{d:02}' AS DATE)")
        }
    }

    /// A LIKE pattern that matches some values of `dom`.
    fn pattern(&mut self, dom: Dom) -> String {
        let samples = match dom {
            Dom::Str(s) => s,
            _ => WORDS,
        };
        let s = self.rng.pick(samples);
        let n = s.len();
        let cut = |a: usize| a.min(n);
        let p = match self.rng.below(6) {
            0 => s.to_string(),
            1 => format!("{}%", &s[..cut(self.rng.range(1, 4) as usize)]),
            2 => format!("%{}", &s[n - cut(self.rng.range(1, 3) as usize)..]),
            3 => format!("%{s}%"),
            4 => format!("_{}%", &s[cut(1)..cut(3)]),
            _ => "%".to_string(),
        };
        quote(&p)
    }

    fn expr(&mut self, ty: Ty, env: Env, depth: u32) -> String {
        if depth == 0 || self.rng.chance(25) {
            if self.rng.chance(3) {
                return format!("CAST(NULL AS {})", ty.sql());
            }
            if ty == Ty::Bool {
                return self.pred(env, 0);
            }
            if self.rng.chance(85)
                && let Some(col) = self.column(ty, env.cols)
            {
                return col.sql;
            }
            if self.rng.chance(5)
                && let Some(col) = self.column(ty, env.outer)
            {
                return col.sql;
            }
            return self.value(ty);
        }
        let d = depth - 1;
        if env.subqueries && self.subqueries_left > 0 && ty != Ty::Bool && self.rng.chance(6) {
            return self.scalar_subquery(ty, env);
        }
        if self.rng.chance(10) {
            return self.case(ty, env, d);
        }
        match ty {
            Ty::Int => match self.rng.below(16) {
                0 | 1 => format!(
                    "({} + {})",
                    self.expr(Ty::Int, env, d),
                    self.expr(Ty::Int, env, d)
                ),
                2 => format!(
                    "({} - {})",
                    self.expr(Ty::Int, env, d),
                    self.expr(Ty::Int, env, d)
                ),
                3 => format!(
                    "({} * {})",
                    self.expr(Ty::Int, env, d),
                    self.rng.range(-3, 9)
                ),
                4 => format!(
                    "({} % {})",
                    self.expr(Ty::Int, env, d),
                    self.rng.range(2, 9)
                ),
                5 => format!(
                    "({} / {})",
                    self.expr(Ty::Int, env, d),
                    self.rng.range(1, 9)
                ),
                6 => format!("abs({})", self.expr(Ty::Int, env, d)),
                7 => format!(
                    "{}({})",
                    self.rng
                        .pick(&["length", "character_length", "octet_length"]),
                    self.expr(Ty::Str, env, d)
                ),
                8 => format!("CAST({} AS BIGINT)", self.expr(Ty::Dec, env, d)),
                9 => format!(
                    "coalesce({}, {})",
                    self.expr(Ty::Int, env, d),
                    self.expr(Ty::Int, env, d)
                ),
                10 => format!(
                    "{}({}, {})",
                    self.rng.pick(&["greatest", "least"]),
                    self.expr(Ty::Int, env, d),
                    self.expr(Ty::Int, env, d)
                ),
                11 => format!(
                    "extract({} FROM {})",
                    self.rng.pick(&["year", "month", "day", "quarter"]),
                    self.expr(Ty::Date, env, d)
                ),
                12 => format!(
                    "nullif({}, {})",
                    self.expr(Ty::Int, env, d),
                    self.rng.range(0, 5)
                ),
                13 => format!(
                    "strpos({}, {})",
                    self.expr(Ty::Str, env, d),
                    self.literal(Ty::Str, Dom::Any)
                ),
                14 => format!("TRY_CAST({} AS BIGINT)", self.expr(Ty::Str, env, d)),
                _ => format!("(-{})", self.expr(Ty::Int, env, d)),
            },
            Ty::Dec => match self.rng.below(13) {
                0 | 1 => format!(
                    "({} + {})",
                    self.expr(Ty::Dec, env, d),
                    self.expr(Ty::Dec, env, d)
                ),
                2 => format!(
                    "({} - {})",
                    self.expr(Ty::Dec, env, d),
                    self.expr(Ty::Dec, env, d)
                ),
                3 => format!(
                    "({} * {})",
                    self.expr(Ty::Dec, env, d),
                    self.rng.range(-2, 9)
                ),
                4 => format!(
                    "({} * {})",
                    self.expr(Ty::Dec, env, 0),
                    self.expr(Ty::Dec, env, 0)
                ),
                5 => format!(
                    "({} / {})",
                    self.expr(Ty::Dec, env, d),
                    self.rng.range(1, 9)
                ),
                6 => format!(
                    "({} + {})",
                    self.expr(Ty::Dec, env, d),
                    self.expr(Ty::Int, env, d)
                ),
                7 => format!("CAST({} AS DECIMAL(15,2))", self.expr(Ty::Int, env, d)),
                8 => format!("abs({})", self.expr(Ty::Dec, env, d)),
                9 => format!(
                    "coalesce({}, {})",
                    self.expr(Ty::Dec, env, d),
                    self.expr(Ty::Dec, env, d)
                ),
                10 => format!("CAST({} AS DECIMAL(18,3))", self.expr(Ty::Dec, env, d)),
                11 => format!(
                    "nullif({}, {})",
                    self.expr(Ty::Dec, env, d),
                    self.value(Ty::Dec)
                ),
                _ => format!("(-{})", self.expr(Ty::Dec, env, d)),
            },
            Ty::Str => match self.rng.below(18) {
                0 => format!("upper({})", self.expr(Ty::Str, env, d)),
                1 => format!("lower({})", self.expr(Ty::Str, env, d)),
                2 => format!(
                    "substr({}, {}, {})",
                    self.expr(Ty::Str, env, d),
                    self.rng.range(1, 5),
                    self.rng.range(1, 8)
                ),
                3 => format!(
                    "substring({} FROM {} FOR {})",
                    self.expr(Ty::Str, env, d),
                    self.rng.range(1, 5),
                    self.rng.range(1, 8)
                ),
                4 => format!(
                    "concat({}, {})",
                    self.expr(Ty::Str, env, d),
                    self.expr(Ty::Str, env, d)
                ),
                5 => format!(
                    "({} || {})",
                    self.expr(Ty::Str, env, d),
                    self.expr(Ty::Str, env, d)
                ),
                6 => format!(
                    "{}({})",
                    self.rng
                        .pick(&["trim", "ltrim", "rtrim", "btrim", "reverse", "initcap"]),
                    self.expr(Ty::Str, env, d)
                ),
                7 => format!(
                    "{}({}, {})",
                    self.rng.pick(&["left", "right"]),
                    self.expr(Ty::Str, env, d),
                    self.rng.range(0, 6)
                ),
                8 => format!("replace({}, 'a', 'XY')", self.expr(Ty::Str, env, d)),
                9 => format!("CAST({} AS VARCHAR)", self.expr(Ty::Int, env, d)),
                10 => format!("CAST({} AS VARCHAR)", self.expr(Ty::Date, env, d)),
                11 => format!("CAST({} AS VARCHAR)", self.expr(Ty::Dec, env, d)),
                12 => format!(
                    "{}({}, {}, '*')",
                    self.rng.pick(&["lpad", "rpad"]),
                    self.expr(Ty::Str, env, d),
                    self.rng.range(0, 12)
                ),
                13 => format!(
                    "split_part({}, ' ', {})",
                    self.expr(Ty::Str, env, d),
                    self.rng.range(1, 2)
                ),
                14 => format!(
                    "concat_ws('-', {}, {}, {})",
                    self.expr(Ty::Str, env, d),
                    self.expr(Ty::Str, env, d),
                    self.expr(Ty::Int, env, d)
                ),
                15 => format!(
                    "coalesce({}, {})",
                    self.expr(Ty::Str, env, d),
                    self.expr(Ty::Str, env, d)
                ),
                16 => format!(
                    "nullif({}, {})",
                    self.expr(Ty::Str, env, d),
                    self.literal(Ty::Str, Dom::Any)
                ),
                _ => format!("repeat({}, 2)", self.expr(Ty::Str, env, d)),
            },
            Ty::Date => match self.rng.below(4) {
                0 => format!(
                    "({} + INTERVAL '{}' DAY)",
                    self.expr(Ty::Date, env, d),
                    self.rng.range(1, 90)
                ),
                1 => format!(
                    "({} - INTERVAL '{}' MONTH)",
                    self.expr(Ty::Date, env, d),
                    self.rng.range(1, 12)
                ),
                2 => format!("coalesce({}, {})", self.expr(Ty::Date, env, d), self.date()),
                _ => format!("CAST({} AS DATE)", self.expr(Ty::Date, env, d)),
            },
            Ty::Float => match self.rng.below(6) {
                0 => format!("CAST({} AS DOUBLE)", self.expr(Ty::Int, env, d)),
                1 => format!("CAST({} AS DOUBLE)", self.expr(Ty::Dec, env, d)),
                2 => format!("({} * 1.5)", self.expr(Ty::Dec, env, d)),
                3 => format!("({} / 4.0)", self.expr(Ty::Float, env, d)),
                4 => format!("sqrt(abs({}))", self.expr(Ty::Float, env, d)),
                _ => format!("round({}, 2)", self.expr(Ty::Float, env, d)),
            },
            Ty::Bool => self.pred(env, depth),
        }
    }

    fn case(&mut self, ty: Ty, env: Env, d: u32) -> String {
        match self.rng.below(3) {
            0 => {
                let (p, a) = (self.pred(env, d.min(1)), self.expr(ty, env, d));
                let b = self.expr(ty, env, d);
                format!("CASE WHEN {p} THEN {a} ELSE {b} END")
            }
            1 => {
                let (p, a) = (self.pred(env, d.min(1)), self.expr(ty, env, d));
                let (q, b) = (self.pred(env, 0), self.expr(ty, env, d));
                format!("CASE WHEN {p} THEN {a} WHEN {q} THEN {b} END")
            }
            _ => {
                let scrutinee = self
                    .column(Ty::Str, env.cols)
                    .or_else(|| self.column(Ty::Int, env.cols));
                let Some(col) = scrutinee else {
                    return self.expr(ty, env, d);
                };
                let (l1, a) = (self.literal(col.ty, col.dom), self.expr(ty, env, d));
                let (l2, b) = (self.literal(col.ty, col.dom), self.expr(ty, env, d));
                let e = self.expr(ty, env, d);
                format!(
                    "CASE {} WHEN {l1} THEN {a} WHEN {l2} THEN {b} ELSE {e} END",
                    col.sql
                )
            }
        }
    }

    fn comparison(&mut self) -> &'static str {
        self.rng.pick(&["=", "<>", "<", "<=", ">", ">=", "!="])
    }

    fn pred(&mut self, env: Env, depth: u32) -> String {
        if depth == 0 || self.rng.chance(35) {
            return self.pred_leaf(env);
        }
        let d = depth - 1;
        match self.rng.weighted(&[35, 30, 12, 5, 4]) {
            0 => format!("({} AND {})", self.pred(env, d), self.pred(env, d)),
            1 => format!("({} OR {})", self.pred(env, d), self.pred(env, d)),
            2 => format!("NOT ({})", self.pred(env, d)),
            3 => format!(
                "({}) {}",
                self.pred(env, d),
                self.rng.pick(&[
                    "IS TRUE",
                    "IS FALSE",
                    "IS NOT TRUE",
                    "IS NOT FALSE",
                    "IS UNKNOWN"
                ])
            ),
            _ => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                self.pred(env, d),
                self.pred(env, d),
                self.pred(env, d)
            ),
        }
    }

    fn pred_leaf(&mut self, env: Env) -> String {
        if env.subqueries && self.subqueries_left > 0 && self.rng.chance(20) {
            return self.subquery_pred(env);
        }
        if env.cols.is_empty() {
            let x = self.rng.range(0, 3);
            return format!("{x} {} 1", self.comparison());
        }
        let col = env.cols[self.rng.below(env.cols.len())].clone();
        let subject = if self.rng.chance(80) {
            col.sql.clone()
        } else {
            self.expr(col.ty, env, 1)
        };
        let ty = col.ty;
        if ty == Ty::Bool {
            return match self.rng.below(3) {
                0 => subject,
                1 => format!("NOT {subject}"),
                _ => format!("{subject} IS NOT NULL"),
            };
        }
        match self.rng.weighted(&[32, 10, 8, 12, 12, 14, 4, 3]) {
            0 => {
                let rhs = if ty == Ty::Date && self.rng.chance(20) {
                    format!("'{}-06-01'", self.rng.range(1992, 1998))
                } else {
                    self.literal(ty, col.dom)
                };
                format!("{subject} {} {rhs}", self.comparison())
            }
            1 => {
                let other = self.expr(ty, env, 1);
                format!("{subject} {} {other}", self.comparison())
            }
            2 => format!(
                "{subject} {}",
                self.rng.pick(&["IS NULL", "IS NOT NULL", "IS NOT NULL"])
            ),
            3 => {
                let mut values: Vec<String> = (0..self.rng.range(1, 5))
                    .map(|_| self.literal(ty, col.dom))
                    .collect();
                if self.rng.chance(10) {
                    values.push("NULL".into());
                }
                let not = if self.rng.chance(30) { "NOT " } else { "" };
                format!("{subject} {not}IN ({})", values.join(", "))
            }
            4 => {
                let (a, b) = (self.literal(ty, col.dom), self.literal(ty, col.dom));
                let not = if self.rng.chance(20) { "NOT " } else { "" };
                format!("{subject} {not}BETWEEN {a} AND {b}")
            }
            5 if ty == Ty::Str => {
                let not = if self.rng.chance(20) { "NOT " } else { "" };
                let op = if self.rng.chance(15) { "ILIKE" } else { "LIKE" };
                format!("{subject} {not}{op} {}", self.pattern(col.dom))
            }
            6 => {
                let other = self.expr(ty, env, 1);
                let not = if self.rng.chance(50) { "NOT " } else { "" };
                // In parentheses: sqlparser reads `a IS DISTINCT FROM b OR c` as
                // `a IS DISTINCT FROM (b OR c)`.
                format!("({subject} IS {not}DISTINCT FROM {other})")
            }
            7 if ty == Ty::Str => {
                let s = self.rng.pick(match col.dom {
                    Dom::Str(s) => s,
                    _ => WORDS,
                });
                let prefix = &s[..s.len().min(2)];
                if self.rng.chance(50) {
                    format!("starts_with({subject}, {})", quote(prefix))
                } else {
                    format!("regexp_like({subject}, {})", quote(&format!("^{prefix}")))
                }
            }
            _ => {
                let rhs = self.literal(ty, col.dom);
                format!("{subject} {} {rhs}", self.comparison())
            }
        }
    }

    // ----- subqueries

    /// The FROM and WHERE of a subquery over a small table, correlated with the
    /// enclosing query on a key when possible, and the columns it brings into scope.
    fn subquery_body(&mut self, env: Env, prefer: Option<Key>) -> (String, Vec<Col>) {
        let tables: Vec<usize> = (0..TABLES.len())
            .filter(|&i| {
                prefer.is_none_or(|k| {
                    TABLES[i]
                        .columns
                        .iter()
                        .any(|c| matches!(c.dom, Dom::Key(k2) if k2 == k))
                })
            })
            .collect();
        let weights: Vec<u32> = tables.iter().map(|&i| SUBQUERY_WEIGHTS[i]).collect();
        let t = TABLES[tables[self.rng.weighted(&weights)]];
        let (mut from, mut scope) = self.table_source(t);
        if self.rng.chance(15)
            && let Some((join, joined)) = self.join(&scope, false)
        {
            from.push_str(&join);
            scope = joined;
        }
        let mut conditions = Vec::new();
        let enclosing: Vec<Col> = env.cols.iter().chain(env.outer).cloned().collect();
        if self.rng.chance(65) {
            let reach = if self.rng.chance(85) {
                env.cols
            } else {
                &enclosing[..]
            };
            let pairs: Vec<(String, String)> = scope
                .cols
                .iter()
                .flat_map(|i| {
                    reach.iter().filter_map(move |o| match (i.dom, o.dom) {
                        (Dom::Key(a), Dom::Key(b)) if a == b => {
                            Some((i.sql.clone(), o.sql.clone()))
                        }
                        _ => None,
                    })
                })
                .collect();
            if !pairs.is_empty() {
                let (i, o) = pairs[self.rng.below(pairs.len())].clone();
                conditions.push(format!("{i} = {o}"));
            }
        }
        if self.rng.chance(8) && !env.cols.is_empty() {
            let o = env.cols[self.rng.below(env.cols.len())].clone();
            if let Some(i) = self.column(o.ty, &scope.cols) {
                conditions.push(format!("{} {} {}", i.sql, self.comparison(), o.sql));
            }
        }
        if self.rng.chance(60) {
            let inner = Env {
                cols: &scope.cols,
                outer: &enclosing,
                subqueries: true,
            };
            let depth = self.rng.range(0, 2) as u32;
            conditions.push(self.pred(inner, depth));
        }
        conditions.extend(scope.conditions.iter().cloned());
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        (format!("{from}{filter}"), scope.cols)
    }

    fn subquery_pred(&mut self, env: Env) -> String {
        self.subqueries_left -= 1;
        let enclosing: Vec<Col> = env.cols.iter().chain(env.outer).cloned().collect();
        match self.rng.weighted(&[35, 40, 25]) {
            0 => {
                let (body, cols) = self.subquery_body(env, None);
                let what = match self.rng.below(3) {
                    0 => "1".to_string(),
                    1 => "*".to_string(),
                    _ => cols[0].sql.clone(),
                };
                let not = if self.rng.chance(35) { "NOT " } else { "" };
                format!("{not}EXISTS (SELECT {what} FROM {body})")
            }
            1 => {
                let keyed: Vec<&Col> = env
                    .cols
                    .iter()
                    .filter(|c| matches!(c.dom, Dom::Key(_)))
                    .collect();
                let not = if self.rng.chance(30) { "NOT " } else { "" };
                if !keyed.is_empty() && self.rng.chance(70) {
                    let lhs = keyed[self.rng.below(keyed.len())].clone();
                    let Dom::Key(k) = lhs.dom else {
                        unreachable!("filtered on keys")
                    };
                    let (body, cols) = self.subquery_body(env, Some(k));
                    let inner: Vec<&Col> = cols
                        .iter()
                        .filter(|c| matches!(c.dom, Dom::Key(k2) if k2 == k))
                        .collect();
                    let inner = inner[self.rng.below(inner.len())].sql.clone();
                    let distinct = if self.rng.chance(15) { "DISTINCT " } else { "" };
                    format!("{} {not}IN (SELECT {distinct}{inner} FROM {body})", lhs.sql)
                } else {
                    let ty = self.rng.pick(&[Ty::Int, Ty::Str, Ty::Dec, Ty::Date]);
                    let lhs = self.expr(ty, env, 1);
                    let (body, cols) = self.subquery_body(env, None);
                    let inner = Env {
                        cols: &cols,
                        outer: &enclosing,
                        subqueries: false,
                    };
                    let projected = self.expr(ty, inner, 1);
                    format!("{lhs} {not}IN (SELECT {projected} FROM {body})")
                }
            }
            _ => {
                let ty = self
                    .rng
                    .pick(&[Ty::Int, Ty::Dec, Ty::Dec, Ty::Str, Ty::Date]);
                let lhs = self.expr(
                    ty,
                    Env {
                        subqueries: false,
                        ..env
                    },
                    1,
                );
                let sub = self.scalar_subquery_body(ty, env);
                format!("{lhs} {} {sub}", self.comparison())
            }
        }
    }

    fn scalar_subquery(&mut self, ty: Ty, env: Env) -> String {
        self.subqueries_left -= 1;
        self.scalar_subquery_body(ty, env)
    }

    /// `(SELECT aggregate FROM ...)`: one row whatever the input.
    fn scalar_subquery_body(&mut self, ty: Ty, env: Env) -> String {
        let (body, cols) = self.subquery_body(env, None);
        let enclosing: Vec<Col> = env.cols.iter().chain(env.outer).cloned().collect();
        let inner = Env {
            cols: &cols,
            outer: &enclosing,
            subqueries: false,
        };
        let agg = self.agg_item(ty, inner, false);
        format!("(SELECT {agg} FROM {body})")
    }

    // ----- aggregates and windows

    /// An aggregate expression of type `ty` over the rows of `env`.
    fn agg_item(&mut self, ty: Ty, env: Env, windows: bool) -> String {
        let d = self.rng.range(0, 2) as u32;
        if windows && self.rng.chance(8) {
            let t = self.rng.pick(&[Ty::Int, Ty::Dec]);
            let inner = self.agg_item(t, env, false);
            return match ty {
                Ty::Int => format!(
                    "{}() OVER (ORDER BY {inner}{})",
                    self.rng.pick(&["rank", "dense_rank"]),
                    self.direction()
                ),
                Ty::Float => format!("percent_rank() OVER (ORDER BY {inner})"),
                Ty::Dec => format!("sum({}) OVER ()", self.agg_item(Ty::Dec, env, false)),
                _ => self.agg_item(ty, env, false),
            };
        }
        let filter = |g: &mut Gen| -> String {
            if g.rng.chance(8) {
                format!(" FILTER (WHERE {})", g.pred(env, 1))
            } else {
                String::new()
            }
        };
        match ty {
            Ty::Int => match self.rng.below(11) {
                0 | 1 => format!("count(*){}", filter(self)),
                2 => {
                    let t = self.rng.pick(&[Ty::Int, Ty::Str, Ty::Dec, Ty::Date]);
                    format!("count({})", self.expr(t, env, d))
                }
                3 => {
                    let t = self.rng.pick(&[Ty::Int, Ty::Str, Ty::Dec]);
                    format!("count(DISTINCT {})", self.expr(t, env, d))
                }
                4 | 5 => format!("sum({}){}", self.expr(Ty::Int, env, d), filter(self)),
                6 => format!("min({})", self.expr(Ty::Int, env, d)),
                7 => format!("max({})", self.expr(Ty::Int, env, d)),
                8 => format!("(count(*) + {})", self.rng.range(0, 9)),
                9 => format!("sum(CASE WHEN {} THEN 1 ELSE 0 END)", self.pred(env, 1)),
                _ => format!(
                    "{}({})",
                    self.rng.pick(&["bit_and", "bit_or", "bit_xor"]),
                    self.expr(Ty::Int, env, d)
                ),
            },
            Ty::Dec => match self.rng.below(8) {
                0 | 1 => format!("sum({}){}", self.expr(Ty::Dec, env, d), filter(self)),
                2 => format!("avg({})", self.expr(Ty::Dec, env, d)),
                3 => format!("min({})", self.expr(Ty::Dec, env, d)),
                4 => format!("max({})", self.expr(Ty::Dec, env, d)),
                5 => format!("sum(DISTINCT {})", self.expr(Ty::Dec, env, d)),
                6 => {
                    let e = self.expr(Ty::Dec, env, 0);
                    format!("(max({e}) - min({e}))")
                }
                _ => format!("median({})", self.expr(Ty::Dec, env, d)),
            },
            Ty::Float => match self.rng.below(5) {
                0 | 1 => format!("avg({})", self.expr(Ty::Int, env, d)),
                2 => format!("min({})", self.expr(Ty::Float, env, d)),
                3 => format!("median({})", self.expr(Ty::Int, env, d)),
                _ => format!("max({})", self.expr(Ty::Float, env, d)),
            },
            Ty::Str => match self.rng.below(3) {
                0 => format!("min({})", self.expr(Ty::Str, env, d)),
                1 => format!("max({})", self.expr(Ty::Str, env, d)),
                _ => format!("upper(max({}))", self.expr(Ty::Str, env, d)),
            },
            Ty::Date => {
                let f = self.rng.pick(&["min", "max"]);
                format!("{f}({})", self.expr(Ty::Date, env, d))
            }
            Ty::Bool => match self.rng.below(4) {
                0 => format!("bool_and({})", self.pred(env, 1)),
                1 => format!("bool_or({})", self.pred(env, 1)),
                2 => format!("(count(*) > {})", self.rng.range(0, 20)),
                _ => {
                    let e = self.expr(Ty::Int, env, 0);
                    format!("(max({e}) > min({e}))")
                }
            },
        }
    }

    /// A HAVING predicate: comparisons of aggregates and of group keys.
    fn having(&mut self, env: Env, keys: &[(String, Ty, Dom)], depth: u32) -> String {
        let plain = Env {
            subqueries: false,
            ..env
        };
        if depth > 0 && self.rng.chance(50) {
            let d = depth - 1;
            let (a, b) = (self.having(env, keys, d), self.having(env, keys, d));
            return match self.rng.below(3) {
                0 => format!("({a} AND {b})"),
                1 => format!("({a} OR {b})"),
                _ => format!("NOT ({a})"),
            };
        }
        match self.rng.weighted(&[35, 30, 10, 15, 10]) {
            0 => format!(
                "{} {} {}",
                self.agg_item(Ty::Int, plain, false),
                self.comparison(),
                self.rng.range(0, 30)
            ),
            1 => format!(
                "{} {} {}",
                self.agg_item(Ty::Dec, plain, false),
                self.comparison(),
                self.literal(Ty::Dec, Dom::Any)
            ),
            2 => format!(
                "{} LIKE {}",
                self.agg_item(Ty::Str, plain, false),
                self.pattern(Dom::Any)
            ),
            3 if !keys.is_empty() => {
                let (sql, ty, dom) = keys[self.rng.below(keys.len())].clone();
                format!("{sql} {} {}", self.comparison(), self.literal(ty, dom))
            }
            4 if self.subqueries_left > 0 => {
                // Uncorrelated, as in TPC-H Q11.
                self.subqueries_left -= 1;
                let outside = Env {
                    cols: &[],
                    outer: &[],
                    subqueries: false,
                };
                let sub = self.scalar_subquery_body(Ty::Dec, outside);
                format!(
                    "{} {} {sub}",
                    self.agg_item(Ty::Dec, plain, false),
                    self.comparison()
                )
            }
            _ => format!("count(*) > {}", self.rng.range(0, 5)),
        }
    }

    /// A window function of type `ty`. Those that depend on the order of rows within
    /// their frame get a total order: the scope's key, or else all its columns.
    fn window_item(&mut self, ty: Ty, env: Env, scope: &Scope) -> String {
        let total: Vec<String> = match &scope.key {
            Some(key) if self.rng.chance(85) => key.clone(),
            _ => scope.cols.iter().map(|c| c.sql.clone()).collect(),
        };
        let total: Vec<String> = total
            .into_iter()
            .map(|k| format!("{k}{}", self.direction()))
            .collect();
        let total = join_or(&total, ", ", "1");
        let partition = match self.rng.weighted(&[35, 45, 20]) {
            0 => String::new(),
            1 => {
                let low: Vec<&Col> = scope
                    .cols
                    .iter()
                    .filter(|c| matches!(c.dom, Dom::Key(_) | Dom::Str(_) | Dom::Int(..)))
                    .collect();
                if low.is_empty() {
                    String::new()
                } else {
                    format!("PARTITION BY {} ", low[self.rng.below(low.len())].sql)
                }
            }
            _ => {
                let t = self.rng.pick(&[Ty::Int, Ty::Str]);
                let (a, b) = (self.expr(t, env, 1), self.expr(Ty::Int, env, 0));
                format!("PARTITION BY {a}, {b} ")
            }
        };
        let any_order = |g: &mut Gen| {
            let t = g.rng.pick(&[Ty::Int, Ty::Dec, Ty::Str, Ty::Date]);
            let e = g.expr(t, env, 1);
            format!("ORDER BY {e}{}", g.direction())
        };
        let w_total = format!("({partition}ORDER BY {total})");
        let w_any = format!("({partition}{})", any_order(self));
        let w_part = format!("({})", partition.trim_end());
        let w_any_or_part = if self.rng.chance(50) {
            w_any.clone()
        } else {
            w_part.clone()
        };
        let d = self.rng.range(0, 1) as u32;
        match ty {
            Ty::Int => match self.rng.below(11) {
                0 | 1 => format!("row_number() OVER {w_total}"),
                2 => format!("rank() OVER {w_any}"),
                3 => format!("dense_rank() OVER {w_any}"),
                4 => format!("ntile({}) OVER {w_total}", self.rng.range(2, 5)),
                5 => format!("count(*) OVER {w_any_or_part}"),
                6 => format!("sum({}) OVER {w_any_or_part}", self.expr(Ty::Int, env, d)),
                7 => format!("lag({}, 1) OVER {w_total}", self.expr(Ty::Int, env, d)),
                8 => format!("lead({}, 2, 0) OVER {w_total}", self.expr(Ty::Int, env, d)),
                9 => format!(
                    "sum({}) OVER ({partition}ORDER BY {total} ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)",
                    self.expr(Ty::Int, env, d)
                ),
                _ => format!(
                    "{}({}) OVER {w_any_or_part}",
                    self.rng.pick(&["min", "max"]),
                    self.expr(Ty::Int, env, d)
                ),
            },
            Ty::Dec => match self.rng.below(6) {
                0 | 1 => format!("sum({}) OVER {w_any_or_part}", self.expr(Ty::Dec, env, d)),
                2 => format!(
                    "{}({}) OVER {w_any_or_part}",
                    self.rng.pick(&["avg", "min", "max"]),
                    self.expr(Ty::Dec, env, d)
                ),
                3 => format!("lag({}) OVER {w_total}", self.expr(Ty::Dec, env, d)),
                4 => format!("first_value({}) OVER {w_total}", self.expr(Ty::Dec, env, d)),
                _ => format!(
                    "sum({}) OVER ({partition}ORDER BY {total} ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING)",
                    self.expr(Ty::Dec, env, d)
                ),
            },
            Ty::Float => match self.rng.below(3) {
                0 => format!("percent_rank() OVER {w_any}"),
                1 => format!("cume_dist() OVER {w_any}"),
                _ => format!("avg({}) OVER {w_any_or_part}", self.expr(Ty::Int, env, d)),
            },
            Ty::Str => match self.rng.below(5) {
                0 => format!("lag({}) OVER {w_total}", self.expr(Ty::Str, env, d)),
                1 => format!("lead({}) OVER {w_total}", self.expr(Ty::Str, env, d)),
                2 => format!("first_value({}) OVER {w_total}", self.expr(Ty::Str, env, d)),
                3 => format!(
                    "nth_value({}, 2) OVER {w_total}",
                    self.expr(Ty::Str, env, d)
                ),
                _ => format!(
                    "{}({}) OVER {w_any_or_part}",
                    self.rng.pick(&["min", "max"]),
                    self.expr(Ty::Str, env, d)
                ),
            },
            Ty::Date => match self.rng.below(3) {
                0 => format!("last_value({}) OVER {w_total}", self.expr(Ty::Date, env, d)),
                1 => format!("lag({}, 1) OVER {w_total}", self.expr(Ty::Date, env, d)),
                _ => format!("max({}) OVER {w_any_or_part}", self.expr(Ty::Date, env, d)),
            },
            Ty::Bool => self.pred(env, 1),
        }
    }
}

/// `left` and `right` side by side, as a join makes them.
fn merge(left: &Scope, right: Scope) -> Scope {
    let mut cols = left.cols.clone();
    cols.extend(right.cols);
    let key = match (&left.key, right.key) {
        (Some(a), Some(b)) => Some(a.iter().cloned().chain(b).collect()),
        _ => None,
    };
    Scope {
        cols,
        key,
        conditions: left
            .conditions
            .iter()
            .cloned()
            .chain(right.conditions)
            .collect(),
        rows: left.rows * right.rows,
    }
}
