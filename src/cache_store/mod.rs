//! The warm tier: KV blocks on disk, so an agent's context survives eviction from the pool
//! and restarts. Pure Rust (no MLX): the engine hands over and takes back plain bytes.
//!
//! - **Content addressed.** A block file is named by the chained block hash the pool uses
//!   (stable across runs), inside a folder per model fingerprint, KV layout and encoding:
//!   `<root>/v1/<namespace>/<hh>/<hash>.safetensors` (one file per block; see
//!   docs/agent-memory.md for why). Agents that share a prefix share its files.
//! - **Never blocks the engine.** Writes go to a writer thread through a queue bounded in
//!   bytes ([`WRITE_QUEUE_BYTES`]); reads go to a reader thread that verifies each file and
//!   hands the bytes back through a callback.
//! - **Never wrong, never torn.** Files are replaced atomically ([`durable`]); every read is
//!   checked against the model, the layout, the hash chain and a checksum
//!   ([`block_file::decode`]); a damaged file is moved to `<root>/quarantine/` and counted
//!   as a miss, and the prompt is prefilled as if it had never been stored.
//! - **Bounded.** One budget covers every file under the root (all models), evicted least
//!   recently used first, and no write leaves less than the free-disk headroom.

pub mod block_file;
pub mod counters;
mod durable;
mod index;
pub mod layout;
pub mod manifest;
pub mod quantize;
mod scan;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use block_file::{BlockRecord, Miss, StoreIdentity};
pub use counters::{DropReason, StoreCounters};
pub use index::Index;
pub use layout::{Encoding, KvDtype, KvLayout};
pub use manifest::{AgentManifest, Cleared};

use crate::engine::block_pool::BlockHash;
use counters::{add, get};

/// Most bytes of block data waiting for the writer. A block that finds the queue full is
/// kept in the engine's pool and offered again later (counted as deferred).
pub const WRITE_QUEUE_BYTES: u64 = 64 << 20;
/// Free space every write leaves on the file system (1 GiB): the store never fills the
/// disk; a write that would is dropped and counted (`disk_full`).
pub const MIN_FREE_DISK_BYTES: u64 = 1 << 30;
/// Most files kept in quarantine; older ones are deleted.
pub const QUARANTINE_MAX_FILES: usize = 64;

/// Where the store lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub root: PathBuf,
    /// Budget for every file under `root`, all models together.
    pub max_bytes: u64,
    pub encoding: Encoding,
    /// Free space a write must leave on the file system.
    pub min_free_bytes: u64,
}

/// The default store folder: the platform's user cache folder (`~/.cache/mlx-serve/kv`
/// on Linux, `~/Library/Caches/mlx-serve/kv` on macOS).
pub fn default_root() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("mlx-serve").join("kv"))
}

/// A block a restore wants: the reader checks the file holds exactly this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockWant {
    pub hash: BlockHash,
    pub parent: Option<BlockHash>,
    pub tokens: Vec<u32>,
}

/// What a read brought back: the wanted blocks from the first, up to the first miss.
#[derive(Debug)]
pub struct ReadOutcome {
    pub records: Vec<BlockRecord>,
    pub miss: Option<Miss>,
    pub elapsed: Duration,
}

type ReadDone = Box<dyn FnOnce(ReadOutcome) + Send>;

enum WriteJob {
    Block(BlockRecord),
    Manifest(AgentManifest),
    Flush(Sender<()>),
    DeleteAgent(String, Sender<Option<usize>>),
    Clear(Sender<Cleared>),
}

struct ReadJob {
    wants: Vec<BlockWant>,
    done: ReadDone,
}

/// A view of which of this model's blocks are on disk, for the scheduler's admission
/// (cheap to clone; empty when there is no store).
#[derive(Debug, Clone, Default)]
pub struct StoredBlocks(Option<Arc<Mutex<Index>>>);

impl StoredBlocks {
    /// A view over `index` (tests build one without a store).
    pub fn new(index: Arc<Mutex<Index>>) -> StoredBlocks {
        StoredBlocks(Some(index))
    }

