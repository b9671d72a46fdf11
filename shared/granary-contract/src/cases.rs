//! The contract cases. Each takes a fresh harness and panics with a message naming the broken promise.

use crate::{BUCKET, BY_STATUS, DLQ, Harness, MAX_RECEIVES, TABLE, WORK};
use granary_ports::{Backend, Cond, Item, Key, OutgoingMessage, PortError, Query, RestoreStatus, SortCond, StorageClass, TxOp, Update};
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncReadExt;

fn key(pk: &str, sk: &str) -> Key {
    Key::new(pk, sk)
}

fn is_condition_failed<T: std::fmt::Debug>(r: &Result<T, PortError>) -> bool {
    matches!(r, Err(PortError::ConditionFailed { .. }))
}

/// A put guarded by `attribute_not_exists` writes once; the second put is refused and changes nothing.
pub async fn put_if_absent(h: &dyn Harness) {
    let b = h.connect().await;
    let k = key("feature#1", "v");
    b.table.put(TABLE, Item::new(k.clone()).with("owner", "a"), Some(Cond::ItemAbsent)).await.expect("first put");
    let second = b.table.put(TABLE, Item::new(k.clone()).with("owner", "b"), Some(Cond::ItemAbsent)).await;
    assert!(is_condition_failed(&second), "second put-if-absent must fail, got {second:?}");
    let got = b.table.get(TABLE, &k).await.unwrap().expect("item exists");
    assert_eq!(got.get_str("owner"), Some("a"), "the refused put must not change the item");
    assert_eq!(b.table.get(TABLE, &key("feature#1", "w")).await.unwrap(), None);
}

/// A put guarded on attributes replaces the item only when the guard holds, and fails on an absent item
/// when the guard needs the item.
pub async fn put_with_condition_on_attributes(h: &dyn Harness) {
    let b = h.connect().await;
    let k = key("p", "1");
    let absent = b.table.put(TABLE, Item::new(k.clone()).with("v", 1), Some(Cond::eq("v", 0))).await;
    assert!(is_condition_failed(&absent), "a guard on an attribute fails on an absent item: {absent:?}");
    assert_eq!(b.table.get(TABLE, &k).await.unwrap(), None, "the refused put must not create the item");
    b.table.put(TABLE, Item::new(k.clone()).with("v", 1), None).await.unwrap();
    b.table.put(TABLE, Item::new(k.clone()).with("v", 2), Some(Cond::eq("v", 1))).await.expect("guard holds");
    let stale = b.table.put(TABLE, Item::new(k.clone()).with("v", 3), Some(Cond::eq("v", 1))).await;
    assert!(is_condition_failed(&stale), "a stale guard must fail: {stale:?}");
    assert_eq!(b.table.get(TABLE, &k).await.unwrap().unwrap().get_i64("v"), Some(2));
}

/// An update applies only when its condition holds on the current item, and returns the new item.
pub async fn update_if_condition(h: &dyn Harness) {
    let b = h.connect().await;
    let k = key("req#1", "state");
    b.table.put(TABLE, Item::new(k.clone()).with("state", "GRANTED").with("n", 1), None).await.unwrap();
    let item = b
        .table
        .update(
            TABLE,
            &k,
            vec![Update::set("state", "SUCCESS"), Update::add("n", 2), Update::set("errors", json!(["a", "b"]))],
            Some(Cond::eq("state", "GRANTED")),
        )
        .await
        .expect("condition holds");
    assert_eq!(item.get_str("state"), Some("SUCCESS"));
    assert_eq!(item.get_i64("n"), Some(3));
    assert_eq!(item.get("errors"), Some(&json!(["a", "b"])), "values keep their JSON type");
    let again = b.table.update(TABLE, &k, vec![Update::set("state", "ERROR")], Some(Cond::eq("state", "GRANTED"))).await;
    assert!(is_condition_failed(&again), "the transition may happen once: {again:?}");
    let removed = b.table.update(TABLE, &k, vec![Update::remove("errors")], Some(Cond::ItemExists)).await.unwrap();
    assert_eq!(removed.get("errors"), None);
    let stored = b.table.get(TABLE, &k).await.unwrap().unwrap();
    assert_eq!(stored.get_str("state"), Some("SUCCESS"));
    assert_eq!(stored, removed, "update returns the item as stored");
}

