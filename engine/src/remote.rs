//! The remote cache: node entries, artifacts and memo tables shared between machines through an object store.
//!
//! A remote is a URL: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
//! `file:///path`. Credentials and endpoints come only from the environment (the usual
//! `AWS_*`, `GOOGLE_*` and `AZURE_*` variables, `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for an
//! S3-compatible server); nothing here prints them.
//!
//! Layout under the prefix:
//! - `objects/DIGEST.tar`: an artifact (one file or a folder) as a tar holding `artifact`;
//! - `entries/KEY.json`: a node entry, written after every object it names, create-if-absent,
//!   so a reader never sees an entry whose artifacts are missing, and a push that dies midway
//!   leaves only unreferenced objects that the next push reuses;
//! - `memo/TABLE/DIGEST.jsonl`: segments of a memo table (the LLM request cache), each named
//!   by the digest of its bytes.
//!
//! Every artifact read is checked against its digest before it enters the local cache: a
//! mismatch is an error and the artifact is not used. Only a remote opened for writing (a
//! trusted job, e.g. on the protected branch) writes anything; a pull request's run reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::cache::{digest_path, remove_all, unique_suffix, Cache, Entry};

/// The memo table where this module keeps its own bookkeeping (segments seen, keys pushed).
const BOOK: &str = "remote-book";

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote {url}: {message}")]
    Url { url: String, message: String },
    #[error("remote {url}: {path}: {source}")]
    Store {
        url: String,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "remote {url}: artifact {digest} does not match its digest (it holds {actual}); it is not used: the remote may have been tampered with"
    )]
    Tampered {
        url: String,
        digest: String,
        actual: String,
    },
    #[error("remote {url}: {path}: {message}")]
    Bad {
        url: String,
        path: String,
        message: String,
    },
    #[error("remote {url}: local cache: {message}")]
    Local { url: String, message: String },
}

/// What moved to and from the remote during a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteReport {
    pub url: String,
    pub write: bool,
    pub restored_entries: usize,
    pub pulled_objects: usize,
    pub pulled_bytes: u64,
    pub pushed_entries: usize,
    pub pushed_objects: usize,
    pub pushed_bytes: u64,
    pub memo_pulled: usize,
    pub memo_pushed: usize,
    /// Problems that did not stop the run (a push that failed, a segment that did not read).
    pub errors: Vec<String>,
}

/// A remote cache.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    write: bool,
    report: Mutex<RemoteReport>,
}

