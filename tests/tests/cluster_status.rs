//! Status conditions on refused objects: a VirtualService whose weights add up to 90 (which
//! the CRD schema accepts, and Pilot's validation refuses) applied with kubectl gets Istio's
//! `Reconciled=False`/`ValidationFailed` condition and IST0106 validation message, readable
//! with `kubectl get -o json`; fixed, it loses them. What Pilot's analysis finds in accepted
//! objects is written beside it and cleared the same way: the fixed VirtualService routes to
//! a host the registry lacks (IST0101) until a ServiceEntry and DestinationRule define it, and
//! a CUSTOM AuthorizationPolicy whose extension provider MeshConfig lacks says in its status
//! (and on `/debug/configz`) that what it matches is denied.

use std::time::Duration;

use mesh_tests::Service;
use mesh_tests::cluster::Cluster;
use mesh_tests::mesh::eventually;

const WAIT: Duration = Duration::from_secs(60);

const INVALID: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v2}
      weight: 40
";

const VALID: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v2}
      weight: 50
";

/// A ServiceEntry for `reviews` in `ns` with the two subsets' endpoints, and their
/// DestinationRule.
fn reviews(ns: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
spec:
  hosts: [reviews.{ns}.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.9.0.1, labels: {{version: v1}}}}
  - {{address: 10.9.0.2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"
    )
}

const CUSTOM: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext
spec:
  selector: {matchLabels: {app: reviews}}
  action: CUSTOM
  provider: {name: nowhere}
  rules: [{to: [{operation: {paths: [/admin]}}]}]
";

async fn status(cluster: &Cluster, ns: &str) -> anyhow::Result<serde_json::Value> {
    status_of(cluster, ns, "virtualservice", "reviews").await
}

async fn status_of(
    cluster: &Cluster,
    ns: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    let out = cluster
        .kubectl_ok(["-n", ns, "get", kind, name, "-o", "json"])
        .await?;
    let obj: serde_json::Value = serde_json::from_str(&out)?;
    Ok(obj["status"].clone())
}

/// The codes of the status's validation messages.
fn codes(status: &serde_json::Value) -> Vec<String> {
    status["validationMessages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["type"]["code"].as_str().map(str::to_string))
        .collect()
}

fn reconciled(status: &serde_json::Value) -> Option<&serde_json::Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Reconciled")
}

