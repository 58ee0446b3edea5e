//! Files registered as tables.

use std::path::{Path, PathBuf};

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

use crate::datagen::Benchmark;
use crate::{Error, Result};

/// The eight TPC-H tables, in the order `drove gen tpch` writes them.
pub const TPCH_TABLES: [&str; 8] = [
    "nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
];

/// The 24 TPC-DS tables, in the order `drove gen tpcds` writes them.
pub const TPCDS_TABLES: [&str; 24] = [
    "call_center",
    "catalog_page",
    "catalog_returns",
    "catalog_sales",
    "customer",
    "customer_address",
    "customer_demographics",
    "date_dim",
    "household_demographics",
    "income_band",
    "inventory",
    "item",
    "promotion",
    "reason",
    "ship_mode",
    "store",
    "store_returns",
    "store_sales",
    "time_dim",
    "warehouse",
    "web_page",
    "web_returns",
    "web_sales",
    "web_site",
];

/// A file format drove reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
        }
    }

    /// Parses "parquet" or "csv".
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "parquet" => Ok(Format::Parquet),
            "csv" => Ok(Format::Csv),
            other => Err(Error::User(format!(
                "unknown format '{other}'; use parquet or csv"
            ))),
        }
    }
}

/// A table: a name, and a file or directory of files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub name: String,
    pub path: PathBuf,
    /// `None`: decided from the path.
    pub format: Option<Format>,
}

