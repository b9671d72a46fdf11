//! The port contract on the embedded backend, plus what only the embedded backend can show: two
//! processes on one data directory, signed URL checks, and restore-completed announcements.

use async_trait::async_trait;
use granary_contract::{BUCKET, Harness, TABLE, WORK, contract_tests};
use granary_embedded::{Embedded, EmbeddedOptions, SignedUrlError};
use granary_ports::{Backend, Cond, Item, Key, ManualClock, OutgoingMessage, PortError, QueueSpec, StorageClass, Update};
use std::sync::Arc;
use std::time::Duration;

const RESTORE_DELAY: Duration = Duration::from_secs(4 * 3600);
const VISIBILITY: Duration = Duration::from_secs(30);

struct EmbeddedHarness {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
}

impl EmbeddedHarness {
    fn options(&self) -> EmbeddedOptions {
        let mut resources = granary_contract::resources(VISIBILITY);
        resources.queues.push(QueueSpec::new("storage-ready"));
        let mut o = EmbeddedOptions::new(self.dir.path(), resources);
        o.clock = self.clock.clone();
        o.restore_delay = RESTORE_DELAY;
        o
    }

    fn open(&self) -> Embedded {
        Embedded::open(self.options()).expect("open embedded backend")
    }
}

async fn harness() -> EmbeddedHarness {
    EmbeddedHarness { dir: tempfile::tempdir().unwrap(), clock: Arc::new(ManualClock::starting_now()) }
}

#[async_trait]
impl Harness for EmbeddedHarness {
    async fn connect(&self) -> Backend {
        // A new pool of SQLite connections on the same file: what another Lambda instance would be.
        self.open().backend()
    }
    async fn advance(&self, by: Duration) {
        self.clock.advance(chrono::Duration::from_std(by).unwrap());
    }
    fn restore_delay(&self) -> Duration {
        RESTORE_DELAY
    }
    fn visibility(&self) -> Duration {
        VISIBILITY
    }
    fn delay(&self) -> Duration {
        Duration::from_secs(120)
    }
}

contract_tests!(harness());

fn query_param<'a>(url: &'a str, name: &str) -> &'a str {
    url.split(['?', '&']).find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap()
}

#[tokio::test]
async fn signed_url_refused_when_tampered_or_expired() {
    let h = harness().await;
    let e = h.open();
    let url = e.backend().blobs.signed_get_url(BUCKET, "a/b.txt", Duration::from_secs(60)).await.unwrap();
    let expires: i64 = query_param(&url, "expires").parse().unwrap();
    let sig = query_param(&url, "signature");
    assert_eq!(e.blobs.verify_signed(BUCKET, "a/b.txt", expires, sig), Ok(()));
    assert_eq!(e.blobs.verify_signed(BUCKET, "a/c.txt", expires, sig), Err(SignedUrlError::BadSignature), "another key");
    assert_eq!(e.blobs.verify_signed(BUCKET, "a/b.txt", expires + 3600, sig), Err(SignedUrlError::BadSignature), "a longer expiry");
    let mut flipped = sig.to_owned();
    flipped.replace_range(0..1, if sig.starts_with('0') { "1" } else { "0" });
    assert_eq!(e.blobs.verify_signed(BUCKET, "a/b.txt", expires, &flipped), Err(SignedUrlError::BadSignature));
    h.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(e.blobs.verify_signed(BUCKET, "a/b.txt", expires, sig), Err(SignedUrlError::Expired));
}

#[tokio::test]
async fn restore_completion_is_announced_on_the_queue_once() {
    let h = harness().await;
    let e = h.open();
    let b = e.backend();
    b.blobs.put(BUCKET, "cold/f.zip", Box::pin(std::io::Cursor::new(vec![7u8; 10])), StorageClass::Nearline).await.unwrap();
    b.blobs.request_restore(BUCKET, "cold/f.zip", 2).await.unwrap();
    assert_eq!(e.announce_completed_restores("storage-ready").await.unwrap(), 0, "nothing before the delay");
    h.clock.advance(chrono::Duration::from_std(RESTORE_DELAY).unwrap());
    assert_eq!(e.announce_completed_restores("storage-ready").await.unwrap(), 1);
    assert_eq!(e.announce_completed_restores("storage-ready").await.unwrap(), 0, "announced once");
    let got = b.queue.receive("storage-ready", 10, None, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    let event: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(event["detail-type"], "Object Restore Completed");
    assert_eq!(event["source"], "aws.s3");
    assert_eq!(event["detail"]["bucket"]["name"], BUCKET);
    assert_eq!(event["detail"]["object"]["key"], "cold/f.zip");
    assert_eq!(event["detail"]["object"]["size"], 10);
}

#[tokio::test]
async fn interrupted_put_leaves_no_object() {
    struct Failing(usize);
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("source went away")));
            }
            self.0 -= 1;
            buf.put_slice(&[1u8; 1024]);
            std::task::Poll::Ready(Ok(()))
        }
    }
    let h = harness().await;
    let b = h.open().backend();
    let r = b.blobs.put(BUCKET, "half/written", Box::pin(Failing(100)), StorageClass::Online).await;
    assert!(matches!(r, Err(PortError::Backend(_))), "{r:?}");
    assert_eq!(b.blobs.head(BUCKET, "half/written").await.unwrap(), None, "nothing half-written is visible");
    assert!(!h.dir.path().join("blobs").join(BUCKET).join("half/written").exists());
    let tmp_left = std::fs::read_dir(h.dir.path().join("blobs/.tmp")).unwrap().count();
    assert_eq!(tmp_left, 0, "the temporary file is removed");
}