/// Without a condition, or with one that holds on an absent item, an update creates the item;
/// with `ItemExists` it does not.
pub async fn update_creates_when_allowed(h: &dyn Harness) {
    let b = h.connect().await;
    let created = b.table.update(TABLE, &key("c", "1"), vec![Update::add("count", 1)], None).await.unwrap();
    assert_eq!(created.get_i64("count"), Some(1));
    let missing = b.table.update(TABLE, &key("c", "2"), vec![Update::add("count", 1)], Some(Cond::ItemExists)).await;
    assert!(is_condition_failed(&missing), "ItemExists must refuse to create: {missing:?}");
    assert_eq!(b.table.get(TABLE, &key("c", "2")).await.unwrap(), None);
}

/// `<>` holds when the attribute is absent, as in DynamoDB; other comparisons do not.
pub async fn not_equal_holds_on_absent_attribute(h: &dyn Harness) {
    let b = h.connect().await;
    let k = key("ne", "1");
    b.table.put(TABLE, Item::new(k.clone()).with("a", 1), None).await.unwrap();
    b.table.update(TABLE, &k, vec![Update::set("b", "x")], Some(Cond::ne("missing", "y"))).await.expect("<> on absent holds");
    let lt = b.table.update(TABLE, &k, vec![Update::set("b", "z")], Some(Cond::lt("missing", 5))).await;
    assert!(is_condition_failed(&lt), "< on an absent attribute must not hold: {lt:?}");
    let neg = b.table.update(TABLE, &k, vec![Update::set("b", "z")], Some(Cond::Not(Box::new(Cond::exists("a"))))).await;
    assert!(is_condition_failed(&neg), "NOT exists(a) must not hold: {neg:?}");
}

/// A delete happens only when its condition holds; deleting an absent item is fine unless required.
pub async fn conditional_delete(h: &dyn Harness) {
    let b = h.connect().await;
    let k = key("d", "1");
    b.table.put(TABLE, Item::new(k.clone()).with("state", "RUNNING"), None).await.unwrap();
    let refused = b.table.delete(TABLE, &k, Some(Cond::eq("state", "DONE"))).await;
    assert!(is_condition_failed(&refused), "delete with a false guard must fail: {refused:?}");
    assert!(b.table.get(TABLE, &k).await.unwrap().is_some(), "refused delete must keep the item");
    let old = b.table.delete(TABLE, &k, Some(Cond::eq("state", "RUNNING"))).await.unwrap();
    assert_eq!(old.and_then(|i| i.get_str("state").map(str::to_owned)), Some("RUNNING".to_owned()));
    assert_eq!(b.table.delete(TABLE, &k, None).await.unwrap(), None, "deleting an absent item is not an error");
    let required = b.table.delete(TABLE, &k, Some(Cond::ItemExists)).await;
    assert!(is_condition_failed(&required), "ItemExists on an absent item must fail: {required:?}");
}

/// A transaction applies every operation or none, and says which one failed.
pub async fn transaction_all_or_nothing(h: &dyn Harness) {
    let b = h.connect().await;
    b.table.put(TABLE, Item::new(key("acct", "a")).with("balance", 10), None).await.unwrap();
    let ops = vec![
        TxOp::Put { table: TABLE.into(), item: Item::new(key("t", "1")).with("x", 1), cond: Some(Cond::ItemAbsent) },
        TxOp::Update { table: TABLE.into(), key: key("acct", "a"), updates: vec![Update::add("balance", -5)], cond: None },
        TxOp::Check { table: TABLE.into(), key: key("acct", "b"), cond: Cond::ItemExists },
    ];
    match b.table.transact(ops).await {
        Err(PortError::TransactionCanceled { index, .. }) => assert_eq!(index, 2, "the failing operation is named"),
        other => panic!("transaction with a failing check must be cancelled, got {other:?}"),
    }
    assert_eq!(b.table.get(TABLE, &key("t", "1")).await.unwrap(), None, "no put from a cancelled transaction");
    assert_eq!(b.table.get(TABLE, &key("acct", "a")).await.unwrap().unwrap().get_i64("balance"), Some(10));
    let ops = vec![
        TxOp::Put { table: TABLE.into(), item: Item::new(key("t", "1")).with("x", 1), cond: Some(Cond::ItemAbsent) },
        TxOp::Update {
            table: TABLE.into(),
            key: key("acct", "a"),
            updates: vec![Update::add("balance", -5)],
            cond: Some(Cond::ge("balance", 5)),
        },
        TxOp::Delete { table: TABLE.into(), key: key("none", "x"), cond: None },
        TxOp::Check { table: TABLE.into(), key: key("acct", "b"), cond: Cond::ItemAbsent },
    ];
    b.table.transact(ops).await.expect("every guard holds");
    assert!(b.table.get(TABLE, &key("t", "1")).await.unwrap().is_some());
    assert_eq!(b.table.get(TABLE, &key("acct", "a")).await.unwrap().unwrap().get_i64("balance"), Some(5));
}

