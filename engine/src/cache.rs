//! The cache: node entries and LLM request/response pairs in sled, artifacts content-addressed on disk.
//!
//! Layout of a cache folder:
//! `lock` (held by the one process using the cache), `db/` (sled), `objects/ab/abcd..` (artifacts,
//! named by their blake3 digest), `tmp/` (work folders of running nodes; emptied on open),
//! `runs/RUN_ID/` (reports). An artifact is renamed into `objects/` before the entry that names it
//! is written, so a killed run never leaves an entry pointing at a half-written artifact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::plugin::Metrics;

/// A blake3 digest in lowercase hex.
pub type Digest = String;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cache database: {0}")]
    Db(#[from] sled::Error),
    #[error("cache entry {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("the cache at {0} is in use by another relabel process")]
    Busy(PathBuf),
}

fn io_err(path: &Path, source: io::Error) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a finished node left in the cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub node: String,
    pub kind: String,
    pub version: String,
    /// Output name -> artifact digest.
    pub outputs: BTreeMap<String, Digest>,
    pub metrics: Metrics,
    pub seconds: f64,
    /// RFC 3339 time the entry was written.
    pub created: String,
    /// Artifact digest -> its [`Cache::shape`] when imported: a cache hit checks it cheaply,
    /// so a file deleted or truncated inside a cached artifact is noticed without re-hashing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shapes: BTreeMap<Digest, String>,
}

/// Everything a cache key is made of; kept per node so `plan` can say what changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyParts {
    pub kind: String,
    pub version: String,
    /// Digest of the canonical config.
    pub config: Digest,
    /// Input name -> artifact digest.
    pub inputs: BTreeMap<String, Digest>,
    /// Referenced file -> content digest.
    pub files: BTreeMap<String, Digest>,
    pub round: Option<u32>,
}

impl KeyParts {
    pub fn key(&self) -> String {
        let text = serde_json::to_string(self).expect("key parts serialize");
        blake3::hash(text.as_bytes()).to_hex().to_string()
    }
}

/// The key a node instance had the last time it was run or found cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastRecord {
    pub key: String,
    pub parts: KeyParts,
}

/// A remembered file digest, trusted while the file's size and mtime stay the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileMemo {
    pub size: u64,
    pub mtime_ns: u128,
    pub digest: Digest,
}

/// Every entry with its key; an entry that does not decode comes with the reason.
pub type EntryList = Vec<(String, Result<Entry, String>)>;

/// The key-value side of the cache. sled implements it; another store can replace it.
pub trait Store: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Entry>, CacheError>;
    fn put(&self, key: &str, entry: &Entry) -> Result<(), CacheError>;
    fn remove(&self, key: &str) -> Result<(), CacheError>;
    fn entries(&self) -> Result<EntryList, CacheError>;
    fn last(&self, scope: &str) -> Result<Option<LastRecord>, CacheError>;
    fn set_last(&self, scope: &str, rec: &LastRecord) -> Result<(), CacheError>;
    fn lasts(&self) -> Result<Vec<(String, LastRecord)>, CacheError>;
    fn file_memo(&self, path: &str) -> Result<Option<FileMemo>, CacheError>;
    fn set_file_memo(&self, path: &str, memo: &FileMemo) -> Result<(), CacheError>;
    /// A value of memo table `table` (see [`Memo`]).
    fn memo_get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, CacheError>;
    /// Stores a memo value durably before returning.
    fn memo_put(&self, table: &str, key: &str, value: &[u8]) -> Result<(), CacheError>;
    fn memo_len(&self, table: &str) -> usize;
    /// The memo tables that exist.
    fn memo_tables(&self) -> Result<Vec<String>, CacheError> {
        Ok(Vec::new())
    }
    /// Every key and value of memo table `table`, in key order.
    fn memo_scan(&self, _table: &str) -> Result<Vec<(String, Vec<u8>)>, CacheError> {
        Ok(Vec::new())
    }
    /// Stores many memo values, durably before returning.
    fn memo_put_many(&self, table: &str, items: &[(String, Vec<u8>)]) -> Result<(), CacheError> {
        for (k, v) in items {
            self.memo_put(table, k, v)?;
        }
        Ok(())
    }
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), CacheError>;
}

/// The sled store: one tree each for entries, last keys and file digests, and one per memo
/// table (`memo:NAME`).
pub struct SledStore {
    db: sled::Db,
    entries: sled::Tree,
    last: sled::Tree,
    files: sled::Tree,
}

