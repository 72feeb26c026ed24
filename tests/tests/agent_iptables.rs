//! `pilot-agent iptables` in a real network namespace (a "pod", `agt-<pid>`, joined to the host
//! by a veth pair; deleted on drop): the rules it prints are the ones `iptables-save -t nat`
//! shows installed, and real connections go where they say.
//!
//! In the pod, `sample-upstream` plays the proxy: `proxy` on 15001 (outbound capture),
//! `inbound` on 15006 (inbound capture), and the application's `app-8080` and `app-9090`.
//! On the host, upstreams answer `outside-*`. So a body tells which way a connection went:
//!
//! - uid 1000 (the app) to a host address: captured to 15001 (`proxy`), except an excluded
//!   range (`-x`) or an excluded port (`-o`), or, with `-i`, an address outside the included
//!   ranges; uid 1337 (the proxy, `-u`) is never captured.
//! - the host to the pod's ports: captured to 15006 (`inbound`), except an excluded port
//!   (`-d`), and with `-b PORTS` only those ports.
//! - Run again, the command replaces its rules (as Istio's `istio-iptables` does with its
//!   own chains): the jumps from `PREROUTING` and `OUTPUT` are not doubled and the old
//!   chain contents are gone.
//!
//! Needs root, `ip netns`, `iptables-restore`, `iptables-save`, `setpriv` and `curl`; skipped
//! with the reason printed otherwise.

use std::time::{Duration, Instant};

use mesh_tests::netns::{Netns, unsupported};
use mesh_tests::{Upstream, free_port, http_get, workspace_binary};

const WAIT: Duration = Duration::from_secs(20);

/// `iptables-save -t nat` in the pod, our chains' lines only, with iptables' own `-m tcp`
/// dropped so they read like the printed rules.
fn installed(pod: &Netns) -> Vec<String> {
    pod.exec_ok(&["iptables-save", "-t", "nat"])
        .lines()
        .filter(|l| l.contains("ISTIO_"))
        .map(|l| l.replace(" -m tcp", ""))
        .collect()
}

/// The printed rules' chain declarations and appends.
fn printed(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter(|l| l.starts_with("-A ") || l.starts_with(":ISTIO_"))
        .map(str::to_string)
        .collect()
}

/// Declarations as iptables-save writes them: `:CHAIN - [packets:bytes]`.
fn chain_names(lines: &[String]) -> Vec<String> {
    let mut names: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn appends(lines: &[String]) -> Vec<String> {
    let mut a: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("-A "))
        .cloned()
        .collect();
    a.sort();
    a
}