/// An outbox event in a transaction is either sent with the commit (and known as sent, once) or left
/// as its row; a cancelled transaction does neither.
pub async fn transaction_outbox_event_sent_or_kept(h: &dyn Harness) {
    let b = h.connect().await;
    let outbox = |id: &str| TxOp::Outbox {
        table: TABLE.into(),
        row: Item::new(key(&format!("O#{id}"), "O")).with("body", id),
        event_id: id.into(),
        queue: WORK.into(),
        message: OutgoingMessage::new(format!("{{\"event\":\"{id}\"}}")).attribute("granary.event.id", id),
    };
    let cancelled = vec![outbox("e0"), TxOp::Check { table: TABLE.into(), key: key("acct", "none"), cond: Cond::ItemExists }];
    assert!(matches!(b.table.transact(cancelled).await, Err(PortError::TransactionCanceled { index: 1, .. })));
    assert!(!b.table.take_sent_with_commit("e0"), "a cancelled transaction sent nothing");
    assert_eq!(b.table.get(TABLE, &key("O#e0", "O")).await.unwrap(), None, "nor kept a row");
    assert_eq!(b.queue.depth(WORK).await.unwrap().total(), 0);

    b.table.transact(vec![outbox("e1"), TxOp::Put { table: TABLE.into(), item: Item::new(key("t", "1")), cond: None }]).await.unwrap();
    let row = b.table.get(TABLE, &key("O#e1", "O")).await.unwrap();
    let queued = b.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap();
    if b.table.take_sent_with_commit("e1") {
        assert!(row.is_none(), "an event sent with its commit leaves no row");
        assert_eq!(queued.len(), 1, "sent once");
        assert_eq!(queued[0].attributes.get("granary.event.id").map(String::as_str), Some("e1"));
        assert!(!b.table.take_sent_with_commit("e1"), "known as sent once: a second question means a second commit's flush");
    } else {
        assert_eq!(row.and_then(|r| r.get_str("body").map(str::to_owned)).as_deref(), Some("e1"), "the row is kept for the outbox");
        assert!(queued.is_empty(), "nothing sent before the outbox sends the row");
    }
}

/// Transactions take 1 to 100 operations on distinct items.
pub async fn transaction_rules(h: &dyn Harness) {
    let b = h.connect().await;
    let dup = vec![
        TxOp::Put { table: TABLE.into(), item: Item::new(key("x", "1")), cond: None },
        TxOp::Delete { table: TABLE.into(), key: key("x", "1"), cond: None },
    ];
    assert!(matches!(b.table.transact(dup).await, Err(PortError::Invalid(_))), "one item twice is refused");
    let too_many: Vec<TxOp> =
        (0..101).map(|i| TxOp::Put { table: TABLE.into(), item: Item::new(key("x", &i.to_string())), cond: None }).collect();
    assert!(matches!(b.table.transact(too_many).await, Err(PortError::Invalid(_))), "101 operations are refused");
    assert!(matches!(b.table.transact(vec![]).await, Err(PortError::Invalid(_))), "an empty transaction is refused");
    assert_eq!(b.table.get(TABLE, &key("x", "1")).await.unwrap(), None, "nothing written by refused transactions");
}

