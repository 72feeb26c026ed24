//! Citadel in file mode (`--config-dir` + `--secret-dir`), judged by the `openssl` CLI: chains
//! verify to the root, the SAN is the SPIFFE URI, the key matches, validity honours the TTL;
//! secrets follow ServiceAccounts as they come and go; rotation happens before expiry; a
//! restart keeps the root; a self-signed root rotates with the same key so old leaves still
//! verify; a plugged-in intermediate chains up to its root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use mesh_tests::{Service, http_get};
use tempfile::TempDir;

const OPENSSL: &str = "/usr/bin/openssl";

fn openssl(args: &[&str]) -> Output {
    Command::new(OPENSSL)
        .args(args)
        .output()
        .expect("run openssl")
}

fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sa_yaml(accounts: &[(&str, &str)]) -> String {
    accounts
        .iter()
        .map(|(ns, name)| {
            format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {ns}\n")
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

struct Setup {
    tmp: TempDir,
}

impl Setup {
    fn new(accounts: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("config")).unwrap();
        let s = Self { tmp };
        s.set_accounts(accounts);
        s
    }
    fn set_accounts(&self, accounts: &[(&str, &str)]) {
        let path = self.config().join("accounts.yaml");
        let tmp = self.config().join(".accounts.yaml.tmp");
        std::fs::write(&tmp, sa_yaml(accounts)).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }
    fn config(&self) -> PathBuf {
        self.tmp.path().join("config")
    }
    fn out(&self) -> PathBuf {
        self.tmp.path().join("out")
    }
    fn ca(&self) -> PathBuf {
        self.tmp.path().join("ca")
    }
    fn secret(&self, ns: &str, sa: &str) -> PathBuf {
        self.out().join(ns).join(format!("istio.{sa}"))
    }
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--config-dir".into(),
            self.config().display().to_string(),
            "--secret-dir".into(),
            self.out().display().to_string(),
            "--ca-dir".into(),
            self.ca().display().to_string(),
            "--secret-resync-period".into(),
            "1s".into(),
            // Any free port: tests run side by side (Istio's 8060 is the default).
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }
    async fn start(&self, extra: &[&str]) -> Service {
        self.start_with(self.args(extra)).await
    }
    /// Citadel without `--ca-dir`: the root is kept beside the secrets by default.
    async fn start_without_ca_dir(&self) -> Service {
        let mut args = self.args(&[]);
        let at = args.iter().position(|a| a == "--ca-dir").unwrap();
        args.drain(at..at + 2);
        self.start_with(args).await
    }
    async fn start_with(&self, args: Vec<String>) -> Service {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut svc = Service::start("citadel", &refs).await.unwrap();
        svc.wait_ready(Duration::from_secs(60)).await.unwrap();
        svc
    }
}

async fn wait_for(what: &str, svc: &Service, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; citadel log:\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Splits cert-chain.pem into leaf.pem and rest.pem (intermediates and root) beside it in
/// `work`, and returns their paths.
fn split_chain(chain: &Path, work: &Path) -> (PathBuf, PathBuf, usize) {
    let text = std::fs::read_to_string(chain).unwrap();
    let certs: Vec<String> = text
        .split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|c| c.contains("BEGIN CERTIFICATE"))
        .map(str::to_string)
        .collect();
    assert!(!certs.is_empty(), "no certificate in {}", chain.display());
    let leaf = work.join("leaf.pem");
    let rest = work.join("rest.pem");
    std::fs::write(&leaf, &certs[0]).unwrap();
    std::fs::write(&rest, certs[1..].concat()).unwrap();
    (leaf, rest, certs.len())
}

/// Checks one secret directory with openssl; returns the leaf's text dump.
fn check_secret(dir: &Path, ns: &str, sa: &str, ttl_secs: Option<u64>) -> String {
    let work = tempfile::tempdir().unwrap();
    // Copy the three files first (a consistent version, through ..data).
    let data = dir.join("..data");
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        std::fs::copy(data.join(f), work.path().join(f)).unwrap();
    }
    let w = |f: &str| work.path().join(f).display().to_string();
    let (leaf, rest, n) = split_chain(&work.path().join("cert-chain.pem"), work.path());
    assert!(n >= 2, "chain has the leaf and the root");
    let (leaf, rest) = (leaf.display().to_string(), rest.display().to_string());
    // The chain verifies to the root, as a TLS client and server certificate.
    for purpose in ["sslclient", "sslserver"] {
        let out = openssl_ok(&[
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            &w("root-cert.pem"),
            "-untrusted",
            &rest,
            &leaf,
        ]);
        assert!(out.contains(": OK"), "{out}");
    }
    // The chain ends at the root.
    let chain_text = std::fs::read_to_string(work.path().join("cert-chain.pem")).unwrap();
    let root_text = std::fs::read_to_string(work.path().join("root-cert.pem")).unwrap();
    assert!(chain_text.trim_end().ends_with(root_text.trim_end()));
    // SAN is exactly the SPIFFE URI; usages for both ends of mTLS.
    let text = openssl_ok(&["x509", "-in", &leaf, "-noout", "-text"]);
    let uri = format!("URI:spiffe://cluster.local/ns/{ns}/sa/{sa}");
    assert!(text.contains(&uri), "{text}");
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    // The key matches the certificate.
    let from_key = openssl_ok(&["pkey", "-in", &w("key.pem"), "-pubout"]);
    let from_cert = openssl_ok(&["x509", "-in", &leaf, "-noout", "-pubkey"]);
    assert_eq!(from_key, from_cert);
    // Validity honours the TTL: still valid in ttl - 30 s, expired by ttl + 30 s.
    let Some(ttl_secs) = ttl_secs else {
        return text;
    };
    let soon = (ttl_secs - 30).to_string();
    let later = (ttl_secs + 30).to_string();
    assert!(
        openssl(&["x509", "-in", &leaf, "-noout", "-checkend", &soon])
            .status
            .success()
    );
    assert!(
        !openssl(&["x509", "-in", &leaf, "-noout", "-checkend", &later])
            .status
            .success()
    );
    text
}

