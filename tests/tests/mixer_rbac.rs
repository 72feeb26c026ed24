//! Mixer's `rbac` adapter against a real `mixer` process in file mode (Istio 1.0's default
//! config plus an rbac handler, an `authorization` instance, a rule, and ServiceRole /
//! ServiceRoleBinding files in the same directory), asked with real `istio.mixer.v1.Mixer/
//! Check` calls:
//!
//! - what a binding grants is OK (with the handler's `cacheDuration`), the rest
//!   PERMISSION_DENIED naming the namespace and service;
//! - editing the binding's file, and adding an RbacConfig, change decisions without a
//!   restart;
//! - `mixer validate` accepts a correct rbac handler and refuses a bad one, naming the field.

mod mixer_support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use mesh_proto::grpc::istio::mixer::v1::mixer_client::MixerClient;
use mesh_proto::grpc::istio::mixer::v1::{CheckRequest, CompressedAttributes, StringMap};
use mesh_tests::mesh::eventually;
use mesh_tests::workspace_binary;
use mixer_support::{Mixer, WAIT, start_mixer};
use tonic::transport::Channel;

const RBAC_CONFIG: &str = r#"apiVersion: config.istio.io/v1alpha2
kind: rbac
metadata:
  name: handler
  namespace: istio-system
spec:
  configStoreUrl: "k8s://"
  cacheDuration: 7s
---
apiVersion: config.istio.io/v1alpha2
kind: authorization
metadata:
  name: requestcontext
  namespace: istio-system
spec:
  subject:
    user: request.headers["x-user"] | ""
    groups: request.headers["x-groups"] | ""
    properties:
      source.namespace: source.namespace | ""
  action:
    namespace: destination.service.namespace | "default"
    service: destination.service.name | ""
    method: request.method | ""
    path: request.path | ""
    properties:
      destination.labels: destination.labels | emptyStringMap()
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata:
  name: rbaccheck
  namespace: istio-system
spec:
  actions:
  - handler: handler.rbac
    instances: [requestcontext.authorization]
"#;

const ROLES: &str = r#"apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata:
  name: details-viewer
  namespace: default
spec:
  rules:
  - services: ["details.default.svc.cluster.local"]
    methods: ["GET", "HEAD"]
    paths: ["/details*"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata:
  name: ratings-v2
  namespace: default
spec:
  rules:
  - services: ["ratings*"]
    constraints:
    - key: destination.labels[version]
      values: ["v2"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata:
  name: from-frontend
  namespace: default
spec:
  subjects:
  - group: testers
  - properties:
      source.namespace: frontend
  roleRef:
    kind: ServiceRole
    name: ratings-v2
"#;

/// The binding file the test edits: `details-viewer` for `user`.
fn binding(user: &str) -> String {
    format!(
        r#"apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata:
  name: details-viewers
  namespace: default
spec:
  subjects:
  - user: "{user}"
  roleRef:
    kind: ServiceRole
    name: details-viewer
"#
    )
}

/// A request as a proxy would send it, every name and value a message word.
#[derive(Default)]
struct Req<'a> {
    user: &'a str,
    groups: &'a str,
    source_namespace: &'a str,
    service: &'a str,
    method: &'a str,
    path: &'a str,
    version: &'a str,
}

fn check_request(r: &Req<'_>) -> CheckRequest {
    let mut words: Vec<String> = Vec::new();
    let mut word = |w: &str| -> i32 {
        words.push(w.to_string());
        -(words.len() as i32)
    };
    let mut a = CompressedAttributes::default();
    for (name, value) in [
        ("destination.service.name", r.service),
        ("destination.service.namespace", "default"),
        ("request.method", r.method),
        ("request.path", r.path),
        ("source.namespace", r.source_namespace),
    ] {
        if !value.is_empty() {
            let (n, v) = (word(name), word(value));
            a.strings.insert(n, v);
        }
    }
    let mut headers = HashMap::new();
    for (name, value) in [("x-user", r.user), ("x-groups", r.groups)] {
        if !value.is_empty() {
            headers.insert(word(name), word(value));
        }
    }
    a.string_maps
        .insert(word("request.headers"), StringMap { entries: headers });
    if !r.version.is_empty() {
        let entries = HashMap::from([(word("version"), word(r.version))]);
        a.string_maps
            .insert(word("destination.labels"), StringMap { entries });
    }
    a.words = words;
    CheckRequest {
        attributes: Some(a),
        global_word_count: 222,
        deduplication_id: String::new(),
        quotas: HashMap::new(),
    }
}

async fn client(mixer: &Mixer) -> MixerClient<Channel> {
    MixerClient::connect(format!("http://{}", mixer.grpc))
        .await
        .unwrap()
}

/// The precondition's code, message and valid duration.
async fn check(c: &mut MixerClient<Channel>, r: &Req<'_>) -> (i32, String, Duration) {
    let resp = c.check(check_request(r)).await.unwrap().into_inner();
    let p = resp.precondition.unwrap();
    let status = p.status.unwrap_or_default();
    let d = p.valid_duration.unwrap_or_default();
    (
        status.code,
        status.message,
        Duration::new(d.seconds as u64, d.nanos as u32),
    )
}

fn details<'a>(user: &'a str, method: &'a str, path: &'a str) -> Req<'a> {
    Req {
        user,
        service: "details",
        method,
        path,
        ..Default::default()
    }
}