#[tokio::test]
async fn capture_rules_in_a_network_namespace_redirect_what_they_say() {
    if let Some(why) = unsupported(&["iptables-restore", "iptables-save", "setpriv", "curl"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let (agent_bin, app_bin) = tokio::task::spawn_blocking(|| {
        (
            workspace_binary("pilot-agent").unwrap(),
            workspace_binary("sample-upstream").unwrap(),
        )
    })
    .await
    .unwrap();
    let agent = agent_bin.display().to_string();
    let pod = Netns::create("agt", "10.217");
    let excluded_ip = pod.add_host_ip(3);

    // The host: one upstream per way out.
    let host: std::net::IpAddr = pod.host_ip.parse().unwrap();
    let outside = Upstream::start("outside", (host, 0).into()).await.unwrap();
    let excluded_port = free_port();
    let outside_port = Upstream::start("outside-port", (host, excluded_port).into())
        .await
        .unwrap();
    let other: std::net::IpAddr = excluded_ip.parse().unwrap();
    let outside_range = Upstream::start("outside-range", (other, 0).into())
        .await
        .unwrap();

    // The pod: the stand-in proxy and application, as root, up before any rule.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut servers = pod
        .command(
            0,
            &[
                &app_bin.display().to_string(),
                "proxy=0.0.0.0:15001",
                "inbound=0.0.0.0:15006",
                "app-8080=0.0.0.0:8080",
                "app-9090=0.0.0.0:9090",
            ],
        )
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    for port in [15001, 15006, 8080, 9090] {
        let url = format!("http://{}:{port}/", pod.ip);
        while http_get(&url, &[]).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "sample-upstream in the pod: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let to = |u: &Upstream| format!("http://{}/", u.addr());
    // Without rules nothing is captured.
    assert_eq!(pod.curl(1000, &to(&outside)).await.unwrap(), "outside");

    let x = format!("{excluded_ip}/32");
    let o = excluded_port.to_string();
    let flags = [
        "iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b",
        "*", "-x", &x, "-o", &o, "-d", "9090",
    ];
    let mut argv = vec![agent.as_str()];
    argv.extend(flags);
    let rules = pod.exec_ok(&argv);

    // What it printed is what is installed.
    let want = printed(&rules);
    let got = installed(&pod);
    assert_eq!(
        chain_names(&want),
        [
            "ISTIO_INBOUND",
            "ISTIO_IN_REDIRECT",
            "ISTIO_OUTPUT",
            "ISTIO_REDIRECT"
        ]
    );
    assert_eq!(chain_names(&got), chain_names(&want), "{got:#?}");
    assert_eq!(appends(&got), appends(&want), "printed:\n{rules}");
    for line in [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp --dport 9090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        &format!("-A ISTIO_OUTPUT -p tcp --dport {excluded_port} -j RETURN"),
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        &format!("-A ISTIO_OUTPUT -d {excluded_ip}/32 -j RETURN"),
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(got.contains(&line.to_string()), "{line} not in {got:#?}");
    }

    // Outbound.
    assert_eq!(pod.curl(1000, &to(&outside)).await.unwrap(), "proxy");
    assert_eq!(pod.curl(1337, &to(&outside)).await.unwrap(), "outside");
    assert_eq!(
        pod.curl(1000, &to(&outside_range)).await.unwrap(),
        "outside-range",
        "-x"
    );
    assert_eq!(
        pod.curl(1000, &to(&outside_port)).await.unwrap(),
        "outside-port",
        "-o"
    );
    assert_eq!(outside.requests(), 2, "the captured one never left the pod");
    // The app calling itself over lo is left alone.
    assert_eq!(
        pod.curl(1000, "http://127.0.0.1:8080/").await.unwrap(),
        "app-8080"
    );

    // Inbound, from the host.
    let inbound = |port: u16| format!("http://{}:{port}/", pod.ip);
    assert_eq!(
        http_get(&inbound(8080), &[]).await.unwrap().body,
        "inbound\n"
    );
    assert_eq!(
        http_get(&inbound(9090), &[]).await.unwrap().body,
        "app-9090\n",
        "-d"
    );
    assert_eq!(
        http_get(&inbound(15001), &[]).await.unwrap().body,
        "proxy\n",
        "the proxy's own ports are never captured"
    );

    // Again, the same: the rules replace themselves, nothing doubled.
    let again = pod.exec_ok(&argv);
    assert_eq!(printed(&again), want);
    let after = installed(&pod);
    assert_eq!(
        appends(&after),
        appends(&got),
        "a second run changed the rules"
    );
    let jumps = after
        .iter()
        .filter(|l| l.as_str() == "-A OUTPUT -p tcp -j ISTIO_OUTPUT")
        .count();
    assert_eq!(jumps, 1);
    assert_eq!(pod.curl(1000, &to(&outside)).await.unwrap(), "proxy");

    // Different flags replace the old rules: only this host address captured (-i), only
    // port 9090 inbound (-b).
    let i = format!("{}/32", pod.host_ip);
    let narrow = [
        agent.as_str(),
        "iptables",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-i",
        &i,
        "-b",
        "9090",
    ];
    let rules = pod.exec_ok(&narrow);
    let now = installed(&pod);
    assert_eq!(appends(&now), appends(&printed(&rules)));
    assert!(
        !now.iter().any(|l| l.contains(&excluded_ip)),
        "the old -x rule is gone: {now:#?}"
    );
    assert!(now.contains(&format!("-A ISTIO_OUTPUT -d {i} -j ISTIO_REDIRECT")));
    assert_eq!(pod.curl(1000, &to(&outside)).await.unwrap(), "proxy");
    assert_eq!(
        pod.curl(1000, &to(&outside_range)).await.unwrap(),
        "outside-range",
        "not in -i"
    );
    assert_eq!(
        pod.curl(1000, &to(&outside_port)).await.unwrap(),
        "proxy",
        "-o no longer given"
    );
    assert_eq!(
        http_get(&inbound(8080), &[]).await.unwrap().body,
        "app-8080\n",
        "not in -b"
    );
    assert_eq!(
        http_get(&inbound(9090), &[]).await.unwrap().body,
        "inbound\n"
    );

    // A bad flag installs nothing and says which.
    let (ok, _, err) = pod.exec(&[agent.as_str(), "iptables", "-m", "TPROXY"]);
    assert!(!ok);
    assert!(err.contains("TPROXY"), "{err}");
    assert_eq!(installed(&pod), now);
    // --dry-run prints without installing.
    let (ok, out, _) = pod.exec(&[agent.as_str(), "iptables", "-n", "-i", "10.0.0.0/8"]);
    assert!(ok && out.contains("-d 10.0.0.0/8"), "{out}");
    assert_eq!(installed(&pod), now);

    let _ = servers.start_kill();
    let _ = servers.wait().await;
    drop(pod);
    for u in [outside, outside_port, outside_range] {
        u.stop().await;
    }
}
