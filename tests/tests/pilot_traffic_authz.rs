//! Authorization through real Envoy: Citadel (file mode) issues certificates to several
//! service accounts; callers present them over mutual TLS (curl with the account's
//! certificate) to one server sidecar whose inbound HTTP and TCP listeners a STRICT
//! PeerAuthentication protects, and AuthorizationPolicies (or Istio 1.0 RBAC) decide. Each
//! call is counted per caller identity: `200`, `403` (HTTP), or `reset` (the connection is
//! closed: TCP). Policies are edited while everything runs; nothing restarts.

mod mixer_support;
mod pilot_traffic_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesh_tests::mesh::{Pilot, eventually};
use mesh_tests::{Envoy, Service, Upstream, free_port};
use pilot_traffic_support::WAIT;

const SERVER_IP: &str = "127.0.0.52";

/// A caller: its name in the counts, and its Citadel certificate directory.
#[derive(Debug, Clone)]
struct Caller {
    name: &'static str,
    dir: PathBuf,
}

/// Citadel in file mode with `accounts` (namespace, service account); waits for their secrets.
async fn citadel(tmp: &Path, accounts: &[(&str, &str)]) -> (Service, PathBuf) {
    let config = tmp.join("citadel-config");
    std::fs::create_dir_all(&config).unwrap();
    let yaml = accounts
        .iter()
        .map(|(ns, sa)| {
            format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {ns}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(config.join("accounts.yaml"), yaml).unwrap();
    let out = tmp.join("secrets");
    let args = [
        "--config-dir".to_string(),
        config.display().to_string(),
        "--secret-dir".into(),
        out.display().to_string(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{}", free_port()),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut svc = Service::start("citadel", &refs).await.unwrap();
    svc.wait_ready(Duration::from_secs(60)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (ns, sa) in accounts {
        while !out.join(format!("{ns}/istio.{sa}/key.pem")).exists() {
            assert!(Instant::now() < deadline, "no secrets:\n{}", svc.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (svc, out)
}

/// The server: `services` (name, HTTP?, inbound port) all at SERVER_IP, served by one
/// sidecar (service account `sa`, label `app`) whose inbound ports forward to `app_port`,
/// STRICT mutual TLS.
fn server_config(sa: &str, app: &str, services: &[(&str, bool, u16)], app_port: u16) -> String {
    let mut out = String::new();
    let mut ingress = String::new();
    for (name, http, port) in services {
        let protocol = if *http { "HTTP" } else { "TCP" };
        let port_name = if *http { "http" } else { "tcp" };
        out.push_str(&format!(
            r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: {port_name}, protocol: {protocol}}}]
  endpoints:
  - {{address: {SERVER_IP}, ports: {{{port_name}: {port}}}, labels: {{app: {app}}}, serviceAccount: {sa}}}
---
"#
        ));
        ingress.push_str(&format!(
            "  - port: {{number: {port}, protocol: {protocol}, name: {port_name}-{port}}}\n    bind: {SERVER_IP}\n    captureMode: NONE\n    defaultEndpoint: 127.0.0.1:{app_port}\n"
        ));
    }
    out.push_str(&format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: server}}
spec:
  workloadSelector:
    labels: {{app: {app}}}
  ingress:
{ingress}---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: server}}
spec:
  selector:
    matchLabels: {{app: {app}}}
  mtls: {{mode: STRICT}}
"#
    ));
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    citadel: Service,
    pilot: Pilot,
    server: Envoy,
    app: Upstream,
    callers: Vec<Caller>,
}

