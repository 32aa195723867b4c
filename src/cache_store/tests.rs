//! The store against a real folder: write, restart, read back; damage of every kind;
//! the budget; hostile names.

use std::sync::mpsc;

use super::block_file::tests::{identity, record};
use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "mlx-serve-store-{name}-{}-{}",
            std::process::id(),
            now_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config(root: &Path, max_bytes: u64) -> StoreConfig {
    StoreConfig {
        root: root.to_path_buf(),
        max_bytes,
        encoding: Encoding::Lossless,
        min_free_bytes: 0,
    }
}

/// A chain of `n` blocks of 4 tokens.
fn chain(n: u32) -> Vec<BlockRecord> {
    let mut parent = None;
    (0..n)
        .map(|i| {
            let block = record(parent, &[4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4]);
            parent = Some(block.hash);
            block
        })
        .collect()
}

fn wants(blocks: &[BlockRecord]) -> Vec<BlockWant> {
    blocks
        .iter()
        .map(|b| BlockWant {
            hash: b.hash,
            parent: b.parent,
            tokens: b.tokens.clone(),
        })
        .collect()
}

fn write_all(store: &KvStore, blocks: &[BlockRecord]) {
    for block in blocks {
        assert!(store.claim(block.hash));
        store.write(block.clone());
    }
    assert!(store.flush(Duration::from_secs(10)));
}

fn read(store: &KvStore, wants: Vec<BlockWant>) -> ReadOutcome {
    let (tx, rx) = mpsc::channel();
    store.read(wants, move |outcome| tx.send(outcome).unwrap());
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

fn hashes(blocks: &[BlockRecord]) -> Vec<BlockHash> {
    blocks.iter().map(|b| b.hash).collect()
}

#[test]
fn blocks_survive_a_restart_and_come_back_verified() {
    let dir = TempDir::new("restart");
    let blocks = chain(3);
    {
        let store = KvStore::open(config(&dir.0, 1 << 30), identity()).unwrap();
        write_all(&store, &blocks);
        assert!(!store.claim(blocks[0].hash), "written once");
        assert_eq!(get(&store.counters().blocks_written), 3);
    }
    let store = KvStore::open(config(&dir.0, 1 << 30), identity()).unwrap();
    assert_eq!(store.stored().leading_run(&hashes(&blocks)), 3);
    let outcome = read(&store, wants(&blocks));
    assert_eq!(outcome.records, blocks);
    assert_eq!(outcome.miss, None);
    // Another model in the same folder sees none of them.
    let mut other = identity();
    other.fingerprint = "sha256:another".to_owned();
    let foreign = KvStore::open(config(&dir.0, 1 << 30), other).unwrap();
    assert_eq!(foreign.stored().leading_run(&hashes(&blocks)), 0);
    assert_eq!(
        foreign.snapshot().files,
        3,
        "but it counts them in the budget"
    );
}

#[test]
fn each_encoding_keeps_its_own_blocks() {
    let dir = TempDir::new("encodings");
    let blocks = chain(2);
    let with = |encoding| StoreConfig {
        encoding,
        ..config(&dir.0, 1 << 30)
    };
    {
        let store = KvStore::open(with(Encoding::Q4), identity()).unwrap();
        write_all(&store, &blocks);
        let outcome = read(&store, wants(&blocks));
        assert_eq!(outcome.miss, None);
        assert_eq!(hashes(&outcome.records), hashes(&blocks));
        assert_ne!(outcome.records, blocks, "q4 is lossy");
    }
    // A lossless store in the same folder never reads the quantized blocks.
    let store = KvStore::open(with(Encoding::Lossless), identity()).unwrap();
    assert_eq!(store.stored().leading_run(&hashes(&blocks)), 0);
    let store = KvStore::open(with(Encoding::Q4), identity()).unwrap();
    assert_eq!(store.stored().leading_run(&hashes(&blocks)), 2);
    // A head dimension no quantization group divides is refused up front.
    let mut odd = identity();
    odd.layout.head_dim = 40;
    let error = KvStore::open(with(Encoding::Q8), odd).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("40"), "{error}");
}

#[test]
fn damaged_files_are_counted_misses_and_go_to_quarantine() {
    let dir = TempDir::new("damage");
    let blocks = chain(3);
    let store = KvStore::open(config(&dir.0, 1 << 30), identity()).unwrap();
    write_all(&store, &blocks);
    // A flipped byte in the second block's data.
    let second = store.shared.block_path(&blocks[1].hash);
    let mut bytes = fs::read(&second).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&second, &bytes).unwrap();
    let outcome = read(&store, wants(&blocks));
    assert_eq!(outcome.records, blocks[..1]);
    assert_eq!(outcome.miss, Some(Miss::Checksum));
    assert!(!second.exists());
    assert_eq!(store.snapshot().quarantined_files, 1);
    assert_eq!(store.stored().leading_run(&hashes(&blocks)), 1);
    let misses = store.counters().misses();
    assert!(misses.contains(&("checksum", 1)), "{misses:?}");
    // Asking for the same hash with other tokens is refused too.
    let mut wrong = wants(&blocks[..1]);
    wrong[0].tokens[0] += 1;
    assert!(read(&store, wrong).miss.unwrap().is_damage());
}

