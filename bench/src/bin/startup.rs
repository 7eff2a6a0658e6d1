//! Start-up time to ready: starts a server `--runs` times and measures from just
//! before the spawn to the first `200` from `--url` (polled every millisecond
//! over a fresh TCP connection, HTTP/1.0), then stops it with SIGTERM and waits.
//!
//! ```text
//! startup --runs 5 --url http://127.0.0.1:18700/ready -- taskset -c 0 roster serve ...
//! ```
//!
//! Prints one line per run and `RESULT runs=N min_ms=… median_ms=… max_ms=…`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: startup --runs N --url http://HOST:PORT/PATH [--timeout-secs S] -- CMD ARGS...";

/// True when `GET path` on `addr` answers with status 200.
fn ready(addr: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sep) = args.iter().position(|a| a == "--") else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (opts, cmd) = (&args[..sep], &args[sep + 1..]);
    let (mut runs, mut url, mut timeout) = (5usize, String::new(), 120u64);
    for pair in opts.chunks(2) {
        match pair {
            [f, v] if f == "--runs" => runs = v.parse().unwrap_or(0),
            [f, v] if f == "--url" => url = v.clone(),
            [f, v] if f == "--timeout-secs" => timeout = v.parse().unwrap_or(120),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    if runs == 0 || cmd.is_empty() || ready(addr, path) {
        eprintln!("startup: nothing to run, or {addr} already answers\n{USAGE}");
        return ExitCode::from(2);
    }
    let mut times = Vec::new();
    for run in 1..=runs {
        let t0 = Instant::now();
        let mut child = match Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("startup: {}: {e}", cmd[0]);
                return ExitCode::FAILURE;
            }
        };
        let mut ok = false;
        while t0.elapsed() < Duration::from_secs(timeout) {
            if ready(addr, path) {
                ok = true;
                break;
            }
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        // SIGTERM, so durable servers close their stores cleanly for the next run.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        // Some servers (r-nacos) drain connections for up to 30 s: 5 s, then SIGKILL.
        let stop = Instant::now();
        while matches!(child.try_wait(), Ok(None)) && stop.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        if !ok {
            eprintln!("startup: run {run} not ready after {ms:.0} ms");
            return ExitCode::FAILURE;
        }
        println!("run {run}: ready in {ms:.1} ms");
        times.push(ms);
        // Let the port be released before the next run.
        while ready(addr, path) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "RESULT runs={} min_ms={:.1} median_ms={:.1} max_ms={:.1}",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    ExitCode::SUCCESS
}
