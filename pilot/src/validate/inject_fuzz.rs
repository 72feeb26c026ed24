//! Random and mutated AdmissionReviews sent to `/inject`: whatever comes, the answer is
//! well formed (an AdmissionReview allowing, with a patch that applies, or denying with a
//! code and a message; or a 400 with the reason), and nothing panics.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::inject_tests::{apply, patch_ops, pod_review, reviews_pod, status_of};
use super::inject_webhook::Injector;
use crate::inject::InjectConfig;

fn with_annotations(pairs: &[(&str, &str)]) -> Value {
    let mut pod = reviews_pod();
    for (k, v) in pairs {
        pod["metadata"]["annotations"][*k] = json!(v);
    }
    pod
}

/// A small deterministic PRNG (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "metadata",
    "spec",
    "annotations",
    "labels",
    "name",
    "generateName",
    "namespace",
    "containers",
    "initContainers",
    "volumes",
    "imagePullSecrets",
    "hostNetwork",
    "ports",
    "containerPort",
    "protocol",
    "serviceAccountName",
    "sidecar.istio.io/inject",
    "sidecar.istio.io/status",
    "sidecar.istio.io/proxyCPU",
    "sidecar.istio.io/interceptionMode",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "readiness.status.sidecar.istio.io/periodSeconds",
    "a/b~c",
    "",
];

const STRINGS: &[&str] = &[
    "",
    "true",
    "false",
    "maybe",
    "NONE",
    "TPROXY",
    "REDIRECT",
    "10m",
    "banana",
    "*",
    "80,x",
    "10.0.0.0/8",
    "istio-proxy",
    "istio-init",
    "istio-envoy",
    "kube-system",
    "${proxyImage}",
    "~1/~0",
    "\u{1F980}",
];

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 2 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64 % 70000),
        3 => json!(-1.5),
        4 => json!(rng.pick(STRINGS)),
        5 => Value::Array(
            (0..rng.below(3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        6 => json!([{"name": rng.pick(STRINGS), "image": "x"}]),
        _ => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                map.insert(rng.pick(KEYS).to_string(), random_value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// Replaces, removes or adds one thing somewhere in `v`.
fn mutate(rng: &mut Rng, v: &mut Value, depth: u32) {
    let descend = depth < 6 && rng.below(4) != 0;
    match v {
        Value::Object(map) if !map.is_empty() && descend => {
            let key = map.keys().nth(rng.below(map.len())).cloned().unwrap();
            if let Some(child) = map.get_mut(&key) {
                mutate(rng, child, depth + 1);
            }
        }
        Value::Array(items) if !items.is_empty() && descend => {
            let i = rng.below(items.len());
            mutate(rng, &mut items[i], depth + 1);
        }
        Value::Object(map) => match rng.below(3) {
            0 if !map.is_empty() => {
                let key = map.keys().nth(rng.below(map.len())).cloned().unwrap();
                map.remove(&key);
            }
            _ => {
                map.insert(rng.pick(KEYS).to_string(), random_value(rng, depth));
            }
        },
        Value::Array(items) if rng.below(2) == 0 => items.push(random_value(rng, depth)),
        other => *other = random_value(rng, depth),
    }
}

/// Checks that `(status, body)` is a well-formed answer to `sent` and that an allowed
/// patch applies to the pod sent.
fn check_answer(sent: &[u8], status: StatusCode, body: &str) {
    if status != StatusCode::OK {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!body.trim().is_empty());
        return;
    }
    let answer: Value = serde_json::from_str(body).expect("a JSON answer");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert!(response["uid"].is_string(), "{answer}");
    match response["allowed"].as_bool().expect("allowed is a bool") {
        true => {
            if let Some(ops) = patch_ops(&answer) {
                // Read as the webhook reads it (a broken string in a field it ignores is not
                // looked at).
                #[derive(serde::Deserialize)]
                struct Sent {
                    request: SentRequest,
                }
                #[derive(serde::Deserialize)]
                struct SentRequest {
                    #[serde(default)]
                    object: Value,
                }
                let sent: Sent = serde_json::from_slice(sent).unwrap();
                let patched = apply(&sent.request.object, &ops);
                let status = &patched["metadata"]["annotations"]["sidecar.istio.io/status"];
                assert!(status.is_string(), "{patched}");
            }
        }
        false => {
            let code = response["status"]["code"].as_u64().unwrap();
            assert!(code == 400 || code == 500, "{answer}");
            assert!(!response["status"]["message"].as_str().unwrap().is_empty());
            assert!(response.get("patch").is_none());
        }
    }
}

#[test]
fn thousands_of_random_reviews_always_get_a_well_formed_answer() {
    let injector = Injector::fixed(InjectConfig::builtin());
    let bases: Vec<Value> = vec![
        serde_json::from_slice(&pod_review(&reviews_pod(), "shop", "CREATE")).unwrap(),
        serde_json::from_slice(&pod_review(
            &with_annotations(&[
                ("sidecar.istio.io/proxyCPU", "100m"),
                ("traffic.sidecar.istio.io/excludeInboundPorts", "9080"),
            ]),
            "shop",
            "CREATE",
        ))
        .unwrap(),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut injected, mut denied) = (0, 0);
    for round in 0..4000 {
        let mut review = rng.pick(&bases).clone();
        for _ in 0..=rng.below(4) {
            // Mostly inside the pod, sometimes anywhere in the review.
            if rng.below(5) == 0 {
                mutate(&mut rng, &mut review, 0);
            } else {
                mutate(&mut rng, &mut review["request"]["object"], 0);
            }
        }
        let mut body = serde_json::to_vec(&review).unwrap();
        if round % 10 == 0 {
            // Broken bytes too.
            let at = rng.below(body.len());
            match rng.below(3) {
                0 => body.truncate(at),
                1 => body[at] = rng.next() as u8,
                _ => body.insert(at, b'{'),
            }
        }
        let (status, text) = status_of(&injector, &body);
        check_answer(&body, status, &text);
        if text.contains("\"patch\"") {
            injected += 1;
        }
        if text.contains("\"allowed\":false") {
            denied += 1;
        }
    }
    // The mutations reach every branch: some pods still inject, some are denied.
    assert!(injected > 100 && denied > 100, "{injected} {denied}");
}
