//! Citadel at scale, in file mode (no cluster): `CITADEL_SCALE_ACCOUNTS` service accounts
//! (default 10,000, in 100 namespaces) in a `--config-dir`, secrets written as files under a
//! `--secret-dir` on the build's disk (three files and two directory syncs each).
//!
//! - the time from Citadel's start to the last secret written (`citadel_secrets_written_total`
//!   on its monitoring port, polled every 100 ms, which also gives the progress curve), with
//!   write rate limiting lifted (`--secret-write-qps 100000`) so the figure is Citadel's and
//!   the disk's (the default, 50/s, is there on purpose to spare an API server);
//! - when each secret is due for rotation (`/debug/certz`'s `rotate_at`): certificates issued
//!   together expire together, and without jitter they would all rotate within the same
//!   seconds; the histogram per minute and the percentiles show how far apart they are, next
//!   to the unjittered times (`not_after` minus the grace period).
//!
//! Citadel runs in this process (its library's `run`). Writes
//! `$BENCH_OUT` (default `target/bench/citadel_scale.json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const NAMESPACES: usize = 100;

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET path` on `port` (HTTP/1.0, so the server closes when done).
async fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(std::io::Error::other(format!(
            "GET {path}: {}",
            text.lines().next().unwrap_or("no answer")
        ))),
    }
}

/// `citadel_secrets_written_total{operation="create"}` in an OpenMetrics page.
fn created(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("citadel_secrets_written_total{") && l.contains("\"create\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let accounts: usize = std::env::var("CITADEL_SCALE_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).unwrap();
    let work = tempfile::tempdir_in(&target).unwrap();
    let config = work.path().join("config");
    let secrets = work.path().join("secrets");
    std::fs::create_dir_all(&config).unwrap();
    let mut yaml = String::new();
    for i in 0..accounts {
        write!(
            yaml,
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa-{i}\n  namespace: ns-{}\n",
            i % NAMESPACES
        )
        .unwrap();
    }
    std::fs::write(config.join("accounts.yaml"), yaml).unwrap();

    let http_port = free_port();
    let http_addr = format!("127.0.0.1:{http_port}");
    let args = [
        "citadel",
        "--config-dir",
        config.to_str().unwrap(),
        "--secret-dir",
        secrets.to_str().unwrap(),
        "--http-addr",
        &http_addr,
        "--grpc-addr",
        "127.0.0.1:0",
        "--secret-write-qps",
        "100000",
        "--secret-write-burst",
        "100000",
    ];
    let cli: citadel::Cli = mesh_runtime::cli::try_parse_from("CITADEL_SCALE", args).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let t0 = Instant::now();
    let citadel = tokio::spawn(citadel::run(cli, shutdown.clone()));

    // Progress, until every secret is written.
    let mut progress: Vec<[f64; 2]> = vec![[0.0, 0.0]];
    let deadline = t0 + Duration::from_secs(900);
    let elapsed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!citadel.is_finished(), "citadel stopped early");
        let Ok(page) = get(http_port, "/metrics").await else {
            continue;
        };
        let n = created(&page);
        let at = t0.elapsed();
        if progress.last().is_some_and(|p| p[1] as u64 != n) {
            progress.push([(at.as_secs_f64() * 10.0).round() / 10.0, n as f64]);
        }
        if n as usize >= accounts {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {accounts} secrets after 900 s"
        );
    };
    let on_disk = (0..NAMESPACES.min(accounts))
        .map(|ns| {
            std::fs::read_dir(secrets.join(format!("ns-{ns}")))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum::<usize>();
    assert_eq!(on_disk, accounts, "secret directories on disk");

    // When each one rotates.
    let certz: serde_json::Value =
        serde_json::from_str(&get(http_port, "/debug/certz").await.unwrap()).unwrap();
    shutdown.cancel();
    let _ = citadel.await;
    let identities = certz["identities"].as_array().unwrap();
    assert_eq!(identities.len(), accounts, "identities on /debug/certz");
    let field = |i: &serde_json::Value, f: &str| i[f].as_u64().unwrap();
    let mut rotate: Vec<u64> = identities.iter().map(|i| field(i, "rotate_at")).collect();
    rotate.sort_unstable();
    // Without jitter: the end of each certificate's life minus its grace period, as the
    // controller computes it (the default policy: half the life, the CA's backdating of
    // not_before not counted).
    let policy = citadel::controller::GracePolicy {
        ratio: 0.5,
        min: Duration::from_secs(600),
        backdate: citadel::ca::CaOptions::default().backdate,
    };
    let unix = |s: u64| std::time::UNIX_EPOCH + Duration::from_secs(s);
    let mut herd: Vec<u64> = identities
        .iter()
        .map(|i| {
            let (nb, na) = (field(i, "not_before"), field(i, "not_after"));
            na - policy.grace(unix(nb), unix(na)).as_secs()
        })
        .collect();
    herd.sort_unstable();
    let first = rotate[0].min(herd[0]);
    let per_minute = |times: &[u64]| -> BTreeMap<u64, u64> {
        let mut m = BTreeMap::new();
        for t in times {
            *m.entry((t - first) / 60).or_insert(0) += 1;
        }
        m
    };
    let (rot_min, herd_min) = (per_minute(&rotate), per_minute(&herd));
    let last_minute = rot_min
        .keys()
        .chain(herd_min.keys())
        .copied()
        .max()
        .unwrap_or(0);
    let series = |m: &BTreeMap<u64, u64>| -> Vec<[f64; 2]> {
        (0..=last_minute)
            .map(|k| [k as f64, *m.get(&k).unwrap_or(&0) as f64])
            .collect()
    };
    let busiest_second = |times: &[u64]| -> u64 {
        let mut m: BTreeMap<u64, u64> = BTreeMap::new();
        for t in times {
            *m.entry(*t).or_insert(0) += 1;
        }
        m.values().copied().max().unwrap_or(0)
    };
    let spread = |times: &[u64], q: f64| percentile(times, q) - times[0];

    let rate = accounts as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{accounts} secrets in {:.1} s ({rate:.0}/s); rotations over {} s (p50 {} s, p99 {} s after the first), at most {} in one second; without jitter over {} s, at most {} in one second",
        elapsed.as_secs_f64(),
        rotate[rotate.len() - 1] - rotate[0],
        spread(&rotate, 0.5),
        spread(&rotate, 0.99),
        busiest_second(&rotate),
        herd[herd.len() - 1] - herd[0],
        busiest_second(&herd),
    );
    let n = accounts;
    let report = serde_json::json!({
        format!("citadel_scale_secrets_{n}_s"): (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "citadel_scale_secrets_per_s": rate.round(),
        "citadel_scale_rotation_span_s": rotate[rotate.len() - 1] - rotate[0],
        "citadel_scale_rotation_p50_s": spread(&rotate, 0.5),
        "citadel_scale_rotation_p99_s": spread(&rotate, 0.99),
        "citadel_scale_rotation_max_per_s": busiest_second(&rotate),
        "citadel_scale_unjittered_span_s": herd[herd.len() - 1] - herd[0],
        "citadel_scale_unjittered_max_per_s": busiest_second(&herd),
        "citadel_scale_written": {
            "title": format!("Citadel: {n} secrets written as files"),
            "x": "seconds since start",
            "y": "secrets written",
            "points": progress,
        },
        "citadel_scale_rotation_spread": {
            "title": format!("Citadel: scheduled rotations of {n} secrets per minute"),
            "x": "minutes after the first rotation",
            "y": "rotations in that minute",
            "series": {
                "with jitter (scheduled)": series(&rot_min),
                "without jitter (not_after - grace)": series(&herd_min),
            },
        },
    });
    println!("{report:#}");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("bench/citadel_scale.json"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
}