impl SledStore {
    fn memo_tree(&self, table: &str) -> Result<sled::Tree, CacheError> {
        Ok(self.db.open_tree(format!("memo:{table}"))?)
    }
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let db = sled::Config::new().path(path).open()?;
        Ok(SledStore {
            entries: db.open_tree("entries")?,
            last: db.open_tree("last")?,
            files: db.open_tree("files")?,
            db,
        })
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, CacheError> {
    serde_json::from_slice(bytes).map_err(|e| CacheError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("cache records serialize")
}

impl Store for SledStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, CacheError> {
        match self.entries.get(key)? {
            None => Ok(None),
            Some(b) => decode(key, &b).map(Some),
        }
    }

    fn put(&self, key: &str, entry: &Entry) -> Result<(), CacheError> {
        self.entries.insert(key, encode(entry))?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), CacheError> {
        self.entries.remove(key)?;
        Ok(())
    }

    fn entries(&self) -> Result<EntryList, CacheError> {
        let mut out = Vec::new();
        for kv in self.entries.iter() {
            let (k, v) = kv?;
            let k = String::from_utf8_lossy(&k).to_string();
            let e = serde_json::from_slice(&v).map_err(|e| e.to_string());
            out.push((k, e));
        }
        Ok(out)
    }

    fn last(&self, scope: &str) -> Result<Option<LastRecord>, CacheError> {
        match self.last.get(scope)? {
            None => Ok(None),
            Some(b) => decode(scope, &b).map(Some),
        }
    }

    fn set_last(&self, scope: &str, rec: &LastRecord) -> Result<(), CacheError> {
        self.last.insert(scope, encode(rec))?;
        Ok(())
    }

    fn lasts(&self) -> Result<Vec<(String, LastRecord)>, CacheError> {
        let mut out = Vec::new();
        for kv in self.last.iter() {
            let (k, v) = kv?;
            let k = String::from_utf8_lossy(&k).to_string();
            if let Ok(rec) = serde_json::from_slice(&v) {
                out.push((k, rec));
            }
        }
        Ok(out)
    }

    fn file_memo(&self, path: &str) -> Result<Option<FileMemo>, CacheError> {
        Ok(self
            .files
            .get(path)?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn set_file_memo(&self, path: &str, memo: &FileMemo) -> Result<(), CacheError> {
        self.files.insert(path, encode(memo))?;
        Ok(())
    }

    fn memo_get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.memo_tree(table)?.get(key)?.map(|v| v.to_vec()))
    }

    fn memo_put(&self, table: &str, key: &str, value: &[u8]) -> Result<(), CacheError> {
        let t = self.memo_tree(table)?;
        t.insert(key, value)?;
        t.flush()?;
        Ok(())
    }

    fn memo_len(&self, table: &str) -> usize {
        self.memo_tree(table).map(|t| t.len()).unwrap_or(0)
    }

    fn memo_tables(&self) -> Result<Vec<String>, CacheError> {
        Ok(self
            .db
            .tree_names()
            .iter()
            .filter_map(|n| {
                std::str::from_utf8(n)
                    .ok()?
                    .strip_prefix("memo:")
                    .map(String::from)
            })
            .collect())
    }

    fn memo_scan(&self, table: &str) -> Result<Vec<(String, Vec<u8>)>, CacheError> {
        let mut out = Vec::new();
        for kv in self.memo_tree(table)?.iter() {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).to_string(), v.to_vec()));
        }
        Ok(out)
    }

    fn memo_put_many(&self, table: &str, items: &[(String, Vec<u8>)]) -> Result<(), CacheError> {
        let t = self.memo_tree(table)?;
        let mut batch = sled::Batch::default();
        for (k, v) in items {
            batch.insert(k.as_bytes(), v.as_slice());
        }
        t.apply_batch(batch)?;
        t.flush()?;
        Ok(())
    }

    fn flush(&self) -> Result<(), CacheError> {
        self.db.flush()?;
        Ok(())
    }
}

