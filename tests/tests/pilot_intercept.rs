//! Transparent interception with real iptables and a real Envoy: the sidecar of a "pod" (a
//! network namespace of its own) whose TCP is captured by `pilot-agent iptables`, configured
//! by Pilot's `virtualOutbound` (15001) and `virtualInbound` (15006) listeners.
//!
//! Layout (needs root; skipped with the reason otherwise, or when `ip`, `iptables-restore`,
//! `setpriv`, `curl` or `openssl` is missing):
//!
//! - network namespace `mesh-intercept-test-<pid>` (the pod), joined to the host by a veth pair:
//!   host `10.213.X.1`, pod `10.213.X.2`, the pod's default route through the host. Deleted by
//!   a guard on drop, a failing test included.
//! - on the host: Pilot (xDS on `10.213.X.1`) and the upstreams `reviews-v1`, `reviews-v2` and
//!   `external` (no service), in this process.
//! - in the pod: the capture rules (`pilot-agent iptables -p 15001 -z 15006 -u 1337 -g 1337
//!   -i '*' -b '*'`), Envoy as uid 1337 bootstrapped by `pilot bootstrap` with
//!   `INTERCEPTION_MODE=REDIRECT`, and the application as uid 1000: `sample-upstream` serving
//!   `productpage` on 9080 (a declared service port) and `undeclared` on 7070 (no service),
//!   plus `curl` as its client.
//!
//! The application's plain `curl http://VIP:9080/` is captured to 15001 and routed by the
//! VirtualService (header match to v2, else v1); a host it does not know passes through under
//! ALLOW_ANY and is dropped under REGISTRY_ONLY (TCP, and HTTP on a service's port through
//! the `allow_any` / `block_all` routes); connections from the host to the pod's ports
//! are captured to 15006 and reach the application through the inbound cluster (9080) or the
//! inbound passthrough (7070). A PeerAuthentication applies to both: STRICT refuses plain
//! text and takes mutual TLS (the workload's certificate from files named by Istio's
//! `TLS_SERVER_*` / `TLS_CLIENT_*` metadata, made here with openssl), PERMISSIVE takes plain
//! text again. Envoy's stats show each path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mesh_tests::{Service, Upstream, envoy_binary, free_port, http_get, workspace_binary};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    if uid.as_deref() != Some("0") {
        return Some(format!(
            "needs root (network namespaces, iptables); effective uid {}",
            uid.unwrap_or_else(|| "unknown".into())
        ));
    }
    for tool in [
        "ip",
        "iptables",
        "iptables-restore",
        "setpriv",
        "curl",
        "openssl",
    ] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Runs a command to completion; panics with its output when it fails.