#[tokio::test]
async fn file_mode_issues_verifiable_certificates_and_follows_accounts() {
    let setup = Setup::new(&[("default", "reviews"), ("shop", "cart")]);
    let svc = setup.start(&["--workload-cert-ttl", "2h"]).await;
    let (reviews, cart) = (
        setup.secret("default", "reviews"),
        setup.secret("shop", "cart"),
    );
    wait_for("both secrets", &svc, Duration::from_secs(20), || {
        reviews.join("key.pem").exists() && cart.join("key.pem").exists()
    })
    .await;
    check_secret(&reviews, "default", "reviews", Some(7200));
    check_secret(&cart, "shop", "cart", Some(7200));
    let key_mode = std::fs::metadata(reviews.join("key.pem")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);

    // A new account gets a secret; a removed one loses it.
    setup.set_accounts(&[("default", "reviews"), ("default", "ratings")]);
    let ratings = setup.secret("default", "ratings");
    wait_for(
        "the new account's secret",
        &svc,
        Duration::from_secs(20),
        || ratings.join("key.pem").exists(),
    )
    .await;
    check_secret(&ratings, "default", "ratings", Some(7200));
    wait_for(
        "the removed account's secret to go",
        &svc,
        Duration::from_secs(20),
        || !cart.exists(),
    )
    .await;
    assert!(
        !setup.out().join("shop").exists(),
        "empty namespace dir removed"
    );

    // Someone deletes a secret: it comes back (resync every second).
    std::fs::remove_dir_all(&reviews).unwrap();
    wait_for(
        "the deleted secret to come back",
        &svc,
        Duration::from_secs(20),
        || reviews.join("key.pem").exists(),
    )
    .await;
    check_secret(&reviews, "default", "reviews", Some(7200));

    // Monitoring: metrics, certz, and a liveness check that signs.
    let base = format!("http://{}", svc.http_addr());
    let metrics = http_get(&format!("{base}/metrics"), &[])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("citadel_certs_issued_total{source=\"secret\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("citadel_secrets_written_total{operation=\"create\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("citadel_secrets_deleted_total 1"),
        "{metrics}"
    );
    let expiry_line = metrics
        .lines()
        .find(|l| l.starts_with("citadel_server_root_cert_expiry_timestamp "))
        .unwrap_or_else(|| panic!("{metrics}"));
    let expiry: i64 = expiry_line.split(' ').nth(1).unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        expiry > now + 9 * 365 * 86400,
        "self-signed root lasts 10 years: {expiry_line}"
    );
    let certz = http_get(&format!("{base}/debug/certz"), &[])
        .await
        .unwrap()
        .json()
        .unwrap();
    let ids: Vec<&str> = certz["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["identity"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"spiffe://cluster.local/ns/default/sa/ratings"),
        "{certz}"
    );
    let live = http_get(&format!("{base}/live"), &[]).await.unwrap();
    assert!(live.status.is_success(), "{}", live.body);

    // A restart keeps the root and leaves valid secrets alone.
    let root_before = std::fs::read_to_string(reviews.join("root-cert.pem")).unwrap();
    let version_before = std::fs::read_link(reviews.join("..data")).unwrap();
    let status = svc.stop().await.unwrap();
    assert!(status.success());
    let svc = setup.start(&["--workload-cert-ttl", "2h"]).await;
    let base = format!("http://{}", svc.http_addr());
    wait_for(
        "the restarted controller to look at secrets",
        &svc,
        Duration::from_secs(20),
        || svc.logs().contains("service accounts synced"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let certz = http_get(&format!("{base}/debug/certz"), &[])
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(certz["root"]["pem"].as_str().unwrap(), root_before);
    assert_eq!(
        std::fs::read_link(reviews.join("..data")).unwrap(),
        version_before
    );
    assert!(svc.stop().await.unwrap().success());
}

/// Without `--ca-dir` a restart keeps the root too (Istio keeps it in `istio-ca-secret`): it
/// is kept in `OUT/istio-system/istio-ca-secret/`, the key readable by its owner only, and a
/// certificate issued before the restart still verifies under the root after it.
#[tokio::test]
async fn the_root_survives_a_restart_without_ca_dir() {
    let setup = Setup::new(&[("default", "reviews")]);
    let svc = setup.start_without_ca_dir().await;
    let reviews = setup.secret("default", "reviews");
    wait_for("the first secret", &svc, Duration::from_secs(20), || {
        reviews.join("..data/root-cert.pem").is_file()
    })
    .await;
    let kept = setup.out().join("istio-system/istio-ca-secret");
    let key = kept.join("ca-key.pem");
    assert!(key.is_file(), "no CA key kept in {}", kept.display());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode of {}", key.display());
    assert!(svc.logs().contains("istio-ca-secret"), "{}", svc.logs());
    let work = tempfile::tempdir().unwrap();
    let old_chain = work.path().join("old-chain.pem");
    std::fs::copy(reviews.join("..data/cert-chain.pem"), &old_chain).unwrap();
    let root_before = std::fs::read_to_string(reviews.join("..data/root-cert.pem")).unwrap();
    assert!(svc.stop().await.unwrap().success());

    let svc = setup.start_without_ca_dir().await;
    let certz: serde_json::Value =
        http_get(&format!("http://{}/debug/certz", svc.http_addr()), &[])
            .await
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(certz["root"]["pem"].as_str().unwrap(), root_before);
    let root_now = work.path().join("root-now.pem");
    std::fs::copy(reviews.join("..data/root-cert.pem"), &root_now).unwrap();
    assert_eq!(std::fs::read_to_string(&root_now).unwrap(), root_before);
    let (leaf, rest, _) = split_chain(&old_chain, work.path());
    let out = openssl_ok(&[
        "verify",
        "-CAfile",
        &root_now.display().to_string(),
        "-untrusted",
        &rest.display().to_string(),
        &leaf.display().to_string(),
    ]);
    assert!(out.contains(": OK"), "{out}");
    assert!(svc.stop().await.unwrap().success());
}

#[tokio::test]
async fn certificates_rotate_before_they_expire() {
    let setup = Setup::new(&[("default", "fast")]);
    let svc = setup
        .start(&[
            "--workload-cert-ttl",
            "4s",
            "--workload-cert-min-grace-period",
            "1s",
        ])
        .await;
    let dir = setup.secret("default", "fast");
    wait_for("the secret", &svc, Duration::from_secs(20), || {
        dir.join("key.pem").exists()
    })
    .await;
    // Watch for 10 s: every version seen must be unexpired when read, and several rotations
    // must happen, but not continuously: with the default ratio 0.5 a 4 s certificate is
    // rotated when about 2 s are left (the notBefore backdate is not part of its lifetime).
    let mut versions = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let work = tempfile::tempdir().unwrap();
        let link = std::fs::read_link(dir.join("..data")).unwrap();
        let vdir = dir.join(&link);
        let chain = work.path().join("chain.pem");
        if std::fs::copy(vdir.join("cert-chain.pem"), &chain).is_ok() {
            let (leaf, _, _) = split_chain(&chain, work.path());
            let out = openssl(&[
                "x509",
                "-in",
                leaf.to_str().unwrap(),
                "-noout",
                "-checkend",
                "0",
            ]);
            assert!(
                out.status.success(),
                "an expired certificate was served; log:\n{}",
                svc.logs()
            );
            versions.insert(link);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        versions.len() >= 3,
        "only {} versions in 10 s; log:\n{}",
        versions.len(),
        svc.logs()
    );
    assert!(
        versions.len() <= 15,
        "{} versions in 10 s: rotating continuously; log:\n{}",
        versions.len(),
        svc.logs()
    );
    check_secret(&dir, "default", "fast", None);
    let metrics = http_get(&format!("http://{}/metrics", svc.http_addr()), &[])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("citadel_secret_rotations_total{reason=\"expiring\"}"),
        "{metrics}"
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn self_signed_root_rotates_with_the_same_key() {
    let setup = Setup::new(&[("default", "a")]);
    let svc = setup
        .start(&[
            "--self-signed-ca-cert-ttl",
            "1h",
            "--root-cert-check-interval",
            "1s",
            "--root-cert-grace-period-percentile",
            "100",
            "--root-change-spread",
            "1s",
        ])
        .await;
    let dir = setup.secret("default", "a");
    wait_for("the secret", &svc, Duration::from_secs(20), || {
        dir.join("key.pem").exists()
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let old_root = work.path().join("old-root.pem");
    let old_chain = work.path().join("old-chain.pem");
    std::fs::copy(dir.join("root-cert.pem"), &old_root).unwrap();
    std::fs::copy(dir.join("cert-chain.pem"), &old_chain).unwrap();
    let old_root_text = std::fs::read_to_string(&old_root).unwrap();
    // With a 100% grace window the root is rotated at every check; wait for a secret that
    // carries a new root.
    wait_for(
        "a secret with the rotated root",
        &svc,
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(dir.join("root-cert.pem"))
                .map(|r| r != old_root_text)
                .unwrap_or(false)
        },
    )
    .await;
    let new_root = work.path().join("new-root.pem");
    std::fs::copy(dir.join("root-cert.pem"), &new_root).unwrap();
    let ca_file = std::fs::read_to_string(setup.ca().join("ca-cert.pem")).unwrap();
    assert_ne!(ca_file, old_root_text, "the rotated root is persisted");

    // Old leaf under the new root, new leaf under the old root: both verify.
    let (old_leaf, _, _) = split_chain(&old_chain, work.path());
    let old_leaf_copy = work.path().join("old-leaf.pem");
    std::fs::rename(&old_leaf, &old_leaf_copy).unwrap();
    let new_chain = work.path().join("new-chain.pem");
    std::fs::copy(dir.join("cert-chain.pem"), &new_chain).unwrap();
    let (new_leaf, _, _) = split_chain(&new_chain, work.path());
    for (root, leaf) in [(&new_root, &old_leaf_copy), (&old_root, &new_leaf)] {
        let out = openssl_ok(&[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ]);
        assert!(out.contains(": OK"), "{out}");
    }
    // Same key: the public keys of the two roots are equal.
    let k1 = openssl_ok(&[
        "x509",
        "-in",
        old_root.to_str().unwrap(),
        "-noout",
        "-pubkey",
    ]);
    let k2 = openssl_ok(&[
        "x509",
        "-in",
        new_root.to_str().unwrap(),
        "-noout",
        "-pubkey",
    ]);
    assert_eq!(k1, k2);
    let metrics = http_get(&format!("http://{}/metrics", svc.http_addr()), &[])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("citadel_secret_rotations_total{reason=\"root_changed\"}"),
        "{metrics}"
    );
    svc.stop().await.unwrap();
}

/// Makes a root and an intermediate CA with the openssl CLI (independent of Citadel's code).
fn openssl_ca(dir: &Path) {
    let p = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        dir.join("ext.cnf"),
        "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
    )
    .unwrap();
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("root-key.pem"),
        "-out",
        &p("root-cert.pem"),
        "-days",
        "30",
        "-subj",
        "/O=Test Org/CN=Test Root CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl_ok(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("ca-key.pem"),
        "-out",
        &p("ca.csr"),
        "-subj",
        "/O=Test Org/CN=Test Intermediate CA",
    ]);
    openssl_ok(&[
        "x509",
        "-req",
        "-in",
        &p("ca.csr"),
        "-CA",
        &p("root-cert.pem"),
        "-CAkey",
        &p("root-key.pem"),
        "-CAcreateserial",
        "-out",
        &p("ca-cert.pem"),
        "-days",
        "20",
        "-extfile",
        &p("ext.cnf"),
        "-extensions",
        "v3_ca",
    ]);
    let chain = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
}

