//! Validation cases, each naming the field it expects to be reported.

use mesh_proto::{Kind, Spec, parse_spec};

use super::*;

fn problems(kind: Kind, yaml: &str) -> Vec<String> {
    let value: serde_json::Value = yaml_serde::from_str(yaml).unwrap();
    let spec: Spec = parse_spec(&kind, value).unwrap();
    validate_spec(&spec).iter().map(|e| e.to_string()).collect()
}

fn assert_problem(kind: Kind, yaml: &str, field: &str) {
    let p = problems(kind, yaml);
    assert!(
        p.iter().any(|e| e.starts_with(&format!("{field}:"))),
        "expected a problem with {field}, got {p:?}"
    );
}

#[test]
fn valid_virtual_service() {
    let p = problems(
        Kind::VirtualService,
        r#"
hosts: [reviews]
http:
- match:
  - headers: {cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}}
  route:
  - destination: {host: reviews, subset: v2}
- route:
  - destination: {host: reviews, subset: v1}
    weight: 80
  - destination: {host: reviews, subset: v3}
    weight: 20
  timeout: 300ms
  retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,503"}
  fault:
    abort: {httpStatus: 500, percentage: {value: 10}}
"#,
    );
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn virtual_service_problems_name_their_fields() {
    let cases = [
        (
            "hosts: [reviews]\nhttp:\n- route:\n  - {destination: {host: a}, weight: 50}\n  - {destination: {host: b}, weight: 20}\n",
            "spec.http[0].route",
        ),
        (
            "hosts: [reviews]\nhttp:\n- match: [{uri: {regex: \"/x{1001}\"}}]\n  route: [{destination: {host: a}}]\n",
            "spec.http[0].match[0].uri.regex",
        ),
        (
            "hosts: [reviews]\nhttp:\n- match: [{headers: {x: {regex: \"(a\"}}}]\n  route: [{destination: {host: a}}]\n",
            "spec.http[0].match[0].headers.x.regex",
        ),
        (
            "hosts: [reviews]\nhttp:\n- timeout: 0s\n  route: [{destination: {host: a}}]\n",
            "spec.http[0].timeout",
        ),
        (
            "hosts: [reviews]\nhttp:\n- fault: {abort: {httpStatus: 700}}\n  route: [{destination: {host: a}}]\n",
            "spec.http[0].fault.abort.httpStatus",
        ),
        (
            "hosts: [reviews]\nhttp:\n- fault: {delay: {fixedDelay: 1s, percentage: {value: 120}}}\n  route: [{destination: {host: a}}]\n",
            "spec.http[0].fault.delay.percentage",
        ),
        (
            "hosts: [\"bad..host\"]\nhttp:\n- route: [{destination: {host: a}}]\n",
            "spec.hosts[0]",
        ),
        ("hosts: [reviews]\nhttp:\n- {}\n", "spec.http[0]"),
        (
            "hosts: [reviews]\nhttp:\n- route: [{destination: {host: a}}]\n  mirrorPercentage: {value: -1}\n",
            "spec.http[0].mirrorPercentage",
        ),
        (
            "hosts: [reviews]\nhttp:\n- directResponse: {status: 42}\n",
            "spec.http[0].directResponse.status",
        ),
        (
            "hosts: [reviews]\nhttp:\n- route: [{destination: {host: a, port: {number: 70000}}}]\n",
            "spec.http[0].route[0].destination.port.number",
        ),
    ];
    for (yaml, field) in cases {
        assert_problem(Kind::VirtualService, yaml, field);
    }
}

#[test]
fn destination_rule_problems() {
    assert_problem(
        Kind::DestinationRule,
        "host: reviews\ntrafficPolicy:\n  outlierDetection: {maxEjectionPercent: 150}\n",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
    );
    assert_problem(
        Kind::DestinationRule,
        "host: reviews\nsubsets:\n- {name: V1, labels: {version: v1}}\n",
        "spec.subsets[0].name",
    );
    assert_problem(
        Kind::DestinationRule,
        "host: reviews\ntrafficPolicy:\n  loadBalancer: {consistentHash: {}}\n",
        "spec.trafficPolicy.loadBalancer.consistentHash",
    );
    let ok = problems(
        Kind::DestinationRule,
        "host: reviews\ntrafficPolicy:\n  loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n  connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}\nsubsets:\n- {name: v1, labels: {version: v1}}\n",
    );
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn service_entry_problems() {
    assert_problem(
        Kind::ServiceEntry,
        "hosts: [db.example.com]\nresolution: STATIC\nports: [{number: 5432, name: tcp, protocol: TCP}]\nendpoints: [{address: db.example.com}]\n",
        "spec.endpoints[0].address",
    );
    assert_problem(
        Kind::ServiceEntry,
        "hosts: [db.example.com]\nresolution: DNS\nports: []\n",
        "spec.ports",
    );
    let ok = problems(
        Kind::ServiceEntry,
        "hosts: [db.example.com]\nresolution: DNS\nlocation: MESH_EXTERNAL\nports: [{number: 5432, name: tcp, protocol: TCP}]\nendpoints: [{address: db.example.com}]\n",
    );
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn validate_files_names_file_object_and_field() {
    let dir = std::env::temp_dir().join(format!("pilot-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {destination: {host: a}, weight: 10}\n    - {destination: {host: b}, weight: 10}\n",
    )
    .unwrap();
    let problems = validate_files(std::slice::from_ref(&file));
    assert_eq!(problems.len(), 1, "{problems:?}");
    let line = &problems[0];
    assert!(line.contains("bad.yaml"), "{line}");
    assert!(line.contains("reviews"), "{line}");
    assert!(line.contains("spec.http[0].route"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every networking and route-rule file of Istio's samples validates (the repo's copies).
#[test]
fn fixtures_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{files:?}");
    let problems = validate_files(&files);
    assert!(problems.is_empty(), "{problems:#?}");
}
