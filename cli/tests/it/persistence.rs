//! Durability of the real `roster` binary: SIGKILL in a write burst, restart on the
//! same data directory, lock and corruption handling, snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roster_client::api::{Health, RegisterRequest};
use roster_client::{InstanceQuery, RosterClient};

const GUARD: Duration = Duration::from_secs(60);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "roster-{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Roster {
    child: Child,
    url: String,
}

impl Roster {
    fn spawn(dir: &Path) -> Roster {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_roster"))
            .args([
                "serve",
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--log",
                "warn",
                "--lease-grace",
                "30s",
                // Parallel tests each run a server: the default DNS port would collide.
                "--no-dns",
                "--no-grpc",
            ])
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("roster starts");
        Roster {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn ready(&self) {
        let url = format!("{}/ready", self.url);
        tokio::time::timeout(GUARD, async {
            loop {
                if let Ok(r) = reqwest::get(&url).await
                    && r.status() == 200
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("roster becomes ready");
    }

    /// Waits for the process to exit by itself; returns (success, stderr).
    fn exit(mut self) -> (bool, String) {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.success(), err);
            }
            assert!(std::time::Instant::now() < deadline, "roster did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn terminate(mut self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

fn reg(port: u16, ttl: u64) -> RegisterRequest {
    RegisterRequest {
        address: Some("10.9.8.7".into()),
        port,
        ttl: Some(Duration::from_secs(ttl)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_registrations_survive_sigkill_mid_burst() {
    let dir = temp_dir("crash");
    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();

    // Eight writers, 1,000 registrations; SIGKILL lands after about half are acknowledged.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8u16 {
        let (client, acked, count) = (client.clone(), acked.clone(), count.clone());
        writers.push(tokio::spawn(async move {
            for j in 0..125u16 {
                let id = format!("i-{w}-{j}");
                match client.register("bench", &id, &reg(1000 + j, 2)).await {
                    Ok(inst) => {
                        acked.lock().unwrap().insert(id, inst.modify_index);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return, // the registry is gone
                }
            }
        }));
    }
    tokio::time::timeout(GUARD, async {
        while count.load(Ordering::SeqCst) < 500 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("500 registrations acknowledged");
    roster.kill();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 500 && acked.len() < 1000,
        "killed mid-burst: {} acknowledged",
        acked.len()
    );
    let max_index = *acked.values().max().unwrap();

    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();
    let all = InstanceQuery {
        all: true,
        ..Default::default()
    };
    let found = client.instances("bench", &all).await.unwrap();
    let ids: std::collections::BTreeSet<_> = found.instances.iter().map(|i| i.id.clone()).collect();
    for id in acked.keys() {
        assert!(ids.contains(id), "acknowledged {id} lost");
    }
    assert!(
        client.services().await.unwrap().index >= max_index,
        "index went backwards"
    );
    // A new write continues above the old index.
    let inst = client
        .register("bench", "after-restart", &reg(9, 60))
        .await
        .unwrap();
    assert!(inst.modify_index > max_index);
    // The 2 s leases get 30 s of grace after the restart: wait past the TTL and
    // check that nothing expired.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let found = client.instances("bench", &all).await.unwrap();
    assert!(
        found.instances.iter().all(|i| i.health == Health::Passing),
        "an instance expired during the grace period"
    );
    assert!(found.instances.len() > acked.len());
    roster.terminate();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_refuses_to_start() {
    let dir = temp_dir("lock");
    let first = Roster::spawn(&dir);
    first.ready().await;
    let (ok, stderr) = Roster::spawn(&dir).exit();
    assert!(!ok, "the second roster must fail");
    assert!(
        stderr.contains("in use by another roster process"),
        "{stderr}"
    );
    assert!(stderr.contains("LOCK"), "names the lock file: {stderr}");
    // The first one is unharmed.
    let client = RosterClient::new(&first.url).unwrap();
    client.register("web", "a", &reg(80, 60)).await.unwrap();
    first.terminate();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_stops_start_up_with_an_error_naming_the_file() {
    // A real store, cleanly stopped, then cut short.
    let dir = temp_dir("truncated");
    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();
    for i in 0..50 {
        client
            .register("web", &format!("w{i}"), &reg(80, 60))
            .await
            .unwrap();
    }
    roster.terminate();
    let file = dir.join("catalog.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 4)
        .unwrap();
    let (ok, stderr) = Roster::spawn(&dir).exit();
    assert!(!ok, "a truncated store must not start empty");
    assert!(stderr.contains("catalog.redb"), "{stderr}");

    // Garbage in place of the store.
    std::fs::write(&file, vec![0x5a; 64 * 1024]).unwrap();
    let (ok, stderr) = Roster::spawn(&dir).exit();
    assert!(!ok, "a garbage store must not start empty");
    assert!(stderr.contains("catalog.redb"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_and_restore_round_trip_through_the_cli() {
    let dir_a = temp_dir("snap-a");
    let a = Roster::spawn(&dir_a);
    a.ready().await;
    let client_a = RosterClient::new(&a.url).unwrap();
    let mut with_meta = reg(8080, 60);
    with_meta.meta.insert("zone".into(), "eu-1".into());
    with_meta.tags = vec!["v2".into()];
    client_a.register("web", "w1", &with_meta).await.unwrap();
    client_a
        .register(
            "web",
            "w2",
            &RegisterRequest {
                ttl: None,
                ..reg(8081, 0)
            },
        )
        .await
        .unwrap();
    client_a.register("db", "d1", &reg(5432, 60)).await.unwrap();
    let maint = roster_client::api::MaintenanceRequest {
        enabled: true,
        reason: Some("disk".into()),
    };
    client_a.maintenance("db", "d1", &maint).await.unwrap();

    let file = dir_a.with_extension("snapshot.json");
    let cli = |url: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_roster"))
            .arg("--registry")
            .arg(url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let saved = cli(&a.url, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("saved"), "{saved}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("\"format\":\"roster-snapshot\"") && text.contains("\"version\":1"),
        "versioned file"
    );

    // Restore into another registry that already holds something else.
    let dir_b = temp_dir("snap-b");
    let b = Roster::spawn(&dir_b);
    b.ready().await;
    let client_b = RosterClient::new(&b.url).unwrap();
    for i in 0..20 {
        client_b
            .register("other", &format!("o{i}"), &reg(1, 60))
            .await
            .unwrap();
    }
    let before = client_b.services().await.unwrap().index;
    let restored = cli(&b.url, &["snapshot", "restore", file.to_str().unwrap()]);
    assert!(restored.contains("restored"), "{restored}");

    let all = InstanceQuery {
        all: true,
        ..Default::default()
    };
    let strip = |mut v: Vec<roster_client::api::Instance>| {
        for i in &mut v {
            i.create_index = 0;
            i.modify_index = 0;
        }
        v
    };
    for service in ["web", "db"] {
        let want = strip(client_a.instances(service, &all).await.unwrap().instances);
        let got = strip(client_b.instances(service, &all).await.unwrap().instances);
        assert_eq!(got, want, "{service} restored as saved");
    }
    let list = client_b.services().await.unwrap();
    assert_eq!(
        list.services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["db", "web"],
        "restore replaces"
    );
    assert!(list.index > before, "the index moves forward on a restore");

    // The restore is durable: it survives a restart of b.
    b.terminate();
    let b = Roster::spawn(&dir_b);
    b.ready().await;
    let client_b = RosterClient::new(&b.url).unwrap();
    assert_eq!(
        client_b
            .instances("web", &all)
            .await
            .unwrap()
            .instances
            .len(),
        2
    );
    assert!(
        client_b
            .instances("other", &all)
            .await
            .unwrap()
            .instances
            .is_empty()
    );

    // A file that is not a snapshot is refused and changes nothing.
    std::fs::write(
        &file,
        br#"{"format":"something-else","version":1,"index":1,"instances":[]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args([
            "--registry",
            &b.url,
            "snapshot",
            "restore",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("format"));
    assert_eq!(
        client_b
            .instances("web", &all)
            .await
            .unwrap()
            .instances
            .len(),
        2
    );

    a.terminate();
    b.terminate();
    for d in [&dir_a, &dir_b] {
        std::fs::remove_dir_all(d).unwrap();
    }
    std::fs::remove_file(&file).unwrap();
}

/// Checks are part of the stored registration, with their last results: after
/// a crash the definitions are back and a TTL check keeps what it last reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_and_their_results_survive_a_restart() {
    let dir = temp_dir("checks");
    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();
    let req: RegisterRequest = serde_json::from_value(serde_json::json!({
        "address": "10.9.8.7", "port": 80,
        "checks": [
            {"id": "app", "ttl": "1h"},
            {"tcp": "127.0.0.1:9", "interval": "1h", "initial_status": "warning"}
        ]
    }))
    .unwrap();
    client.register("web", "w-1", &req).await.unwrap();
    let resp = reqwest::Client::new()
        .put(format!(
            "{}/v1/services/web/instances/w-1/checks/app/pass",
            roster.url
        ))
        .body(r#"{"output":"all good"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let before = client.instance("web", "w-1").await.unwrap();
    roster.kill();

    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();
    let after = client.instance("web", "w-1").await.unwrap();
    // The definitions come back whole; the TCP check may have run since, so
    // only the TTL check's result is compared.
    let defs = |i: &roster_client::api::Instance| {
        i.checks
            .iter()
            .map(|c| (c.id.clone(), c.kind, c.target.clone(), c.interval, c.ttl))
            .collect::<Vec<_>>()
    };
    assert_eq!(defs(&after), defs(&before));
    assert_eq!(defs(&after).len(), 2);
    let app = &after.checks[0];
    assert_eq!(
        (app.id.as_str(), app.status, app.output.as_str()),
        ("app", Health::Passing, "all good")
    );
    roster.terminate();
}

/// A snapshot whose index leaves no room (2^64 − 1 made the next registration
/// answer index 0 and the index run backwards) is refused naming `index`;
/// the bound itself, 2^63, is accepted, the index keeps rising from it and
/// survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_index_without_room_to_grow_is_refused() {
    const BOUND: u64 = 1 << 63;
    let dir = temp_dir("snap-index");
    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();
    let http = reqwest::Client::new();
    let restore = |index: u64| {
        let body = serde_json::json!({
            "format": "roster-snapshot", "version": 1, "index": index, "instances": [
                {"service": "web", "id": "w1", "address": "10.0.0.1", "port": 80,
                 "deregister_critical_after_ms": 60000, "create_index": 1, "modify_index": 1}
            ]
        });
        http.put(format!("{}/v1/snapshot", roster.url))
            .json(&body)
            .send()
    };
    for index in [u64::MAX, u64::MAX - 10, BOUND + 1] {
        let resp = restore(index).await.unwrap();
        assert_eq!(resp.status(), 400, "index {index}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: roster_client::api::Problem = resp.json().await.unwrap();
        assert_eq!(problem.field.as_deref(), Some("index"), "{problem:?}");
    }
    let inst = client.register("web", "a", &reg(80, 60)).await.unwrap();
    assert!(
        inst.modify_index > 1 && inst.modify_index < 10,
        "refused restores left the index alone: {}",
        inst.modify_index
    );

    let resp = restore(BOUND).await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = http
        .put(format!("{}/v1/services/web/instances/b", roster.url))
        .json(&reg(81, 60))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.headers()["x-roster-index"].to_str().unwrap(),
        (BOUND + 1).to_string()
    );
    let inst = client.register("web", "c", &reg(82, 60)).await.unwrap();
    assert_eq!(inst.modify_index, BOUND + 2);

    // The store holds an index above the bound now: its own data loads.
    roster.terminate();
    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();
    assert_eq!(client.services().await.unwrap().index, BOUND + 2);
    let inst = client.register("web", "d", &reg(83, 60)).await.unwrap();
    assert_eq!(inst.modify_index, BOUND + 3);
    roster.terminate();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A store file emptied to 0 bytes (`truncate -s 0`) used to start an empty
/// catalog in place of the lost one (redb initializes an empty file); it stops
/// start-up with an error naming the file. Without a file the catalog starts
/// empty, and roster's own new store is never left empty or partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_store_is_refused_and_no_store_starts_empty() {
    let dir = temp_dir("emptied");
    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();
    client.register("web", "w1", &reg(80, 60)).await.unwrap();
    roster.terminate();
    let file = dir.join("catalog.redb");
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with(".new")),
        "no temporary file left: {names:?}"
    );

    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    let (ok, stderr) = Roster::spawn(&dir).exit();
    assert!(!ok, "an emptied store must not start empty: {stderr}");
    assert!(stderr.contains("catalog.redb"), "names the file: {stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        0,
        "the file is left as found"
    );

    // No file at all: a fresh start.
    std::fs::remove_file(&file).unwrap();
    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();
    assert!(client.services().await.unwrap().services.is_empty());
    client.register("web", "w2", &reg(80, 60)).await.unwrap();
    roster.terminate();
    let roster = Roster::spawn(&dir);
    roster.ready().await;
    let client = RosterClient::new(&roster.url).unwrap();
    assert_eq!(client.services().await.unwrap().services.len(), 1);
    roster.terminate();
    std::fs::remove_dir_all(&dir).unwrap();
}
