//! Load generators for roster benchmarks.
//!
//! The binaries live in `src/bin/`; this library holds the small helpers they
//! share, so that they can be unit-tested.

pub mod h2raw;

/// The `"index"` of a watch event's JSON, read from its start without decoding
/// the rest (the registry writes `{"service":…,"index":N,"instances":[…]}`).
pub fn event_index(json: &str) -> Option<u64> {
    const KEY: &str = "\"index\":";
    let start = json.find(KEY)? + KEY.len();
    let digits = json[start..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The `q`-quantile (0.0–1.0, nearest rank) of `sorted`, which must be sorted
/// ascending; `None` when it is empty.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// CPU time (user + system) that process `pid` ("self" for this one) has used,
/// in seconds, from `/proc/PID/stat`; `None` off Linux or when it is gone.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // the 14th and 15th fields of the line (utime, stime) are the 12th and 13th here.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports clock ticks of USER_HZ, which is 100 on Linux.
    Some((utime + stime) as f64 / 100.0)
}

/// The CPU time used so far by this process and by a server's, to report what
/// both used over a stretch of a run.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    client: Option<f64>,
    server: Option<f64>,
    server_pid: Option<u32>,
}

impl CpuMark {
    /// Reads both now (the server's only with its pid).
    pub fn now(server_pid: Option<u32>) -> Self {
        CpuMark {
            client: cpu_seconds("self"),
            server: server_pid.and_then(|p| cpu_seconds(&p.to_string())),
            server_pid,
        }
    }

    /// What each used since the mark, in per cent of one core over `wall`
    /// seconds: `(client, server)`, "-" where /proc could not tell.
    pub fn percent(&self, wall: f64) -> (String, String) {
        let now = CpuMark::now(self.server_pid);
        let pct = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(b), Some(e)) => format!("{:.0}", 100.0 * (e - b) / wall),
            _ => "-".into(),
        };
        (pct(self.client, now.client), pct(self.server, now.server))
    }
}

/// One machine-readable `RESULT` line of a closed-loop run, in the shape that
/// `bench/report.lua` prints for wrk: `RESULT rps=… p50_us=… p99_us=… p999_us=…
/// errors=… requests=…`. Sorts `latencies_us` (one entry per completed request).
pub fn result_line(latencies_us: &mut [u64], elapsed_secs: f64, errors: u64) -> String {
    latencies_us.sort_unstable();
    let q = |p| quantile(latencies_us, p).unwrap_or(0);
    format!(
        "RESULT rps={:.0} p50_us={} p99_us={} p999_us={} errors={} requests={}",
        latencies_us.len() as f64 / elapsed_secs.max(1e-9),
        q(0.5),
        q(0.99),
        q(0.999),
        errors,
        latencies_us.len()
    )
}

/// The address of instance `i` in every benchmark (roster, r-nacos, etcd):
/// `10.a.b.c` from the bits of `i`, so that 100,000 instances get distinct ones.
pub fn instance_address(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256)
}

/// The command line of a peer server: `--addr ADDR` and `--file FILE`, both
/// required, and any other `--flag value` handed to `other`, which says
/// whether it took it. `None` (with `usage` printed) on anything else.
pub fn peer_args(
    usage: &str,
    mut other: impl FnMut(&str, String) -> bool,
) -> Option<(String, String)> {
    let (mut addr, mut file) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let known = match (flag.as_str(), args.next()) {
            ("--addr", Some(v)) => addr.replace(v).is_none(),
            ("--file", Some(v)) => file.replace(v).is_none(),
            (flag, Some(v)) => other(flag, v),
            (_, None) => false,
        };
        if !known {
            eprintln!("{usage}");
            return None;
        }
    }
    let both = addr.zip(file);
    if both.is_none() {
        eprintln!("{usage}");
    }
    both
}

/// One bare HTTP/2 connection (prior knowledge) to `addr` (`host:port`),
/// driven by a task of its own, with windows large enough that a reader of
/// many streams is never held back by flow control.
pub async fn h2_connect(addr: &str) -> Result<h2::client::SendRequest<bytes::Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 26)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_index_of_an_event() {
        let json = r#"{"service":"bench","index":1234,"instances":[{"modify_index":7}]}"#;
        assert_eq!(event_index(json), Some(1234));
        assert_eq!(event_index(r#"{"index": 5}"#), Some(5));
        assert_eq!(event_index(r#"{"service":"bench"}"#), None);
        assert_eq!(event_index(r#"{"index":"x"}"#), None);
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&v, 0.0), Some(1));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn result_lines_carry_the_quantiles() {
        let mut v: Vec<u64> = (1..=1000).rev().collect();
        let line = result_line(&mut v, 2.0, 3);
        assert_eq!(
            line,
            "RESULT rps=500 p50_us=500 p99_us=990 p999_us=999 errors=3 requests=1000"
        );
        assert_eq!(instance_address(65536 + 257), "10.1.1.1");
    }

    #[test]
    fn reads_own_cpu_time() {
        if cfg!(target_os = "linux") {
            assert!(cpu_seconds("self").is_some_and(|s| s >= 0.0));
        }
    }
}