/// A partition comes back in sort-key order, filtered by sort conditions and paged without gaps.
pub async fn query_partition_sorted_and_paged(h: &dyn Harness) {
    let b = h.connect().await;
    for i in (0..25).rev() {
        b.table.put(TABLE, Item::new(key("urn#A", &format!("V{i:03}"))).with("i", i), None).await.unwrap();
    }
    b.table.put(TABLE, Item::new(key("urn#B", "V001")), None).await.unwrap();
    let mut seen = Vec::new();
    let mut q = Query::partition(TABLE, "urn#A").limit(7);
    loop {
        let page = b.table.query(q.clone()).await.unwrap();
        assert!(page.items.len() <= 7);
        seen.extend(page.items.iter().map(|i| i.key.sk.clone()));
        match page.next {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("V{i:03}")).collect();
    assert_eq!(seen, expected, "every item once, in order, across pages");
    let last = b.table.query(Query::partition(TABLE, "urn#A").descending().limit(1)).await.unwrap();
    assert_eq!(last.items[0].key.sk, "V024", "descending gives the latest first");
    let between = b.table.query(Query::partition(TABLE, "urn#A").sorted(SortCond::Between(json!("V005"), json!("V007")))).await.unwrap();
    assert_eq!(between.items.iter().map(|i| i.get_i64("i").unwrap()).collect::<Vec<_>>(), vec![5, 6, 7]);
    let prefix = b.table.query(Query::partition(TABLE, "urn#A").sorted(SortCond::BeginsWith("V01".into()))).await.unwrap();
    assert_eq!(prefix.items.len(), 10);
    let gt = b.table.query(Query::partition(TABLE, "urn#A").sorted(SortCond::Gt(json!("V020")))).await.unwrap();
    assert_eq!(gt.items.len(), 4);
}

/// Several queries at once answer what each would alone, in the order asked, an unknown index failing
/// the whole call.
pub async fn query_all_answers_each_query_in_order(h: &dyn Harness) {
    let b = h.connect().await;
    for (p, n) in [("all#A", 3), ("all#B", 1)] {
        for i in 0..n {
            b.table.put(TABLE, Item::new(key(p, &format!("V{i:03}"))).with("status", "RUNNING").with("createdAt", i), None).await.unwrap();
        }
    }
    let queries = vec![
        Query::partition(TABLE, "all#A").descending().limit(1),
        Query::partition(TABLE, "all#none"),
        Query::partition(TABLE, "all#B"),
        Query::partition(TABLE, "all#A").limit(2),
        Query::partition(TABLE, "RUNNING").on_index(BY_STATUS).limit(100),
    ];
    let pages = b.table.query_all(queries.clone()).await.unwrap();
    assert_eq!(pages.len(), queries.len());
    for (q, page) in queries.into_iter().zip(&pages) {
        let alone = b.table.query(q).await.unwrap();
        assert_eq!(page.items, alone.items, "the same items as the query alone");
        assert_eq!(page.next.is_some(), alone.next.is_some());
    }
    let sks = |i: usize| pages[i].items.iter().map(|i| i.key.sk.clone()).collect::<Vec<_>>();
    assert_eq!(
        (sks(0), sks(1), sks(2), sks(3)),
        (vec!["V002".to_owned()], vec![], vec!["V000".to_owned()], vec!["V000".to_owned(), "V001".to_owned()])
    );
    assert!(pages[3].next.is_some(), "a page cut by its limit says there is more");
    let unknown = b.table.query_all(vec![Query::partition(TABLE, "all#A"), Query::partition(TABLE, "x").on_index("nope")]).await;
    assert!(unknown.is_err(), "an unknown index fails the call");
}

/// An index holds only items carrying its partition attribute, sorted by its sort attribute, and pages
/// through ties in the sort attribute without losing or repeating items.
pub async fn query_sparse_index_paged(h: &dyn Harness) {
    let b = h.connect().await;
    for i in 0..12 {
        let mut item = Item::new(key(&format!("req#{i:02}"), "r")).with("createdAt", 1000 + (i / 3));
        if i % 4 != 3 {
            item = item.with("status", "RUNNING");
        }
        b.table.put(TABLE, item, None).await.unwrap();
    }
    b.table.put(TABLE, Item::new(key("req#99", "r")).with("status", "DONE").with("createdAt", 1), None).await.unwrap();
    let mut got = Vec::new();
    let mut q = Query::partition(TABLE, "RUNNING").on_index(BY_STATUS).limit(2);
    loop {
        let page = b.table.query(q.clone()).await.unwrap();
        got.extend(page.items.iter().map(|i| (i.get_i64("createdAt").unwrap(), i.key.pk.clone())));
        match page.next {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    let expected: Vec<(i64, String)> = (0..12).filter(|i| i % 4 != 3).map(|i| (1000 + i / 3, format!("req#{i:02}"))).collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got.len(), expected.len(), "every indexed item once: {got:?}");
    assert_eq!(sorted, expected, "only items with the index attribute");
    assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by the index sort attribute: {got:?}");
    let recent = b.table.query(Query::partition(TABLE, "RUNNING").on_index(BY_STATUS).sorted(SortCond::Ge(json!(1003)))).await.unwrap();
    assert_eq!(recent.items.len(), 2, "sort condition on a numeric index attribute");
    let updated = b.table.update(TABLE, &key("req#00", "r"), vec![Update::remove("status")], None).await.unwrap();
    assert!(updated.get("status").is_none());
    let after = b.table.query(Query::partition(TABLE, "RUNNING").on_index(BY_STATUS).limit(100)).await.unwrap();
    assert_eq!(after.items.len(), expected.len() - 1, "removing the attribute takes the item out of the index");
}

/// Runs `n` writers, each on its own connection: all at once, or one after the other where the backend
/// is not atomic under concurrency (see [`Harness::atomic_under_concurrency`]).
async fn race<T, F, Fut>(h: &dyn Harness, n: usize, writer: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Backend) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let (mut running, mut done) = (Vec::new(), Vec::new());
    for i in 0..n {
        let task = tokio::spawn(writer(i, h.connect().await));
        if h.atomic_under_concurrency() {
            running.push(task);
        } else {
            done.push(task.await.unwrap());
        }
    }
    done.extend(futures::future::join_all(running).await.into_iter().map(|r| r.unwrap()));
    done
}

/// Many writers on separate connections race one put-if-absent: exactly one wins.
pub async fn conditional_put_race_has_one_winner(h: &dyn Harness) {
    let results = race(h, 16, |writer, b| async move {
        let writer = writer as i32;
        let item = Item::new(key("race", "urn")).with("writer", writer);
        match b.table.put(TABLE, item, Some(Cond::ItemAbsent)).await {
            Ok(()) => Some(writer),
            Err(PortError::ConditionFailed { .. }) => None,
            Err(e) => panic!("unexpected error in race: {e}"),
        }
    })
    .await;
    let winners: Vec<i32> = results.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "exactly one writer wins: {winners:?}");
    let b = h.connect().await;
    let stored = b.table.get(TABLE, &key("race", "urn")).await.unwrap().unwrap();
    assert_eq!(stored.get_i64("writer"), Some(i64::from(winners[0])), "the stored item is the winner's");
}

