//! The clock. Delayed requests wait for their date across a `kill -9` and a restart; when the machine's
//! clock is set forward while the runner runs, what has come due happens (a delayed request is
//! processed, an order past its expiration expires, a signed link stops working); when it is set back
//! while the runner is down, messages queued before are not held back by the difference.
//!
//! The runner's clock is moved with libfaketime (Debian's `faketime`, installed when missing, as aria2
//! is), through a file it reads at every clock call; monotonic time is left alone, as a clock change
//! leaves it. The test's own connection to the data directory reads a clock moved by as much, as every
//! process of a machine would.

use super::*;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The system clock moved by a settable offset.
struct MovedClock(AtomicI64);

impl granary_ports::Clock for MovedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.0.load(Ordering::SeqCst))
    }
}

/// libfaketime's library, installed when missing.
fn libfaketime() -> std::path::PathBuf {
    let find = || {
        let out = Command::new("dpkg").args(["-L", "libfaketime"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find(|l| l.ends_with("/libfaketime.so.1")).map(std::path::PathBuf::from)
    };
    ensure_debian_package("faketime", || find().is_some_and(|p| p.exists()));
    find().unwrap()
}

#[tokio::test]
async fn delayed_requests_and_expirations_hold_across_a_restart_and_a_moved_clock() {
    use md5::{Digest, Md5};
    let library = libfaketime();
    let dir = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let offset_file = scratch.path().join("faketime");
    std::fs::write(&offset_file, "+0").unwrap();
    let template_path = fault_test_template(scratch.path());
    let roots = sources.path().to_str().unwrap().to_owned();
    let env = [
        ("LD_PRELOAD", library.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("GRANARY_LOCAL_TEMPLATE", template_path.to_str().unwrap()),
        ("GRANARY_STORAGE_FILE_ROOTS", roots.as_str()),
        ("GRANARY_MODEL_CACHE_SECS", "0"),
        SHORT_ORDER_LEASE,
    ];
    let listen = free_loopback_address();
    let start = || Runner::start_listening(dir.path(), &listen, &[], &env);
    let mut r = start();
    let clock = Arc::new(MovedClock(AtomicI64::new(0)));
    let move_clock = |to: chrono::Duration| {
        std::fs::write(&offset_file, format!("{:+}", to.num_seconds())).unwrap();
        clock.0.store(to.num_milliseconds(), Ordering::SeqCst);
    };
    let resources = granary_local::resources::load(Some(&template_path)).unwrap();
    let dead_letter_queues: BTreeSet<String> = resources.queues.iter().filter_map(|q| q.dead_letter_queue.clone()).collect();
    let mut options = EmbeddedOptions::new(dir.path(), resources);
    options.clock = clock.clone();
    let backend = Embedded::open(options).unwrap().backend();
    // No kept connection: one to a killed runner would fail the first request after the restart.
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // Tokens valid for a month: the runner's clock goes eight days ahead.
    let admin = token(dir.path(), "root@example.org", &["--admin", "--ttl", "2592000"]);
    let ann = token(dir.path(), "ann@example.org", &["--groups", "s2", "--ttl", "2592000"]);
    define_order_models(&c, &r, &admin).await;

    let meta = json!({"sessionOwner": "clock", "session": "s1", "storages": [{"pluginBusinessId": "online"}]});
    let creation = |id: &str, date: Option<DateTime<Utc>>| {
        let feature = if id == "S2" {
            json!({"type": "Feature", "id": "S2", "entityType": "DATASET", "model": "D", "geometry": null,
                   "properties": {"label": "Sentinel-2", "accessGroups": ["s2"]}})
        } else {
            let content: Vec<u8> = id.bytes().cycle().take(10_000).collect();
            let path = sources.path().join(format!("{id}.bin"));
            std::fs::write(&path, &content).unwrap();
            json!({"type": "Feature", "id": id, "entityType": "DATA", "model": "P", "tags": ["S2"], "geometry": null, "properties": {},
                   "files": [{"locations": [{"url": url::Url::from_file_path(&path).unwrap().to_string()}],
                   "attributes": {"dataType": "RAWDATA", "mimeType": "application/octet-stream", "filename": format!("{id}.bin"),
                                  "filesize": content.len(), "algorithm": "MD5", "checksum": hex::encode(Md5::digest(&content))}}]})
        };
        let mut m = OutgoingMessage::new(json!({"metadata": meta, "feature": feature}).to_string())
            .attribute("regards.request.type", "CREATION")
            .attribute("regards.request.id", format!("c-{id}"));
        if let Some(date) = date {
            m = m.attribute("regards.request.date", date.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        m
    };
    let request = |id: &str| {
        // The address stays the same across restarts.
        let (c, url, admin) = (c.clone(), format!("http://{listen}/features/requests/c-{id}"), admin.clone());
        async move { c.get(url).bearer_auth(admin).send().await.ok()?.json::<Value>().await.ok() }
    };
    let succeeded = |id: &'static str, limit: u64| {
        let request = &request;
        async move {
            wait_for(&format!("c-{id} to succeed"), Duration::from_secs(limit), || async {
                let v = request(id).await?;
                (v["state"] == "SUCCESS").then_some(v)
            })
            .await
        }
    };

    // A product stored and ordered, its file fetched through a signed link.
    backend.queue.send_batch("feature-normal", vec![creation("S2", None), creation("clk-1", None)]).await.unwrap();
    succeeded("clk-1", 30).await;
    let ordered = ["clk-1".to_owned()];
    let order = wait_for("the order to be placed", Duration::from_secs(30), || place_order(&c, &r, &ann, &ordered, "clock")).await;
    let order_url = r.url(&format!("/user/orders/{order}"));
    wait_for("the order to be done", Duration::from_secs(30), || async {
        let v: Value = c.get(&order_url).bearer_auth(&ann).send().await.ok()?.json().await.ok()?;
        (v["status"] == "DONE").then_some(())
    })
    .await;
    let files: Value =
        c.get(r.url(&format!("/orders/{order}/files/available"))).bearer_auth(&ann).send().await.unwrap().json().await.unwrap();
    let download = r.url(files["content"][0]["download"].as_str().unwrap());
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).pool_max_idle_per_host(0).build().unwrap();
    let res = no_redirect.get(&download).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(res.status(), 302);
    let signed = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(no_redirect.get(&signed).send().await.unwrap().status(), 200);

    // Two delayed creations: one due in a day, one in 12 s (room for parking and a restart on a slow
    // machine). Parked, then the runner is killed and restarted before the second is due: it is still
    // waiting, and is processed once due.
    let soon = Utc::now() + chrono::Duration::seconds(12);
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    backend
        .queue
        .send_batch("feature-normal", vec![creation("clk-soon", Some(soon)), creation("clk-tomorrow", Some(tomorrow))])
        .await
        .unwrap();
    for id in ["clk-soon", "clk-tomorrow"] {
        wait_for("the delayed creation to be parked", Duration::from_secs(10), || async {
            let v = request(id).await?;
            (v["state"] == "GRANTED" && v["step"] == "LOCAL_DELAYED").then_some(())
        })
        .await;
    }
    r.kill9();
    r = start();
    let waiting = c.get(r.url("/features/requests/c-clk-soon")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(waiting.status(), 200, "{}", waiting.text().await.unwrap());
    let waiting: Value = waiting.json().await.unwrap();
    assert!(Utc::now() < soon, "the restart took too long for the check to mean anything");
    assert_eq!((waiting["state"].as_str(), waiting["step"].as_str()), (Some("GRANTED"), Some("LOCAL_DELAYED")), "{waiting}");
    succeeded("clk-soon", 30).await;
    assert!(Utc::now() >= soon, "processed before its date");
    assert_eq!(request("clk-tomorrow").await.unwrap()["state"], "GRANTED", "the creation due tomorrow waits");

    // The clock set eight days forward while the runner runs: the creation due tomorrow is processed,
    // the order (seven days at most) expires, and the signed link no longer works.
    move_clock(chrono::Duration::days(8));
    succeeded("clk-tomorrow", 30).await;
    wait_for("the order to expire", Duration::from_secs(30), || async {
        let v: Value = c.get(&order_url).bearer_auth(&ann).send().await.ok()?.json().await.ok()?;
        (v["status"] == "EXPIRED").then_some(())
    })
    .await;
    assert_eq!(no_redirect.get(&signed).send().await.unwrap().status(), 403, "the signed link has expired");
    assert_ne!(no_redirect.get(&download).bearer_auth(&ann).send().await.unwrap().status(), 302, "an expired order's file is served");

    // The runner stopped, a creation queued, the clock set back eight days, the runner started again:
    // the creation is processed at once, not eight days later.
    r.kill9();
    backend.queue.send_batch("feature-normal", vec![creation("clk-after", None)]).await.unwrap();
    move_clock(chrono::Duration::zero());
    r = start();
    succeeded("clk-after", 30).await;

    // Each once, nothing dead-lettered.
    for id in ["clk-1", "clk-soon", "clk-tomorrow", "clk-after"] {
        let urn = format!("URN:FEATURE:DATA:granary:{}:V1", granary_domain::entity_uuid(id));
        assert_eq!(c.get(r.url(&format!("/features/{urn}"))).bearer_auth(&admin).send().await.unwrap().status(), 200, "{id}");
        let v2 = urn.replace(":V1", ":V2");
        assert_eq!(c.get(r.url(&format!("/features/{v2}"))).bearer_auth(&admin).send().await.unwrap().status(), 404, "{id} twice");
    }
    for queue in &dead_letter_queues {
        let depth = backend.queue.depth(queue).await.unwrap().total();
        assert_eq!(depth, 0, "{queue} holds {depth} messages");
    }
}
