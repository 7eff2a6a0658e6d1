//! What the binary prints when it cannot start.

use std::process::Command;

#[test]
fn a_missing_config_file_is_named_and_its_cause_said_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["serve", "--config", "/nonexistent/roster.toml", "--no-grpc"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/roster.toml"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause once: {stderr}"
    );
}