#[tokio::test]
async fn plugged_in_intermediate_chains_to_its_root() {
    let setup = Setup::new(&[("default", "web")]);
    let cacerts = setup.tmp.path().join("cacerts");
    std::fs::create_dir_all(&cacerts).unwrap();
    openssl_ca(&cacerts);
    let c = |f: &str| cacerts.join(f).display().to_string();
    let (cert, key, root, chain) = (
        c("ca-cert.pem"),
        c("ca-key.pem"),
        c("root-cert.pem"),
        c("cert-chain.pem"),
    );
    let svc = setup
        .start(&[
            "--signing-cert",
            &cert,
            "--signing-key",
            &key,
            "--root-cert",
            &root,
            "--cert-chain",
            &chain,
        ])
        .await;
    let dir = setup.secret("default", "web");
    wait_for("the secret", &svc, Duration::from_secs(20), || {
        dir.join("key.pem").exists()
    })
    .await;
    check_secret(&dir, "default", "web", Some(86400));
    let work = tempfile::tempdir().unwrap();
    let (_, _, n) = split_chain(&dir.join("cert-chain.pem"), work.path());
    assert_eq!(n, 3, "leaf, intermediate, root");
    assert_eq!(
        std::fs::read_to_string(dir.join("root-cert.pem"))
            .unwrap()
            .trim(),
        std::fs::read_to_string(&root).unwrap().trim()
    );
    svc.stop().await.unwrap();

    // A key that does not belong to the signing certificate is refused by name.
    let other = setup.tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    openssl_ca(&other);
    let wrong_key = other.join("ca-key.pem").display().to_string();
    let args = setup.args(&[
        "--signing-cert",
        &cert,
        "--signing-key",
        &wrong_key,
        "--root-cert",
        &root,
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut svc = Service::start("citadel", &refs).await.unwrap();
    let err = svc
        .wait_ready(Duration::from_secs(20))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited"), "{err}");
    assert!(err.contains("ca-key.pem: does not match"), "{err}");
}

#[tokio::test]
async fn rsa_keys_on_request() {
    let setup = Setup::new(&[("default", "legacy")]);
    let svc = setup.start(&["--key-algorithm", "RSA_2048"]).await;
    let dir = setup.secret("default", "legacy");
    wait_for("the secret", &svc, Duration::from_secs(30), || {
        dir.join("key.pem").exists()
    })
    .await;
    check_secret(&dir, "default", "legacy", Some(86400));
    let key = openssl_ok(&[
        "pkey",
        "-in",
        dir.join("key.pem").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(key.contains("Private-Key: (2048 bit"), "{key}");
    let root = openssl_ok(&[
        "x509",
        "-in",
        dir.join("root-cert.pem").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(root.contains("rsaEncryption"), "{root}");
    svc.stop().await.unwrap();
}