/// Increments guarded by `n <= limit - 1` from many connections never take the counter past the limit,
/// and exactly `limit` of them succeed.
pub async fn guarded_counter_never_passes_limit(h: &dyn Harness) {
    const LIMIT: i64 = 5;
    let results = race(h, 24, |_, b| async move {
        let r = b.table.update(TABLE, &key("slots", "user#a"), vec![Update::add("n", 1)], Some(Cond::counter_below("n", 1, LIMIT))).await;
        match r {
            Ok(item) => Some(item.get_i64("n").unwrap()),
            Err(PortError::ConditionFailed { .. }) => None,
            Err(e) => panic!("unexpected error: {e}"),
        }
    })
    .await;
    let mut granted: Vec<i64> = results.into_iter().flatten().collect();
    granted.sort();
    assert_eq!(granted, (1..=LIMIT).collect::<Vec<_>>(), "each slot granted once, none past the limit");
    let b = h.connect().await;
    assert_eq!(b.table.get(TABLE, &key("slots", "user#a")).await.unwrap().unwrap().get_i64("n"), Some(LIMIT));
    let refused = b.table.update(TABLE, &key("slots", "user#b"), vec![Update::add("n", 3)], Some(Cond::counter_below("n", 3, 2))).await;
    assert!(is_condition_failed(&refused), "an increment larger than the limit never passes: {refused:?}");
}

