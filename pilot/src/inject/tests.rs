//! Tests of injection: the policy, what the built-in template gives, annotation errors, the
//! flags pilot-agent must accept, and kube-inject over streams.

use serde_json::{Value, json};

use super::*;

fn pod(annotations: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reviews-v1-0", "namespace": "shop", "labels": {"app": "reviews"},
                     "annotations": annotations},
        "spec": spec,
    })
}

fn app_spec() -> Value {
    json!({
        "serviceAccountName": "reviews",
        "containers": [{"name": "app", "image": "app:1", "ports": [
            {"containerPort": 9080}, {"containerPort": 9090, "protocol": "TCP"},
            {"containerPort": 53, "protocol": "UDP"}]}],
    })
}

fn pod_ref() -> PodRef {
    PodRef {
        namespace: "shop".into(),
        name: "reviews-v1-0".into(),
        workload: None,
    }
}

fn injected(annotations: Value) -> Value {
    let config = InjectConfig::builtin();
    inject(&config, &pod_ref(), &pod(annotations, app_spec()))
        .unwrap()
        .pod
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} {name} in {pod:#}"))
}

/// The value after `flag` in `args`.
fn arg<'a>(c: &'a Value, flag: &str) -> &'a str {
    let args = c["args"].as_array().unwrap();
    let at = args.iter().position(|a| a == flag).unwrap();
    args[at + 1].as_str().unwrap()
}