impl TableSpec {
    /// Parses the CLI's `NAME=PATH`.
    pub fn parse(flag: &str) -> Result<Self> {
        let Some((name, path)) = flag.split_once('=') else {
            return Err(Error::User(format!(
                "--table '{flag}' has no '='; write it as NAME=PATH, e.g. --table lineitem=data/lineitem.parquet"
            )));
        };
        let name = name.trim();
        if name.is_empty() || path.is_empty() {
            return Err(Error::User(format!(
                "--table '{flag}' needs both a name and a path, e.g. --table lineitem=data/lineitem.parquet"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            path: PathBuf::from(path),
            format: None,
        })
    }

    /// The path as a URL, if it is one (`drove://...`); a local path is none.
    pub fn url(&self) -> Result<Option<url::Url>> {
        crate::stores::url_of(&self.path.to_string_lossy())
            .map_err(|e| Error::User(format!("table '{}': {e}", self.name)))
    }

    /// The format, from the spec or else from the path: a file's extension, or the
    /// extension of the files in a directory.
    pub fn resolve_format(&self) -> Result<Format> {
        if let Some(f) = self.format {
            return Ok(f);
        }
        let missing = || {
            Error::User(format!(
                "table '{}': path '{}' does not exist; pass an existing file or directory",
                self.name,
                self.path.display()
            ))
        };
        let meta = std::fs::metadata(&self.path).map_err(|_| missing())?;
        let by_extension =
            |p: &Path| -> Option<Format> { Format::parse(p.extension()?.to_str()?).ok() };
        let found = if meta.is_dir() {
            std::fs::read_dir(&self.path)?
                .filter_map(|e| e.ok())
                .find_map(|e| by_extension(&e.path()))
        } else {
            by_extension(&self.path)
        };
        found.ok_or_else(|| {
            Error::User(format!(
                "table '{}': cannot tell the format of '{}'; use a .parquet or .csv file, or a directory of them",
                self.name,
                self.path.display()
            ))
        })
    }
}

/// The tables of `benchmark` that `drove gen` wrote in `dir`.
pub fn generated_tables(dir: &Path, benchmark: Benchmark) -> Result<Vec<TableSpec>> {
    let key = benchmark.key();
    if let Some(remote) = (dir.to_str()).filter(|d| d.contains("://") && !d.starts_with("file://"))
    {
        // `drove gen --out drove://DIR` (or s3://BUCKET/DIR) writes DIR/TABLE.parquet.
        let remote = remote.trim_end_matches('/');
        return Ok(benchmark
            .tables()
            .iter()
            .map(|name| TableSpec {
                name: name.to_string(),
                path: PathBuf::from(format!("{remote}/{name}.parquet")),
                format: None,
            })
            .collect());
    }
    if !dir.is_dir() {
        return Err(Error::User(format!(
            "--{key} '{}' is not a directory; create one with `drove gen {key} --scale 0.1 --out {}`",
            dir.display(),
            dir.display()
        )));
    }
    benchmark
        .tables()
        .iter()
        .map(|name| {
            let candidates = [
                dir.join(format!("{name}.parquet")),
                dir.join(format!("{name}.csv")),
                dir.join(name),
            ];
            let path = candidates.into_iter().find(|p| p.exists()).ok_or_else(|| {
                Error::User(format!(
                    "--{key} '{}' has no table '{name}' ({name}.parquet, {name}.csv or {name}/); regenerate it with `drove gen {key}`",
                    dir.display()
                ))
            })?;
            Ok(TableSpec {
                name: name.to_string(),
                path,
                format: None,
            })
        })
        .collect()
}

/// Registers a table with a DataFusion session, checking that its path exists.
pub async fn register(ctx: &SessionContext, table: &TableSpec) -> Result<()> {
    if let Some(url) = table.url()? {
        return register_remote(ctx, table, url).await;
    }
    let format = table.resolve_format()?;
    let path = table
        .path
        .to_str()
        .ok_or_else(|| Error::User(format!("table '{}': the path is not UTF-8", table.name)))?;
    let path = if table.path.is_dir() && !path.ends_with('/') {
        format!("{path}/")
    } else {
        path.to_string()
    };
    match format {
        Format::Parquet => {
            let files = parquet_files(&table.path)?;
            if let Some(empty) = files
                .iter()
                .find(|f| f.metadata().is_ok_and(|m| m.len() == 0))
            {
                return Err(Error::User(format!(
                    "table '{}': '{}' is empty (0 bytes), not a Parquet file; remove it or write it again",
                    table.name,
                    empty.display()
                )));
            }
            let registered = ctx
                .register_parquet(&table.name, &path, ParquetReadOptions::default())
                .await;
            if let Err(e) = registered {
                // DataFusion's message ("Corrupt footer") does not say which file.
                return Err(unreadable_parquet(&table.name, &files).unwrap_or(e.into()));
            }
        }
        Format::Csv => {
            ctx.register_csv(&table.name, &path, CsvReadOptions::new().has_header(true))
                .await?
        }
    }
    Ok(())
}

/// Registers a table whose path is a URL (`drove://`): a file, or a directory of
/// files, found through the session's object stores.
async fn register_remote(ctx: &SessionContext, table: &TableSpec, url: url::Url) -> Result<()> {
    let name = &table.name;
    let store_url = ObjectStoreUrl::parse(&url[..url::Position::BeforePath])?;
    let store = ctx.runtime_env().object_store(&store_url)?;
    let path = object_store::path::Path::from_url_path(url.path())
        .map_err(|e| Error::User(format!("table '{name}': {url} is not a usable path ({e})")))?;
    let unreadable =
        |e: object_store::Error| Error::User(format!("table '{name}': {url} cannot be read: {e}"));
    let (is_dir, mut files) = match crate::stores::find(store.as_ref(), &path).await {
        Ok(Some(crate::stores::Found::File(file))) => (false, vec![file]),
        Ok(Some(crate::stores::Found::Dir { objects, .. })) => (true, objects),
        Ok(None) => (true, Vec::new()),
        Err(e) => return Err(unreadable(e)),
    };
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let by_extension =
        |p: &object_store::path::Path| p.extension().and_then(|e| Format::parse(e).ok());
    let format = match table.format {
        Some(format) => format,
        None if files.is_empty() => {
            let hint = if url.scheme() == crate::stores::SCHEME {
                "; `drove fs ls` shows what does"
            } else {
                ""
            };
            return Err(Error::User(format!(
                "table '{name}': {url} does not exist{hint}"
            )));
        }
        None => files
            .iter()
            .find_map(|f| by_extension(&f.location))
            .ok_or_else(|| {
                Error::User(format!(
                    "table '{name}': cannot tell the format of {url}; use a .parquet or .csv file, or a directory of them"
                ))
            })?,
    };
    let files: Vec<_> = files
        .into_iter()
        .filter(|f| !is_dir || by_extension(&f.location) == Some(format))
        .collect();
    if files.is_empty() {
        return Err(Error::User(format!(
            "table '{name}': {url} holds no .{} files",
            format.extension()
        )));
    }
    if format == Format::Parquet
        && let Some(empty) = files.iter().find(|f| f.size == 0)
    {
        return Err(Error::User(format!(
            "table '{name}': {store_url}{} is empty (0 bytes), not a Parquet file; remove it or write it again",
            empty.location
        )));
    }
    let location = if is_dir {
        format!("{}/", url.as_str().trim_end_matches('/'))
    } else {
        url.to_string()
    };
    match format {
        Format::Parquet => {
            ctx.register_parquet(name, &location, ParquetReadOptions::default())
                .await?
        }
        Format::Csv => {
            ctx.register_csv(name, &location, CsvReadOptions::new().has_header(true))
                .await?
        }
    }
    Ok(())
}

/// The Parquet files of a table: the file, or a directory's `.parquet` files.
fn parquet_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The first file whose footer cannot be read, named with why.
fn unreadable_parquet(table: &str, files: &[PathBuf]) -> Option<Error> {
    files.iter().find_map(|file| {
        let read = std::fs::File::open(file)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                parquet::file::reader::SerializedFileReader::new(f).map_err(|e| e.to_string())
            });
        read.err().map(|why| {
            Error::User(format!(
                "table '{table}': '{}' is not a readable Parquet file ({why}); remove or replace it",
                file.display()
            ))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_flags_need_a_name_and_a_path() {
        assert!(TableSpec::parse("t=/x.parquet").is_ok());
        let e = TableSpec::parse("t/x.parquet").unwrap_err().to_string();
        assert!(e.contains("NAME=PATH"), "{e}");
        assert!(TableSpec::parse("=x").is_err());
    }

    #[tokio::test]
    async fn empty_and_corrupt_parquet_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.parquet");
        let batch = arrow::record_batch::RecordBatch::try_from_iter([(
            "x",
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![1, 2])) as _,
        )])
        .unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&good).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let table = TableSpec {
            name: "t".into(),
            path: dir.path().to_path_buf(),
            format: None,
        };
        register(&SessionContext::new(), &table).await.unwrap();

        let empty = dir.path().join("b.parquet");
        std::fs::write(&empty, b"").unwrap();
        let e = register(&SessionContext::new(), &table)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.parquet") && e.contains("empty (0 bytes)"),
            "{e}"
        );

        std::fs::write(&empty, b"not parquet at all, just some bytes").unwrap();
        let e = register(&SessionContext::new(), &table)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.parquet") && e.contains("not a readable Parquet file"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_path_is_named() {
        let t = TableSpec::parse("t=/definitely/not/here.parquet").unwrap();
        let e = t.resolve_format().unwrap_err().to_string();
        assert!(
            e.contains("does not exist") && e.contains("/definitely/not/here.parquet"),
            "{e}"
        );
    }
}