/// Concurrent increments each see a distinct value: the basis of version numbers.
pub async fn counter_gives_distinct_values(h: &dyn Harness) {
    let results = race(h, 8, |_, b| async move {
        let mut mine = Vec::new();
        for _ in 0..5 {
            let item = b.table.update(TABLE, &key("versions", "product-0001"), vec![Update::add("latest", 1)], None).await.unwrap();
            mine.push(item.get_i64("latest").unwrap());
        }
        mine
    })
    .await;
    let mut all: Vec<i64> = results.into_iter().flatten().collect();
    all.sort();
    assert_eq!(all, (1..=40).collect::<Vec<_>>(), "40 increments give 1..=40, each once");
}

/// Messages go out with their attributes and come back once each until deleted.
pub async fn queue_send_receive_delete(h: &dyn Harness) {
    let b = h.connect().await;
    let msgs: Vec<OutgoingMessage> =
        (0..7).map(|i| OutgoingMessage::new(format!("{{\"n\":{i}}}")).attribute("regards.request.id", format!("r{i}"))).collect();
    let ids = b.queue.send_batch(WORK, msgs).await.unwrap();
    assert_eq!(ids.len(), 7);
    let depth = b.queue.depth(WORK).await.unwrap();
    assert_eq!(depth.visible, 7, "{depth:?}");
    let mut got = Vec::new();
    while got.len() < 7 {
        let batch = b.queue.receive(WORK, 5, None, Duration::from_secs(1)).await.unwrap();
        assert!(!batch.is_empty(), "messages still visible");
        assert!(batch.len() <= 5, "receive returns at most max");
        got.extend(batch);
    }
    let mut bodies: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, (0..7).map(|i| format!("{{\"n\":{i}}}")).collect::<Vec<_>>());
    for m in &got {
        let n: serde_json::Value = serde_json::from_str(&m.body).unwrap();
        assert_eq!(m.attributes.get("regards.request.id"), Some(&format!("r{}", n["n"])), "attributes travel");
        assert_eq!(m.receive_count, 1);
        assert!(ids.contains(&m.message_id));
    }
    let d = b.queue.depth(WORK).await.unwrap();
    assert_eq!((d.visible, d.in_flight), (0, 7), "received messages are in flight: {d:?}");
    let again = b.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap();
    assert!(again.is_empty(), "in-flight messages are not delivered again before their timeout");
    b.queue.delete_batch(WORK, got[..5].iter().map(|m| m.receipt_handle.clone()).collect()).await.unwrap();
    b.queue.delete_batch(WORK, got[5..].iter().map(|m| m.receipt_handle.clone()).collect()).await.unwrap();
    h.advance(h.visibility() + Duration::from_secs(1)).await;
    assert!(b.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap().is_empty(), "deleted messages never return");
    assert_eq!(b.queue.depth(WORK).await.unwrap().total(), 0);
}

/// Sends, receives and deletes take at most 10 messages.
pub async fn queue_batch_limits(h: &dyn Harness) {
    let b = h.connect().await;
    let eleven: Vec<OutgoingMessage> = (0..11).map(|i| OutgoingMessage::new(i.to_string())).collect();
    assert!(matches!(b.queue.send_batch(WORK, eleven).await, Err(PortError::Invalid(_))), "11 messages are refused");
    assert!(matches!(b.queue.receive(WORK, 11, None, Duration::ZERO).await, Err(PortError::Invalid(_))));
    let huge = OutgoingMessage::new("x".repeat(300 * 1024));
    assert!(matches!(b.queue.send_batch(WORK, vec![huge]).await, Err(PortError::Invalid(_))), "oversized bodies are refused");
    assert_eq!(b.queue.depth(WORK).await.unwrap().total(), 0, "nothing of a refused batch is sent");
}