    /// How many of `hashes`, from the first, are on disk.
    pub fn leading_run(&self, hashes: &[BlockHash]) -> usize {
        self.0
            .as_ref()
            .map_or(0, |index| lock(index).leading_run(hashes))
    }
}

fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|p| p.into_inner())
}

/// Store facts for `/metrics`, `/v1/stats` and `GET /admin/kv-store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSnapshot {
    pub root: PathBuf,
    pub encoding: Encoding,
    pub bytes: u64,
    pub budget: u64,
    pub files: usize,
    /// This model's blocks.
    pub blocks: usize,
    pub quarantined_files: usize,
}

/// State the store's threads and its handle share.
struct Shared {
    identity: StoreIdentity,
    config: StoreConfig,
    /// `<root>/v1/<namespace>`.
    dir: PathBuf,
    quarantine_dir: PathBuf,
    index: Arc<Mutex<Index>>,
    counters: Arc<StoreCounters>,
}

/// The disk store of one loaded model. Dropping it lets its threads finish what is queued
/// and end.
pub struct KvStore {
    shared: Arc<Shared>,
    writes: Sender<WriteJob>,
    reads: Sender<ReadJob>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("root", &self.shared.config.root)
            .field("namespace", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl KvStore {
    /// Opens (creating) the store for `identity` under `config.root`: removes leftover
    /// temporaries, indexes every block file, quarantines this model's files whose header
    /// is damaged, evicts down to the budget, and starts the writer and reader threads.
    /// Fails when the folder cannot be made or read, or the encoding cannot store this
    /// layout (a quantized one whose groups do not divide the head dimension).
    pub fn open(config: StoreConfig, identity: StoreIdentity) -> io::Result<KvStore> {
        config
            .encoding
            .group_size(identity.layout.head_dim)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let namespace = layout::namespace(&identity.fingerprint, &identity.layout, config.encoding);
        let dir = config.root.join("v1").join(&namespace);
        let quarantine = config.root.join("quarantine");
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(&quarantine)?;
        let shared = Arc::new(Shared {
            index: Arc::new(Mutex::new(Index::new(config.max_bytes))),
            counters: Arc::new(StoreCounters::default()),
            identity,
            config,
            dir,
            quarantine_dir: quarantine,
        });
        scan::rebuild(&shared.config.root, &namespace, &shared)?;
        let (writes, write_jobs) = mpsc::channel();
        let (reads, read_jobs) = mpsc::channel();
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("kv-store-writer".to_owned())
            .spawn(move || writer.write_loop(write_jobs))?;
        let reader = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("kv-store-reader".to_owned())
            .spawn(move || reader.read_loop(read_jobs))?;
        Ok(KvStore {
            shared,
            writes,
            reads,
        })
    }

    pub fn identity(&self) -> &StoreIdentity {
        &self.shared.identity
    }

    pub fn counters(&self) -> &Arc<StoreCounters> {
        &self.shared.counters
    }

    /// The scheduler's view of what is on disk.
    pub fn stored(&self) -> StoredBlocks {
        StoredBlocks::new(Arc::clone(&self.shared.index))
    }

    /// Claims `hash` for writing: true when it is neither on disk nor queued. A claimed
    /// block must then be [`KvStore::write`]n or [`KvStore::unclaim`]ed.
    pub fn claim(&self, hash: BlockHash) -> bool {
        lock(&self.shared.index).claim(hash)
    }

    pub fn unclaim(&self, hash: &BlockHash) {
        lock(&self.shared.index).unclaim(hash);
    }

    /// How many more blocks the write queue has room for.
    pub fn room(&self) -> usize {
        let free = WRITE_QUEUE_BYTES.saturating_sub(get(&self.shared.counters.queued_bytes));
        (free / self.shared.identity.layout.block_bytes().max(1) as u64) as usize
    }

    /// Queues a claimed block for writing (the caller checked [`KvStore::room`], or is
    /// persisting at shutdown).
    pub fn write(&self, record: BlockRecord) {
        let counters = &self.shared.counters;
        add(&counters.queued_blocks, 1);
        add(
            &counters.queued_bytes,
            (record.keys.len() + record.values.len()) as u64,
        );
        let hash = record.hash;
        if self.writes.send(WriteJob::Block(record)).is_err() {
            // The writer died (a panic): nothing will be written; do not count it queued.
            self.unclaim(&hash);
            counters.queued_blocks.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Replaces an agent's manifest (after the blocks queued before it).
    pub fn write_manifest(&self, manifest: AgentManifest) {
        if manifest::valid_agent_id(&manifest.agent_id) {
            let _ = self.writes.send(WriteJob::Manifest(manifest));
        }
    }

    /// Reads and verifies `wants` in order on the reader thread, stopping at the first
    /// miss, and calls `done` there with what it got.
    pub fn read(&self, wants: Vec<BlockWant>, done: impl FnOnce(ReadOutcome) + Send + 'static) {
        let job = ReadJob {
            wants,
            done: Box::new(done),
        };
        if let Err(mpsc::SendError(job)) = self.reads.send(job) {
            (job.done)(ReadOutcome {
                records: Vec::new(),
                miss: Some(Miss::Absent),
                elapsed: Duration::ZERO,
            });
        }
    }

    /// Waits until everything queued before this call is on disk, at most `timeout`.
    /// False when the time ran out.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = mpsc::channel();
        if self.writes.send(WriteJob::Flush(done)).is_err() {
            return false;
        }
        wait.recv_timeout(timeout).is_ok()
    }

    pub fn snapshot(&self) -> StoreSnapshot {
        let index = lock(&self.shared.index);
        StoreSnapshot {
            root: self.shared.config.root.clone(),
            encoding: self.shared.config.encoding,
            bytes: index.bytes(),
            budget: index.budget(),
            files: index.files(),
            blocks: index.blocks(),
            quarantined_files: fs::read_dir(&self.shared.quarantine_dir)
                .map_or(0, |entries| entries.count()),
        }
    }

    /// Every agent manifest of this model, by id (reads files: not for the engine thread).
    pub fn agents(&self) -> Vec<AgentManifest> {
        self.shared.manifests()
    }

    /// One agent's manifest (reads a file: not for the engine thread).
    pub fn agent(&self, agent_id: &str) -> Option<AgentManifest> {
        self.shared.read_manifest(agent_id)
    }

    /// How many of `hashes` are on disk.
    pub fn count_on_disk(&self, hashes: &[BlockHash]) -> usize {
        let index = lock(&self.shared.index);
        hashes.iter().filter(|h| index.contains(h)).count()
    }

    /// Removes an agent's manifest and the blocks no other agent lists, after every write
    /// queued before (on the writer thread). `None`: no such agent. Blocks.
    pub fn delete_agent(&self, agent_id: &str) -> Option<usize> {
        let (done, wait) = mpsc::channel();
        self.writes
            .send(WriteJob::DeleteAgent(agent_id.to_owned(), done))
            .ok()?;
        wait.recv().ok().flatten()
    }

    /// Removes every block and manifest of this model, after every write queued before.
    /// Blocks.
    pub fn clear(&self) -> Cleared {
        let (done, wait) = mpsc::channel();
        if self.writes.send(WriteJob::Clear(done)).is_err() {
            return Cleared::default();
        }
        wait.recv().unwrap_or_default()
    }

    /// The folder of this model's blocks and manifests.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

/// Now, in nanoseconds since the Unix epoch (a file's last use).
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Shared {
    fn block_path(&self, hash: &BlockHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir
            .join(&hex[..2])
            .join(format!("{hex}.{}", scan::BLOCK_EXTENSION))
    }

    fn write_loop(&self, jobs: Receiver<WriteJob>) {
        for job in jobs {
            match job {
                WriteJob::Block(record) => {
                    let size = (record.keys.len() + record.values.len()) as u64;
                    let started = Instant::now();
                    self.write_block(&record);
                    add(
                        &self.counters.write_nanos,
                        started.elapsed().as_nanos() as u64,
                    );
                    self.counters
                        .queued_bytes
                        .fetch_sub(size, Ordering::Relaxed);
                    self.counters.queued_blocks.fetch_sub(1, Ordering::Relaxed);
                }
                WriteJob::Manifest(manifest) => self.write_manifest_file(&manifest),
                WriteJob::Flush(done) => {
                    let _ = done.send(());
                }
                WriteJob::DeleteAgent(agent_id, done) => {
                    let _ = done.send(self.delete_agent(&agent_id));
                }
                WriteJob::Clear(done) => {
                    let _ = done.send(self.clear());
                }
            }
        }
    }

    fn write_block(&self, record: &BlockRecord) {
        let bytes = block_file::encode(record, &self.identity, self.config.encoding);
        let size = bytes.len() as u64;
        let path = self.block_path(&record.hash);
        let dropped = |reason: DropReason| {
            self.counters.drop_write(reason);
            lock(&self.index).unclaim(&record.hash);
        };
        if free_bytes(&self.dir).is_some_and(|free| free < size + self.config.min_free_bytes) {
            return dropped(DropReason::DiskFull);
        }
        // The guard must be gone before `dropped` locks again.
        let reserved = lock(&self.index).reserve(size);
        let Ok(evicted) = reserved else {
            return dropped(DropReason::OverBudget);
        };
        for old in evicted {
            if fs::remove_file(&old).is_ok() {
                add(&self.counters.evicted, 1);
            }
        }
        match durable::write_atomic(&path, &bytes) {
            Ok(()) => {
                let mut index = lock(&self.index);
                index.commit(path, size, now_nanos(), Some(record.hash));
                index.unclaim(&record.hash);
                add(&self.counters.blocks_written, 1);
                add(&self.counters.bytes_written, size);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write a KV block");
                lock(&self.index).unreserve(size);
                dropped(DropReason::WriteError);
            }
        }
    }

    fn read_loop(&self, jobs: Receiver<ReadJob>) {
        for job in jobs {
            let outcome = self.read_blocks(job.wants);
            (job.done)(outcome);
        }
    }

    fn read_blocks(&self, wants: Vec<BlockWant>) -> ReadOutcome {
        let started = Instant::now();
        let mut records = Vec::with_capacity(wants.len());
        let mut miss = None;
        for want in wants {
            match self.read_block(&want) {
                Ok(record) => records.push(record),
                Err(m) => {
                    self.counters.miss(&m);
                    miss = Some(m);
                    break;
                }
            }
        }
        ReadOutcome {
            records,
            miss,
            elapsed: started.elapsed(),
        }
    }

    fn read_block(&self, want: &BlockWant) -> Result<BlockRecord, Miss> {
        let path = lock(&self.index)
            .path_of(&want.hash)
            .map(Path::to_path_buf)
            .ok_or(Miss::Absent)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Deleted behind our back, or unreadable: forget it.
                tracing::warn!(path = %path.display(), error = %e, "cannot read a KV block");
                lock(&self.index).remove(&path);
                return Err(Miss::Absent);
            }
        };
        let result = block_file::decode(&bytes, &self.identity, self.config.encoding, want.hash)
            .and_then(|record| {
                if record.tokens == want.tokens && record.parent == want.parent {
                    Ok(record)
                } else {
                    Err(Miss::Malformed("the file holds other tokens".to_owned()))
                }
            });
        match &result {
            Ok(_) => {
                let now = now_nanos();
                lock(&self.index).touch(&path, now);
                // The last use survives a restart as the file's mtime.
                if let Ok(file) = fs::File::options().append(true).open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
                add(&self.counters.blocks_read, 1);
                add(&self.counters.bytes_read, bytes.len() as u64);
            }
            Err(miss) => {
                tracing::warn!(path = %path.display(), %miss, "a stored KV block is not usable; prefilling instead");
                if miss.is_damage() {
                    self.quarantine(&path);
                }
            }
        }
        result
    }

    /// Moves a damaged file out of the index and into the quarantine folder (keeping the
    /// newest [`QUARANTINE_MAX_FILES`]).
    fn quarantine(&self, path: &Path) {
        lock(&self.index).remove(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = self.quarantine_dir.join(format!("{}-{name}", now_nanos()));
        if fs::rename(path, &target).is_err() {
            let _ = fs::remove_file(path);
        }
        add(&self.counters.quarantined, 1);
        scan::trim_quarantine(&self.quarantine_dir);
    }
}

/// Free bytes on the file system holding `path` (`None` where unknown).
fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a properly sized out-parameter.
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        Some(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests;
