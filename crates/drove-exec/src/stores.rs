//! Where tables' files are found: local paths, `drove://` paths in drove fs, and
//! object stores (`s3://`, `gs://`, `az://`, `http(s)://`), read through DataFusion's
//! object store registry. A `drove://` store is read-only: files are written with
//! `drove fs put` (or `drove gen --out drove://`, or MapReduce output). An object store
//! is reached with its usual environment variables (for S3 `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and `AWS_ENDPOINT` with
//! `AWS_ALLOW_HTTP=true` for a local server), which every process that reads it (the
//! client, coordinator and workers) needs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use url::Url;

use crate::dfs::{ChunkReader, FsEntry, Namespace};

/// The URL scheme of drove fs.
pub const SCHEME: &str = "drove";

/// drove fs as the stores' registry reaches it: its namespace and its chunks.
#[derive(Debug, Clone)]
pub struct DroveFs {
    pub namespace: Arc<dyn Namespace>,
    pub reader: ChunkReader,
    /// Files as recently listed: a scan reads many ranges of each file.
    files: Arc<FileCache>,
}

impl DroveFs {
    pub fn new(namespace: Arc<dyn Namespace>, reader: ChunkReader) -> Self {
        Self {
            namespace,
            reader,
            files: Default::default(),
        }
    }
}

/// How long a file's listing answers reads of it: a file replaced since reads the
/// version listed (its chunks are freed only later; a read that finds them gone
/// forgets the listing, and the task's retry lists again).
const FILE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Files' listings kept at most.
const FILE_CACHE_MAX: usize = 4096;

/// Files' listings (chunks and where their replicas are), each for [`FILE_CACHE_TTL`].
#[derive(Debug, Default)]
struct FileCache(std::sync::Mutex<HashMap<String, (std::time::Instant, FsEntry)>>);

impl FileCache {
    fn get(&self, path: &str) -> Option<FsEntry> {
        let files = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (at, entry) = files.get(path)?;
        (at.elapsed() < FILE_CACHE_TTL).then(|| entry.clone())
    }

    fn put(&self, path: &str, entry: &FsEntry) {
        let mut files = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if files.len() >= FILE_CACHE_MAX {
            files.retain(|_, (at, _)| at.elapsed() < FILE_CACHE_TTL);
            if files.len() >= FILE_CACHE_MAX {
                files.clear();
            }
        }
        files.insert(path.to_string(), (std::time::Instant::now(), entry.clone()));
    }

    fn forget(&self, path: &str) {
        (self.0.lock().unwrap_or_else(|p| p.into_inner())).remove(path);
    }
}

/// DataFusion's registry of object stores, which also resolves every `drove://` URL
/// to drove fs (when this process reaches a cluster).
#[derive(Debug)]
pub struct Stores {
    others: DefaultObjectStoreRegistry,
    drove: Option<DroveFs>,
}

impl Stores {
    pub fn new(drove: Option<DroveFs>) -> Self {
        Self {
            others: DefaultObjectStoreRegistry::new(),
            drove,
        }
    }
}

impl ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.others.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if CLOUD_SCHEMES.contains(&url.scheme()) {
            if let Ok(store) = self.others.get_store(url) {
                return Ok(store);
            }
            let store = cloud(url)?;
            self.others.register_store(url, Arc::clone(&store));
            return Ok(store);
        }
        if url.scheme() != SCHEME {
            return self.others.get_store(url);
        }
        match &self.drove {
            Some(fs) => Ok(Arc::new(DroveStore {
                root: url.host_str().unwrap_or_default().to_string(),
                fs: fs.clone(),
            })),
            None => Err(datafusion::error::DataFusionError::Configuration(format!(
                "{url}: drove:// paths are read through a cluster; connect to one (drove --coordinator ADDR, or drove local --data-dir DIR)"
            ))),
        }
    }
}

/// The schemes of the object stores drove reaches, each configured from the usual
/// environment variables.
pub const CLOUD_SCHEMES: [&str; 5] = ["s3", "gs", "az", "http", "https"];

