//! Real processes for the end-to-end tests: the `roster` binary, and the small
//! helper binaries of this crate (`src/bin/`), started as children, signalled
//! (`SIGSTOP`, `SIGKILL`, ...) and always killed when their handle drops.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a process may take to start or stop.
pub const START: Duration = Duration::from_secs(60);

/// The `roster` binary under test: `$ROSTER_BIN`, else `roster` beside the
/// running test binary's directory (`target/debug/roster`, which `cargo test
/// --workspace` builds; alone, `cargo build --bin roster` first).
///
/// # Panics
///
/// When there is no such file.
pub fn roster_bin() -> PathBuf {
    let path = std::env::var_os("ROSTER_BIN").map_or_else(
        || {
            let exe = std::env::current_exe().expect("the test binary's path");
            // target/debug/deps/it-HASH -> target/debug/roster
            let debug = exe.parent().and_then(Path::parent).expect("target/debug");
            debug.join("roster")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no roster binary at {}: run `cargo build --bin roster` (cargo test --workspace builds it), or set ROSTER_BIN",
        path.display()
    );
    path
}

/// A free loopback address (bound, then released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "roster-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// A child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    /// Starts `command` with stdin closed, stderr inherited and stdout piped
    /// (read it with [`Process::read_line`]); `ROSTER_*` variables of this
    /// process are not passed on.
    pub fn spawn(name: &str, mut command: Command) -> Process {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ROSTER_") {
                command.env_remove(key);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Process {
            child,
            name: name.to_owned(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, `KILL`, ...) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// The next line the process writes to stdout (without the newline),
    /// `None` at the end of its output.
    ///
    /// # Panics
    ///
    /// When nothing comes within [`START`].
    pub async fn read_line(&mut self) -> Option<String> {
        let mut stdout = self.child.stdout.take()?;
        // Byte by byte, so nothing past the line is read and lost.
        let read = tokio::task::spawn_blocking(move || {
            let mut line = Vec::new();
            let mut byte = [0u8];
            let open = loop {
                match stdout.read(&mut byte) {
                    Ok(0) | Err(_) => break false,
                    Ok(_) if byte[0] == b'\n' => break true,
                    Ok(_) => line.push(byte[0]),
                }
            };
            (
                stdout,
                open.then(|| String::from_utf8_lossy(&line).into_owned()),
            )
        });
        let (stdout, line) = tokio::time::timeout(START, read)
            .await
            .unwrap_or_else(|_| panic!("{} wrote no line within {START:?}", self.name))
            .expect("the reading thread");
        // Kept open so the process never writes into a closed pipe.
        self.child.stdout = Some(stdout);
        line
    }

    /// Waits for the process to exit by itself; whether it succeeded.
    pub async fn exit(mut self) -> bool {
        let deadline = tokio::time::Instant::now() + START;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the process") {
                return status.success();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the process with `signal` and waits until it is gone.
    pub async fn stop_with(mut self, signal: &str) {
        self.signal(signal);
        let deadline = tokio::time::Instant::now() + START;
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not stop",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // A stopped process dies of SIGKILL too.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `roster serve` process on a fixed address, so that a test can stop it
/// and start "the same" registry again.
#[derive(Debug)]
pub struct RosterProcess {
    process: Process,
    addr: SocketAddr,
    url: String,
}

impl RosterProcess {
    /// Starts `roster serve` on `addr` with DNS and gRPC off, logging
    /// warnings, plus `args`, and waits until `/ready` answers 200 (with
    /// `ready`; a cluster node is ready only once its cluster formed).
    pub async fn start(addr: SocketAddr, args: &[&str], ready: bool) -> RosterProcess {
        let mut command = Command::new(roster_bin());
        command.args(["serve", "--http-addr", &addr.to_string()]);
        command.args(["--no-dns", "--no-grpc", "--log", "warn"]);
        command.args(args);
        let roster = RosterProcess {
            process: Process::spawn(&format!("roster at {addr}"), command),
            addr,
            url: format!("http://{addr}"),
        };
        if ready {
            roster.wait_ready().await;
        }
        roster
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("{}/ready", self.url);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        tokio::time::timeout(START, async {
            loop {
                if let Ok(r) = http.get(&url).send().await
                    && r.status() == 200
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("roster at {} never became ready", self.addr));
    }

    /// Base URL of the HTTP API.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Stops the registry with `signal` (`TERM`: a graceful stop, `KILL`: a
    /// crash) and waits until the process is gone.
    pub async fn stop_with(self, signal: &str) {
        self.process.stop_with(signal).await;
    }
}
