//! `make run` keeps working: the demo script, in its check mode, starts pilot, mixer,
//! citadel, the sample upstreams and a real Envoy sidecar on the sample config, routes
//! requests through the sidecar, and stops everything.

use mesh_tests::repo_root;

#[test]
fn make_run_demo_routes_through_the_sidecar() {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("tests/scripts/demo.sh"))
        .env("DEMO_CHECK", "1")
        .current_dir(repo_root())
        .output()
        .expect("run demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("as jason: reviews-v2"), "stdout:\n{stdout}");
    assert!(stdout.contains("every service answered /ready and /metrics"));
    // Everything it started is gone.
    for name in ["pilot", "mixer", "citadel", "envoy", "sample-upstream"] {
        let pid_file = repo_root().join(format!("target/demo/{name}.pid"));
        if let Ok(pid) = std::fs::read_to_string(pid_file) {
            let alive = std::process::Command::new("kill")
                .args(["-0", pid.trim()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(!alive, "{name} (pid {pid}) still running");
        }
    }
}
