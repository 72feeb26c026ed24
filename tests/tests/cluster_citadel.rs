//! Citadel on the real local Kubernetes cluster (`tests/cluster/`), judged by the API server
//! and the `openssl` CLI.
//!
//! Each test runs Citadel processes against its own namespace, used both as the storage
//! namespace (`istio-ca-secret`, the leader Lease) and as the only listened namespace, so
//! tests neither see nor touch each other's secrets.

mod citadel_common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citadel_common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use mesh_tests::cluster::{Cluster, TestNamespace};
use mesh_tests::{Service, free_port, http_get};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

async fn start_citadel(cluster: &Cluster, ns: &str, grpc_port: u16, extra: &[&str]) -> Service {
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let grpc = format!("127.0.0.1:{grpc_port}");
    let mut args = vec![
        "--kubeconfig",
        &kubeconfig,
        "--citadel-storage-namespace",
        ns,
        "--listened-namespaces",
        ns,
        "--grpc-addr",
        &grpc,
        "--secret-resync-period",
        "1s",
        "--leader-lease-duration",
        "3s",
    ];
    args.extend_from_slice(extra);
    let mut svc = Service::start("citadel", &args).await.unwrap();
    svc.wait_ready(Duration::from_secs(60)).await.unwrap();
    svc
}

/// Polls `f` until it returns `Some`, failing with Citadel's log after `WAIT`.
async fn wait_for<T, F, Fut>(what: &str, logs: &[&Service], f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_within(what, WAIT, logs, f).await
}

/// Polls `f` until it returns `Some`, failing with Citadel's log after `timeout`.
async fn wait_within<T, F, Fut>(what: &str, timeout: Duration, logs: &[&Service], mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|s| s.logs()).collect();
            panic!(
                "timed out waiting for {what}; citadel logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn data(secret: &Secret, key: &str) -> String {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("secret has no {key}"));
    String::from_utf8(bytes.0.clone()).unwrap()
}

/// Checks a workload secret: type, annotation, keys, and with openssl the chain, SAN and key.
fn check_workload_secret(secret: &Secret, ns: &str, sa: &str) {
    assert_eq!(secret.type_.as_deref(), Some("istio.io/key-and-cert"));
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("istio.io/service-account.name")
            .map(String::as_str),
        Some(sa)
    );
    let keys: BTreeSet<&str> = secret
        .data
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["cert-chain.pem", "key.pem", "root-cert.pem"])
    );
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("key.pem");
    std::fs::write(&key, data(secret, "key.pem")).unwrap();
    let chain: Vec<String> = data(secret, "cert-chain.pem")
        .split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|c| c.contains("BEGIN CERTIFICATE"))
        .map(str::to_string)
        .collect();
    check_issued(
        &chain,
        &data(secret, "root-cert.pem"),
        &format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"),
        &key,
    );
}

async fn get_secret(api: &Api<Secret>, name: &str) -> Option<Secret> {
    api.get_opt(name).await.unwrap()
}

/// For loops that wait for a secret to appear: an API error (the shared cluster busy or
/// restarting) is "not yet" rather than a failure.
async fn poll_secret(api: &Api<Secret>, name: &str) -> Option<Secret> {
    api.get_opt(name).await.ok().flatten()
}

async fn setup() -> Option<(&'static Cluster, TestNamespace)> {
    let cluster = Cluster::for_test().await.unwrap()?;
    let ns = cluster.namespace("citadel").await.unwrap();
    Some((cluster, ns))
}