impl Setup {
    /// Citadel for the server account and `callers` (name, namespace, account), Pilot on
    /// `files` beside the server's config, and the server sidecar.
    async fn start(
        server_sa: &str,
        app: &str,
        services: &[(&str, bool, u16)],
        callers: &[(&'static str, &str, &str)],
        files: &[(&str, String)],
    ) -> Setup {
        Setup::start_with_mesh(server_sa, app, services, callers, files, "").await
    }

    /// [`Setup::start`] with Pilot on the MeshConfig `mesh`.
    async fn start_with_mesh(
        server_sa: &str,
        app: &str,
        services: &[(&str, bool, u16)],
        callers: &[(&'static str, &str, &str)],
        files: &[(&str, String)],
        mesh: &str,
    ) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let mut accounts = vec![("default", server_sa)];
        accounts.extend(callers.iter().map(|(_, ns, sa)| (*ns, *sa)));
        let (citadel, secrets) = citadel(tmp.path(), &accounts).await;
        let upstream = Upstream::start(app, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut all = vec![(
            "server.yaml",
            server_config(server_sa, app, services, upstream.addr().port()),
        )];
        all.extend(files.iter().map(|(n, t)| (*n, t.clone())));
        let all: Vec<(&str, &str)> = all.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let pilot = Pilot::start(&all, mesh, &[]).await.unwrap();
        let dir = secrets.join(format!("default/istio.{server_sa}"));
        let mut args = vec![
            "--meta".to_string(),
            "INTERCEPTION_MODE=NONE".into(),
            "--label".into(),
            format!("app={app}"),
        ];
        for (key, file) in [
            ("CERT_CHAIN", "cert-chain.pem"),
            ("KEY", "key.pem"),
            ("ROOT_CERT", "root-cert.pem"),
        ] {
            args.push("--meta".into());
            args.push(format!("TLS_SERVER_{key}={}", dir.join(file).display()));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = format!("sidecar~{SERVER_IP}~{app}-v1-1.default~default.svc.cluster.local");
        let server = pilot.sidecar(&node, &refs).await.unwrap();
        let callers = callers
            .iter()
            .map(|(name, ns, sa)| Caller {
                name,
                dir: secrets.join(format!("{ns}/istio.{sa}")),
            })
            .collect();
        Setup {
            _tmp: tmp,
            citadel,
            pilot,
            server,
            app: upstream,
            callers,
        }
    }

    /// Calls the server's `port` as `caller`: `200`, `403`..., or `reset` when no HTTP
    /// answer came (the connection was closed).
    async fn call(
        caller: &Caller,
        port: u16,
        method: &str,
        path: &str,
        headers: &[&str],
    ) -> String {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "-k", "--http1.1", "--path-as-is", "--max-time", "5"])
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .arg("--cert")
            .arg(caller.dir.join("cert-chain.pem"))
            .arg("--key")
            .arg(caller.dir.join("key.pem"));
        for h in headers {
            cmd.args(["-H", h]);
        }
        cmd.arg(format!("https://{SERVER_IP}:{port}{path}"));
        match cmd.output().await {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
            _ => "reset".to_string(),
        }
    }

    /// `n` calls of each caller, counted per caller and outcome.
    async fn count(
        &self,
        n: usize,
        port: u16,
        method: &str,
        path: &str,
        headers: &[&str],
    ) -> BTreeMap<&'static str, BTreeMap<String, usize>> {
        let mut out = BTreeMap::new();
        for c in &self.callers {
            let counts: &mut BTreeMap<String, usize> = out.entry(c.name).or_default();
            for _ in 0..n {
                *counts
                    .entry(Setup::call(c, port, method, path, headers).await)
                    .or_insert(0) += 1;
            }
        }
        out
    }

    /// Waits until one call per caller gives `want` (caller, outcome), then asserts `n`
    /// more of each do.
    async fn expect(&self, port: u16, method: &str, path: &str, want: &[(&str, &str)]) {
        self.expect_with(port, method, path, &[], want).await
    }

    async fn expect_with(
        &self,
        port: u16,
        method: &str,
        path: &str,
        headers: &[&str],
        want: &[(&str, &str)],
    ) {
        let expected: BTreeMap<&str, BTreeMap<String, usize>> = want
            .iter()
            .map(|(c, o)| (*c, BTreeMap::from([(o.to_string(), 5)])))
            .collect();
        let once: BTreeMap<&str, BTreeMap<String, usize>> = want
            .iter()
            .map(|(c, o)| (*c, BTreeMap::from([(o.to_string(), 1)])))
            .collect();
        let what = format!("{method} {path} on {port}: {want:?}");
        eventually(&what, WAIT, || async {
            let got = self.count(1, port, method, path, headers).await;
            if got == once {
                return Ok(true);
            }
            anyhow::bail!("{got:?}")
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nserver log:\n{}", self.server.logs()));
        assert_eq!(
            self.count(5, port, method, path, headers).await,
            expected,
            "{what}"
        );
    }

    async fn finish(self) {
        for stat in [
            "cluster_manager.cds.update_rejected",
            "listener_manager.lds.update_rejected",
        ] {
            let n = self.server.stat(stat).await.unwrap().unwrap_or(0);
            assert_eq!(
                n,
                0,
                "Envoy rejected config ({stat}):\n{}",
                self.server.logs()
            );
        }
        self.server.stop().await.unwrap();
        self.pilot.service.stop().await.unwrap();
        self.citadel.stop().await.unwrap();
        self.app.stop().await;
    }
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
    )
}

const PRODUCTPAGE: &str = "cluster.local/ns/default/sa/productpage";
const RATINGS: &str = "cluster.local/ns/default/sa/ratings";

/// Paths that are `/admin` or under it once normalised: every one must be denied by a
/// DENY rule on `/admin` and `/admin/*`.
const BYPASS_CORPUS: &[&str] = &[
    "/admin",
    "/admin/",
    "/admin/users",
    "//admin",
    "//admin//users",
    "/./admin",
    "/admin/./users",
    "/public/../admin",
    "/public/../admin/users",
    "/public/./../admin/users",
    "/%2e%2e/admin",
    "/public/%2e%2e/admin/users",
    "/public/%2E%2E/admin",
    "/.%2e/admin",
    "/admin%2Fusers",
    "/admin%2fusers",
    "/public%2F..%2Fadmin",
    "/public/..%2Fadmin/users",
    "/admin%5Cusers",
    "/public\\..\\admin",
    "/%61dmin",
    "/%61%64%6d%69%6e/users",
    "/admin?debug=1",
    "/admin/users?x=/public",
];

#[tokio::test]
async fn authorization_policies_allow_deny_and_reset_per_caller() {
    let (http, tcp) = (free_port(), free_port());
    let s = Setup::start(
        "reviews",
        "reviews",
        &[("reviews", true, http), ("reviews-tcp", false, tcp)],
        &[
            ("productpage", "default", "productpage"),
            ("ratings", "default", "ratings"),
            ("intruder", "other", "intruder"),
        ],
        &[],
    )
    .await;
    let pid = s.server.pid();
    let all = |o: &'static str| [("intruder", o), ("productpage", o), ("ratings", o)];

    // No policy: everyone with a mesh certificate gets through, on both ports.
    s.expect(http, "GET", "/", &all("200")).await;
    s.expect(tcp, "GET", "/", &all("200")).await;

    // ALLOW GET from productpage and ratings; DENY /admin; DENY ratings with x-debug.
    s.pilot
        .write(
            "allow.yaml",
            &policy(
                "callers",
                &format!(
                    "  selector: {{matchLabels: {{app: reviews}}}}\n  rules:\n  - from: [{{source: {{principals: [{PRODUCTPAGE}, {RATINGS}]}}}}]\n    to: [{{operation: {{methods: [GET]}}}}]\n"
                ),
            ),
        )
        .unwrap();
    s.pilot
        .write(
            "deny-admin.yaml",
            &policy(
                "deny-admin",
                "  action: DENY\n  rules: [{to: [{operation: {paths: [/admin, /admin/*]}}]}]\n",
            ),
        )
        .unwrap();
    s.pilot
        .write(
            "deny-debug.yaml",
            &policy(
                "deny-debug",
                &format!(
                    "  action: DENY\n  rules:\n  - from: [{{source: {{principals: [{RATINGS}]}}}}]\n    when: [{{key: 'request.headers[x-debug]', values: ['*']}}]\n"
                ),
            ),
        )
        .unwrap();
    let allowed = [
        ("intruder", "403"),
        ("productpage", "200"),
        ("ratings", "200"),
    ];
    s.expect(http, "GET", "/", &allowed).await;
    s.expect(http, "POST", "/", &all("403")).await;
    s.expect(http, "GET", "/admin/users", &all("403")).await;
    s.expect_with(
        http,
        "GET",
        "/",
        &["x-debug: 1"],
        &[
            ("intruder", "403"),
            ("productpage", "200"),
            ("ratings", "403"),
        ],
    )
    .await;
    // On TCP the ALLOW rule (methods) cannot match and the DENY rules lose their paths and
    // headers: every connection is closed.
    s.expect(tcp, "GET", "/", &all("reset")).await;

    // The path-bypass corpus: denied for the caller who may GET everything else.
    let before = s.app.requests();
    let productpage = &s.callers[0];
    let mut outcomes = BTreeMap::new();
    for path in BYPASS_CORPUS {
        outcomes.insert(
            *path,
            Setup::call(productpage, http, "GET", path, &[]).await,
        );
    }
    eprintln!("path-bypass corpus: {outcomes:?}");
    let passed: Vec<_> = outcomes.iter().filter(|(_, o)| *o != "403").collect();
    assert!(
        passed.is_empty(),
        "paths that got past DENY /admin: {passed:?}"
    );
    assert_eq!(s.app.requests(), before, "a denied request reached the app");
    assert_eq!(
        Setup::call(productpage, http, "GET", "/public/admin", &[]).await,
        "200"
    );

    // A policy change, live: productpage only, by port (which TCP has), and /admin allowed.
    s.pilot.remove("deny-admin.yaml").unwrap();
    s.pilot.remove("deny-debug.yaml").unwrap();
    s.pilot
        .write(
            "allow.yaml",
            &policy(
                "callers",
                &format!(
                    "  selector: {{matchLabels: {{app: reviews}}}}\n  rules:\n  - from: [{{source: {{principals: [{PRODUCTPAGE}]}}}}]\n    to: [{{operation: {{ports: ['{http}', '{tcp}']}}}}]\n"
                ),
            ),
        )
        .unwrap();
    let productpage_only = [
        ("intruder", "reset"),
        ("productpage", "200"),
        ("ratings", "reset"),
    ];
    s.expect(tcp, "GET", "/", &productpage_only).await;
    s.expect(
        http,
        "POST",
        "/admin",
        &[
            ("intruder", "403"),
            ("productpage", "200"),
            ("ratings", "403"),
        ],
    )
    .await;

    // DENY by namespace beats ALLOW: the other namespace is refused even when allowed.
    s.pilot
        .write(
            "allow.yaml",
            &policy(
                "everyone",
                "  rules: [{from: [{source: {principals: ['*']}}]}]\n",
            ),
        )
        .unwrap();
    s.pilot
        .write(
            "deny-ns.yaml",
            &policy(
                "deny-other",
                "  action: DENY\n  rules: [{from: [{source: {notNamespaces: [default]}}]}]\n",
            ),
        )
        .unwrap();
    let default_only = [
        ("intruder", "403"),
        ("productpage", "200"),
        ("ratings", "200"),
    ];
    s.expect(http, "GET", "/", &default_only).await;
    s.expect(
        tcp,
        "GET",
        "/",
        &[
            ("intruder", "reset"),
            ("productpage", "200"),
            ("ratings", "200"),
        ],
    )
    .await;

    // An invalid policy is refused and the last good one keeps enforcing.
    s.pilot
        .write(
            "deny-ns.yaml",
            &policy(
                "deny-other",
                "  action: DENY\n  rules: [{from: [{source: {ipBlocks: [10.0.0.0/99]}}]}]\n",
            ),
        )
        .unwrap();
    eventually("the invalid policy refused", WAIT, || async {
        let configz = s.pilot.debug("/debug/configz").await?.to_string();
        Ok(configz.contains("ipBlocks[0]"))
    })
    .await
    .unwrap();
    s.expect(http, "GET", "/", &default_only).await;

    // An ALLOW policy without rules denies all.
    s.pilot.remove("deny-ns.yaml").unwrap();
    s.pilot
        .write("allow.yaml", &policy("nothing", "  {}\n"))
        .unwrap();
    s.expect(http, "GET", "/", &all("403")).await;
    s.expect(tcp, "GET", "/", &all("reset")).await;

    assert_eq!(s.server.pid(), pid, "the sidecar was restarted");
    s.finish().await;
}

/// The Istio 1.0 RBAC samples, unmodified (`pilot/tests/fixtures/authz/istio-1.0-rbac/`).
fn rbac_sample(name: &str) -> String {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../pilot/tests/fixtures/authz/istio-1.0-rbac");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[tokio::test]
async fn istio_1_0_rbac_samples_behave_as_istios_docs_say() {
    // One workload, app ratings, serving ratings and productpage (the samples are per
    // service), with bookinfo's service accounts as callers.
    let (ratings, productpage) = (free_port(), free_port());
    let s = Setup::start(
        "bookinfo-ratings",
        "ratings",
        &[
            ("ratings", true, ratings),
            ("productpage", true, productpage),
        ],
        &[
            ("bookinfo-productpage", "default", "bookinfo-productpage"),
            ("bookinfo-reviews", "default", "bookinfo-reviews"),
            ("intruder", "other", "intruder"),
        ],
        &[],
    )
    .await;
    let all = |o: &'static str| {
        [
            ("bookinfo-productpage", o),
            ("bookinfo-reviews", o),
            ("intruder", o),
        ]
    };
    s.expect(ratings, "GET", "/", &all("200")).await;

    // RBAC on for namespace default: "RBAC: access denied" for everything.
    s.pilot
        .write("rbac-config-ON.yaml", &rbac_sample("rbac-config-ON.yaml"))
        .unwrap();
    s.expect(ratings, "GET", "/", &all("403")).await;
    s.expect(productpage, "GET", "/", &all("403")).await;

    // Namespace-level: GETs from default and istio-system to the bookinfo apps.
    s.pilot
        .write(
            "namespace-policy.yaml",
            &rbac_sample("namespace-policy.yaml"),
        )
        .unwrap();
    let from_default = [
        ("bookinfo-productpage", "200"),
        ("bookinfo-reviews", "200"),
        ("intruder", "403"),
    ];
    s.expect(ratings, "GET", "/", &from_default).await;
    s.expect(productpage, "GET", "/", &from_default).await;
    s.expect(ratings, "POST", "/", &all("403")).await;
    s.pilot.remove("namespace-policy.yaml").unwrap();

    // Service-level: productpage for everyone; ratings for reviews only; details and
    // reviews (not served here) change nothing.
    for f in [
        "productpage-policy.yaml",
        "details-reviews-policy.yaml",
        "ratings-policy.yaml",
    ] {
        s.pilot.write(f, &rbac_sample(f)).unwrap();
    }
    s.expect(productpage, "GET", "/", &all("200")).await;
    s.expect(productpage, "DELETE", "/", &all("403")).await;
    s.expect(
        ratings,
        "GET",
        "/ratings/0",
        &[
            ("bookinfo-productpage", "403"),
            ("bookinfo-reviews", "200"),
            ("intruder", "403"),
        ],
    )
    .await;

    // A binding to a role that does not exist cannot be translated: the workload fails
    // closed (denies everything, productpage's open GET included) until it is fixed.
    s.pilot
        .write(
            "dangling.yaml",
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: dangling, namespace: default}\nspec:\n  subjects: [{user: '*'}]\n  roleRef: {kind: ServiceRole, name: nowhere}\n",
        )
        .unwrap();
    s.expect(productpage, "GET", "/", &all("403")).await;
    let dump = s.server.config_dump(false).await.unwrap().to_string();
    assert!(
        dump.contains("fail-closed: ns[default]-rbac[dangling]"),
        "no fail-closed policy in the server's config"
    );
    let analysis = s.pilot.debug("/debug/analyzez").await.unwrap().to_string();
    assert!(
        analysis.contains("Referenced ServiceRole not found: default/nowhere"),
        "/debug/analyzez: {analysis}"
    );
    s.pilot.remove("dangling.yaml").unwrap();
    s.expect(productpage, "GET", "/", &all("200")).await;

    // RBAC off again: everything passes.
    s.pilot.remove("rbac-config-ON.yaml").unwrap();
    s.expect(ratings, "GET", "/", &all("200")).await;
    s.finish().await;
}

/// A mesh whose trust domain was renamed (`new.td`, with the old `cluster.local` as an alias):
/// workloads still holding old identities match policies written for the new domain, and a
/// policy in the old domain matches them too; without the alias they would not.
#[tokio::test]
async fn trust_domain_aliases_match_identities_of_either_domain() {
    let allow_from = |principal: &str| {
        policy(
            "callers",
            &format!(
                "  selector: {{matchLabels: {{app: reviews}}}}\n  rules:\n  - from: [{{source: {{principals: [{principal}]}}}}]\n"
            ),
        )
    };
    let http = free_port();
    let s = Setup::start_with_mesh(
        "reviews",
        "reviews",
        &[("reviews", true, http)],
        &[
            ("productpage", "default", "productpage"),
            ("ratings", "default", "ratings"),
        ],
        &[("allow.yaml", allow_from("new.td/ns/default/sa/productpage"))],
        "trustDomain: new.td\ntrustDomainAliases: [cluster.local]\n",
    )
    .await;
    // The certificates say spiffe://cluster.local/...: productpage's matches the new name.
    s.expect(
        http,
        "GET",
        "/",
        &[("productpage", "200"), ("ratings", "403")],
    )
    .await;
    // Written in the old domain, the rule still covers both.
    s.pilot.write("allow.yaml", &allow_from(RATINGS)).unwrap();
    s.expect(
        http,
        "GET",
        "/",
        &[("productpage", "403"), ("ratings", "200")],
    )
    .await;
    let dump = s.server.config_dump(false).await.unwrap().to_string();
    assert!(
        dump.contains("spiffe://new.td/ns/default/sa/ratings")
            && dump.contains("spiffe://cluster.local/ns/default/sa/ratings"),
        "the rule names the identity in both domains"
    );
    s.finish().await;
}

/// An HTTP authorizer as Istio's sample ext-authz is: it allows a request carrying
/// `x-ext-authz: allow` and denies the rest (403, with `x-ext-authz-check-result: denied`),
/// counting the checks it answers.
struct HttpAuthorizer {
    port: u16,
    checks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpAuthorizer {
    async fn start() -> HttpAuthorizer {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let checks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = checks.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    loop {
                        let (mut allow, mut length) = (false, 0usize);
                        let mut line = String::new();
                        let mut first = true;
                        loop {
                            line.clear();
                            match conn.read_line(&mut line).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            let l = line.trim_end().to_ascii_lowercase();
                            if first {
                                first = false;
                                continue;
                            }
                            if l.is_empty() {
                                break;
                            }
                            if l == "x-ext-authz: allow" {
                                allow = true;
                            }
                            if let Some(n) = l.strip_prefix("content-length:") {
                                length = n.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if conn.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer: &[u8] = if allow {
                            b"HTTP/1.1 200 OK\r\nx-ext-authz-check-result: allowed\r\ncontent-length: 0\r\n\r\n"
                        } else {
                            b"HTTP/1.1 403 Forbidden\r\nx-ext-authz-check-result: denied\r\ncontent-length: 6\r\n\r\ndenied"
                        };
                        if conn.get_mut().write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HttpAuthorizer { port, checks, task }
    }

    fn checks(&self) -> usize {
        self.checks.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HttpAuthorizer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A service of the registry at 127.0.0.1:`port` (no sidecar: plain text to it).
fn provider_service(name: &str, port_name: &str, protocol: &str, number: u16, port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {number}, name: {port_name}, protocol: {protocol}}}]
  endpoints: [{{address: 127.0.0.1, ports: {{{port_name}: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {name}.default.svc.cluster.local
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
"#
    )
}

fn custom_policy(provider: &str) -> String {
    policy(
        "ext-authz",
        &format!(
            "  selector: {{matchLabels: {{app: reviews}}}}\n  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules: [{{to: [{{operation: {{paths: ['/custom*', /secret]}}}}]}}]\n"
        ),
    )
}

#[tokio::test]
async fn custom_policies_ask_their_provider_and_fail_closed_without_one() {
    let authorizer = HttpAuthorizer::start().await;
    let mixer = mixer_support::start_mixer(&[mixer_support::test_policy()]).await;
    let mesh = r#"extensionProviders:
- name: sample-ext-authz
  envoyExtAuthzHttp:
    service: ext-authz.default.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToDownstreamOnDeny: [x-ext-authz-check-result]
- name: mixer
  envoyExtAuthzGrpc:
    service: default/istio-policy.default.svc.cluster.local
    port: 9091
"#;
    let http = free_port();
    let s = Setup::start_with_mesh(
        "reviews",
        "reviews",
        &[("reviews", true, http)],
        &[("productpage", "default", "productpage")],
        &[
            (
                "ext-authz.yaml",
                provider_service("ext-authz", "http", "HTTP", 8000, authorizer.port),
            ),
            (
                "istio-policy.yaml",
                provider_service("istio-policy", "grpc", "GRPC", 9091, mixer.grpc.port()),
            ),
            ("custom.yaml", custom_policy("sample-ext-authz")),
        ],
        mesh,
    )
    .await;
    let pp = [("productpage", "403")];
    // What the CUSTOM rules match is the authorizer's to decide; the rest never reaches it.
    s.expect(http, "GET", "/custom", &pp).await;
    let asked = authorizer.checks();
    if asked < 5 {
        let stats = s.server.stats().await.unwrap_or_default();
        let authz: Vec<&str> = stats.lines().filter(|l| l.contains("authz")).collect();
        panic!(
            "the authorizer answered {asked} checks; Envoy:\n{}",
            authz.join("\n")
        );
    }
    s.expect(http, "GET", "/public", &[("productpage", "200")])
        .await;
    assert_eq!(authorizer.checks(), asked, "/public went to the authorizer");
    s.expect_with(
        http,
        "GET",
        "/custom/page",
        &["x-ext-authz: allow"],
        &[("productpage", "200")],
    )
    .await;
    assert!(authorizer.checks() > asked);
    // The provider's deny header reaches the client.
    let caller = &s.callers[0];
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-k", "--http1.1", "-D", "-", "-o", "/dev/null"])
        .arg("--cert")
        .arg(caller.dir.join("cert-chain.pem"))
        .arg("--key")
        .arg(caller.dir.join("key.pem"))
        .arg(format!("https://{SERVER_IP}:{http}/custom"))
        .output()
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.contains("x-ext-authz-check-result: denied"), "{head}");

    // The same policy on Mixer's check (a gRPC provider), edited in place: Mixer's
    // blacklist denies /secret, and its denier x-user: john.
    s.pilot
        .write("custom.yaml", &custom_policy("mixer"))
        .unwrap();
    s.expect(http, "GET", "/secret", &pp).await;
    s.expect(http, "GET", "/custom", &[("productpage", "200")])
        .await;
    s.expect_with(http, "GET", "/custom", &["x-user: john"], &pp)
        .await;
    // Outside the rules Mixer is not asked: john passes.
    s.expect_with(
        http,
        "GET",
        "/public",
        &["x-user: john"],
        &[("productpage", "200")],
    )
    .await;

    // A provider MeshConfig does not have: what the rules match is denied (fail closed),
    // the rest passes.
    s.pilot
        .write("custom.yaml", &custom_policy("nowhere"))
        .unwrap();
    s.expect_with(http, "GET", "/custom", &["x-ext-authz: allow"], &pp)
        .await;
    s.expect(http, "GET", "/public", &[("productpage", "200")])
        .await;
    let dump = s.server.config_dump(false).await.unwrap().to_string();
    assert!(
        dump.contains("fail-closed: provider"),
        "no fail-closed policy in the server's config"
    );
    // And Pilot's analysis names the policy and the field.
    let analysis = s.pilot.debug("/debug/analyzez").await.unwrap().to_string();
    assert!(
        analysis.contains("Referenced extension provider not found")
            && analysis.contains("spec.provider.name"),
        "/debug/analyzez: {analysis}"
    );
    // So does /debug/configz, beside the object, which says it fails closed.
    eventually("the policy's analysis on /debug/configz", WAIT, || async {
        let configz = s.pilot.debug("/debug/configz").await?;
        Ok(analysis_of(&configz, "AuthorizationPolicy", "ext-authz").is_some())
    })
    .await
    .unwrap();
    let configz = s.pilot.debug("/debug/configz").await.unwrap();
    let found = analysis_of(&configz, "AuthorizationPolicy", "ext-authz").unwrap();
    assert_eq!(found[0]["code"], "IST0101", "{found}");
    assert_eq!(found[0]["field"], "spec.provider.name", "{found}");
    assert!(
        found[0]["message"].as_str().unwrap().contains("is denied"),
        "{found}"
    );
    s.finish().await;
    mixer.svc.stop().await.unwrap();
}

/// The analysis `/debug/configz` shows beside object `kind` `name`, if any.
fn analysis_of(configz: &serde_json::Value, kind: &str, name: &str) -> Option<serde_json::Value> {
    configz["objects"]
        .as_array()?
        .iter()
        .find(|o| o["kind"] == kind && o["name"] == name)
        .and_then(|o| o.get("analysis").cloned())
}