impl Remote {
    /// Opens the remote at `url`; `write` allows pushing.
    pub fn open(url: &str, write: bool) -> Result<Remote, RemoteError> {
        let bad = |message: String| RemoteError::Url {
            url: url.to_string(),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|e| {
            bad(format!(
                "{e} (expected s3://BUCKET/PREFIX, gs://, az:// or file:///PATH)"
            ))
        })?;
        // Retries of a failing request: `$RELABEL_REMOTE_RETRIES` (default 5), within a minute.
        let retries = match std::env::var("RELABEL_REMOTE_RETRIES") {
            Ok(v) => v.trim().parse::<usize>().map_err(|_| {
                bad(format!(
                    "RELABEL_REMOTE_RETRIES={v}: expected a whole number"
                ))
            })?,
            Err(_) => 5,
        };
        let retry = object_store::RetryConfig {
            max_retries: retries,
            retry_timeout: std::time::Duration::from_secs(60),
            ..object_store::RetryConfig::default()
        };
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry.clone())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry.clone())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry.clone())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| bad("not a local path".into()))?;
                std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&dir)
                        .map_err(|e| bad(e.to_string()))?,
                )
            }
            other => {
                return Err(bad(format!(
                    "unknown scheme \"{other}\" (expected s3, gs, az or file)"
                )))
            }
        };
        let prefix = if parsed.scheme() == "file" {
            StorePath::default()
        } else {
            StorePath::from(parsed.path().trim_matches('/'))
        };
        // The URL as shown: no user, password or query (a SAS token would sit there).
        let mut shown = parsed.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        let shown = shown.to_string();
        Ok(Remote {
            report: Mutex::new(RemoteReport {
                url: shown.clone(),
                write,
                ..RemoteReport::default()
            }),
            url: shown,
            store,
            prefix,
            write,
        })
    }

    /// The URL, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this remote is written after runs.
    pub fn writes(&self) -> bool {
        self.write
    }

    /// What moved so far.
    pub fn report(&self) -> RemoteReport {
        self.report.lock().expect("report lock").clone()
    }

    fn note(&self, f: impl FnOnce(&mut RemoteReport)) {
        f(&mut self.report.lock().expect("report lock"));
    }

    fn path(&self, rel: &str) -> StorePath {
        let mut p = self.prefix.clone();
        for part in rel.split('/') {
            p = p.child(part);
        }
        p
    }

    fn store_err(&self, path: &StorePath, source: object_store::Error) -> RemoteError {
        RemoteError::Store {
            url: self.url.clone(),
            path: path.to_string(),
            source,
        }
    }

    fn local_err(&self, message: impl std::fmt::Display) -> RemoteError {
        RemoteError::Local {
            url: self.url.clone(),
            message: message.to_string(),
        }
    }

    async fn get_bytes(&self, path: &StorePath) -> Result<Option<Vec<u8>>, RemoteError> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| self.store_err(path, e))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err(path, e)),
        }
    }

    async fn exists(&self, path: &StorePath) -> Result<bool, RemoteError> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_err(path, e)),
        }
    }

    /// Writes `bytes` at `path` unless something is there already; true when this call wrote.
    async fn create(&self, path: &StorePath, bytes: Vec<u8>) -> Result<bool, RemoteError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes.clone()), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            // A store without create-if-absent: check, then write (entries are
            // content-determined, so a lost race writes the same meaning).
            Err(object_store::Error::NotImplemented) => {
                if self.exists(path).await? {
                    return Ok(false);
                }
                self.store
                    .put(path, PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.store_err(path, e))?;
                Ok(true)
            }
            Err(e) => Err(self.store_err(path, e)),
        }
    }

    /// The remote's entry for `key`, if it has one.
    pub async fn entry(&self, key: &str) -> Result<Option<Entry>, RemoteError> {
        let path = self.path(&format!("entries/{key}.json"));
        let Some(bytes) = self.get_bytes(&path).await? else {
            return Ok(None);
        };
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| RemoteError::Bad {
            url: self.url.clone(),
            path: path.to_string(),
            message: format!("not a relabel cache entry: {e}"),
        })?;
        Ok(Some(entry))
    }

    /// Downloads `entry`'s artifacts that the local cache lacks, checks each against its digest,
    /// and records the entry locally under `key`.
    pub async fn restore(
        &self,
        cache: &Arc<Cache>,
        key: &str,
        entry: &Entry,
    ) -> Result<(), RemoteError> {
        let digests: BTreeSet<&String> = entry.outputs.values().collect();
        for d in digests {
            if cache.has_object(d) {
                continue;
            }
            self.pull_object(cache, d).await?;
        }
        let mut local = entry.clone();
        // The shapes are the local cache's own check: computed here, not trusted from the remote.
        local.shapes = local
            .outputs
            .values()
            .filter_map(|d| cache.shape(d).ok().map(|s| (d.clone(), s)))
            .collect();
        cache
            .store()
            .put(key, &local)
            .and_then(|_| cache.store().flush())
            .map_err(|e| self.local_err(e))?;
        self.note(|r| r.restored_entries += 1);
        Ok(())
    }

    async fn pull_object(&self, cache: &Arc<Cache>, digest: &str) -> Result<(), RemoteError> {
        if !is_digest(digest) {
            return Err(RemoteError::Bad {
                url: self.url.clone(),
                path: format!("entries/*: output {digest}"),
                message: "not a blake3 digest".into(),
            });
        }
        let path = self.path(&format!("objects/{digest}.tar"));
        let staged = cache
            .tmp_dir()
            .join(format!("pull-{digest}-{}", unique_suffix()));
        std::fs::create_dir_all(&staged).map_err(|e| self.local_err(e))?;
        let result = self.pull_into(cache, digest, &path, &staged).await;
        let _ = remove_all(&staged);
        result
    }

    async fn pull_into(
        &self,
        cache: &Arc<Cache>,
        digest: &str,
        path: &StorePath,
        staged: &std::path::Path,
    ) -> Result<(), RemoteError> {
        let tar_path = staged.join("artifact.tar");
        let got = self
            .store
            .get(path)
            .await
            .map_err(|e| self.store_err(path, e))?;
        let mut stream = got.into_stream();
        let mut file = tokio::fs::File::create(&tar_path)
            .await
            .map_err(|e| self.local_err(e))?;
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.store_err(path, e))?;
            bytes += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| self.local_err(e))?;
        }
        file.flush().await.map_err(|e| self.local_err(e))?;
        drop(file);
        let (cache2, staged2, digest2) = (cache.clone(), staged.to_path_buf(), digest.to_string());
        let checked = tokio::task::spawn_blocking(move || -> Result<Result<(), String>, String> {
            let out = staged2.join("out");
            unpack(&staged2.join("artifact.tar"), &out).map_err(|e| format!("unpacking: {e}"))?;
            let artifact = out.join("artifact");
            let actual = digest_path(&artifact).map_err(|e| e.to_string())?;
            if actual != digest2 {
                return Ok(Err(actual));
            }
            cache2.import(&artifact).map_err(|e| e.to_string())?;
            Ok(Ok(()))
        })
        .await
        .map_err(|e| self.local_err(e))?;
        match checked {
            Err(message) => Err(RemoteError::Bad {
                url: self.url.clone(),
                path: path.to_string(),
                message,
            }),
            Ok(Err(actual)) => Err(RemoteError::Tampered {
                url: self.url.clone(),
                digest: digest.to_string(),
                actual,
            }),
            Ok(Ok(())) => {
                self.note(|r| {
                    r.pulled_objects += 1;
                    r.pulled_bytes += bytes;
                });
                Ok(())
            }
        }
    }

    /// Pushes the local entries `keys` (artifacts first, then the entry) that the remote lacks.
    /// Failures are recorded in the report, not raised: what was pushed stays consistent.
    pub async fn push(&self, cache: &Arc<Cache>, keys: &[String]) {
        if !self.write {
            return;
        }
        let mut seen = BTreeSet::new();
        for key in keys {
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Err(e) = self.push_entry(cache, key).await {
                self.note(|r| r.errors.push(e.to_string()));
                // The store is likely unreachable: stop rather than fail once per entry.
                if matches!(e, RemoteError::Store { .. }) {
                    break;
                }
            }
        }
        if let Err(e) = self.push_memo(cache).await {
            self.note(|r| r.errors.push(e.to_string()));
        }
    }

    /// Pushes the artifacts `digests` that the remote lacks (a node's inputs, before the node
    /// runs elsewhere); errors are raised: the node cannot run without them.
    pub async fn push_objects(
        &self,
        cache: &Arc<Cache>,
        digests: &BTreeSet<String>,
    ) -> Result<(), RemoteError> {
        for d in digests {
            let obj = self.path(&format!("objects/{d}.tar"));
            if self.exists(&obj).await? {
                continue;
            }
            let bytes = self.upload_object(cache, d, &obj).await?;
            self.note(|r| {
                r.pushed_objects += 1;
                r.pushed_bytes += bytes;
            });
        }
        Ok(())
    }

    /// Downloads the artifacts `digests` that the local cache lacks, each checked against its
    /// digest (a node's inputs, on the machine that runs it).
    pub async fn pull_objects(
        &self,
        cache: &Arc<Cache>,
        digests: &BTreeSet<String>,
    ) -> Result<(), RemoteError> {
        for d in digests {
            if !cache.has_object(d) {
                self.pull_object(cache, d).await?;
            }
        }
        Ok(())
    }

    /// Pushes one local entry (artifacts first), raising errors: for `relabel node-exec`,
    /// whose only product is that entry.
    pub async fn push_one(&self, cache: &Arc<Cache>, key: &str) -> Result<(), RemoteError> {
        self.push_entry(cache, key).await
    }

    async fn push_entry(&self, cache: &Arc<Cache>, key: &str) -> Result<(), RemoteError> {
        let entry_path = self.path(&format!("entries/{key}.json"));
        if self.exists(&entry_path).await? {
            return Ok(());
        }
        let Some(mut entry) = cache.store().get(key).map_err(|e| self.local_err(e))? else {
            return Ok(());
        };
        let digests: BTreeSet<String> = entry.outputs.values().cloned().collect();
        self.push_objects(cache, &digests).await?;
        entry.shapes = BTreeMap::new();
        let text = serde_json::to_vec_pretty(&entry).expect("entries serialize");
        if self.create(&entry_path, text).await? {
            self.note(|r| r.pushed_entries += 1);
        }
        Ok(())
    }

    async fn upload_object(
        &self,
        cache: &Arc<Cache>,
        digest: &str,
        obj: &StorePath,
    ) -> Result<u64, RemoteError> {
        let source = cache.object_path(digest);
        let tar_path = cache
            .tmp_dir()
            .join(format!("push-{digest}-{}.tar", unique_suffix()));
        let tp = tar_path.clone();
        tokio::task::spawn_blocking(move || pack(&source, &tp))
            .await
            .map_err(|e| self.local_err(e))?
            .map_err(|e| self.local_err(format!("packing artifact {digest}: {e}")))?;
        let result = self.upload_file(&tar_path, obj).await;
        let _ = std::fs::remove_file(&tar_path);
        result
    }

    async fn upload_file(
        &self,
        file: &std::path::Path,
        obj: &StorePath,
    ) -> Result<u64, RemoteError> {
        let mut reader = tokio::fs::File::open(file)
            .await
            .map_err(|e| self.local_err(e))?;
        let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), obj.clone());
        let copied = tokio::io::copy(&mut reader, &mut writer).await;
        match copied {
            Ok(n) => {
                writer.shutdown().await.map_err(|e| RemoteError::Bad {
                    url: self.url.clone(),
                    path: obj.to_string(),
                    message: format!("upload: {e}"),
                })?;
                Ok(n)
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(RemoteError::Bad {
                    url: self.url.clone(),
                    path: obj.to_string(),
                    message: format!("upload: {e}"),
                })
            }
        }
    }

    /// Reads the remote's memo segments this cache has not seen into the local memo tables.
    /// Failures are recorded in the report: a run without them only asks again.
    pub async fn pull_memo(&self, cache: &Arc<Cache>) {
        if let Err(e) = self.pull_memo_inner(cache).await {
            self.note(|r| r.errors.push(e.to_string()));
        }
    }

    async fn pull_memo_inner(&self, cache: &Arc<Cache>) -> Result<(), RemoteError> {
        let base = self.path("memo");
        let mut listing = self.store.list(Some(&base));
        let mut segments = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.store_err(&base, e))?;
            segments.push(meta.location);
        }
        segments.sort();
        let store = cache.store();
        for seg in segments {
            let name = seg.to_string();
            let book_key = format!("segment/{name}");
            if store
                .memo_get(BOOK, &book_key)
                .map_err(|e| self.local_err(e))?
                .is_some()
            {
                continue;
            }
            let parts: Vec<String> = seg.parts().map(|p| p.as_ref().to_string()).collect();
            let (Some(file), Some(table)) = (parts.last(), parts.get(parts.len().wrapping_sub(2)))
            else {
                continue;
            };
            let Some(bytes) = self.get_bytes(&seg).await? else {
                continue;
            };
            let expected = file.strip_suffix(".jsonl").unwrap_or(file);
            if blake3::hash(&bytes).to_hex().as_str() != expected {
                self.note(|r| {
                    r.errors.push(format!(
                        "remote {}: memo segment {name} does not match its digest; it is not used",
                        self.url
                    ))
                });
                continue;
            }
            let mut items = Vec::new();
            let mut pushed = Vec::new();
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(row) = serde_json::from_slice::<MemoRow>(line) else {
                    continue;
                };
                pushed.push((format!("pushed/{table}/{}", row.k), Vec::new()));
                if store
                    .memo_get(table, &row.k)
                    .map_err(|e| self.local_err(e))?
                    .is_none()
                {
                    items.push((row.k, row.v.into_bytes()));
                }
            }
            let n = items.len();
            store
                .memo_put_many(table, &items)
                .map_err(|e| self.local_err(e))?;
            pushed.push((book_key, Vec::new()));
            store
                .memo_put_many(BOOK, &pushed)
                .map_err(|e| self.local_err(e))?;
            self.note(|r| r.memo_pulled += n);
        }
        Ok(())
    }

    async fn push_memo(&self, cache: &Arc<Cache>) -> Result<(), RemoteError> {
        let store = cache.store();
        let tables = store.memo_tables().map_err(|e| self.local_err(e))?;
        for table in tables.iter().filter(|t| t.as_str() != BOOK) {
            let mut rows = Vec::new();
            let mut marks = Vec::new();
            for (k, v) in store.memo_scan(table).map_err(|e| self.local_err(e))? {
                let mark = format!("pushed/{table}/{k}");
                if store
                    .memo_get(BOOK, &mark)
                    .map_err(|e| self.local_err(e))?
                    .is_some()
                {
                    continue;
                }
                let Ok(v) = String::from_utf8(v) else {
                    continue;
                };
                rows.push(MemoRow { k, v });
                marks.push((mark, Vec::new()));
            }
            if rows.is_empty() {
                continue;
            }
            let mut text = Vec::new();
            for r in &rows {
                serde_json::to_writer(&mut text, r).expect("memo rows serialize");
                text.push(b'\n');
            }
            let name = blake3::hash(&text).to_hex().to_string();
            let path = self.path(&format!("memo/{table}/{name}.jsonl"));
            self.create(&path, text).await?;
            marks.push((format!("segment/{path}"), Vec::new()));
            store
                .memo_put_many(BOOK, &marks)
                .map_err(|e| self.local_err(e))?;
            self.note(|r| r.memo_pushed += rows.len());
        }
        Ok(())
    }
}