#[tokio::test]
async fn cluster_secrets_follow_accounts_and_a_restart_keeps_the_root() {
    let Some((cluster, ns)) = setup().await else {
        return;
    };
    let name = ns.name().to_string();
    let secrets: Api<Secret> = Api::namespaced(ns.client(), &name);
    let svc = start_citadel(cluster, &name, free_port(), &[]).await;

    // A new account gets its secret.
    cluster
        .kubectl_ok(["create", "serviceaccount", "alpha", "-n", &name])
        .await
        .unwrap();
    let alpha = wait_for("secret istio.alpha", &[&svc], || {
        poll_secret(&secrets, "istio.alpha")
    })
    .await;
    check_workload_secret(&alpha, &name, "alpha");
    let root = data(&alpha, "root-cert.pem");
    let ca_secret = get_secret(&secrets, "istio-ca-secret").await.unwrap();
    assert_eq!(ca_secret.type_.as_deref(), Some("istio.io/ca-root"));
    assert_eq!(data(&ca_secret, "ca-cert.pem").trim(), root.trim());

    // Deleted by someone: recreated.
    let uid = alpha.metadata.uid.clone();
    secrets
        .delete("istio.alpha", &DeleteParams::default())
        .await
        .unwrap();
    let again = wait_for("istio.alpha to be recreated", &[&svc], || async {
        poll_secret(&secrets, "istio.alpha")
            .await
            .filter(|s| s.metadata.uid != uid)
    })
    .await;
    check_workload_secret(&again, &name, "alpha");

    // The account goes: so does its secret.
    cluster
        .kubectl_ok(["delete", "serviceaccount", "alpha", "-n", &name])
        .await
        .unwrap();
    wait_for("istio.alpha to be deleted", &[&svc], || async {
        get_secret(&secrets, "istio.alpha")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // A restart keeps the root: same istio-ca-secret, and the default account's secret is
    // not rewritten for a new root.
    let default = wait_for("secret istio.default", &[&svc], || {
        poll_secret(&secrets, "istio.default")
    })
    .await;
    assert!(svc.stop().await.unwrap().success());
    let svc = start_citadel(cluster, &name, free_port(), &[]).await;
    cluster
        .kubectl_ok(["create", "serviceaccount", "beta", "-n", &name])
        .await
        .unwrap();
    let beta = wait_for("secret istio.beta", &[&svc], || {
        poll_secret(&secrets, "istio.beta")
    })
    .await;
    check_workload_secret(&beta, &name, "beta");
    assert_eq!(data(&beta, "root-cert.pem").trim(), root.trim());
    let ca_after = get_secret(&secrets, "istio-ca-secret").await.unwrap();
    assert_eq!(
        data(&ca_after, "ca-cert.pem"),
        data(&ca_secret, "ca-cert.pem")
    );
    assert_eq!(
        data(&ca_after, "ca-key.pem"),
        data(&ca_secret, "ca-key.pem")
    );
    let default_after = get_secret(&secrets, "istio.default").await.unwrap();
    assert_eq!(
        default_after.metadata.resource_version, default.metadata.resource_version,
        "the default account's secret was rewritten after a restart"
    );
    svc.stop().await.unwrap();
    ns.cleanup().await.unwrap();
}

#[tokio::test]
async fn cluster_secrets_rotate_before_expiry() {
    let Some((cluster, ns)) = setup().await else {
        return;
    };
    let name = ns.name().to_string();
    let secrets: Api<Secret> = Api::namespaced(ns.client(), &name);
    // 60 s certificates rotated when less than half the TTL is left (the default ratio; the
    // one-minute notBefore backdate does not count): about every 22-30 s (jitter pulls it
    // forward).
    let svc = start_citadel(
        cluster,
        &name,
        free_port(),
        &[
            "--workload-cert-ttl",
            "60s",
            "--workload-cert-min-grace-period",
            "1s",
        ],
    )
    .await;
    let first = wait_for("secret istio.default", &[&svc], || {
        poll_secret(&secrets, "istio.default")
    })
    .await;
    check_workload_secret(&first, &name, "default");
    let first_chain = data(&first, "cert-chain.pem");
    let mut seen = vec![first_chain.clone()];
    let mut last = Instant::now();
    // Two rotations, each before the previous certificate expired, and not in a hot loop.
    for _ in 0..2 {
        let previous = seen.last().unwrap().clone();
        let next = wait_within("a rotation", Duration::from_secs(70), &[&svc], || async {
            poll_secret(&secrets, "istio.default")
                .await
                .filter(|s| data(s, "cert-chain.pem") != previous)
        })
        .await;
        assert!(
            last.elapsed() > Duration::from_secs(10),
            "rotated again after {:?}",
            last.elapsed()
        );
        last = Instant::now();
        // The certificate it replaced is still valid at this moment.
        assert!(openssl_still_valid(&previous), "rotated only after expiry");
        check_workload_secret(&next, &name, "default");
        seen.push(data(&next, "cert-chain.pem"));
    }
    svc.stop().await.unwrap();
    ns.cleanup().await.unwrap();
}

/// Whether the first certificate of a PEM chain is valid now, per openssl.
fn openssl_still_valid(chain: &str) -> bool {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), chain).unwrap();
    openssl(&[
        "x509",
        "-in",
        &f.path().display().to_string(),
        "-noout",
        "-checkend",
        "0",
    ])
    .status
    .success()
}