/// The store of a bucket (`s3://BUCKET`, `gs://BUCKET`), an Azure container
/// (`az://CONTAINER`) or an HTTP server (`http(s)://HOST`, WebDAV for listing and
/// writing), configured from the environment.
pub fn cloud(url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
    let configuration = datafusion::error::DataFusionError::Configuration;
    let scheme = url.scheme();
    let bucket = (url.host_str()).filter(|b| !b.is_empty()).ok_or_else(|| {
        configuration(format!(
            "{url} names no bucket or host; write {scheme}://BUCKET/PATH"
        ))
    })?;
    let (built, variables): (object_store::Result<Arc<dyn ObjectStore>>, &str) = match scheme {
        "s3" => (
            (object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build())
            .map(|s| Arc::new(s) as _),
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION (and AWS_ENDPOINT for an S3-compatible server)",
        ),
        "gs" => (
            (object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build())
            .map(|s| Arc::new(s) as _),
            "GOOGLE_SERVICE_ACCOUNT (a key file) or GOOGLE_SERVICE_ACCOUNT_KEY (and GOOGLE_BASE_URL for another server)",
        ),
        "az" => (
            (object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .build())
            .map(|s| Arc::new(s) as _),
            "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_USE_EMULATOR=true)",
        ),
        _ => (
            (object_store::http::HttpBuilder::new()
                .with_url(&url[..url::Position::BeforePath])
                // The URL asked for plain HTTP, or for HTTPS.
                .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
                .build())
            .map(|s| Arc::new(s) as _),
            "nothing for a server that needs no credentials",
        ),
    };
    built.map_err(|e| {
        configuration(format!(
            "{url}: {scheme}:// cannot be reached as configured ({e}); set {variables} for the client, the coordinator and the workers"
        ))
    })
}

/// Copies the local file `local` to `url` (an object store's, such as `s3://`). The
/// object appears only once whole: a small file is one request, a larger one a
/// multipart upload that either completes or is aborted.
/// Returns the bytes copied.
pub async fn upload(url: &Url, local: &std::path::Path) -> crate::Result<u64> {
    let (store, location) = locate(&Stores::new(None), url)?;
    upload_to(store.as_ref(), &location, local).await
}

/// What a location in an object store names.
#[derive(Debug)]
pub enum Found {
    /// A directory (a prefix something is under): the objects and the directories
    /// directly in it.
    Dir {
        objects: Vec<ObjectMeta>,
        dirs: Vec<Path>,
    },
    File(ObjectMeta),
}

/// What `location` names in `store`, if anything. A directory is asked for first:
/// some stores (an HTTP server's) answer a request for a directory as if it were a
/// file.
pub async fn find(store: &dyn ObjectStore, location: &Path) -> object_store::Result<Option<Found>> {
    use object_store::ObjectStoreExt;
    let listed = store.list_with_delimiter(Some(location)).await;
    if let Ok(listed) = &listed {
        let objects: Vec<ObjectMeta> = (listed.objects.iter())
            .filter(|o| o.location != *location)
            .cloned()
            .collect();
        if !objects.is_empty() || !listed.common_prefixes.is_empty() {
            let dirs = listed.common_prefixes.clone();
            return Ok(Some(Found::Dir { objects, dirs }));
        }
    }
    match store.head(location).await {
        Ok(meta) => Ok(Some(Found::File(meta))),
        Err(object_store::Error::NotFound { .. }) => listed.map(|_| None),
        Err(e) => Err(e),
    }
}

/// Bytes an upload sends at a time; a file no larger is sent in one request.
const UPLOAD_PART_BYTES: usize = 8 << 20;

/// [`upload`] to `location` in `store`.
pub async fn upload_to(
    store: &dyn ObjectStore,
    location: &Path,
    local: &std::path::Path,
) -> crate::Result<u64> {
    use object_store::ObjectStoreExt;
    use tokio::io::AsyncReadExt;
    let failed = |e: object_store::Error| {
        crate::Error::User(format!("writing {location} to {store} failed: {e}"))
    };
    let mut file = tokio::fs::File::open(local).await?;
    let mut buf = Vec::with_capacity(UPLOAD_PART_BYTES);
    (&mut file)
        .take(UPLOAD_PART_BYTES as u64)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() < UPLOAD_PART_BYTES {
        let total = buf.len() as u64;
        store.put(location, buf.into()).await.map_err(failed)?;
        return Ok(total);
    }
    let mut writer =
        object_store::WriteMultipart::new(store.put_multipart(location).await.map_err(failed)?);
    let mut total = buf.len() as u64;
    writer.write(&buf);
    let copied: crate::Result<()> = async {
        loop {
            let n = file.read(&mut buf[..]).await?;
            if n == 0 {
                return Ok(());
            }
            writer.wait_for_capacity(4).await.map_err(failed)?;
            writer.write(&buf[..n]);
            total += n as u64;
        }
    }
    .await;
    match copied {
        Ok(()) => {
            writer.finish().await.map_err(failed)?;
            Ok(total)
        }
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// The URL a path names, if it is one (`drove://...`, `s3://...`); a local path,
/// or a `file://` URL, is none. The scheme must be written as drove reads it, in
/// lowercase at the very start: every check of a path (a tenant's, the allowed
/// directories') and every reader then agree on what it names.
pub fn url_of(path: &str) -> Result<Option<Url>, String> {
    let Some((scheme, _)) = path.split_once("://") else {
        return Ok(None);
    };
    if scheme == "file" {
        return Ok(None);
    }
    let canonical = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && (scheme.chars())
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !canonical {
        return Err(format!(
            "'{path}' does not start with a URL scheme drove reads; write drove://, s3://, gs://, az:// or http(s):// in lowercase, or a local path"
        ));
    }
    Url::parse(path).map(Some).map_err(|e| {
        format!("'{path}' is not a URL ({e}); write it as drove://DIR/FILE or s3://BUCKET/PATH")
    })
}

/// The store of `url` in `registry`, and the location it names there.
pub fn locate(
    registry: &dyn ObjectStoreRegistry,
    url: &Url,
) -> crate::Result<(Arc<dyn ObjectStore>, Path)> {
    let store = registry.get_store(url)?;
    let location = Path::from_url_path(url.path())
        .map_err(|e| crate::Error::User(format!("{url} is not a usable path ({e})")))?;
    Ok((store, location))
}

/// The files under `drove://ROOT/` as an object store: DataFusion names a location
/// by the URL's host (ROOT) and the path after it.
#[derive(Debug)]
struct DroveStore {
    root: String,
    fs: DroveFs,
}

impl fmt::Display for DroveStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "drove://{}", self.root)
    }
}