/// A message received and not deleted comes back after its visibility timeout, counted again.
pub async fn unacknowledged_message_comes_back(h: &dyn Harness) {
    let b = h.connect().await;
    b.queue.send_batch(WORK, vec![OutgoingMessage::new("m")]).await.unwrap();
    let first = b.queue.receive(WORK, 1, None, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    h.advance(h.visibility() / 2).await;
    assert!(b.queue.receive(WORK, 1, None, Duration::ZERO).await.unwrap().is_empty(), "hidden before the timeout");
    h.advance(h.visibility() / 2 + Duration::from_secs(1)).await;
    let second = b.queue.receive(WORK, 1, None, Duration::from_secs(2)).await.unwrap();
    assert_eq!(second.len(), 1, "back after the timeout");
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(second[0].receipt_handle, first[0].receipt_handle, "each receive has its own handle");
}

/// After `MAX_RECEIVES` receives without a delete, the message is in the dead-letter queue.
pub async fn redrive_to_dead_letter_queue(h: &dyn Harness) {
    let b = h.connect().await;
    b.queue.send_batch(WORK, vec![OutgoingMessage::new("poison").attribute("why", "test")]).await.unwrap();
    for n in 1..=MAX_RECEIVES {
        let got = b.queue.receive(WORK, 1, None, Duration::from_secs(2)).await.unwrap();
        assert_eq!(got.len(), 1, "receive {n} delivers");
        assert_eq!(got[0].receive_count, n);
        h.advance(h.visibility() + Duration::from_secs(1)).await;
    }
    let after = b.queue.receive(WORK, 1, None, Duration::from_secs(1)).await.unwrap();
    assert!(after.is_empty(), "no delivery past the redrive limit: {after:?}");
    let dead = b.queue.receive(DLQ, 1, None, Duration::from_secs(2)).await.unwrap();
    assert_eq!(dead.len(), 1, "the message is in the dead-letter queue");
    assert_eq!(dead[0].body, "poison");
    assert_eq!(dead[0].attributes.get("why").map(String::as_str), Some("test"), "attributes survive the redrive");
}

/// A delayed message is invisible until its delay has passed.
pub async fn delayed_message_invisible_until_due(h: &dyn Harness) {
    let b = h.connect().await;
    let delay = h.delay();
    b.queue.send_batch(WORK, vec![OutgoingMessage::new("later").delayed(delay)]).await.unwrap();
    b.queue.send_batch(WORK, vec![OutgoingMessage::new("now")]).await.unwrap();
    let d = b.queue.depth(WORK).await.unwrap();
    assert_eq!((d.visible, d.delayed), (1, 1), "{d:?}");
    let got = b.queue.receive(WORK, 10, None, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), vec!["now"], "only the undelayed message");
    b.queue.delete_batch(WORK, vec![got[0].receipt_handle.clone()]).await.unwrap();
    h.advance(delay / 2).await;
    assert!(b.queue.receive(WORK, 10, None, Duration::ZERO).await.unwrap().is_empty(), "still delayed halfway");
    h.advance(delay / 2 + Duration::from_secs(1)).await;
    let later = b.queue.receive(WORK, 10, None, Duration::from_secs(2)).await.unwrap();
    assert_eq!(later.len(), 1, "due after the delay");
    assert_eq!(later[0].body, "later");
}

/// Changing the visibility of a received message moves its return; a stale handle is refused.
pub async fn change_visibility_hides_again(h: &dyn Harness) {
    let b = h.connect().await;
    b.queue.send_batch(WORK, vec![OutgoingMessage::new("v")]).await.unwrap();
    let got = b.queue.receive(WORK, 1, None, Duration::from_secs(1)).await.unwrap();
    b.queue.change_visibility(WORK, &got[0].receipt_handle, Duration::ZERO).await.unwrap();
    let back = b.queue.receive(WORK, 1, None, Duration::from_secs(2)).await.unwrap();
    assert_eq!(back.len(), 1, "visibility 0 makes the message visible at once");
    b.queue.change_visibility(WORK, &back[0].receipt_handle, Duration::from_secs(600)).await.unwrap();
    h.advance(h.visibility() + Duration::from_secs(1)).await;
    assert!(b.queue.receive(WORK, 1, None, Duration::ZERO).await.unwrap().is_empty(), "extended visibility holds");
}

async fn read_all(mut r: granary_ports::BlobReader) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