#[derive(Serialize, serde::Deserialize)]
struct MemoRow {
    k: String,
    v: String,
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Packs a file or folder as a tar holding `artifact` (or `artifact/...`), with normalised
/// metadata so the same artifact always packs to the same bytes.
fn pack(source: &std::path::Path, tar_path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::File::create(tar_path)?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    if std::fs::symlink_metadata(source)?.is_dir() {
        b.append_dir_all("artifact", source)?;
    } else {
        b.append_path_with_name(source, "artifact")?;
    }
    b.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}

/// Unpacks a tar made by [`pack`] into `out`, refusing paths that leave it.
fn unpack(tar_path: &std::path::Path, out: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut a = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(tar_path)?));
    a.set_preserve_permissions(false);
    for e in a.entries()? {
        let mut e = e?;
        let p: PathBuf = e.path()?.into_owned();
        if !p.starts_with("artifact") {
            return Err(std::io::Error::other(format!(
                "unexpected path {} in an artifact archive",
                p.display()
            )));
        }
        // `unpack_in` refuses `..` and absolute paths.
        if !e.unpack_in(out)? {
            return Err(std::io::Error::other(format!(
                "path {} leaves the archive's folder",
                p.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::LockWait;

    fn entry_with(cache: &Cache, name: &str, bytes: &[u8]) -> (String, Entry) {
        let dir = cache.tmp_dir().join(format!("make-{name}"));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/data.txt"), bytes).unwrap();
        std::fs::write(dir.join("top.txt"), b"top").unwrap();
        let d = cache.import(&dir).unwrap();
        let f = cache.tmp_dir().join(format!("file-{name}"));
        std::fs::write(&f, bytes).unwrap();
        let fd = cache.import(&f).unwrap();
        let entry = Entry {
            node: name.into(),
            kind: "k".into(),
            version: "1".into(),
            outputs: [("dir".to_string(), d), ("file".to_string(), fd)].into(),
            metrics: Default::default(),
            seconds: 0.0,
            created: "2026-01-01T00:00:00Z".into(),
            shapes: Default::default(),
        };
        let key = blake3::hash(name.as_bytes()).to_hex().to_string();
        cache.store().put(&key, &entry).unwrap();
        (key, entry)
    }

    #[test]
    fn the_shown_url_holds_no_credentials() {
        let r = Remote::open(
            "s3://AKIAEXAMPLE:s3cr3t@bucket/team?X-Amz-Signature=abc",
            false,
        )
        .unwrap();
        assert_eq!(r.url(), "s3://bucket/team");
        assert_eq!(r.report().url, "s3://bucket/team");
        let e = Remote::open("http://example.com/x", true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown scheme \"http\""), "{e}");
    }

    #[tokio::test]
    async fn a_folder_remote_restores_pushed_entries_and_refuses_tampered_ones() {
        let t = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(t.path().join("remote"))
            .unwrap()
            .to_string();
        let a = Arc::new(Cache::open(&t.path().join("a"), LockWait::NoWait).unwrap());
        let (key, entry) = entry_with(&a, "n1", b"hello");
        let memo = a.memo("llm");
        memo.put(&serde_json::json!({"q": 1}), &serde_json::json!({"a": 2}))
            .unwrap();

        // A read-only remote writes nothing.
        let ro = Remote::open(&url, false).unwrap();
        ro.push(&a, std::slice::from_ref(&key)).await;
        assert!(ro.entry(&key).await.unwrap().is_none());

        let rw = Remote::open(&url, true).unwrap();
        rw.push(&a, std::slice::from_ref(&key)).await;
        let r = rw.report();
        assert_eq!(
            (r.pushed_entries, r.pushed_objects, r.memo_pushed),
            (1, 2, 1),
            "{r:?}"
        );
        // Pushing again sends nothing.
        rw.push(&a, std::slice::from_ref(&key)).await;
        assert_eq!(rw.report().pushed_objects, 2);

        let b = Arc::new(Cache::open(&t.path().join("b"), LockWait::NoWait).unwrap());
        let reader = Remote::open(&url, false).unwrap();
        reader.pull_memo(&b).await;
        assert_eq!(
            b.memo("llm").get(&serde_json::json!({"q": 1})).unwrap(),
            Some(serde_json::json!({"a": 2}))
        );
        let got = reader.entry(&key).await.unwrap().unwrap();
        assert_eq!(got.outputs, entry.outputs);
        reader.restore(&b, &key, &got).await.unwrap();
        for d in entry.outputs.values() {
            assert_eq!(&digest_path(&b.object_path(d)).unwrap(), d);
        }
        assert!(b.store().get(&key).unwrap().is_some());

        // Tamper with one artifact on the remote: a fresh cache refuses it.
        let d = &entry.outputs["file"];
        let tar = t.path().join(format!("remote/objects/{d}.tar"));
        let evil = t.path().join("evil");
        std::fs::write(&evil, b"HELLO").unwrap();
        pack(&evil, &tar).unwrap();
        let c = Arc::new(Cache::open(&t.path().join("c"), LockWait::NoWait).unwrap());
        let err = reader.restore(&c, &key, &got).await.unwrap_err();
        assert!(matches!(err, RemoteError::Tampered { .. }), "{err}");
        assert!(!c.has_object(d), "a tampered artifact entered the cache");
        assert!(c.store().get(&key).unwrap().is_none());
    }
}
