//! What callers see, with real processes (issue 20's acceptance): the
//! `roster` binary started, stopped and started again as a child process
//! ([`RosterProcess`]), backends as processes of their own (`roster-echo`,
//! self-registering with a 60 s TTL), and a caller in this process sending
//! 60 requests/s through the middleware with its default settings.
//!
//! Bounds in the assertions are far from the expected figures (the machine
//! is shared); the figures themselves are printed.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roster_client::reqwest_middleware::ClientWithMiddleware;
use roster_client::resilience::EjectionState;
use roster_client::{Discovery, Freshness, RosterClient, RosterMiddleware, Router, ServiceState};
use roster_tests::TestRegistry;
use roster_tests::process::{Process, RosterProcess, free_addr, temp_dir};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

/// Turns a hang into a failure; never reached when things work.
const GUARD: Duration = Duration::from_secs(60);
/// Requests per second of the caller.
const RATE: u32 = 60;
/// How long the registry (or each cluster node) stays down.
const OUTAGE: Duration = Duration::from_secs(10);
/// A call slower than this is a slow call.
const SLOW: Duration = Duration::from_secs(1);

/// A backend process answering its name, registered as an instance of
/// `echo` through `registry` (one address or several, comma-separated).
async fn echo(name: &str, registry: &str) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roster-echo"));
    command.args([name, registry, "echo"]);
    let mut process = Process::spawn(name, command);
    let line = process.read_line().await.unwrap_or_default();
    assert!(line.starts_with("ready "), "{name} said {line:?}");
    process
}

async fn echoes(registry: &str) -> Vec<Process> {
    let mut backends = Vec::new();
    for name in ["echo-1", "echo-2", "echo-3"] {
        backends.push(echo(name, registry).await);
    }
    backends
}

/// One call of the load: when it started, how long it took, what answered.
#[derive(Clone, Debug)]
struct Call {
    at: Instant,
    took: Duration,
    result: Result<String, String>,
}

/// An open-loop caller: a request every 1/RATE s whatever the earlier ones
/// do, each in a task of its own, so a hung backend cannot slow the rate.
struct Load {
    calls: Arc<Mutex<Vec<Call>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Load {
    fn start(http: ClientWithMiddleware) -> Load {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
            let mut running = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let (http, recorded) = (http.clone(), recorded.clone());
                running.spawn(async move {
                    let at = Instant::now();
                    let result = match http.get("http://echo/").send().await {
                        Ok(r) if r.status().is_success() => {
                            r.text().await.map_err(|e| e.to_string())
                        }
                        Ok(r) => Err(format!("HTTP {}", r.status())),
                        Err(e) => Err(e.to_string()),
                    };
                    let took = at.elapsed();
                    recorded.lock().unwrap().push(Call { at, took, result });
                });
            }
            while running.join_next().await.is_some() {}
        });
        Load { calls, stop, task }
    }

    /// The calls answered so far.
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Stops sending, waits for the calls in flight, returns them all.
    async fn stop(self) -> Vec<Call> {
        let _ = self.stop.send(());
        timeout(GUARD, self.task).await.unwrap().unwrap();
        let mut calls = self.calls.lock().unwrap().clone();
        calls.sort_by_key(|c| c.at);
        calls
    }
}

/// How many of `calls` each backend answered, in the order echo-1..3.
fn split(calls: &[&Call]) -> [usize; 3] {
    let mut by: HashMap<&str, usize> = HashMap::new();
    for c in calls {
        if let Ok(name) = &c.result {
            *by.entry(name.as_str()).or_default() += 1;
        }
    }
    ["echo-1", "echo-2", "echo-3"].map(|n| by.get(n).copied().unwrap_or(0))
}

fn within_a_fifth(split: [usize; 3]) -> bool {
    let mean = split.iter().sum::<usize>() as f64 / 3.0;
    split.iter().all(|&n| (n as f64 - mean).abs() <= 0.2 * mean)
}

/// A caller through the middleware with the default settings.
struct Caller {
    router: Router,
    http: ClientWithMiddleware,
    changes: watch::Receiver<ServiceState>,
    /// Keeps the service followed.
    _echo: roster_client::ServiceHandle,
}

impl Caller {
    async fn new(registry: &str) -> Caller {
        let discovery = Discovery::new(RosterClient::new(registry).unwrap());
        let router = Router::new(discovery.clone());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let http = RosterMiddleware::new(router.clone()).client(http);
        let echo = discovery.service("echo");
        timeout(GUARD, echo.ready()).await.unwrap().unwrap();
        let mut caller = Caller {
            router,
            http,
            changes: echo.changes(),
            _echo: echo,
        };
        caller.until("three backends", 0, complete).await;
        caller
    }

