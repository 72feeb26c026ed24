//! The directory backend against a real, watched directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::{Kind, Spec};
use mesh_runtime::config::{Change, DirectoryOptions, DirectoryStore, LoadError};
use mesh_runtime::{ConfigKey, ConfigStore, Shutdown, Snapshot};
use tokio::sync::watch;

fn service_entry(name: &str, host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts: [{host}]\n  ports:\n  - number: 80\n    name: http\n"
    )
}

fn key(name: &str) -> ConfigKey {
    ConfigKey::new(Kind::ServiceEntry, "default", name)
}

fn hosts(snap: &Snapshot, name: &str) -> Option<Vec<String>> {
    match &snap.get(&key(name))?.spec {
        Spec::ServiceEntry(se) => Some(se.hosts.clone()),
        _ => None,
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    // Write then rename, as editors and ConfigMap updates do, so the store never reads half.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// Waits (up to 5 s) for a snapshot that satisfies `pred`.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let snap = rx.borrow_and_update().clone();
            if pred(&snap) {
                return snap;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    match res {
        Ok(s) => s,
        Err(_) => panic!("timed out waiting for {what}; last: {:?}", rx.borrow()),
    }
}

fn start(dir: &Path) -> (DirectoryStore, Shutdown) {
    let shutdown = Shutdown::new();
    let store = DirectoryStore::start(dir, DirectoryOptions::default(), shutdown.clone()).unwrap();
    (store, shutdown)
}

#[tokio::test]
async fn add_edit_remove_reach_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service_entry("a", "a.example.com"));
    let (store, shutdown) = start(dir.path());
    let mut rx = store.subscribe();
    let first = rx.borrow_and_update().clone();
    assert!(first.is_synced());
    assert_eq!(hosts(&first, "a"), Some(vec!["a.example.com".into()]));

    // A new file.
    write(dir.path(), "b.yaml", &service_entry("b", "b.example.com"));
    let second = wait_for(&mut rx, "b added", |s| s.get(&key("b")).is_some()).await;
    assert_eq!(second.diff(&first), vec![Change::Added(key("b"))]);

    // An edit.
    write(dir.path(), "a.yaml", &service_entry("a", "a2.example.com"));
    let third = wait_for(&mut rx, "a edited", |s| {
        hosts(s, "a") == Some(vec!["a2.example.com".into()])
    })
    .await;
    assert_eq!(third.diff(&second), vec![Change::Updated(key("a"))]);
    assert!(third.revision() > second.revision());

    // A removal.
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let fourth = wait_for(&mut rx, "b removed", |s| s.get(&key("b")).is_none()).await;
    assert_eq!(fourth.diff(&third), vec![Change::Removed(key("b"))]);
    shutdown.cancel();
}

#[tokio::test]
async fn broken_document_is_reported_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}---\napiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: broken\n---\n{}",
        service_entry("one", "one.example.com"),
        service_entry("three", "three.example.com"),
    );
    write(dir.path(), "mesh.yaml", &text);
    write(
        dir.path(),
        "other.yaml",
        &service_entry("other", "other.example.com"),
    );
    let (store, shutdown) = start(dir.path());
    let snap = store.subscribe().borrow().clone();
    assert!(snap.get(&key("one")).is_some());
    assert!(snap.get(&key("three")).is_some());
    assert!(snap.get(&key("other")).is_some());
    assert_eq!(snap.errors().len(), 1, "{:?}", snap.errors());
    match &snap.errors()[0] {
        LoadError::Document { path, document, .. } => {
            assert!(path.ends_with("mesh.yaml"));
            assert_eq!(*document, 2);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let msg = snap.errors()[0].to_string();
    assert!(msg.contains("mesh.yaml document 2: line "), "{msg}");
    shutdown.cancel();
}

#[tokio::test]
async fn invalid_edit_keeps_last_good_object() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service_entry("a", "a.example.com"));
    let (store, shutdown) = start(dir.path());
    let mut rx = store.subscribe();
    let first = rx.borrow_and_update().clone();

    // The spec becomes invalid: the old object keeps serving, the error names the field.
    let bad = service_entry("a", "a2.example.com").replace("number: 80", "number: eighty");
    write(dir.path(), "a.yaml", &bad);
    let snap = wait_for(&mut rx, "error reported", |s| !s.errors().is_empty()).await;
    assert_eq!(hosts(&snap, "a"), Some(vec!["a.example.com".into()]));
    assert!(snap.diff(&first).is_empty());
    let msg = snap.errors()[0].to_string();
    assert!(msg.contains("a.yaml document 1"), "{msg}");
    assert!(
        msg.contains("ServiceEntry.networking.istio.io default/a"),
        "{msg}"
    );
    assert!(msg.contains("spec.ports[0].number"), "{msg}");

    // The document stops being YAML at all: still the last good object.
    write(dir.path(), "a.yaml", "apiVersion: [unclosed\n");
    let snap = wait_for(&mut rx, "syntax error reported", |s| {
        s.errors()
            .iter()
            .any(|e| matches!(e, LoadError::Document { .. }))
    })
    .await;
    assert_eq!(hosts(&snap, "a"), Some(vec!["a.example.com".into()]));

    // Fixed: the new version replaces it and the error clears.
    write(dir.path(), "a.yaml", &service_entry("a", "a3.example.com"));
    let snap = wait_for(&mut rx, "fixed", |s| {
        hosts(s, "a") == Some(vec!["a3.example.com".into()])
    })
    .await;
    assert!(snap.errors().is_empty());
    shutdown.cancel();
}

#[tokio::test]
async fn missing_directory_is_an_error() {
    let err = DirectoryStore::start(
        "/nonexistent/config/dir",
        DirectoryOptions::default(),
        Shutdown::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/config/dir"), "{err}");
}

/// Refuses ServiceEntries whose first host is `bad.example.com`.
struct NoBadHosts;

impl mesh_runtime::config::Validator for NoBadHosts {
    fn validate(&self, obj: &mesh_runtime::ConfigObject) -> Vec<mesh_proto::SpecError> {
        match &obj.spec {
            Spec::ServiceEntry(se)
                if se.hosts.first().map(String::as_str) == Some("bad.example.com") =>
            {
                vec![mesh_proto::SpecError::Invalid {
                    path: "spec.hosts[0]".into(),
                    message: "bad host".into(),
                }]
            }
            _ => Vec::new(),
        }
    }
}

#[tokio::test]
async fn a_validator_refuses_objects_and_the_last_good_one_serves() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service_entry("a", "a.example.com"));
    let shutdown = Shutdown::new();
    let options = DirectoryOptions {
        validator: Some(Arc::new(NoBadHosts)),
        ..Default::default()
    };
    let store = DirectoryStore::start(dir.path(), options, shutdown.clone()).unwrap();
    let mut rx = store.subscribe();
    write(dir.path(), "a.yaml", &service_entry("a", "bad.example.com"));
    let snap = wait_for(&mut rx, "refusal", |s| !s.errors().is_empty()).await;
    assert_eq!(hosts(&snap, "a"), Some(vec!["a.example.com".into()]));
    let msg = snap.errors()[0].to_string();
    assert!(msg.contains("spec.hosts[0]: bad host"), "{msg}");
    shutdown.cancel();
}
