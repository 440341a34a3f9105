//! Integration tests for `store_node::storage`: sled persistence across reopen, group commit, flush
//! failures, periodic mode and policy parsing.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use store_node::error::{Error, Result};
use store_node::storage::{
    self, Durability, DurabilityPolicy, MemoryStorage, SledStorage, Storage, StorageKind,
};

fn wal_sizes() -> storage::WalSizes {
    storage::WalSizes::of(&featurestore::Limits::default())
}

fn sorted(mut v: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    v.sort();
    v
}

fn rec(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

/// Writes a/b/c, replaces a, removes b and a never-present key, flushes.
fn write_sample(s: &dyn Storage) {
    s.put(b"a", b"1").unwrap();
    s.put(b"b", b"2").unwrap();
    s.put(b"c", &[0, 255, 7]).unwrap();
    s.put(b"a", b"1bis").unwrap();
    s.remove(b"b").unwrap();
    s.remove(b"never-there").unwrap();
    s.flush().unwrap();
}

fn expected_sample() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![rec("a", "1bis"), (b"c".to_vec(), vec![0, 255, 7])]
}

/// Polls `cond` every few ms until it holds, panicking after `limit`.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// 1. Persistence across drop + reopen.

/// Reopens a sled directory in this process. sled's own threads may hold its file lock for a moment
/// after the previous handle is dropped (a process restart, as a node does, never meets this), so a
/// `WouldBlock` on the lock is retried for up to 5 s; any other error is returned at once.
fn reopen(dir: &Path) -> SledStorage {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match SledStorage::open(dir) {
            Ok(s) => return s,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    || format!("{e:?}").contains("WouldBlock") =>
            {
                assert!(Instant::now() < deadline, "sled kept its lock: {e:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reopen failed: {e:?}"),
        }
    }
}

#[test]
fn sled_reopen_keeps_flushed_and_drops_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(s.kind(), "sled");
        assert!(s.load_all().unwrap().is_empty());
        write_sample(&s);
        assert!(s.disk_bytes().unwrap() > 0);
    }
    let s = reopen(dir.path());
    assert_eq!(sorted(s.load_all().unwrap()), expected_sample());
    // Still writable after reopen, and a second reopen sees the new state.
    s.remove(b"a").unwrap();
    s.flush().unwrap();
    drop(s);
    let s = reopen(dir.path());
    assert_eq!(
        sorted(s.load_all().unwrap()),
        vec![(b"c".to_vec(), vec![0, 255, 7])]
    );
}

#[test]
fn trait_object_via_open_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("db");
    {
        let s = storage::open(StorageKind::Sled, &path, 1 << 24, wal_sizes()).unwrap();
        assert_eq!(s.kind(), "sled");
        write_sample(s.as_ref());
    }
    let s = storage::open(StorageKind::Sled, &path, 1 << 24, wal_sizes()).unwrap();
    assert_eq!(sorted(s.load_all().unwrap()), expected_sample());

    let m = storage::open(
        StorageKind::Memory,
        Path::new("/unused"),
        1 << 24,
        wal_sizes(),
    )
    .unwrap();
    assert_eq!(m.kind(), "memory");
    write_sample(m.as_ref());
    assert_eq!(sorted(m.load_all().unwrap()), expected_sample());
    assert_eq!(m.disk_bytes().unwrap(), 0);
}

#[test]
fn opening_a_file_as_directory_is_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = SledStorage::open(&file).unwrap_err();
    assert!(matches!(err, Error::Sled { .. }), "{err:?}");
}

// 2. Group commit on sled.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_flushes() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(SledStorage::open(dir.path()).unwrap());
    let durability = Durability::start(Arc::clone(&store), DurabilityPolicy::Sync).unwrap();

    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let store = Arc::clone(&store);
        let durability = Arc::clone(&durability);
        tasks.push(tokio::spawn(async move {
            let key = format!("user:{i:04}");
            store
                .put(key.as_bytes(), &(i as u64).to_le_bytes())
                .unwrap();
            let ticket = durability.written();
            durability.wait_durable(ticket).await.unwrap();
            ticket
        }));
    }
    let mut seqs = Vec::with_capacity(N);
    for t in tasks {
        let ticket = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("a writer hung")
            .unwrap();
        seqs.push(ticket.seq());
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=N as u64).collect::<Vec<_>>(),
        "tickets are unique"
    );

    let stats = durability.stats();
    eprintln!("group commit stats: {stats:?}");
    assert!(stats.flushes >= 1, "{stats:?}");
    assert!(
        stats.flushes < N as u64,
        "writes did not share flushes: {stats:?}"
    );
    assert_eq!(stats.flush_failures, 0);
    assert_eq!(stats.writes, N as u64);
    assert_eq!(stats.durable_seq, N as u64);

    durability.shutdown().await.unwrap();
    drop(durability);
    drop(store);
    let reopened = reopen(dir.path());
    assert_eq!(reopened.load_all().unwrap().len(), N);
}