/// The worker one child process runs when `GRANARY_RACE_DIR` is set; otherwise it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_child_worker() {
    let Ok(dir) = std::env::var("GRANARY_RACE_DIR") else { return };
    let me: i64 = std::env::var("GRANARY_RACE_ID").unwrap().parse().unwrap();
    let mut o = EmbeddedOptions::new(&dir, granary_contract::resources(VISIBILITY));
    o.clock = Arc::new(granary_ports::SystemClock);
    let b = Embedded::open(o).unwrap().backend();
    let mut won = Vec::new();
    let mut granted = 0;
    for i in 0..200 {
        let item = Item::new(Key::new(format!("race#{i}"), "x")).with("winner", me);
        match b.table.put(TABLE, item, Some(Cond::ItemAbsent)).await {
            Ok(()) => won.push(i),
            Err(PortError::ConditionFailed { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        if i < 120 {
            match b
                .table
                .update(TABLE, &Key::new("slots", "global"), vec![Update::add("n", 1)], Some(Cond::counter_below("n", 1, 150)))
                .await
            {
                Ok(_) => granted += 1,
                Err(PortError::ConditionFailed { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    let mut received = Vec::new();
    loop {
        let got = b.queue.receive(WORK, 10, None, Duration::from_millis(300)).await.unwrap();
        if got.is_empty() {
            break;
        }
        received.extend(got.iter().map(|m| m.body.clone()));
        b.queue.delete_batch(WORK, got.into_iter().map(|m| m.receipt_handle).collect()).await.unwrap();
    }
    println!("RESULT {}", serde_json::json!({"won": won, "granted": granted, "received": received}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_data_directory() {
    let h = harness().await;
    let mut o = h.options();
    o.clock = Arc::new(granary_ports::SystemClock);
    let e = Embedded::open(o).unwrap();
    let b = e.backend();
    for chunk in (0..500).collect::<Vec<_>>().chunks(10) {
        b.queue.send_batch(WORK, chunk.iter().map(|i| OutgoingMessage::new(i.to_string())).collect()).await.unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (1..=2)
        .map(|id| {
            std::process::Command::new(&exe)
                .args(["--exact", "race_child_worker", "--nocapture", "--test-threads", "1"])
                .env("GRANARY_RACE_DIR", h.dir.path())
                .env("GRANARY_RACE_ID", id.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut all_won = Vec::new();
    let mut granted = 0;
    let mut received = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stdout));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout.lines().find_map(|l| l.split_once("RESULT ").map(|(_, r)| r)).expect("child printed its result");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        all_won.extend(v["won"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()));
        granted += v["granted"].as_i64().unwrap();
        received.extend(v["received"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().parse::<i64>().unwrap()));
    }
    all_won.sort();
    assert_eq!(all_won, (0..200).collect::<Vec<_>>(), "each raced key has exactly one winning process");
    assert_eq!(granted, 150, "the guarded counter granted exactly its limit across processes");
    let counter = b.table.get(TABLE, &Key::new("slots", "global")).await.unwrap().unwrap();
    assert_eq!(counter.get_i64("n"), Some(150));
    received.sort();
    assert_eq!(received, (0..500).collect::<Vec<_>>(), "every message received once across both processes");
}

#[tokio::test]
async fn a_clock_set_back_holds_no_pending_message_back() {
    let h = harness().await;
    let b = h.open().backend();
    b.queue.send_batch(WORK, vec![OutgoingMessage::new("now")]).await.unwrap();
    b.queue.send_batch(WORK, vec![OutgoingMessage::new("in 10 s").delayed(Duration::from_secs(10))]).await.unwrap();
    // The machine's clock is set back an hour: the message due now is still due now, and the
    // delayed one still 10 s after it was sent, not an hour and 10 s.
    h.clock.advance(chrono::Duration::hours(-1));
    let got = b.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap();
    assert_eq!(got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["now"]);
    assert!(got[0].sent_at_ms <= granary_ports::Clock::now_ms(h.clock.as_ref()), "the sending time moved back with the clock");
    h.clock.advance(chrono::Duration::seconds(9));
    assert!(b.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap().is_empty(), "the delay is not cut short");
    h.clock.advance(chrono::Duration::seconds(1));
    let got = b.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap();
    assert_eq!(got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["in 10 s"]);
    // A received message stays hidden for its visibility timeout measured on the moved clock.
    h.clock.advance(chrono::Duration::hours(-2));
    assert!(b.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap().is_empty(), "hidden messages stay hidden");
    h.clock.advance(chrono::Duration::from_std(VISIBILITY).unwrap());
    assert_eq!(b.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap().len(), 2, "both come back after the timeout");
}

#[tokio::test]
async fn a_restart_with_the_clock_set_back_moves_pending_messages_back_once() {
    let h = harness().await;
    h.open().backend().queue.send_batch(WORK, vec![OutgoingMessage::new("before the restart")]).await.unwrap();
    // Two processes open the data directory after the clock was set back a day; the first to look
    // moves the messages back, the second finds nothing to move (moving twice would cut delays short).
    h.clock.advance(chrono::Duration::days(-1));
    let (first, second) = (h.open().backend(), h.open().backend());
    second.queue.send_batch(WORK, vec![OutgoingMessage::new("in 60 s").delayed(Duration::from_secs(60))]).await.unwrap();
    let got = first.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap();
    assert_eq!(got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["before the restart"]);
    first.queue.delete_batch(WORK, vec![got[0].receipt_handle.clone()]).await.unwrap();
    assert_eq!(second.queue.depth(WORK).await.unwrap().delayed, 1, "the delayed message was not moved a second time");
    h.clock.advance(chrono::Duration::seconds(59));
    assert!(second.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap().is_empty());
    h.clock.advance(chrono::Duration::seconds(1));
    assert_eq!(second.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap().len(), 1);
}

/// Concurrent writes are committed in groups, each write in a savepoint of its own: a write whose
/// condition fails, or a transaction cancelled half-way, changes nothing, and the writes committed
/// with it in the same group are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_committed_together_stay_all_or_nothing_each() {
    use granary_ports::TxOp;
    let h = harness().await;
    let b = h.open().backend();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            // Each key twice: one creation wins, the other fails its condition.
            let put = b.table.put(TABLE, Item::new(Key::new(format!("k#{}", i / 2), "x")).with("by", i), Some(Cond::ItemAbsent)).await;
            // A transaction whose second operation fails: its first must not be written.
            let tx = b
                .table
                .transact(vec![
                    TxOp::Put { table: TABLE.into(), item: Item::new(Key::new(format!("half#{i}"), "x")), cond: None },
                    TxOp::Check { table: TABLE.into(), key: Key::new("absent", "x"), cond: Cond::ItemExists },
                ])
                .await;
            (put, tx)
        }));
    }
    let mut won = 0;
    for t in tasks {
        let (put, tx) = t.await.unwrap();
        match put {
            Ok(()) => won += 1,
            Err(PortError::ConditionFailed { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(tx, Err(PortError::TransactionCanceled { index: 1, .. })), "{tx:?}");
    }
    assert_eq!(won, 100, "one creation per key");
    for i in 0..100 {
        assert!(b.table.get(TABLE, &Key::new(format!("k#{i}"), "x")).await.unwrap().is_some());
    }
    for i in 0..200 {
        assert_eq!(b.table.get(TABLE, &Key::new(format!("half#{i}"), "x")).await.unwrap(), None, "half of a cancelled transaction");
    }
}

/// A table declared with a TTL attribute loses its items once their time has passed, as DynamoDB's TTL
/// deletes them; items without the attribute, or with a text in it, stay.
#[tokio::test]
async fn items_past_their_ttl_are_purged_and_only_those() {
    let h = harness().await;
    let mut o = h.options();
    o.resources.tables[0].ttl_attr = Some("purgeAt".into());
    let e = Embedded::open(o).unwrap();
    let b = e.backend();
    let now = granary_ports::Clock::now_ms(h.clock.as_ref()) / 1000;
    let put = |sk: &str, purge_at: Option<serde_json::Value>| {
        let mut item = Item::new(Key::new("p", sk));
        if let Some(v) = purge_at {
            item = item.with("purgeAt", v);
        }
        b.table.put(TABLE, item, None)
    };
    put("due", Some((now + 10).into())).await.unwrap();
    put("later", Some((now + 3600).into())).await.unwrap();
    put("never", None).await.unwrap();
    put("text", Some("0".into())).await.unwrap();
    assert_eq!(e.purge_expired(100).await.unwrap(), 0, "nothing has expired yet");
    h.clock.advance(chrono::Duration::seconds(11));
    assert_eq!(e.purge_expired(100).await.unwrap(), 1);
    let left = |sk: &'static str| {
        let b = b.clone();
        async move { b.table.get(TABLE, &Key::new("p", sk)).await.unwrap().is_some() }
    };
    assert!(!left("due").await);
    assert!(left("later").await && left("never").await && left("text").await);
    h.clock.advance(chrono::Duration::hours(2));
    assert_eq!(e.purge_expired(100).await.unwrap(), 1);
    assert!(!left("later").await && left("never").await && left("text").await);
}