#[test]
fn start_up_removes_torn_writes_and_quarantines_truncated_files() {
    let dir = TempDir::new("torn");
    let blocks = chain(3);
    let (first, third) = {
        let store = KvStore::open(config(&dir.0, 1 << 30), identity()).unwrap();
        write_all(&store, &blocks);
        (
            store.shared.block_path(&blocks[0].hash),
            store.shared.block_path(&blocks[2].hash),
        )
    };
    // What a crash can leave: a temporary, and (on a file system without atomic rename)
    // a short file.
    let leftover = first.with_file_name(".x.safetensors.1.2.tmp");
    fs::write(&leftover, b"partial").unwrap();
    let bytes = fs::read(&third).unwrap();
    fs::write(&third, &bytes[..bytes.len() / 2]).unwrap();
    let store = KvStore::open(config(&dir.0, 1 << 30), identity()).unwrap();
    assert!(!leftover.exists());
    assert!(!third.exists());
    assert_eq!(get(&store.counters().leftovers_removed), 1);
    assert_eq!(store.snapshot().quarantined_files, 1);
    assert_eq!(store.stored().leading_run(&hashes(&blocks)), 2);
    assert_eq!(read(&store, wants(&blocks)).records, blocks[..2]);
}

#[test]
fn the_budget_evicts_least_recently_used_and_drops_what_cannot_fit() {
    let dir = TempDir::new("budget");
    let blocks = chain(4);
    let one = block_file::encode(&blocks[0], &identity(), Encoding::Lossless).len() as u64;
    let store = KvStore::open(config(&dir.0, 2 * one + one / 2), identity()).unwrap();
    write_all(&store, &blocks[..2]);
    // Reading the first makes the second the least recently used.
    assert_eq!(read(&store, wants(&blocks[..1])).records.len(), 1);
    write_all(&store, &blocks[2..3]);
    let snapshot = store.snapshot();
    assert_eq!((snapshot.files, snapshot.blocks), (2, 2));
    assert!(snapshot.bytes <= snapshot.budget);
    assert_eq!(store.stored().leading_run(&hashes(&blocks[..1])), 1);
    assert_eq!(store.stored().leading_run(&hashes(&blocks[1..2])), 0);
    assert_eq!(get(&store.counters().evicted), 1);
    // A restart with a smaller budget evicts down to it.
    drop(store);
    let store = KvStore::open(config(&dir.0, one * 3 / 2), identity()).unwrap();
    assert_eq!(store.snapshot().files, 1);
    // A budget smaller than one block: the write is dropped and counted.
    drop(store);
    let store = KvStore::open(config(&dir.0, one / 2), identity()).unwrap();
    write_all(&store, &blocks[3..]);
    assert_eq!(store.snapshot().files, 0);
    assert!(store.counters().drops().contains(&("over_budget", 1)));
    assert!(
        store.claim(blocks[3].hash),
        "a dropped block can be offered again"
    );
}

#[test]
fn a_full_disk_drops_writes_instead_of_filling_it() {
    let dir = TempDir::new("disk");
    let mut config = config(&dir.0, 1 << 30);
    config.min_free_bytes = u64::MAX / 2;
    let store = KvStore::open(config, identity()).unwrap();
    write_all(&store, &chain(1));
    assert_eq!(store.snapshot().files, 0);
    assert!(store.counters().drops().contains(&("disk_full", 1)));
}

#[test]
fn manifests_are_written_for_valid_ids_only() {
    let dir = TempDir::new("manifest");
    let store = KvStore::open(config(&dir.0, 1 << 30), identity()).unwrap();
    let manifest = |id: &str| AgentManifest {
        agent_id: id.to_owned(),
        block_hashes: vec![chain(1)[0].hash.to_hex()],
        token_ids: vec![1, 2, 3, 4],
        last_used_ms: 1,
        block_bytes: 128,
    };
    store.write_manifest(manifest("agent-1"));
    store.write_manifest(manifest("../escape"));
    assert!(store.flush(Duration::from_secs(10)));
    let written = fs::read(store.dir().join("agents").join("agent-1.json")).unwrap();
    let back: AgentManifest = serde_json::from_slice(&written).unwrap();
    assert_eq!(back, manifest("agent-1"));
    assert!(!store.dir().join("escape.json").exists());
    assert!(!dir.0.join("v1").join("escape.json").exists());
}