// 3. Failing flushes are reported to the waiters they cover.

/// MemoryStorage whose `flush` fails while `fail` is set.
#[derive(Default)]
struct FlakyStorage {
    inner: MemoryStorage,
    fail: AtomicBool,
    flush_calls: AtomicU64,
}

impl Storage for FlakyStorage {
    fn load_all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.load_all()
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put(key, value)
    }
    fn merge(&self, key: &[u8], delta: &[u8]) -> Result<()> {
        self.inner.merge(key, delta)
    }
    fn remove(&self, key: &[u8]) -> Result<()> {
        self.inner.remove(key)
    }
    fn flush(&self) -> Result<()> {
        self.flush_calls.fetch_add(1, SeqCst);
        if self.fail.load(SeqCst) {
            return Err(Error::Storage("injected flush failure".to_owned()));
        }
        self.inner.flush()
    }
    fn disk_bytes(&self) -> Result<u64> {
        self.inner.disk_bytes()
    }
    fn kind(&self) -> &'static str {
        "flaky"
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_meta(name)
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.inner.put_meta(name, value)
    }

    fn remove_meta(&self, name: &str) -> Result<()> {
        self.inner.remove_meta(name)
    }

    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.scan_meta(prefix)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_flush_fails_its_waiters_then_recovers() {
    let flaky = Arc::new(FlakyStorage::default());
    let store: Arc<dyn Storage> = flaky.clone();
    let durability = Durability::start(Arc::clone(&store), DurabilityPolicy::Sync).unwrap();

    // Healthy first.
    store.put(b"ok-1", b"x").unwrap();
    durability.wait_durable(durability.written()).await.unwrap();

    // Broken: every waiter is told its write is not durable.
    flaky.fail.store(true, SeqCst);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = Arc::clone(&store);
        let durability = Arc::clone(&durability);
        tasks.push(tokio::spawn(async move {
            store.put(format!("bad-{i}").as_bytes(), b"x").unwrap();
            durability.wait_durable(durability.written()).await
        }));
    }
    for t in tasks {
        let res = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("a waiter hung on a failed flush")
            .unwrap();
        match res {
            Err(Error::Storage(msg)) => assert!(msg.contains("injected flush failure"), "{msg}"),
            other => panic!("expected a storage error, got {other:?}"),
        }
    }
    let stats = durability.stats();
    assert!(stats.flush_failures >= 1, "{stats:?}");
    assert!(stats.durable_seq < 21, "{stats:?}");

    // Fixed: later writes are flushed and acked again.
    flaky.fail.store(false, SeqCst);
    store.put(b"ok-2", b"x").unwrap();
    let ticket = durability.written();
    tokio::time::timeout(Duration::from_secs(10), durability.wait_durable(ticket))
        .await
        .expect("flusher did not retry after a failure")
        .unwrap();
    // That flush covered the earlier (failed) writes too.
    assert_eq!(durability.stats().durable_seq, ticket.seq());

    durability.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_reports_a_failed_final_flush() {
    let flaky = Arc::new(FlakyStorage::default());
    let durability = Durability::start(flaky.clone(), DurabilityPolicy::Sync).unwrap();
    flaky.fail.store(true, SeqCst);
    assert!(durability.shutdown().await.is_err());
}

/// MemoryStorage whose `flush` blocks until the test hands it a permit.
#[derive(Default)]
struct GatedStorage {
    inner: MemoryStorage,
    started: AtomicU64,
    permits: Mutex<u64>,
    cv: Condvar,
}

impl GatedStorage {
    fn release(&self, n: u64) {
        *self.permits.lock().unwrap() += n;
        self.cv.notify_all();
    }
}

impl Storage for GatedStorage {
    fn load_all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.load_all()
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put(key, value)
    }
    fn merge(&self, key: &[u8], delta: &[u8]) -> Result<()> {
        self.inner.merge(key, delta)
    }
    fn remove(&self, key: &[u8]) -> Result<()> {
        self.inner.remove(key)
    }
    fn flush(&self) -> Result<()> {
        self.started.fetch_add(1, SeqCst);
        let mut permits = self.permits.lock().unwrap();
        while *permits == 0 {
            permits = self.cv.wait(permits).unwrap();
        }
        *permits -= 1;
        Ok(())
    }
    fn disk_bytes(&self) -> Result<u64> {
        Ok(0)
    }
    fn kind(&self) -> &'static str {
        "gated"
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_meta(name)
    }

    fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.inner.put_meta(name, value)
    }

    fn remove_meta(&self, name: &str) -> Result<()> {
        self.inner.remove_meta(name)
    }

    fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.scan_meta(prefix)
    }
}