/// Objects stream in and out whole, with an MD5 ETag; copy and delete behave as S3's.
pub async fn blob_put_get_head_copy_delete(h: &dyn Harness) {
    let b = h.connect().await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let meta =
        b.blobs.put(BUCKET, "products/a/file.bin", Box::pin(std::io::Cursor::new(body.clone())), StorageClass::Online).await.unwrap();
    assert_eq!(meta.size, body.len() as u64);
    assert_eq!(meta.etag.len(), 32, "hex MD5");
    let (got_meta, reader) = b.blobs.get(BUCKET, "products/a/file.bin").await.unwrap();
    assert_eq!(read_all(reader).await, body);
    assert_eq!(got_meta.etag, meta.etag);
    let head = b.blobs.head(BUCKET, "products/a/file.bin").await.unwrap().unwrap();
    assert_eq!((head.size, head.class, head.restore), (body.len() as u64, StorageClass::Online, RestoreStatus::NotNeeded));
    let copied = b.blobs.copy(BUCKET, "products/a/file.bin", BUCKET, "copies/file.bin", StorageClass::Online).await.unwrap();
    assert_eq!(copied.etag, meta.etag, "a copy has the same content");
    b.blobs.delete(BUCKET, "products/a/file.bin").await.unwrap();
    assert_eq!(b.blobs.head(BUCKET, "products/a/file.bin").await.unwrap(), None);
    assert!(matches!(b.blobs.get(BUCKET, "products/a/file.bin").await, Err(PortError::NotFound(_))));
    b.blobs.delete(BUCKET, "products/a/file.bin").await.expect("deleting an absent object is fine");
    let (_, r) = b.blobs.get(BUCKET, "copies/file.bin").await.unwrap();
    assert_eq!(read_all(r).await, body, "the copy outlives its source");
    assert!(matches!(
        b.blobs.put(BUCKET, "../escape", Box::pin(std::io::Cursor::new(vec![1])), StorageClass::Online).await,
        Err(PortError::Invalid(_))
    ));
}

/// A nearline object cannot be read until a restore was asked and has completed.
pub async fn nearline_get_refused_until_restored(h: &dyn Harness) {
    let b = h.connect().await;
    b.blobs.put(BUCKET, "cold/x.zip", Box::pin(std::io::Cursor::new(b"cold data".to_vec())), StorageClass::Nearline).await.unwrap();
    assert_eq!(b.blobs.head(BUCKET, "cold/x.zip").await.unwrap().unwrap().restore, RestoreStatus::NotRequested);
    assert!(matches!(b.blobs.get(BUCKET, "cold/x.zip").await, Err(PortError::NotRestored { .. })), "get before restore is refused");
    let status = b.blobs.request_restore(BUCKET, "cold/x.zip", 1).await.unwrap();
    if h.restore_delay() > Duration::ZERO {
        assert_eq!(status, RestoreStatus::InProgress);
        assert!(matches!(b.blobs.get(BUCKET, "cold/x.zip").await, Err(PortError::NotRestored { .. })), "get during restore is refused");
        h.advance(h.restore_delay() + Duration::from_secs(1)).await;
    }
    assert!(matches!(b.blobs.head(BUCKET, "cold/x.zip").await.unwrap().unwrap().restore, RestoreStatus::Restored { .. }));
    let (_, r) = b.blobs.get(BUCKET, "cold/x.zip").await.unwrap();
    assert_eq!(read_all(r).await, b"cold data");
    let online = b.blobs.put(BUCKET, "hot/y", Box::pin(std::io::Cursor::new(vec![1, 2])), StorageClass::Online).await.unwrap();
    assert_eq!(online.restore, RestoreStatus::NotNeeded);
}

/// A signed URL names the bucket and key and carries an expiry and a signature.
pub async fn signed_url_names_object(h: &dyn Harness) {
    let b = h.connect().await;
    b.blobs.put(BUCKET, "dir/file name.txt", Box::pin(std::io::Cursor::new(b"hello".to_vec())), StorageClass::Online).await.unwrap();
    let url = b.blobs.signed_get_url(BUCKET, "dir/file name.txt", Duration::from_secs(60)).await.unwrap();
    assert!(url.contains(BUCKET) && url.contains("dir/file%20name.txt"), "{url}");
    let other = b.blobs.signed_get_url(BUCKET, "dir/other.txt", Duration::from_secs(60)).await.unwrap();
    assert_ne!(url.split('?').nth(1), other.split('?').nth(1), "signatures differ per object");
}