    /// Waits until `pred` holds of the caller's copy, asserting on every
    /// state on the way that it never shrinks below `floor` instances.
    async fn until(
        &mut self,
        what: &str,
        floor: usize,
        mut pred: impl FnMut(&ServiceState) -> bool,
    ) -> ServiceState {
        let mut changes = self.changes.clone();
        let waited = timeout(
            GUARD,
            changes.wait_for(|s| {
                assert!(
                    s.healthy.len() >= floor,
                    "the caller's copy shrank to {} instances while waiting for {what}: {s:?}",
                    s.healthy.len()
                );
                pred(s)
            }),
        )
        .await;
        match waited {
            Ok(state) => state.unwrap().clone(),
            Err(_) => panic!("never: {what}; last {:?}", *self.changes.borrow()),
        }
    }
}

fn complete(s: &ServiceState) -> bool {
    s.freshness == Freshness::Fresh && s.healthy.len() == 3
}

/// Every state of the caller's copy as it changes: when, how fresh, how
/// many healthy instances.
struct Recorder {
    states: Arc<Mutex<Vec<(Instant, Freshness, usize)>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    fn start(mut changes: watch::Receiver<ServiceState>) -> Recorder {
        let states = Arc::new(Mutex::new(Vec::new()));
        let recorded = states.clone();
        let task = tokio::spawn(async move {
            loop {
                {
                    let s = changes.borrow_and_update();
                    recorded
                        .lock()
                        .unwrap()
                        .push((Instant::now(), s.freshness, s.healthy.len()));
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        Recorder { states, task }
    }

    fn stop(self) -> Vec<(Instant, Freshness, usize)> {
        self.task.abort();
        self.states.lock().unwrap().clone()
    }
}

/// The figures of one restart run.
struct Restarted {
    calls: Vec<Call>,
    /// From each restart (the registry answering again) to the caller's
    /// copy complete and fresh.
    complete_after: Vec<Duration>,
    /// When the first node went down.
    first_stop: Instant,
    /// When the first node answered again.
    first_restart: Instant,
    /// The caller's copy all along.
    states: Vec<(Instant, Freshness, usize)>,
}

impl Restarted {
    fn check(&self, what: &str) {
        let calls = &self.calls;
        let failed: Vec<&Call> = calls.iter().filter(|c| c.result.is_err()).collect();
        let during: Vec<&Call> = calls.iter().filter(|c| c.at >= self.first_stop).collect();
        let recovery: Vec<&Call> = calls
            .iter()
            .filter(|c| c.at >= self.first_restart)
            .collect();
        let (split, recovery_split) = (split(&during), split(&recovery));
        let seconds = calls.last().unwrap().at - calls[0].at;
        let smallest = self.states.iter().map(|s| s.2).min().unwrap_or(0);
        let end = calls.last().unwrap().at;
        let not_fresh: Duration = self
            .states
            .windows(2)
            .filter(|w| w[0].1 != Freshness::Fresh)
            .map(|w| w[1].0 - w[0].0)
            .sum::<Duration>()
            + self
                .states
                .last()
                .filter(|s| s.1 != Freshness::Fresh)
                .map_or(Duration::ZERO, |s| end.saturating_duration_since(s.0));
        println!(
            "{what}: {} calls in {seconds:.1?}, {} failed; caller's set complete and fresh {:?} after each restart, never below {smallest} instances, not fresh for {not_fresh:.1?} in all; split from the first stop on {split:?}, from the first restart on {recovery_split:?}",
            calls.len(),
            failed.len(),
            self.complete_after,
        );
        assert_eq!(smallest, 3, "the caller's copy shrank");
        let expected = seconds.as_secs_f64() * f64::from(RATE);
        assert!(
            calls.len() as f64 >= 0.8 * expected,
            "the load ran: {} calls",
            calls.len()
        );
        assert!(
            failed.is_empty(),
            "{} failed calls: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        for took in &self.complete_after {
            // The target is 2 s (see the printed figure); 10 s is far from
            // both it and the old 7-9 s with empty sets meanwhile.
            assert!(*took < Duration::from_secs(10), "complete after {took:?}");
        }
        assert!(within_a_fifth(split), "split {split:?}");
        assert!(
            within_a_fifth(recovery_split),
            "split during recovery {recovery_split:?}"
        );
    }
}

/// One registry on a fixed address, stopped with `signal` for [`OUTAGE`]
/// and started again, under load.
async fn restart_alone(data_dir: bool, signal: &str) -> Restarted {
    let addr = free_addr();
    let dir = data_dir.then(|| temp_dir("callers-restart"));
    let dir_arg = dir.as_ref().map(|d| d.to_string_lossy().into_owned());
    let mut args = Vec::new();
    if let Some(d) = &dir_arg {
        args.extend(["--data-dir", d]);
    }
    let registry = RosterProcess::start(addr, &args, true).await;
    let url = registry.url().to_owned();
    let _backends = echoes(&url).await;
    let mut caller = Caller::new(&url).await;
    let recorder = Recorder::start(caller.changes.clone());
    let load = Load::start(caller.http.clone());
    sleep(Duration::from_secs(1)).await;

    let first_stop = Instant::now();
    registry.stop_with(signal).await;
    sleep(OUTAGE).await;
    let registry = RosterProcess::start(addr, &args, true).await;
    let first_restart = Instant::now();
    caller.until("the complete, fresh set", 3, complete).await;
    let complete_after = vec![first_restart.elapsed()];
    sleep(Duration::from_secs(2)).await;
    let calls = load.stop().await;
    let states = recorder.stop();
    drop(registry);
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
    Restarted {
        calls,
        complete_after,
        first_stop,
        first_restart,
        states,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_registry_restart_costs_callers_nothing() {
    restart_alone(false, "TERM")
        .await
        .check("in-memory registry, SIGTERM, 10 s down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_registry_restart_costs_callers_nothing() {
    restart_alone(true, "KILL")
        .await
        .check("registry with --data-dir, SIGKILL, 10 s down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_cluster_one_node_at_a_time_costs_callers_nothing() {
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let dirs: Vec<_> = (0..3).map(|_| temp_dir("callers-cluster")).collect();
    let join = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let args = |i: usize| -> Vec<String> {
        [
            "--data-dir",
            &dirs[i].to_string_lossy(),
            "--bootstrap-expect",
            "3",
            "--join",
            &join,
            "--cluster-token",
            "callers-test-cluster-token",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let start = |i: usize| {
        let (args, addr) = (args(i), addrs[i]);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            RosterProcess::start(addr, &args, false).await
        }
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Some(start(i).await));
    }
    for node in nodes.iter().flatten() {
        node.wait_ready().await;
    }
    let urls = addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let _backends = echoes(&urls).await;
    let mut caller = Caller::new(&urls).await;
    let recorder = Recorder::start(caller.changes.clone());
    let load = Load::start(caller.http.clone());
    sleep(Duration::from_secs(1)).await;

    let first_stop = Instant::now();
    let mut complete_after = Vec::new();
    let mut restarts = Vec::new();
    for (i, slot) in nodes.iter_mut().enumerate() {
        let node = slot.take().expect("running");
        node.stop_with("TERM").await;
        sleep(OUTAGE).await;
        let node = start(i).await;
        node.wait_ready().await;
        let restarted = Instant::now();
        restarts.push(restarted);
        caller.until("the complete, fresh set", 3, complete).await;
        complete_after.push(restarted.elapsed());
        *slot = Some(node);
    }
    sleep(Duration::from_secs(2)).await;
    let calls = load.stop().await;
    Restarted {
        calls,
        complete_after,
        first_stop,
        first_restart: restarts[0],
        states: recorder.stop(),
    }
    .check("3-node cluster, each node SIGTERMed for 10 s in turn");
    drop(nodes);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_costs_a_few_slow_calls_and_comes_back() {
    let registry = RosterProcess::start(free_addr(), &[], true).await;
    let backends = echoes(registry.url()).await;
    let mut caller = Caller::new(registry.url()).await;
    let load = Load::start(caller.http.clone());
    // Every backend answers a few dozen requests: their latency is known.
    sleep(Duration::from_secs(2)).await;

    let hung = &backends[0];
    hung.signal("STOP");
    let stopped = Instant::now();
    // Ejected for its silence before the first of its requests times out
    // (2 s); 5 timeouts in a row would have come later.
    sleep(Duration::from_millis(1500)).await;
    let early = caller.router.endpoints("echo");
    let echo_1 = early.iter().find(|s| s.id == "echo-1").expect("echo-1");
    assert!(
        matches!(echo_1.ejection, EjectionState::Ejected { ejections: 1, .. }),
        "{echo_1:?}"
    );
    sleep(Duration::from_millis(18_500)).await;
    hung.signal("CONT");
    let resumed = Instant::now();
    // Back once its ejection (30 s from the stop) ends and the probe answers.
    let back = timeout(GUARD, async {
        loop {
            let calls = load.calls();
            let answered = calls
                .iter()
                .filter(|c| c.at >= resumed && c.result.as_deref() == Ok("echo-1"))
                .count();
            if answered >= 30 {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let back_after = resumed.elapsed();
    let calls = load.stop().await;
    assert!(back.is_ok(), "echo-1 never came back into rotation");
    let stats = caller.router.endpoints("echo");

    let slow: Vec<&Call> = calls.iter().filter(|c| c.took > SLOW).collect();
    let late_slow = slow
        .iter()
        .filter(|c| c.at >= stopped + Duration::from_secs(5))
        .count();
    let failed = calls.iter().filter(|c| c.result.is_err()).count();
    let longest = calls.iter().map(|c| c.took).max().unwrap();
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| c.at >= stopped && c.at < resumed)
        .collect();
    println!(
        "SIGSTOP 20 s at {RATE}/s: {} calls, {} slow (> 1 s), {late_slow} of them started 5 s or more into the stop, {failed} failed, longest {longest:?}; split while stopped {:?}; back in rotation {back_after:?} after SIGCONT",
        calls.len(),
        slow.len(),
        split(&during),
    );
    // About a quarter second of its share of the traffic (5 expected);
    // without the silence rule it was every request of its first 2 s
    // timeout (about 40).
    assert!(slow.len() <= 15, "{} slow calls", slow.len());
    // Not proportional to the duration: nothing after the first seconds.
    assert!(late_slow <= 2, "{late_slow} slow calls late in the stop");
    // A slow call waited for one attempt's timeout (2 s) and its retry.
    let timeout = roster_client::resilience::ResilienceConfig::default()
        .timeout
        .unwrap();
    assert!(longest < 2 * timeout, "a call took {longest:?}");
    assert_eq!(failed, 0, "the retries answered");
    assert!(
        stats
            .iter()
            .all(|s| s.ejection == EjectionState::Active && s.ejections == 0),
        "all back: {stats:?}"
    );
    caller.until("still three", 3, complete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_drops_its_registration_and_returns_from_main_deregisters() {
    let registry = RosterProcess::start(free_addr(), &[], true).await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_roster-register-and-exit"));
    command.args([registry.url(), "web", "web-1"]);
    let mut process = Process::spawn("roster-register-and-exit", command);
    assert_eq!(process.read_line().await.as_deref(), Some("registered"));
    assert!(process.exit().await, "the process failed");
    // Its lease had 60 s left: gone now means deregistered, not expired.
    let client = RosterClient::new(registry.url()).unwrap();
    assert!(
        matches!(
            client.instance("web", "web-1").await,
            Err(roster_client::Error::NotFound(_))
        ),
        "the instance outlived its process"
    );
    let metrics = reqwest::get(format!("{}/metrics", registry.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let deletes: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("roster_http_requests_total{")
                && l.contains("method=\"DELETE\"")
                && l.contains("status=\"2")
        })
        .collect();
    assert_eq!(deletes.len(), 1, "one successful DELETE: {deletes:?}");
    assert!(deletes[0].ends_with(" 1"), "{deletes:?}");
    assert!(
        metrics
            .lines()
            .any(|l| l == "roster_lease_expirations_total 0"),
        "no lease expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hosts_that_are_no_service_leave_the_callers_memory_flat() {
    let registry = TestRegistry::start().await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_roster-many-hosts"));
    command.args([registry.url(), "2000", "10000"]);
    let mut process = Process::spawn("roster-many-hosts", command);
    let line = process.read_line().await.unwrap_or_default();
    assert!(process.exit().await, "roster-many-hosts failed: {line}");
    let fields: Vec<&str> = line.split(' ').collect();
    let [
        "answered",
        answered,
        "pools",
        pools,
        "watched",
        watched,
        "rss_kb",
        before,
        after,
    ] = fields[..]
    else {
        panic!("unexpected report {line:?}");
    };
    let number = |s: &str| s.parse::<i64>().unwrap();
    let growth = number(after) - number(before);
    println!(
        "10,000 distinct non-service hosts through the middleware: resident memory {before} KiB -> {after} KiB ({growth:+} KiB), pools {pools}, watched {watched}"
    );
    assert_eq!(number(answered), 12_000, "every host answered");
    assert_eq!(
        (number(pools), number(watched)),
        (1, 1),
        "only the real service got a pool and a watch"
    );
    // A pool and a watch per host would be tens of MiB; allocator noise is
    // far below this.
    assert!(growth < 16 * 1024, "grew by {growth} KiB");
    registry.stop().await;
}