fn run(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pod: a network namespace and the veth pair joining it to the host, removed on drop.
struct Pod {
    ns: String,
    host_link: String,
    host_ip: String,
    ip: String,
}

impl Pod {
    fn create() -> Pod {
        let pid = std::process::id();
        let subnet = 20 + pid % 200;
        let pod = Pod {
            ns: format!("mesh-intercept-test-{pid}"),
            host_link: format!("mit-{pid}-h"),
            host_ip: format!("10.213.{subnet}.1"),
            ip: format!("10.213.{subnet}.2"),
        };
        let addresses = run(&["ip", "-4", "addr"]);
        assert!(
            !addresses.contains(&format!("10.213.{subnet}.")),
            "10.213.{subnet}.0/24 is already in use on this host"
        );
        run(&["ip", "netns", "add", &pod.ns]);
        // From here on, drop removes what exists.
        let peer = format!("mit-{pid}-p");
        run(&[
            "ip",
            "link",
            "add",
            &pod.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        run(&["ip", "link", "set", &peer, "netns", &pod.ns]);
        let host_cidr = format!("{}/24", pod.host_ip);
        run(&["ip", "addr", "add", &host_cidr, "dev", &pod.host_link]);
        run(&["ip", "link", "set", &pod.host_link, "up"]);
        let pod_cidr = format!("{}/24", pod.ip);
        pod.exec_ok(&["ip", "link", "set", "lo", "up"]);
        pod.exec_ok(&["ip", "link", "set", &peer, "name", "eth0"]);
        pod.exec_ok(&["ip", "addr", "add", &pod_cidr, "dev", "eth0"]);
        pod.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        pod.exec_ok(&["ip", "route", "add", "default", "via", &pod.host_ip]);
        pod
    }

    /// `ip netns exec NS args...` as root, to completion.
    fn exec_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A command inside the pod as `uid` (and the same gid), not waited for.
    fn command(&self, uid: u32, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// A GET by the application (uid 1000, plain curl, no proxy settings): `Ok(body)` on a
    /// 2xx response, `Err(curl's error)` otherwise (none, or an error status).
    async fn app_get(&self, url: &str, headers: &[&str]) -> Result<String, String> {
        let mut args = vec!["curl", "-fsS", "-m", "5", "--noproxy", "*"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(url);
        let out = self
            .command(1000, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "curl {url}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Envoy's admin `path` (admin listens on 127.0.0.1:15000 inside the pod), as root.
    async fn admin(&self, path: &str) -> Result<String, String> {
        let url = format!("http://127.0.0.1:15000{path}");
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "curl", "-sS", "-m", "5", "-f", &url,
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A counter of Envoy's `/stats` (0 when absent).
    async fn stat(&self, name: &str) -> u64 {
        let stats = self.admin("/stats").await.unwrap_or_default();
        stats
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(": ")?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Deleting the namespace destroys its end of the veth pair, and with it the host's.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_link])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process running in the pod, killed (by its pid) on drop; its output in `log`.
struct PodProcess {
    child: Child,
    log: PathBuf,
}

impl PodProcess {
    fn spawn(mut cmd: Command, log: &Path) -> PodProcess {
        let file = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        PodProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Polls `f` until it returns true; panics naming `what` (with `context()`) after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, context: impl Fn() -> String, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        match f().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} (last error: {last})\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The mesh's certificates in `dir` (openssl, valid for a day): `root-cert.pem`, the
/// workload's `cert-chain.pem` and `key.pem`, and a client's `client.pem` and
/// `client-key.pem`; the workload's world-readable (Envoy runs as uid 1337).
fn make_certs(dir: &Path) {
    let d = |f: &str| dir.join(f).display().to_string();
    let ext = d("san.ext");
    std::fs::write(
        &ext,
        "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/productpage\n",
    )
    .unwrap();
    run(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/O=cluster.local/CN=root",
        "-keyout",
        &d("root-key.pem"),
        "-out",
        &d("root-cert.pem"),
    ]);
    for (cert, key) in [
        ("cert-chain.pem", "key.pem"),
        ("client.pem", "client-key.pem"),
    ] {
        let csr = d(&format!("{cert}.csr"));
        run(&[
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/O=cluster.local",
            "-keyout",
            &d(key),
            "-out",
            &csr,
        ]);
        run(&[
            "openssl",
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &d("root-cert.pem"),
            "-CAkey",
            &d("root-key.pem"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &d(cert),
        ]);
    }
    for f in ["root-cert.pem", "cert-chain.pem", "key.pem"] {
        run(&["chmod", "0644", &d(f)]);
    }
}

/// A GET from the host over mutual TLS with the client certificate of [`make_certs`]
/// (the server's name is not checked: its certificate names a SPIFFE identity only). HTTP/1.1:
/// the passthrough forwards the decrypted bytes as they are, and the application speaks only
/// HTTP/1.1.
async fn mtls_get(certs: &Path, url: &str) -> Result<String, String> {
    let d = |f: &str| certs.join(f).display().to_string();
    let out = Command::new("curl")
        .args([
            "-fsS",
            "-m",
            "5",
            "-k",
            "--http1.1",
            "--noproxy",
            "*",
            "--cacert",
        ])
        .arg(d("root-cert.pem"))
        .arg("--cert")
        .arg(d("client.pem"))
        .arg("--key")
        .arg(d("client-key.pem"))
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec:
  mtls: {{mode: {mode}}}
"
    )
}

fn config(host_ip: &str, pod_ip: &str, vip: &str, v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [{vip}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {host_ip}, ports: {{http: {}}}, labels: {{app: reviews, version: v1}}}}
  - {{address: {host_ip}, ports: {{http: {}}}, labels: {{app: reviews, version: v2}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - match: [{{headers: {{x-version: {{exact: v2}}}}}}]
    route: [{{destination: {{host: reviews.default.svc.cluster.local, subset: v2}}}}]
  - route: [{{destination: {{host: reviews.default.svc.cluster.local, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: productpage, namespace: default}}
spec:
  hosts: [productpage.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {pod_ip}, labels: {{app: productpage}}}}
",
        v1.port(),
        v2.port()
    )
}

const ALLOW_ANY: &str = "outboundTrafficPolicy: {mode: ALLOW_ANY}\n";
const REGISTRY_ONLY: &str = "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn captured_traffic_goes_through_virtual_outbound_and_virtual_inbound() {
    if let Some(why) = unsupported() {
        eprintln!("skipped: {why}");
        return;
    }
    let (pilot_bin, agent_bin, app_bin, envoy_bin) = tokio::task::spawn_blocking(|| {
        (
            workspace_binary("pilot").unwrap(),
            workspace_binary("pilot-agent").unwrap(),
            workspace_binary("sample-upstream").unwrap(),
            envoy_binary().unwrap(),
        )
    })
    .await
    .unwrap();
    let pod = Pod::create();
    let vip = format!("10.214.{}.10", 20 + std::process::id() % 200);

    // The host side: upstreams and Pilot.
    let host: std::net::IpAddr = pod.host_ip.parse().unwrap();
    let v1 = Upstream::start("reviews-v1", (host, 0).into())
        .await
        .unwrap();
    let v2 = Upstream::start("reviews-v2", (host, 0).into())
        .await
        .unwrap();
    let external = Upstream::start("external", (host, 0).into()).await.unwrap();
    // On the port of an HTTP service: reached through that port's HTTP listener.
    let external_http = Upstream::start("external-http", (host, 9080).into())
        .await
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("pilot-intercept-")
        .tempdir()
        .unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/services.yaml"),
        config(&pod.host_ip, &pod.ip, &vip, v1.addr(), v2.addr()),
    )
    .unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, ALLOW_ANY).unwrap();
    let xds = format!("{}:{}", pod.host_ip, free_port());
    let config_dir = dir.path().join("config").display().to_string();
    let mesh_arg = mesh.display().to_string();
    let mut pilot = Service::start(
        "pilot",
        &[
            "--config-dir",
            &config_dir,
            "--mesh",
            &mesh_arg,
            "--grpc-addr",
            &xds,
        ],
    )
    .await
    .unwrap();
    pilot.wait_ready(WAIT).await.unwrap();

    // The pod: capture rules, the application, the sidecar.
    let rules = pod.exec_ok(&[
        &agent_bin.display().to_string(),
        "iptables",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-g",
        "1337",
        "-i",
        "*",
        "-b",
        "*",
    ]);
    eprintln!("pilot-agent iptables installed:\n{rules}");

    // Envoy runs as uid 1337, which must read its binary and bootstrap: a world-readable
    // directory with a link to the binary (a copy if it is on another file system).
    let envoy_dir = tempfile::Builder::new()
        .prefix("envoy-intercept-")
        .tempdir()
        .unwrap();
    run(&["chmod", "0755", &envoy_dir.path().display().to_string()]);
    let envoy_link = envoy_dir.path().join("envoy");
    if std::fs::hard_link(&envoy_bin, &envoy_link).is_err() {
        std::fs::copy(&envoy_bin, &envoy_link).unwrap();
    }
    make_certs(envoy_dir.path());
    let cert = |f: &str| envoy_dir.path().join(f).display().to_string();
    let node = format!(
        "sidecar~{}~productpage-1.default~default.svc.cluster.local",
        pod.ip
    );
    let bootstrap = envoy_dir.path().join("bootstrap.json");
    let mut bootstrap_args: Vec<String> = [
        "bootstrap",
        "--node",
        &node,
        "--xds-address",
        &xds,
        "--admin-port",
        "15000",
        "--label",
        "app=productpage",
        "--meta",
        "INTERCEPTION_MODE=REDIRECT",
        "--out",
        &bootstrap.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Istio's metadata naming the certificate files, for PeerAuthentication's TLS.
    for side in ["CLIENT", "SERVER"] {
        for (key, file) in [
            ("CERT_CHAIN", "cert-chain.pem"),
            ("KEY", "key.pem"),
            ("ROOT_CERT", "root-cert.pem"),
        ] {
            bootstrap_args.push("--meta".into());
            bootstrap_args.push(format!("TLS_{side}_{key}={}", cert(file)));
        }
    }
    let pilot_path = pilot_bin.display().to_string();
    let mut argv = vec![pilot_path.as_str()];
    argv.extend(bootstrap_args.iter().map(String::as_str));
    run(&argv);
    run(&["chmod", "0644", &bootstrap.display().to_string()]);

    let app = PodProcess::spawn(
        pod.command(
            1000,
            &[
                &app_bin.display().to_string(),
                "productpage=0.0.0.0:9080",
                "undeclared=0.0.0.0:7070",
            ],
        ),
        &dir.path().join("app.log"),
    );
    let envoy = PodProcess::spawn(
        pod.command(
            1337,
            &[
                &envoy_link.display().to_string(),
                "-c",
                &bootstrap.display().to_string(),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
        ),
        &dir.path().join("envoy.log"),
    );
    let context = || {
        format!(
            "envoy log:\n{}\napp log:\n{}\npilot log:\n{}",
            envoy.logs(),
            app.logs(),
            pilot.logs()
        )
    };
    wait_until("Envoy ready", context, || async {
        Ok(pod.admin("/ready").await?.trim() == "LIVE")
    })
    .await;
    let listeners = pod.admin("/listeners").await.unwrap();
    assert!(
        listeners.contains("virtualOutbound::0.0.0.0:15001")
            && listeners.contains("virtualInbound::0.0.0.0:15006"),
        "{listeners}"
    );

    // Outbound: the application's plain request to the VIP, routed by the VirtualService.
    let reviews = format!("http://{vip}:9080/");
    wait_until("reviews through virtualOutbound", context, || async {
        Ok(pod.app_get(&reviews, &[]).await? == "reviews-v1")
    })
    .await;
    let (v1_before, v2_before) = (v1.requests(), v2.requests());
    for _ in 0..4 {
        assert_eq!(pod.app_get(&reviews, &[]).await.unwrap(), "reviews-v1");
    }
    for _ in 0..3 {
        let got = pod.app_get(&reviews, &["x-version: v2"]).await.unwrap();
        assert_eq!(got, "reviews-v2");
    }
    assert_eq!(
        v1.requests() - v1_before,
        4,
        "v1 served the unmatched requests"
    );
    assert_eq!(
        v2.requests() - v2_before,
        3,
        "v2 served the header-matched ones"
    );
    let v1_stat = pod
        .stat("cluster.outbound|9080|v1|reviews.default.svc.cluster.local.upstream_rq_total")
        .await;
    let v2_stat = pod
        .stat("cluster.outbound|9080|v2|reviews.default.svc.cluster.local.upstream_rq_total")
        .await;
    assert!(v1_stat >= 5 && v2_stat == 3, "v1 {v1_stat}, v2 {v2_stat}");
    // virtualOutbound handed the connections to the (unbound) HTTP listener of port 9080,
    // whose stats count them.
    let handed = pod.stat("listener.0.0.0.0_9080.downstream_cx_total").await;
    assert!(handed >= 8, "0.0.0.0_9080 took {handed} connections");

    // A destination no service has: passed through (ALLOW_ANY) to where the client meant.
    let ext = format!("http://{}/", external.addr());
    assert_eq!(pod.app_get(&ext, &[]).await.unwrap(), "external");
    assert_eq!(external.requests(), 1);
    assert!(
        pod.stat("cluster.PassthroughCluster.upstream_cx_total")
            .await
            >= 1
    );
    // That one stayed on virtualOutbound itself.
    assert!(pod.stat("listener.0.0.0.0_15001.downstream_cx_total").await >= 1);

    // HTTP to an unknown host on a service's port: the port's routes end in `allow_any`.
    let ext_http = format!("http://{}/", external_http.addr());
    assert_eq!(pod.app_get(&ext_http, &[]).await.unwrap(), "external-http");
    assert_eq!(external_http.requests(), 1);
    assert!(
        pod.stat("cluster.PassthroughCluster.upstream_rq_total")
            .await
            >= 1
    );

    // Inbound: a connection from outside the pod to a declared port goes through
    // virtualInbound and the inbound cluster, to the application.
    let inbound_before = pod.stat("listener.0.0.0.0_15006.downstream_cx_total").await;
    let r = http_get(&format!("http://{}:9080/", pod.ip), &[])
        .await
        .unwrap();
    assert_eq!(r.body.trim(), "productpage");
    let inbound_rq = pod
        .stat("cluster.inbound|9080||productpage.default.svc.cluster.local.upstream_rq_total")
        .await;
    assert_eq!(inbound_rq, 1, "{}", context());
    // A port no service declares: the inbound passthrough.
    let r = http_get(&format!("http://{}:7070/", pod.ip), &[])
        .await
        .unwrap();
    assert_eq!(r.body.trim(), "undeclared");
    assert!(
        pod.stat("cluster.InboundPassthroughClusterIpv4.upstream_cx_total")
            .await
            >= 1
    );
    let inbound_after = pod.stat("listener.0.0.0.0_15006.downstream_cx_total").await;
    assert!(
        inbound_after >= inbound_before + 2,
        "virtualInbound took {inbound_before} -> {inbound_after} connections"
    );

    // REGISTRY_ONLY: the unknown destination is dropped now (BlackHoleCluster).
    std::fs::write(&mesh, REGISTRY_ONLY).unwrap();
    wait_until("REGISTRY_ONLY to take effect", context, || async {
        Ok(pod.app_get(&ext, &[]).await.is_err())
    })
    .await;
    // (Requests made before the change passed through.)
    let seen = external.requests();
    for _ in 0..3 {
        assert!(pod.app_get(&ext, &[]).await.is_err());
    }
    assert_eq!(
        external.requests(),
        seen,
        "nothing more reached the unknown host"
    );
    assert!(
        pod.stat("cluster.BlackHoleCluster.upstream_cx_none_healthy")
            .await
            >= 1
    );
    // Services still work.
    assert_eq!(pod.app_get(&reviews, &[]).await.unwrap(), "reviews-v1");

    // PeerAuthentication through virtualInbound. STRICT: plain text is refused on the
    // service's port and on the passthrough alike; mutual TLS gets through.
    let peer = dir.path().join("config/peer.yaml");
    std::fs::write(&peer, peer_authentication("STRICT")).unwrap();
    let productpage = format!("http://{}:9080/", pod.ip);
    wait_until("STRICT to take effect", context, || async {
        Ok(http_get(&productpage, &[]).await.is_err())
    })
    .await;
    assert!(
        http_get(&format!("http://{}:7070/", pod.ip), &[])
            .await
            .is_err()
    );
    let body = mtls_get(envoy_dir.path(), &format!("https://{}:9080/", pod.ip)).await;
    assert_eq!(body.as_deref(), Ok("productpage"), "{}", context());
    let body = mtls_get(envoy_dir.path(), &format!("https://{}:7070/", pod.ip)).await;
    assert_eq!(body.as_deref(), Ok("undeclared"), "{}", context());
    assert!(pod.stat("listener.0.0.0.0_15006.ssl.handshake").await >= 2);
    // PERMISSIVE: plain text again (the TLS inspector tells them apart).
    std::fs::write(&peer, peer_authentication("PERMISSIVE")).unwrap();
    wait_until("PERMISSIVE to take effect", context, || async {
        let r = http_get(&productpage, &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.body.trim() == "productpage")
    })
    .await;

    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
    ] {
        assert_eq!(pod.stat(stat).await, 0, "{stat}\n{}", context());
    }
    envoy.stop().await;
    app.stop().await;
    pilot.stop().await.unwrap();
    drop(pod);
}