#[tokio::test]
async fn a_refused_object_says_why_in_its_status() {
    let Some(cluster) = Cluster::for_test().await.unwrap() else {
        return;
    };
    cluster.install_crds().await.unwrap();
    let ns = cluster.namespace("status").await.unwrap();
    let ns_name = ns.name().to_string();

    let kubeconfig = cluster.kubeconfig();
    let start_pilot = |extra: &'static [&'static str]| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let grpc = format!("127.0.0.1:{}", mesh_tests::free_port());
            let mut args = vec![
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--grpc-addr",
                &grpc,
            ];
            args.extend_from_slice(extra);
            let mut pilot = Service::start("pilot", &args).await.unwrap();
            pilot.wait_ready(WAIT).await.unwrap();
            pilot
        }
    };

    // The API server takes it (the schema has nothing against 90); Pilot refuses it.
    cluster.apply(&ns_name, INVALID).await.unwrap();

    // With `--enable-status false` the refusal shows on configz only; the object is left alone.
    let quiet = start_pilot(&["--enable-status", "false"]).await;
    let configz = mesh_tests::http_get(&format!("http://{}/debug/configz", quiet.http_addr()), &[])
        .await
        .unwrap()
        .body;
    assert!(
        configz.contains(&ns_name) && configz.contains("90"),
        "{configz}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = status(cluster, &ns_name).await.unwrap();
    assert!(reconciled(&s).is_none(), "{s}");
    assert!(
        s.get("validationMessages").is_none_or(|m| m.is_null()),
        "{s}"
    );
    quiet.stop().await.unwrap();

    // By default, the refusal is written into the object's status.
    let pilot = start_pilot(&[]).await;
    eventually("the refusal is in the status", WAIT, || async {
        let s = status(cluster, &ns_name).await?;
        Ok(reconciled(&s).is_some_and(|c| {
            c["status"] == "False"
                && c["reason"] == "ValidationFailed"
                && c["message"].as_str().is_some_and(|m| m.contains("90"))
        }) && s["validationMessages"][0]["type"]["code"] == "IST0106")
    })
    .await
    .unwrap();
    let s = status(cluster, &ns_name).await.unwrap();
    let message = reconciled(&s).unwrap()["message"].as_str().unwrap();
    assert!(
        message.contains("spec.http[0].route"),
        "the message names the field: {message}"
    );
    assert_eq!(s["observedGeneration"], "1");

    // No write storm: the status stays as written (one resourceVersion) while nothing changes.
    let rv = |c: &'static Cluster, ns: String| async move {
        c.kubectl_ok([
            "-n",
            &ns,
            "get",
            "virtualservice",
            "reviews",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .await
    };
    let before = rv(cluster, ns_name.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rv(cluster, ns_name.clone()).await.unwrap(), before);

    // Fixed, the object loses the condition and the refusal; Pilot's analysis now says its
    // host is unknown (nothing in the namespace defines `reviews`).
    cluster.apply(&ns_name, VALID).await.unwrap();
    eventually(
        "the refusal is cleared, the analysis written",
        WAIT,
        || async {
            let s = status(cluster, &ns_name).await?;
            // One message for each destination of the route.
            Ok(reconciled(&s).is_none()
                && codes(&s) == ["IST0101", "IST0101"]
                && s["observedGeneration"] == "2")
        },
    )
    .await
    .unwrap();
    let s = status(cluster, &ns_name).await.unwrap();
    let description = s["validationMessages"][0]["description"].as_str().unwrap();
    assert!(
        description.contains("spec.http[0].route[0].destination")
            && description.contains("Referenced host not found"),
        "{description}"
    );
    // Defined, the host and its subsets resolve: the status is clean.
    cluster.apply(&ns_name, &reviews(&ns_name)).await.unwrap();
    eventually("the status is cleared", WAIT, || async {
        let s = status(cluster, &ns_name).await?;
        Ok(reconciled(&s).is_none() && codes(&s).is_empty())
    })
    .await
    .unwrap();

    // A CUSTOM policy whose provider MeshConfig lacks fails closed, and says so.
    cluster.apply(&ns_name, CUSTOM).await.unwrap();
    eventually("the policy says it fails closed", WAIT, || async {
        let s = status_of(cluster, &ns_name, "authorizationpolicy", "ext").await?;
        Ok(codes(&s) == ["IST0101"]
            && s["validationMessages"][0]["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("spec.provider.name: ") && d.contains("denied")))
    })
    .await
    .unwrap();
    let configz = mesh_tests::http_get(&format!("http://{}/debug/configz", pilot.http_addr()), &[])
        .await
        .unwrap()
        .body;
    let configz: serde_json::Value = serde_json::from_str(&configz).unwrap();
    let policy = configz["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "AuthorizationPolicy" && o["namespace"] == ns_name.as_str())
        .unwrap_or_else(|| panic!("no policy on /debug/configz: {configz}"));
    assert_eq!(policy["analysis"][0]["code"], "IST0101", "{policy}");
    cluster
        .kubectl_ok(["-n", &ns_name, "delete", "authorizationpolicy", "ext"])
        .await
        .unwrap();

    // And Pilot serves it.
    let configz = mesh_tests::http_get(&format!("http://{}/debug/configz", pilot.http_addr()), &[])
        .await
        .unwrap()
        .body;
    let configz: serde_json::Value = serde_json::from_str(&configz).unwrap();
    assert!(
        configz["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e.as_str().unwrap_or_default().contains(&ns_name)),
        "{configz}"
    );

    pilot.stop().await.unwrap();
    ns.cleanup().await.unwrap();
}