/// The args of a container, parsed as pilot-agent's command line.
fn agent_cli(c: &Value) -> crate::agent::Cli {
    let mut argv = vec!["pilot-agent".to_string()];
    argv.extend(
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    mesh_runtime::cli::try_parse_from("PILOT_AGENT_INJECT_TEST", argv)
        .unwrap_or_else(|e| panic!("pilot-agent refuses {}: {e}", c["args"]))
}

#[test]
fn the_policy() {
    let config = InjectConfig::builtin();
    let decide_for = |ns: &str, annotations: Value, labels: Value, spec: Value| {
        let mut p = pod(annotations, spec);
        p["metadata"]["labels"] = labels;
        let r = PodRef {
            namespace: ns.into(),
            ..pod_ref()
        };
        decide(&config, &r, &p)
    };
    let ok = |d: Result<Decision, InjectError>| d.unwrap();
    assert_eq!(
        ok(decide_for("shop", json!({}), json!({}), app_spec())),
        Decision::Inject
    );
    for ns in ["kube-system", "kube-public"] {
        assert_eq!(
            ok(decide_for(ns, json!({}), json!({}), app_spec())),
            Decision::Skip(SkipReason::IgnoredNamespace(ns.into()))
        );
    }
    let mut host = app_spec();
    host["hostNetwork"] = json!(true);
    assert_eq!(
        ok(decide_for(
            "shop",
            json!({INJECT_ANNOTATION: "true"}),
            json!({}),
            host
        )),
        Decision::Skip(SkipReason::HostNetwork)
    );
    assert_eq!(
        ok(decide_for(
            "shop",
            json!({STATUS_ANNOTATION: "{}"}),
            json!({}),
            app_spec()
        )),
        Decision::Skip(SkipReason::AlreadyInjected)
    );
    for no in ["false", "no", "N", "off"] {
        assert!(matches!(
            ok(decide_for(
                "shop",
                json!({INJECT_ANNOTATION: no}),
                json!({}),
                app_spec()
            )),
            Decision::Skip(SkipReason::OptedOut {
                source: "annotation",
                ..
            })
        ));
    }
    // The label wins over the annotation.
    assert!(matches!(
        ok(decide_for(
            "shop",
            json!({INJECT_ANNOTATION: "true"}),
            json!({INJECT_ANNOTATION: "false"}),
            app_spec()
        )),
        Decision::Skip(SkipReason::OptedOut {
            source: "label",
            ..
        })
    ));
    // A policy of disabled injects only who asks.
    let mut disabled = config.clone();
    disabled.policy = Policy::Disabled;
    let p = pod(json!({}), app_spec());
    assert_eq!(
        decide(&disabled, &pod_ref(), &p).unwrap(),
        Decision::Skip(SkipReason::NotOptedIn)
    );
    let p = pod(json!({INJECT_ANNOTATION: "yes"}), app_spec());
    assert_eq!(decide(&disabled, &pod_ref(), &p).unwrap(), Decision::Inject);
    // Neither yes nor no: an error naming the pod and the annotation.
    let e = decide_for(
        "shop",
        json!({INJECT_ANNOTATION: "maybe"}),
        json!({}),
        app_spec(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("shop/reviews-v1-0") && e.contains(INJECT_ANNOTATION) && e.contains("maybe"),
        "{e}"
    );
}

#[test]
fn the_built_in_template_gives_istios_sidecar() {
    let p = injected(json!({}));
    // Native sidecar after istio-init; the app's containers alone in `containers`.
    let inits: Vec<&str> = p["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, [INIT_CONTAINER, PROXY_CONTAINER]);
    assert_eq!(p["spec"]["containers"].as_array().unwrap().len(), 1);

    let init = container(&p, "initContainers", INIT_CONTAINER);
    assert_eq!(init["command"], json!(["/usr/local/bin/pilot-agent"]));
    assert_eq!(init["args"][0], "iptables");
    let sc = &init["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    // The pod's TCP ports, not the UDP one.
    assert_eq!(arg(init, "-b"), "9080,9090");
    assert_eq!(arg(init, "-d"), "15090,15021,15020");
    assert_eq!(arg(init, "-i"), "*");

    let proxy = container(&p, "initContainers", PROXY_CONTAINER);
    assert_eq!(proxy["restartPolicy"], "Always");
    let sc = &proxy["securityContext"];
    assert_eq!(
        (&sc["runAsUser"], &sc["runAsGroup"], &sc["runAsNonRoot"]),
        (&json!(1337), &json!(1337), &json!(true))
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert!(sc["capabilities"].get("add").is_none(), "{sc}");
    assert_eq!(
        proxy["readinessProbe"]["httpGet"],
        json!({"path": "/healthz/ready", "port": 15020})
    );
    assert_eq!(
        &proxy["args"].as_array().unwrap()[..4],
        [
            "proxy",
            "sidecar",
            "--discovery-address",
            "istio-pilot.istio-system.svc:15010"
        ]
    );
    let env: Vec<&str> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in [
        "POD_NAME",
        "POD_NAMESPACE",
        "INSTANCE_IP",
        "SERVICE_ACCOUNT",
        "ISTIO_META_INTERCEPTION_MODE",
        "ISTIO_METAJSON_LABELS",
    ] {
        assert!(env.contains(&name), "{name} not in {env:?}");
    }
    let labels = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ISTIO_METAJSON_LABELS")
        .unwrap();
    assert_eq!(labels["value"], r#"{"app":"reviews"}"#);
    assert_eq!(
        proxy["resources"]["requests"],
        json!({"cpu": "10m", "memory": "64Mi"})
    );
    assert!(
        proxy["resources"].get("limits").is_none(),
        "no limits by default"
    );

    let volumes = p["spec"]["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(volume("istio-envoy")["emptyDir"]["medium"], "Memory");
    assert_eq!(
        volume("istio-certs")["secret"],
        json!({"secretName": "istio.reviews", "optional": true})
    );
    assert_eq!(
        volume("istio-token")["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "istio-ca"
    );
    let mounts = proxy["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "istio-token" && m["mountPath"] == "/var/run/secrets/tokens")
    );

    let status: Value = serde_json::from_str(
        p["metadata"]["annotations"][STATUS_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        status["initContainers"],
        json!(["istio-init", "istio-proxy"])
    );
    assert_eq!(status["containers"], Value::Null);
    assert_eq!(
        status["volumes"],
        json!(["istio-envoy", "istio-token", "istio-certs"])
    );
    assert_eq!(status["version"], InjectConfig::builtin().version);
    // What was there stays.
    assert_eq!(p["metadata"]["labels"], json!({"app": "reviews"}));
    assert_eq!(p["spec"]["serviceAccountName"], "reviews");
}

#[test]
fn pilot_agent_takes_the_flags_the_template_passes() {
    use crate::agent::{Command, iptables};
    let p = injected(json!({
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.96.0.0/12,10.0.0.0/16",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.9.0/24",
        "traffic.sidecar.istio.io/includeInboundPorts": "*",
        "traffic.sidecar.istio.io/excludeInboundPorts": "9090",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "5432",
    }));
    let Command::Iptables(args) =
        agent_cli(container(&p, "initContainers", INIT_CONTAINER)).command
    else {
        panic!("not iptables");
    };
    let opts = iptables::Options::from_args(&args).unwrap();
    assert_eq!(opts.proxy_uid, 1337);
    assert_eq!((opts.proxy_port, opts.inbound_capture_port), (15001, 15006));
    assert_eq!(opts.inbound_ports, iptables::Capture::All);
    assert!(opts.exclude_inbound_ports.contains(&9090));
    assert_eq!(opts.exclude_outbound_ports, [5432]);
    assert!(matches!(&opts.include_ranges, iptables::Capture::Only(r) if r.len() == 2));
    assert_eq!(opts.exclude_ranges.len(), 1);
    let Command::Proxy(args) = agent_cli(container(&p, "initContainers", PROXY_CONTAINER)).command
    else {
        panic!("not proxy");
    };
    assert_eq!(args.discovery_address, "istio-pilot.istio-system.svc:15010");
    assert_eq!(args.status_port, 15020);
    assert_eq!(args.config_path, std::path::Path::new("/etc/istio/proxy"));
    // The agent's default token path is where the template mounts the token.
    assert_eq!(
        crate::agent::ca_client::DEFAULT_TOKEN_PATH,
        "/var/run/secrets/tokens/istio-token"
    );
}

#[test]
fn annotations_set_resources_and_interception() {
    let p = injected(json!({
        "sidecar.istio.io/proxyCPU": "100m",
        "sidecar.istio.io/proxyMemory": "128Mi",
        "sidecar.istio.io/proxyMemoryLimit": "1Gi",
        "readiness.status.sidecar.istio.io/periodSeconds": "7",
    }));
    let proxy = container(&p, "initContainers", PROXY_CONTAINER);
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}})
    );
    assert_eq!(proxy["readinessProbe"]["periodSeconds"], 7);
    // NONE: no iptables at all.
    let p = injected(json!({"sidecar.istio.io/interceptionMode": "NONE"}));
    let inits = p["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 1);
    assert_eq!(inits[0]["name"], PROXY_CONTAINER);
}

#[test]
fn malformed_annotations_are_errors_naming_pod_and_annotation() {
    let config = InjectConfig::builtin();
    for (annotation, value, want) in [
        ("sidecar.istio.io/proxyCPU", "lots", "quantity"),
        ("sidecar.istio.io/proxyMemory", "64 Mi", "quantity"),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0",
            "CIDR",
        ),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "*",
            "CIDR",
        ),
        (
            "traffic.sidecar.istio.io/includeInboundPorts",
            "http",
            "port",
        ),
        (
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "70000",
            "port",
        ),
        ("sidecar.istio.io/interceptionMode", "MAGIC", "REDIRECT"),
        (
            "sidecar.istio.io/interceptionMode",
            "TPROXY",
            "not supported",
        ),
        (
            "readiness.status.sidecar.istio.io/periodSeconds",
            "0",
            "at least 1",
        ),
    ] {
        let p = pod(json!({annotation: value}), app_spec());
        let e = inject(&config, &pod_ref(), &p).unwrap_err();
        assert!(matches!(e, InjectError::Annotation { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with("pod shop/reviews-v1-0: annotation ")
                && e.contains(annotation)
                && e.contains(value)
                && e.contains(want),
            "{annotation}={value}: {e}"
        );
    }
}

#[test]
fn bad_pods_are_errors_not_panics() {
    let config = InjectConfig::builtin();
    for (p, want) in [
        (json!("a string"), "(pod)"),
        (json!({"metadata": {}}), "spec"),
        (json!({"spec": {"containers": []}}), "no containers"),
        (json!({"spec": {"containers": {}}}), "spec.containers"),
        (json!({"spec": {"containers": [1]}}), "spec.containers[0]"),
        (
            json!({"spec": {"containers": [{"name": "istio-proxy"}]}}),
            "already has a container named istio-proxy",
        ),
        (
            json!({"spec": {"containers": [{"name": "a"}], "volumes": [{"name": "istio-envoy"}]}}),
            "volume named istio-envoy",
        ),
        (
            json!({"metadata": {"annotations": []}, "spec": {"containers": [{"name": "a"}]}}),
            "metadata.annotations",
        ),
        (
            json!({"spec": {"containers": [{"name": "a", "ports": 80}]}}),
            "spec.containers[0].ports",
        ),
    ] {
        let e = inject(&config, &pod_ref(), &p).unwrap_err().to_string();
        assert!(e.contains(want), "{p}: {e}");
    }
}

#[test]
fn plain_mode_appends_the_proxy_to_the_containers() {
    let text = default_config_yaml().replace("sidecarMode: native", "sidecarMode: plain");
    let config = InjectConfig::parse(&text).unwrap();
    let mut spec = app_spec();
    spec["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    let p = inject(&config, &pod_ref(), &pod(json!({}), spec)).unwrap();
    let names = |list: &str| -> Vec<String> {
        p.pod["spec"][list]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("initContainers"), ["migrate", "istio-init"]);
    assert_eq!(names("containers"), ["app", "istio-proxy"]);
    assert!(
        container(&p.pod, "containers", PROXY_CONTAINER)
            .get("restartPolicy")
            .is_none()
    );
    assert!(
        p.status
            .contains(r#""initContainers":["istio-init"],"containers":["istio-proxy"]"#)
    );
    // Native mode puts the app's init containers after the proxy.
    let mut spec = app_spec();
    spec["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    let p = inject(&InjectConfig::builtin(), &pod_ref(), &pod(json!({}), spec)).unwrap();
    let inits: Vec<&str> = p.pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["istio-init", "istio-proxy", "migrate"]);
}

#[test]
fn an_operator_config_changes_the_image_and_the_defaults() {
    let text = config_yaml_for_image("registry.example/mesh/proxy:9")
        .replace("proxyCPU: 10m", "proxyCPU: 200m");
    let config = InjectConfig::parse(&text).unwrap();
    let p = inject(&config, &pod_ref(), &pod(json!({}), app_spec())).unwrap();
    let proxy = container(&p.pod, "initContainers", PROXY_CONTAINER);
    assert_eq!(proxy["image"], "registry.example/mesh/proxy:9");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "200m");
    // TPROXY in the config itself is refused as the config's.
    let text =
        default_config_yaml().replace("interceptionMode: REDIRECT", "interceptionMode: TPROXY");
    let config = InjectConfig::parse(&text).unwrap();
    let e = inject(&config, &pod_ref(), &pod(json!({}), app_spec())).unwrap_err();
    assert!(
        matches!(e, InjectError::Config { ref field, .. } if field == "values.interceptionMode"),
        "{e}"
    );
}

const STREAM: &str = "# the service
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{port: 9080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: shop}
spec:
  template:
    metadata: {labels: {app: reviews}}
    spec:
      containers: [{name: app, image: app, ports: [{containerPort: 9080}]}]
---
---
apiVersion: v1
kind: List
items:
- apiVersion: batch/v1
  kind: CronJob
  metadata: {name: nightly}
  spec:
    jobTemplate:
      spec:
        template:
          spec:
            restartPolicy: Never
            containers: [{name: job, image: job}]
- apiVersion: v1
  kind: Pod
  metadata: {name: optout, annotations: {sidecar.istio.io/inject: \"false\"}}
  spec: {containers: [{name: app, image: app}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: exporter, namespace: monitoring}
spec:
  template:
    spec:
      hostNetwork: true
      containers: [{name: exporter, image: e}]
";

#[test]
fn kube_inject_walks_a_stream() {
    let config = InjectConfig::builtin();
    let out = inject_stream(&config, STREAM).unwrap();
    let report: Vec<String> = out.report.iter().map(ToString::to_string).collect();
    assert_eq!(
        report,
        [
            "deployment \"shop/reviews-v1\" injected",
            "cronjob \"nightly\" injected",
            "pod \"optout\" skipped: opted out (annotation sidecar.istio.io/inject: \"false\")",
            "daemonset \"monitoring/exporter\" skipped: hostNetwork pod",
        ]
    );
    // Untouched documents come back as they were, comments included.
    assert!(out.yaml.starts_with(
        "# the service\napiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\n"
    ));
    assert!(
        out.yaml
            .ends_with(&STREAM[STREAM.find("apiVersion: apps/v1\nkind: DaemonSet").unwrap()..])
    );
    let docs: Vec<Value> = out
        .yaml
        .split("\n---\n")
        .map(|d| yaml_serde::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 4, "the empty document is dropped");
    let template = &docs[1]["spec"]["template"];
    assert_eq!(
        template["spec"]["initContainers"][1]["name"],
        PROXY_CONTAINER
    );
    let job = &docs[2]["items"][0]["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(job["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert!(docs[2]["items"][1]["spec"].get("initContainers").is_none());
    // Injecting the output again changes nothing: everything is already injected.
    let again = inject_stream(&config, &out.yaml).unwrap();
    assert_eq!(again.yaml, out.yaml);
    assert!(
        again
            .report
            .iter()
            .filter(|r| r.kind != "DaemonSet" && r.name != "optout")
            .all(|r| r.skipped == Some(SkipReason::AlreadyInjected)),
        "{:?}",
        again.report
    );
}

#[test]
fn kube_inject_errors_name_the_document() {
    let config = InjectConfig::builtin();
    let bad = "kind: Service\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata: {annotations: {sidecar.istio.io/proxyCPU: lots}}\n    spec: {containers: [{name: a}]}\n";
    let e = inject_stream(&config, bad).unwrap_err().to_string();
    assert!(
        e.starts_with("document 2 (Deployment web): spec.template: pod web (Deployment template): annotation sidecar.istio.io/proxyCPU: \"lots\""),
        "{e}"
    );
    let e = inject_stream(
        &config,
        "kind: StatefulSet\nmetadata: {name: db}\nspec: {}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("document 1 (StatefulSet db): spec.template"),
        "{e}"
    );
    let e = inject_stream(&config, "a: b\n---\nkind: [\n").unwrap_err();
    assert!(matches!(e, InjectError::Yaml { index: 2, .. }), "{e}");
    let e = inject_stream(
        &config,
        "kind: List\nitems:\n- kind: Pod\n  metadata: {name: p}\n  spec: {containers: 3}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("document 1, item 1 (Pod p)"), "{e}");
}

#[test]
fn kube_inject_reads_and_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.yaml");
    let output = dir.path().join("out.yaml");
    let config = dir.path().join("config.yaml");
    std::fs::write(&input, STREAM).unwrap();
    std::fs::write(&config, config_yaml_for_image("r.example/proxy:2")).unwrap();
    run(&KubeInjectArgs {
        filename: input.clone(),
        output: Some(output.clone()),
        injection_config: Some(config.clone()),
    })
    .unwrap();
    let out = std::fs::read_to_string(&output).unwrap();
    assert!(out.contains("image: r.example/proxy:2"), "{out}");
    std::fs::write(&config, "policy: sometimes\ntemplate: {}\n").unwrap();
    let e = run(&KubeInjectArgs {
        filename: input,
        output: Some(output),
        injection_config: Some(config.clone()),
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&config.display().to_string()) && e.contains("policy"),
        "{e}"
    );
}