fn failed(why: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "drove fs",
        source: why.into(),
    }
}

fn not_found(path: &str) -> object_store::Error {
    object_store::Error::NotFound {
        path: format!("drove://{path}"),
        source: format!("drove://{path} is not a file; `drove fs ls` shows what there is").into(),
    }
}

fn read_only() -> object_store::Error {
    object_store::Error::NotSupported {
        source: "drove:// files are not written by queries; copy a file in with `drove fs put`, or write a DataFrame locally and put it"
            .into(),
    }
}

impl DroveStore {
    /// The drove fs path of `location`, whose parts object_store keeps
    /// percent-encoded (a name with `#` or `%` in it).
    fn path(&self, location: &Path) -> String {
        let rest = (location.parts())
            .map(|part| {
                percent_encoding::percent_decode_str(part.as_ref())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect::<Vec<_>>()
            .join("/");
        match (self.root.as_str(), rest.as_str()) {
            (root, "") => root.to_string(),
            ("", rest) => rest.to_string(),
            (root, rest) => format!("{root}/{rest}"),
        }
    }

    /// An entry of directory `dir` (a store location) as object metadata.
    fn meta(location: Path, entry: &FsEntry) -> ObjectMeta {
        ObjectMeta {
            location,
            last_modified: chrono::DateTime::from_timestamp_millis(entry.created_unix_ms as i64)
                .unwrap_or_default(),
            size: entry.size,
            // A file's chunks are never rewritten: its first chunk names this version.
            e_tag: Some(format!(
                "{:x}-{:x}",
                entry.created_unix_ms,
                entry.chunks.first().map_or(0, |c| c.id)
            )),
            version: None,
        }
    }

    /// The file at `location`, or NotFound (a directory is no object).
    async fn file(&self, location: &Path) -> object_store::Result<FsEntry> {
        let path = self.path(location);
        if let Some(file) = self.fs.files.get(&path) {
            return Ok(file);
        }
        let file = match self.fs.namespace.list(&path).await.map_err(failed)? {
            Some(listed) if !listed.is_dir => listed
                .entries
                .into_iter()
                .next()
                .ok_or_else(|| not_found(&path))?,
            _ => return Err(not_found(&path)),
        };
        self.fs.files.put(&path, &file);
        Ok(file)
    }

    /// The entries of the directory at `dir`: (files, directories) as locations; none
    /// if it is no directory.
    async fn children(
        fs: &DroveFs,
        full: &str,
        dir: &Path,
    ) -> object_store::Result<(Vec<ObjectMeta>, Vec<Path>)> {
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        match fs.namespace.list(full).await.map_err(failed)? {
            Some(listed) if listed.is_dir => {
                for entry in &listed.entries {
                    let location = dir.clone().join(entry.name.as_str());
                    if entry.is_dir {
                        dirs.push(location);
                    } else {
                        files.push(Self::meta(location, entry));
                    }
                }
            }
            _ => {}
        }
        Ok((files, dirs))
    }
}

#[async_trait::async_trait]
impl ObjectStore for DroveStore {
    async fn put_opts(
        &self,
        _location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(read_only())
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(read_only())
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let file = self.file(location).await?;
        let meta = Self::meta(location.clone(), &file);
        options.check_preconditions(&meta)?;
        let range = match &options.range {
            Some(range) => range.as_range(file.size).map_err(|e| {
                failed(format!(
                    "bytes {range} of drove://{}: {e}",
                    self.path(location)
                ))
            })?,
            None => 0..file.size,
        };
        let payload = if options.head {
            futures::stream::empty().boxed()
        } else {
            let (path, files) = (self.path(location), Arc::clone(&self.fs.files));
            (self.fs.reader.read(&path, &file, range.clone()))
                .map_err(move |e| {
                    // Perhaps the listing is stale: the next read lists again.
                    files.forget(&path);
                    failed(e)
                })
                .boxed()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|_| Err(read_only())).boxed()
    }

    /// Every file under `prefix`, however deep.
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let store = DroveStore {
            root: self.root.clone(),
            fs: self.fs.clone(),
        };
        let start = prefix.cloned().unwrap_or_default();
        futures::stream::once(async move {
            let mut files = Vec::new();
            let mut dirs = vec![start];
            while let Some(dir) = dirs.pop() {
                let (found, under) = Self::children(&store.fs, &store.path(&dir), &dir).await?;
                files.extend(found);
                dirs.extend(under);
            }
            Ok::<_, object_store::Error>(futures::stream::iter(files.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let dir = prefix.cloned().unwrap_or_default();
        let (objects, common_prefixes) = Self::children(&self.fs, &self.path(&dir), &dir).await?;
        Ok(ListResult {
            common_prefixes,
            objects,
        })
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_cache_answers_until_forgotten_and_stays_bounded() {
        let cache = FileCache::default();
        let entry = |name: &str| FsEntry {
            name: name.into(),
            is_dir: false,
            size: 1,
            created_unix_ms: 0,
            replication: 1,
            chunk_bytes: 1,
            chunks: Vec::new(),
        };
        assert!(cache.get("a").is_none());
        cache.put("a", &entry("a"));
        assert_eq!(cache.get("a").unwrap().name, "a");
        cache.forget("a");
        assert!(cache.get("a").is_none());
        for i in 0..FILE_CACHE_MAX + 10 {
            cache.put(&i.to_string(), &entry("x"));
        }
        assert!(cache.0.lock().unwrap().len() <= FILE_CACHE_MAX);
    }

    #[test]
    fn only_lowercase_schemes_at_the_start_are_urls() {
        assert!(url_of("data/t.parquet").unwrap().is_none());
        assert!(url_of("file:///data/t.parquet").unwrap().is_none());
        let url = url_of("drove://team/t.parquet").unwrap().unwrap();
        assert_eq!((url.scheme(), url.host_str()), ("drove", Some("team")));
        assert_eq!(url_of("s3://b/k").unwrap().unwrap().scheme(), "s3");
        // Forms a URL parser would read as drove:// but a check of the text would not.
        for odd in [
            "DROVE://other/x",
            " drove://other/x",
            "\tdrove://other/x",
            "Drove://x",
        ] {
            let e = url_of(odd).unwrap_err();
            assert!(e.contains("lowercase"), "{odd}: {e}");
        }
    }

    #[test]
    fn drove_paths_without_a_cluster_are_refused_with_the_fix() {
        let stores = Stores::new(None);
        let url = Url::parse("drove://tpch/lineitem.parquet").unwrap();
        let e = stores.get_store(&url).unwrap_err().to_string();
        assert!(e.contains("connect to one"), "{e}");
        let local = Url::parse("file:///tmp").unwrap();
        assert!(stores.get_store(&local).is_ok());
    }

    #[test]
    fn a_location_is_the_url_s_host_then_its_path() {
        #[derive(Debug)]
        struct Nothing;
        #[async_trait::async_trait]
        impl Namespace for Nothing {
            async fn list(&self, _: &str) -> Result<Option<crate::dfs::Listing>, String> {
                Ok(None)
            }
        }
        let fs = DroveFs::new(
            Arc::new(Nothing),
            ChunkReader::new(Default::default(), None),
        );
        let store = |root: &str| DroveStore {
            root: root.into(),
            fs: fs.clone(),
        };
        assert_eq!(
            store("tpch").path(&Path::from("a/b.parquet")),
            "tpch/a/b.parquet"
        );
        assert_eq!(store("tpch").path(&Path::from("")), "tpch");
        assert_eq!(store("").path(&Path::from("x")), "x");
        // A listed name comes back as itself, however object_store encodes it.
        let listed = Path::from("dir").join("a#b%c.parquet");
        assert_eq!(store("t").path(&listed), "t/dir/a#b%c.parquet");
    }
}
