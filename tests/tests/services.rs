//! The three binaries start on the embedded default (the sample directory), answer `/ready`
//! and `/metrics`, show their config, and stop cleanly on SIGTERM.

use std::time::Duration;

use mesh_tests::{Service, http_get, repo_root};

async fn check(binary: &str) {
    let sample = repo_root().join("manifests/sample");
    // Ephemeral ports for everything else a service listens on, so tests never collide.
    let mut args = vec![
        "--config-dir",
        sample.to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
    ];
    if binary == "mixer" {
        args.extend(["--prometheus-addr", "127.0.0.1:0"]);
    }
    let mut svc = Service::start(binary, &args).await.unwrap();
    svc.wait_ready(Duration::from_secs(30)).await.unwrap();
    let base = format!("http://{}", svc.http_addr());

    let metrics = http_get(&format!("{base}/metrics"), &[]).await.unwrap();
    assert!(metrics.status.is_success());
    assert!(
        metrics
            .body
            .contains(&format!("istio_build{{component=\"{binary}\"")),
        "{}",
        metrics.body
    );

    let configz = http_get(&format!("{base}/debug/configz"), &[])
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(configz["synced"], true);
    let names: Vec<&str> = configz["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"reviews"), "{configz}");
    assert!(names.contains(&"bookinfo-ratings"), "{configz}");
    assert_eq!(configz["errors"].as_array().unwrap().len(), 0, "{configz}");

    let status = svc.stop().await.unwrap();
    assert!(status.success(), "{binary} exited with {status}");
}

#[tokio::test]
async fn pilot_serves_monitoring_on_the_sample() {
    check("pilot").await;
}

#[tokio::test]
async fn mixer_serves_monitoring_on_the_sample() {
    check("mixer").await;
}

#[tokio::test]
async fn citadel_serves_monitoring_on_the_sample() {
    check("citadel").await;
}

#[tokio::test]
async fn a_bad_flag_is_refused_with_usage() {
    let path = tokio::task::spawn_blocking(|| mesh_tests::workspace_binary("pilot"))
        .await
        .unwrap()
        .unwrap();
    let out = std::process::Command::new(path)
        .arg("--http-addr")
        .arg("not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--http-addr"), "{err}");
}

#[tokio::test]
async fn a_missing_config_dir_is_a_clear_error() {
    // Its own ports are free ones: the defaults (42422 is in the ephemeral range) may be
    // taken by anything running alongside.
    let mut svc = Service::start(
        "mixer",
        &[
            "--config-dir",
            "/nonexistent/dir",
            "--grpc-addr",
            "127.0.0.1:0",
            "--prometheus-addr",
            "127.0.0.1:0",
        ],
    )
    .await
    .unwrap();
    let err = svc
        .wait_ready(Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited"), "{err}");
    assert!(
        err.contains("config directory /nonexistent/dir does not exist"),
        "{err}"
    );
}
