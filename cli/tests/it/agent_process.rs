//! The real `roster agent` process next to a real `roster serve`: it registers
//! the file's services and deregisters them when it gets SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn instances(url: &str, service: &str) -> Vec<String> {
    let Ok(resp) = reqwest::get(format!("{url}/v1/services/{service}?all=true")).await else {
        return Vec::new();
    };
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    body["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..1500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_the_agents_services() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_roster"))
            .args([
                "serve",
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--no-dns",
                "--no-grpc",
                "--log",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    until("the registry", async || {
        reqwest::get(format!("{url}/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let dir = std::env::temp_dir().join(format!("roster-agent-proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("services.toml");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"legacy\"\nid = \"legacy-1\"\nport = 7000\n\
             [[service.check]]\ntcp = \"127.0.0.1:{port}\"\ninterval = \"1s\"\n\
             [[service]]\nname = \"cache\"\nid = \"cache-1\"\nport = 6379\n"
        ),
    )
    .unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["--registry", &url, "agent", "--config"])
        .arg(&file)
        .args(["--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until("both services registered", async || {
        instances(&url, "legacy").await == ["legacy-1"]
            && instances(&url, "cache").await == ["cache-1"]
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || agent.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "the agent exits cleanly: {exit:?}");
    assert!(instances(&url, "legacy").await.is_empty());
    assert!(instances(&url, "cache").await.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}