/// A named memo table shared by every run on a cache: request -> response pairs a node kind
/// pays for once (the LLM client's answers, say), keyed by the canonical request, which must
/// hold no secret. The engine knows nothing of what the requests are.
#[derive(Clone)]
pub struct Memo {
    store: Arc<dyn Store>,
    table: Arc<str>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl Memo {
    pub fn new(store: Arc<dyn Store>, table: &str) -> Self {
        Memo {
            store,
            table: table.into(),
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    /// The key of a request: blake3 of its canonical JSON (object keys sorted).
    pub fn key(request: &serde_json::Value) -> String {
        blake3::hash(canonical_json(request).as_bytes())
            .to_hex()
            .to_string()
    }

    pub fn get(
        &self,
        request: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, CacheError> {
        let key = Self::key(request);
        let hit = self
            .store
            .memo_get(&self.table, &key)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(hit)
    }

    /// Stores a response durably before returning, so a killed run never pays for it again.
    pub fn put(
        &self,
        request: &serde_json::Value,
        response: &serde_json::Value,
    ) -> Result<(), CacheError> {
        self.store
            .memo_put(&self.table, &Self::key(request), &encode(response))
    }

    /// Stores responses under already hashed keys ([`Memo::key`] of their requests), all
    /// durable before it returns (one flush for the lot).
    pub fn put_many_hashed(&self, items: &[(String, serde_json::Value)]) -> Result<(), CacheError> {
        let encoded: Vec<(String, Vec<u8>)> =
            items.iter().map(|(k, v)| (k.clone(), encode(v))).collect();
        self.store.memo_put_many(&self.table, &encoded)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// JSON text with object keys sorted at every level: the same value always gives the same text.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: BTreeMap<&String, serde_json::Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sort(v)).expect("json serializes")
}

/// How to behave when another process holds the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Print a message and wait for it to finish.
    Wait,
    /// Fail at once with [`CacheError::Busy`].
    NoWait,
}

/// An open cache folder, held exclusively by this process.
pub struct Cache {
    root: PathBuf,
    store: Arc<dyn Store>,
    _lock: File,
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub entries: usize,
    pub objects: usize,
    /// (entry key, node, why) for each evicted entry.
    pub evicted: Vec<(String, String, String)>,
}

/// What `gc` removed.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub entries_removed: usize,
    pub objects_removed: usize,
    pub bytes_freed: u64,
}

impl Cache {
    /// Opens (creating) the cache at `root`, taking its lock; leftovers of killed runs are removed.
    pub fn open(root: &Path, wait: LockWait) -> Result<Cache, CacheError> {
        fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
        // Absolute, so artifact and work-folder paths stay valid for commands that run elsewhere.
        let root = &fs::canonicalize(root).map_err(|e| io_err(root, e))?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                if wait == LockWait::NoWait {
                    return Err(CacheError::Busy(root.to_path_buf()));
                }
                eprintln!(
                    "relabel: the cache at {} is in use by another relabel process; waiting for it to finish",
                    root.display()
                );
                lock.lock().map_err(|e| io_err(&lock_path, e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path, e)),
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            remove_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        for d in ["objects", "tmp", "runs"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
        }
        let store = SledStore::open(&root.join("db"))?;
        Ok(Cache {
            root: root.to_path_buf(),
            store: Arc::new(store),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Memo table `table` of this cache.
    pub fn memo(&self, table: &str) -> Memo {
        Memo::new(self.store.clone(), table)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    pub fn object_path(&self, digest: &str) -> PathBuf {
        let pre = digest.get(..2).unwrap_or("00");
        self.root.join("objects").join(pre).join(digest)
    }

    pub fn has_object(&self, digest: &str) -> bool {
        fs::symlink_metadata(self.object_path(digest)).is_ok()
    }

    /// Moves a file or folder into the object store; returns its digest. Same content is stored once.
    pub fn import(&self, path: &Path) -> Result<Digest, CacheError> {
        let digest = digest_path(path).map_err(|e| io_err(path, e))?;
        let dest = self.object_path(&digest);
        if self.has_object(&digest) {
            remove_all(path).map_err(|e| io_err(path, e))?;
            return Ok(digest);
        }
        let parent = dest.parent().expect("object paths have a parent");
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        make_read_only(path).map_err(|e| io_err(path, e))?;
        match fs::rename(path, &dest) {
            Ok(()) => {}
            // Another node produced the same bytes at the same moment: it is stored.
            Err(_) if self.has_object(&digest) => {
                remove_all(path).map_err(|e| io_err(path, e))?;
            }
            Err(e) if e.raw_os_error() == Some(libc_exdev()) => {
                // Another file system: copy into tmp, then rename.
                let staged = self
                    .tmp_dir()
                    .join(format!("import-{digest}-{}", unique_suffix()));
                copy_all(path, &staged).map_err(|e| io_err(path, e))?;
                match fs::rename(&staged, &dest) {
                    Ok(()) => {}
                    Err(_) if self.has_object(&digest) => {
                        remove_all(&staged).map_err(|e| io_err(&staged, e))?
                    }
                    Err(e) => return Err(io_err(&dest, e)),
                }
                remove_all(path).map_err(|e| io_err(path, e))?;
            }
            Err(e) => return Err(io_err(&dest, e)),
        }
        Ok(digest)
    }

    /// A cheap fingerprint of a stored artifact: for a folder, its sorted listing of relative
    /// paths, kinds and file sizes; for a file, its size. No file is read.
    pub fn shape(&self, digest: &str) -> io::Result<String> {
        let p = self.object_path(digest);
        let m = fs::symlink_metadata(&p)?;
        if !m.is_dir() {
            return Ok(format!("file {}", m.len()));
        }
        let mut rows = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in fs::read_dir(p.join(&rel))? {
                let e = e?;
                let r = rel.join(e.file_name());
                let m = e.metadata()?;
                let name = r.to_string_lossy().to_string();
                if m.is_dir() {
                    rows.push(format!("D {name}"));
                    stack.push(r);
                } else {
                    rows.push(format!("F {name} {}", m.len()));
                }
            }
        }
        rows.sort();
        Ok(blake3::hash(rows.join("\n").as_bytes()).to_hex()[..32].to_string())
    }

    /// Whether every output of `entry` is stored and still has the shape it was imported with.
    /// An artifact that lost that shape is removed, so the rerun stores it anew.
    pub fn entry_intact(&self, entry: &Entry) -> bool {
        self.check_entry(entry, true)
    }

    /// Like [`Self::entry_intact`], but removes nothing (for `plan`).
    pub fn entry_looks_intact(&self, entry: &Entry) -> bool {
        self.check_entry(entry, false)
    }

    fn check_entry(&self, entry: &Entry, remove_damaged: bool) -> bool {
        let mut intact = true;
        for d in entry.outputs.values() {
            if !self.has_object(d) {
                intact = false;
                continue;
            }
            if let Some(expected) = entry.shapes.get(d) {
                if self.shape(d).ok().as_ref() != Some(expected) {
                    intact = false;
                    if !remove_damaged {
                        continue;
                    }
                    tracing::warn!(
                        artifact = %d,
                        "a cached artifact was damaged (files missing or resized); it is rebuilt"
                    );
                    let _ = remove_all(&self.object_path(d));
                }
            }
        }
        intact
    }

    /// A file's content digest, re-hashed only when its size or mtime changed.
    pub fn file_digest(&self, path: &Path) -> Result<Digest, CacheError> {
        let meta = fs::metadata(path).map_err(|e| io_err(path, e))?;
        require_regular(path, &meta).map_err(|e| io_err(path, e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        if let Some(m) = self.store.file_memo(&key)? {
            if m.size == meta.len() && m.mtime_ns == mtime_ns && !meta.is_dir() {
                return Ok(m.digest);
            }
        }
        let digest = digest_path(path).map_err(|e| io_err(path, e))?;
        // A file changed within the mtime clock's resolution of hashing could change again unseen
        // ("racy" timestamps): remember only digests of files older than two seconds.
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        if !meta.is_dir() && now_ns.saturating_sub(mtime_ns) > 2_000_000_000 {
            self.store.set_file_memo(
                &key,
                &FileMemo {
                    size: meta.len(),
                    mtime_ns,
                    digest: digest.clone(),
                },
            )?;
        }
        Ok(digest)
    }

    /// Re-hashes every artifact; evicts entries whose artifacts are missing or corrupt.
    pub fn verify(&self) -> Result<VerifyReport, CacheError> {
        let mut report = VerifyReport::default();
        let mut checked: HashMap<String, Result<(), String>> = HashMap::new();
        for (key, entry) in self.store.entries()? {
            report.entries += 1;
            let entry = match entry {
                Ok(e) => e,
                Err(why) => {
                    self.store.remove(&key)?;
                    report
                        .evicted
                        .push((key, "?".into(), format!("unreadable entry: {why}")));
                    continue;
                }
            };
            let mut bad = None;
            for (name, digest) in &entry.outputs {
                let verdict = checked.entry(digest.clone()).or_insert_with(|| {
                    let p = self.object_path(digest);
                    match digest_path(&p) {
                        Ok(d) if &d == digest => Ok(()),
                        Ok(d) => Err(format!("artifact {} has digest {d}", &digest[..12])),
                        Err(e) => Err(format!("artifact {}: {e}", &digest[..digest.len().min(12)])),
                    }
                });
                if let Err(why) = verdict {
                    bad = Some(format!("output \"{name}\": {why}"));
                    break;
                }
            }
            if let Some(why) = bad {
                self.store.remove(&key)?;
                report.evicted.push((key, entry.node.clone(), why));
            }
        }
        for (digest, verdict) in &checked {
            report.objects += 1;
            if verdict.is_err() {
                let p = self.object_path(digest);
                let _ = remove_all(&p);
            }
        }
        self.store.flush()?;
        Ok(report)
    }

    /// Removes artifacts no entry refers to; with `only_latest`, first drops entries that are
    /// not the latest of their node.
    pub fn gc(&self, only_latest: bool) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        if only_latest {
            let latest: HashSet<String> = self
                .store
                .lasts()?
                .into_iter()
                .map(|(_, r)| r.key)
                .collect();
            for (key, _) in self.store.entries()? {
                if !latest.contains(&key) {
                    self.store.remove(&key)?;
                    report.entries_removed += 1;
                }
            }
        }
        let mut referenced = HashSet::new();
        for (_, e) in self.store.entries()? {
            if let Ok(e) = e {
                referenced.extend(e.outputs.into_values());
            }
        }
        let objects = self.root.join("objects");
        for shard in fs::read_dir(&objects).map_err(|e| io_err(&objects, e))? {
            let shard = shard.map_err(|e| io_err(&objects, e))?.path();
            for obj in fs::read_dir(&shard).map_err(|e| io_err(&shard, e))? {
                let obj = obj.map_err(|e| io_err(&shard, e))?;
                let name = obj.file_name().to_string_lossy().to_string();
                if !referenced.contains(&name) {
                    report.bytes_freed += size_of_path(&obj.path());
                    remove_all(&obj.path()).map_err(|e| io_err(&obj.path(), e))?;
                    report.objects_removed += 1;
                }
            }
        }
        self.store.flush()?;
        Ok(report)
    }
}

fn libc_exdev() -> i32 {
    18
}

/// A suffix no other import of this process uses at the same time.
pub(crate) fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Total bytes of the files under a path.
pub fn size_of_path(p: &Path) -> u64 {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| size_of_path(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Removes a file or folder, read-only files included.
pub fn remove_all(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            make_writable(p)?;
            fs::remove_dir_all(p)
        }
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_mode(p: &Path, read_only: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = fs::symlink_metadata(p)?;
    if m.file_type().is_symlink() {
        return Ok(());
    }
    if m.is_dir() {
        for e in fs::read_dir(p)? {
            set_mode(&e?.path(), read_only)?;
        }
        // Folders stay writable so the store can remove them without privileges.
        return Ok(());
    }
    let mode = m.permissions().mode();
    let new = if read_only {
        mode & !0o222
    } else {
        mode | 0o200
    };
    if new != mode {
        fs::set_permissions(p, fs::Permissions::from_mode(new))?;
    }
    Ok(())
}

fn make_read_only(p: &Path) -> io::Result<()> {
    set_mode(p, true)
}

fn make_writable(p: &Path) -> io::Result<()> {
    set_mode(p, false)
}

fn copy_all(from: &Path, to: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(from)?;
    if m.file_type().is_symlink() {
        // A link is stored as a link (as its digest records it), never followed.
        return std::os::unix::fs::symlink(fs::read_link(from)?, to);
    }
    require_regular(from, &m)?;
    if m.is_dir() {
        fs::create_dir_all(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            copy_all(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(from, to).map(|_| ())
    }
}

/// Refuses what is not a plain file or folder (a FIFO blocks on open, `/dev/zero` never ends).
fn require_regular(p: &Path, m: &fs::Metadata) -> io::Result<()> {
    if m.is_file() || m.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::FileTypeExt;
    let ft = m.file_type();
    let what = if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is {what}; expected a regular file or folder",
            p.display()
        ),
    ))
}

fn hash_file(p: &Path) -> io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let meta = fs::metadata(p)?;
    require_regular(p, &meta)?;
    let len = meta.len();
    if len > 16 * 1024 * 1024 {
        h.update_mmap_rayon(p)?;
    } else {
        h.update_mmap(p)?;
    }
    Ok(h.finalize())
}

/// The digest of a file (blake3 of its bytes) or a folder (blake3 of its sorted listing of
/// relative paths, kinds and file digests).
pub fn digest_path(p: &Path) -> io::Result<Digest> {
    let m = fs::symlink_metadata(p)?;
    if !m.is_dir() {
        return Ok(hash_file(p)?.to_hex().to_string());
    }
    let mut listing = String::from("relabel-dir-v1\n");
    let mut stack = vec![PathBuf::new()];
    let mut rows = Vec::new();
    while let Some(rel) = stack.pop() {
        let dir = p.join(&rel);
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let r = rel.join(e.file_name());
            let ft = e.file_type()?;
            let name = r.to_string_lossy().replace('\\', "/");
            if ft.is_dir() {
                rows.push(format!("D {name}"));
                stack.push(r);
            } else if ft.is_symlink() {
                let target = fs::read_link(e.path())?;
                rows.push(format!("L {name} {}", target.display()));
            } else {
                rows.push(format!("F {name} {}", hash_file(&e.path())?.to_hex()));
            }
        }
    }
    rows.sort();
    for r in rows {
        listing.push_str(&r);
        listing.push('\n');
    }
    Ok(blake3::hash(listing.as_bytes()).to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_is_content_addressed_and_verify_evicts_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c"), LockWait::NoWait).unwrap();
        let a = cache.tmp_dir().join("a");
        fs::write(&a, b"hello").unwrap();
        let d = cache.import(&a).unwrap();
        assert_eq!(d, blake3::hash(b"hello").to_hex().to_string());
        assert!(!a.exists());
        let entry = Entry {
            node: "n".into(),
            kind: "k".into(),
            version: "1".into(),
            outputs: [("out".to_string(), d.clone())].into(),
            metrics: Metrics::new(),
            seconds: 0.0,
            created: String::new(),
            shapes: BTreeMap::new(),
        };
        cache.store().put("key1", &entry).unwrap();
        assert_eq!(cache.verify().unwrap().evicted.len(), 0);
        // Corrupt the artifact behind the store's back.
        let p = cache.object_path(&d);
        make_writable(&p).unwrap();
        fs::write(&p, b"HELLO").unwrap();
        let report = cache.verify().unwrap();
        assert_eq!(report.evicted.len(), 1);
        assert!(cache.store().get("key1").unwrap().is_none());
        assert!(!p.exists());
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Cache::open(dir.path(), LockWait::NoWait).unwrap();
        assert!(matches!(
            Cache::open(dir.path(), LockWait::NoWait),
            Err(CacheError::Busy(_))
        ));
    }

    #[test]
    fn folder_digests_depend_on_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::create_dir_all(a.join("sub")).unwrap();
        fs::write(a.join("sub/x"), b"1").unwrap();
        let d1 = digest_path(&a).unwrap();
        fs::write(a.join("sub/x"), b"2").unwrap();
        let d2 = digest_path(&a).unwrap();
        fs::rename(a.join("sub/x"), a.join("sub/y")).unwrap();
        let d3 = digest_path(&a).unwrap();
        assert!(d1 != d2 && d2 != d3 && d1 != d3);
    }

    #[test]
    fn memo_tables_survive_reopening_and_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let req =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let same_req_reordered =
            serde_json::json!({"messages": [{"content": "hi", "role": "user"}], "model": "m"});
        {
            let cache = Cache::open(dir.path(), LockWait::NoWait).unwrap();
            cache
                .memo("llm")
                .put(&req, &serde_json::json!({"answer": "a"}))
                .unwrap();
        }
        let cache = Cache::open(dir.path(), LockWait::NoWait).unwrap();
        let llm = cache.memo("llm");
        assert_eq!(
            llm.get(&same_req_reordered).unwrap(),
            Some(serde_json::json!({"answer": "a"}))
        );
        assert_eq!((llm.hits(), llm.misses()), (1, 0));
        let other = cache.memo("other");
        assert_eq!(other.get(&req).unwrap(), None);
        assert_eq!(
            (
                cache.store().memo_len("llm"),
                cache.store().memo_len("other")
            ),
            (1, 0)
        );
    }
}