#[tokio::test]
async fn rbac_grants_what_bindings_say_and_follows_edits_without_restart() {
    let m = start_mixer(&[
        ("rbac.yaml", RBAC_CONFIG.to_string()),
        ("roles.yaml", ROLES.to_string()),
        ("binding.yaml", binding("alice")),
    ])
    .await;
    assert_eq!(m.refused().await, Vec::<String>::new());
    let mut c = client(&m).await;

    let (code, message, valid) = check(&mut c, &details("alice", "GET", "/details/1")).await;
    assert_eq!(
        (code, valid),
        (0, Duration::from_secs(7)),
        "{message}\n{}",
        m.svc.logs()
    );
    for (r, why) in [
        (details("bob", "GET", "/details/1"), "bob is not bound"),
        (
            details("alice", "POST", "/details/1"),
            "POST is not a role method",
        ),
        (
            details("alice", "GET", "/admin"),
            "/admin is not a role path",
        ),
        (
            Req {
                service: "reviews",
                ..details("alice", "GET", "/details/1")
            },
            "the role is for details only",
        ),
    ] {
        let (code, message, _) = check(&mut c, &r).await;
        assert_eq!(code, 7, "{why}: {message}");
        assert!(
            message.contains("RBAC: permission denied: no ServiceRoleBinding in namespace default")
                && message.contains(&format!("on service {}", r.service)),
            "{why}: {message}"
        );
    }

    // Groups, subject properties and a constraint on a map property.
    let ratings = |groups, source_namespace, version| Req {
        groups,
        source_namespace,
        version,
        service: "ratings",
        method: "GET",
        path: "/ratings/0",
        ..Default::default()
    };
    for (r, want) in [
        (ratings("dev,testers", "", "v2"), 0),
        (ratings("", "frontend", "v2"), 0),
        (ratings("", "backend", "v2"), 7),
        (ratings("testers", "", "v1"), 7),
        (ratings("testers", "", ""), 7),
    ] {
        let (code, message, _) = check(&mut c, &r).await;
        assert_eq!(
            code, want,
            "groups {:?}, source {:?}, version {:?}: {message}",
            r.groups, r.source_namespace, r.version
        );
    }

    // The binding now names bob: no restart, the decisions follow.
    std::fs::write(m.dir.path().join("binding.yaml"), binding("bob")).unwrap();
    let mut c2 = client(&m).await;
    eventually("the edited binding to apply", WAIT, || {
        let mut c = c2.clone();
        async move {
            let bob = check(&mut c, &details("bob", "GET", "/details/1")).await.0;
            let alice = check(&mut c, &details("alice", "GET", "/details/1"))
                .await
                .0;
            Ok(bob == 0 && alice == 7)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        check(&mut c2, &details("bob", "HEAD", "/details")).await.0,
        0
    );

    // An RbacConfig excluding details: alice passes again, other services stay enforced.
    std::fs::write(
        m.dir.path().join("rbac-config.yaml"),
        r#"apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata:
  name: default
  namespace: istio-system
spec:
  mode: ON_WITH_EXCLUSION
  exclusion:
    services: ["details.default.svc.cluster.local"]
"#,
    )
    .unwrap();
    eventually("the RbacConfig to apply", WAIT, || {
        let mut c = c2.clone();
        async move {
            Ok(check(&mut c, &details("alice", "GET", "/details/1"))
                .await
                .0
                == 0)
        }
    })
    .await
    .unwrap();
    assert_eq!(check(&mut c2, &ratings("", "backend", "v2")).await.0, 7);
    // Removing the roles removes their grants (details stays excluded, ratings does not).
    std::fs::remove_file(m.dir.path().join("roles.yaml")).unwrap();
    eventually("the removed roles to apply", WAIT, || {
        let mut c = c2.clone();
        async move { Ok(check(&mut c, &ratings("testers", "", "v2")).await.0 == 7) }
    })
    .await
    .unwrap();
    assert_eq!(check(&mut c2, &details("carol", "GET", "/x")).await.0, 0);
}

/// `mixer validate -f FILE`: (success, stdout).
fn validate(dir: &Path, name: &str, yaml: &str) -> (bool, String) {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(workspace_binary("mixer").unwrap())
        .arg("validate")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn mixer_validate_checks_rbac_handlers_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = validate(
        dir.path(),
        "good.yaml",
        &format!("{RBAC_CONFIG}---\n{ROLES}"),
    );
    assert!(ok && out.is_empty(), "{out}");

    let (ok, out) = validate(
        dir.path(),
        "bad-duration.yaml",
        &RBAC_CONFIG.replace("cacheDuration: 7s", "cacheDuration: soon"),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("rbac istio-system/handler")
            && out.contains("spec.cacheDuration: invalid duration \"soon\""),
        "{out}"
    );

    let (ok, out) = validate(
        dir.path(),
        "bad-url.yaml",
        r#"apiVersion: config.istio.io/v1alpha2
kind: handler
metadata:
  name: authz
  namespace: istio-system
spec:
  compiledAdapter: rbac
  params:
    configStoreUrl: "etcd://config"
"#,
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("handler istio-system/authz")
            && out.contains("spec.params.configStoreUrl: unknown config store scheme \"etcd\""),
        "{out}"
    );
}