/// A write issued while a flush is running is NOT acked by that flush, only by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_flush_does_not_cover_later_writes() {
    let gated = Arc::new(GatedStorage::default());
    let durability = Durability::start(gated.clone(), DurabilityPolicy::Sync).unwrap();
    let limit = Duration::from_secs(10);

    gated.put(b"a", b"1").unwrap();
    let ta = durability.written();
    eventually(limit, "first flush to start", || {
        gated.started.load(SeqCst) == 1
    })
    .await;

    gated.put(b"b", b"2").unwrap();
    let tb = durability.written();
    let waiter_b = {
        let durability = Arc::clone(&durability);
        tokio::spawn(async move { durability.wait_durable(tb).await })
    };

    gated.release(1); // completes the first flush only
    durability.wait_durable(ta).await.unwrap();
    eventually(limit, "second flush to start", || {
        gated.started.load(SeqCst) == 2
    })
    .await;
    assert!(
        !waiter_b.is_finished(),
        "b was acked by a flush that started before it"
    );
    assert_eq!(durability.stats().durable_seq, ta.seq());

    gated.release(1);
    tokio::time::timeout(limit, waiter_b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(durability.stats().flushes, 2);

    gated.release(u64::MAX / 2); // let the final flush through
    durability.shutdown().await.unwrap();
}

// 4. Periodic mode.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_acks_immediately_and_flushes_soon() {
    const INTERVAL_MS: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(SledStorage::open(dir.path()).unwrap());
    let durability = Durability::start(
        Arc::clone(&store),
        DurabilityPolicy::Periodic {
            interval_ms: INTERVAL_MS,
        },
    )
    .unwrap();

    store.put(b"k", b"v").unwrap();
    let ticket = durability.written();
    // A zero timeout still polls the future once: it must be ready on its first poll.
    tokio::time::timeout(Duration::ZERO, durability.wait_durable(ticket))
        .await
        .expect("periodic wait_durable did not resolve immediately")
        .unwrap();

    eventually(Duration::from_secs(5), "a periodic flush", || {
        durability.stats().durable_seq >= ticket.seq()
    })
    .await;
    let flushes = durability.stats().flushes;
    assert!(flushes >= 1);

    // Idle: ticks without new writes do not flush.
    tokio::time::sleep(Duration::from_millis(5 * INTERVAL_MS)).await;
    assert_eq!(durability.stats().flushes, flushes);

    durability.shutdown().await.unwrap();
    assert_eq!(
        durability.stats().flushes,
        flushes + 1,
        "final flush at shutdown"
    );
}

// 5. Policy parsing.

#[test]
fn durability_policy_parses() {
    assert_eq!(
        "sync".parse::<DurabilityPolicy>().unwrap(),
        DurabilityPolicy::Sync
    );
    assert_eq!(
        "periodic:50".parse::<DurabilityPolicy>().unwrap(),
        DurabilityPolicy::Periodic { interval_ms: 50 }
    );
    assert_eq!(DurabilityPolicy::default(), DurabilityPolicy::Sync);

    let p: DurabilityPolicy = toml::from_str("mode = \"periodic\"\ninterval_ms = 50").unwrap();
    assert_eq!(p, DurabilityPolicy::Periodic { interval_ms: 50 });
    let p: DurabilityPolicy = toml::from_str("mode = \"sync\"").unwrap();
    assert_eq!(p, DurabilityPolicy::Sync);

    #[derive(serde::Deserialize)]
    struct NodeConfig {
        durability: DurabilityPolicy,
        storage: StorageKind,
    }
    let cfg: NodeConfig = toml::from_str(
        "storage = \"memory\"\n[durability]\nmode = \"periodic\"\ninterval_ms = 100\n",
    )
    .unwrap();
    assert_eq!(
        cfg.durability,
        DurabilityPolicy::Periodic { interval_ms: 100 }
    );
    assert_eq!(cfg.storage, StorageKind::Memory);

    for bad in ["periodic:abc", "bogus", "periodic:0", ""] {
        let err = bad.parse::<DurabilityPolicy>().unwrap_err();
        assert!(
            matches!(err, Error::Config(_) | Error::ConfigValue { .. }),
            "{bad:?}: {err:?}"
        );
    }
    for bad in [
        "mode = \"bogus\"",
        "mode = \"periodic\"",
        "mode = \"sync\"\ninterval_ms = 5",
        "mode = \"periodic\"\ninterval_ms = 50\nextra = 1",
    ] {
        assert!(
            toml::from_str::<DurabilityPolicy>(bad).is_err(),
            "accepted {bad:?}"
        );
    }
}