async fn token(cluster: &Cluster, ns: &str, sa: &str, audience: &str) -> String {
    cluster
        .kubectl_ok([
            "create",
            "token",
            sa,
            "-n",
            ns,
            "--audience",
            audience,
            "--duration",
            "10m",
        ])
        .await
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn cluster_csr_is_signed_for_the_tokens_account_and_bad_tokens_are_refused() {
    let Some((cluster, ns)) = setup().await else {
        return;
    };
    let name = ns.name().to_string();
    let secrets: Api<Secret> = Api::namespaced(ns.client(), &name);
    let port = free_port();
    let svc = start_citadel(cluster, &name, port, &[]).await;
    for sa in ["alpha", "beta", "gone"] {
        cluster
            .kubectl_ok(["create", "serviceaccount", sa, "-n", &name])
            .await
            .unwrap();
    }
    let alpha = wait_for("secret istio.alpha", &[&svc], || {
        poll_secret(&secrets, "istio.alpha")
    })
    .await;
    let root = data(&alpha, "root-cert.pem");
    let work = tempfile::tempdir().unwrap();
    let beta_uri = format!("spiffe://cluster.local/ns/{name}/sa/beta");
    let csr = openssl_csr(work.path(), "k", "ec", &beta_uri);
    let ch = channel(port, &root, None).await.unwrap();

    // A token of alpha, a CSR asking for beta: the certificate is alpha's.
    let alpha_token = token(cluster, &name, "alpha", "istio-ca").await;
    let chain = create_certificate(ch.clone(), &csr, 3600, Some(&alpha_token))
        .await
        .unwrap();
    let text = check_issued(
        &chain,
        &root,
        &format!("spiffe://cluster.local/ns/{name}/sa/alpha"),
        &work.path().join("k.key"),
    );
    assert!(!text.contains(&beta_uri), "{text}");

    // Wrong audience: refused.
    let other_audience = token(cluster, &name, "alpha", "not-istio-ca").await;
    let e = create_certificate(ch.clone(), &csr, 0, Some(&other_audience))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // An expired token: alpha's real token with exp/iat/nbf moved an hour back, re-signed
    // with the cluster's own service-account key (so only its expiry is wrong).
    let expired = expire_token(
        &alpha_token,
        &cluster.repo_root().join("target/cluster/pki"),
    );
    let e = create_certificate(ch.clone(), &csr, 0, Some(&expired))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // The token of an account deleted since (revoked): refused.
    let gone_token = token(cluster, &name, "gone", "istio-ca").await;
    cluster
        .kubectl_ok(["delete", "serviceaccount", "gone", "-n", &name])
        .await
        .unwrap();
    let gone_deadline = Instant::now() + WAIT;
    loop {
        let r = create_certificate(ch.clone(), &csr, 0, Some(&gone_token)).await;
        match r {
            Err(e) if e.code() == Code::Unauthenticated => break,
            other => assert!(
                Instant::now() < gone_deadline,
                "a deleted account's token still accepted: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Garbage token, no credential at all.
    let e = create_certificate(ch.clone(), &csr, 0, Some("not.a.jwt"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = create_certificate(ch.clone(), &csr, 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let metrics = http_get(&format!("http://{}/metrics", svc.http_addr()), &[])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("citadel_csr_successes_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("citadel_csr_failures_total{reason=\"bad_token\"}"),
        "{metrics}"
    );
    svc.stop().await.unwrap();
    ns.cleanup().await.unwrap();
}

#[tokio::test]
async fn cluster_only_the_leader_writes_and_another_replica_takes_over() {
    let Some((cluster, ns)) = setup().await else {
        return;
    };
    let name = ns.name().to_string();
    let secrets: Api<Secret> = Api::namespaced(ns.client(), &name);
    let leases: Api<Lease> = Api::namespaced(ns.client(), &name);
    let a = start_citadel(cluster, &name, free_port(), &[]).await;
    let b = start_citadel(cluster, &name, free_port(), &[]).await;
    let holder = wait_for("a Lease holder", &[&a, &b], || async {
        leases
            .get_opt("istio-citadel")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
    })
    .await;
    let pid_of = |s: &Service| format!("_{}_", s.pid().unwrap());
    let (leader, follower) = if holder.contains(&pid_of(&a)) {
        (a, b)
    } else {
        assert!(holder.contains(&pid_of(&b)), "holder {holder}");
        (b, a)
    };

    cluster
        .kubectl_ok(["create", "serviceaccount", "alpha", "-n", &name])
        .await
        .unwrap();
    let alpha = wait_for("secret istio.alpha", &[&leader, &follower], || {
        poll_secret(&secrets, "istio.alpha")
    })
    .await;
    check_workload_secret(&alpha, &name, "alpha");
    let written = |s: &Service| {
        let url = format!("http://{}/metrics", s.http_addr());
        async move {
            let body = http_get(&url, &[]).await.unwrap().body;
            body.lines()
                .filter(|l| l.starts_with("citadel_secrets_written_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        }
    };
    assert!(written(&leader).await >= 1.0);
    assert_eq!(written(&follower).await, 0.0, "the follower wrote secrets");

    // The leader dies without releasing the Lease (SIGKILL): the other replica takes over
    // once it expires, and secrets are produced again.
    let follower_pid = pid_of(&follower);
    drop(leader);
    let new_holder = wait_for("the follower to take the Lease", &[&follower], || async {
        leases
            .get_opt("istio-citadel")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| h.contains(&follower_pid))
    })
    .await;
    assert_ne!(new_holder, holder);
    cluster
        .kubectl_ok(["create", "serviceaccount", "beta", "-n", &name])
        .await
        .unwrap();
    let beta = wait_for(
        "secret istio.beta from the new leader",
        &[&follower],
        || poll_secret(&secrets, "istio.beta"),
    )
    .await;
    check_workload_secret(&beta, &name, "beta");
    assert!(written(&follower).await >= 1.0);
    follower.stop().await.unwrap();
    ns.cleanup().await.unwrap();
}

// === JWT helpers (for the expired-token case) ===

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64URL.iter().position(|&b| b == c).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=n {
            out.push(B64URL[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// `token` with its time claims an hour (and 10 minutes) in the past, re-signed (RS256) with
/// the cluster's service-account key `pki/sa.key`.
fn expire_token(token: &str, pki: &Path) -> String {
    let mut parts = token.split('.');
    let (header, payload) = (parts.next().unwrap(), parts.next().unwrap());
    let mut claims: serde_json::Value = serde_json::from_slice(&b64url_decode(payload)).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["iat"] = (now - 4200).into();
    claims["nbf"] = (now - 4200).into();
    claims["exp"] = (now - 3600).into();
    let signing_input = format!(
        "{header}.{}",
        b64url_encode(&serde_json::to_vec(&claims).unwrap())
    );
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("input");
    std::fs::write(&input, &signing_input).unwrap();
    let out = openssl(&[
        "dgst",
        "-sha256",
        "-binary",
        "-sign",
        &pki.join("sa.key").display().to_string(),
        &input.display().to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    format!("{signing_input}.{}", b64url_encode(&out.stdout))
}

#[test]
fn base64url_round_trips() {
    for s in [
        &b""[..],
        b"a",
        b"ab",
        b"abc",
        b"abcd",
        &[0xff, 0xfe, 0x00, 0x10],
    ] {
        assert_eq!(b64url_decode(&b64url_encode(s)), s);
    }
    assert_eq!(b64url_encode(b"hi?"), "aGk_");
}
