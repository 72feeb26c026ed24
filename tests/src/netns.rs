//! A "pod" for tests that need their own network stack: a network namespace joined to the
//! host by a veth pair (host `BASE.X.1`, pod `BASE.X.2`, the pod's default route through the
//! host), with commands run inside it as root or as another uid (`setpriv`). Deleted on drop,
//! a failing test included.
//!
//! Needs root and `ip`; [`unsupported`] says why a machine cannot run such a test.

use std::process::Stdio;

use tokio::process::Command;

/// Why this machine cannot run a network namespace test needing `tools`, if it cannot: not
/// root, a tool missing, or `ip netns` not working.
pub fn unsupported(tools: &[&str]) -> Option<String> {
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
    for tool in std::iter::once(&"ip").chain(tools) {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !netns {
        return Some("`ip netns` does not work here".into());
    }
    None
}

/// Runs a command to completion; panics with its output when it fails.
pub fn run(args: &[&str]) -> String {
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

/// A network namespace and the veth pair joining it to the host, removed on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub host_link: String,
    /// The host's address on the link (`BASE.X.1`).
    pub host_ip: String,
    /// The namespace's address (`BASE.X.2`, on its `eth0`).
    pub ip: String,
    /// The `/24` both are in, `BASE.X`.
    pub subnet: String,
}

// === impl Netns ===

impl Netns {
    /// Creates namespace `PREFIX-PID` with links `PREFIX-PID-h`/`-p` (keep `prefix` short:
    /// link names have at most 15 characters) in `BASE.X.0/24` (`base` e.g. `10.217`, X
    /// from the pid). Panics when the subnet is in use already.
    pub fn create(prefix: &str, base: &str) -> Netns {
        let pid = std::process::id();
        let x = 20 + pid % 200;
        let subnet = format!("{base}.{x}");
        let ns = Netns {
            name: format!("{prefix}-{pid}"),
            host_link: format!("{prefix}-{pid}-h"),
            host_ip: format!("{subnet}.1"),
            ip: format!("{subnet}.2"),
            subnet: subnet.clone(),
        };
        let addresses = run(&["ip", "-4", "addr"]);
        assert!(
            !addresses.contains(&format!("{subnet}.")),
            "{subnet}.0/24 is already in use on this host"
        );
        run(&["ip", "netns", "add", &ns.name]);
        // From here on, drop removes what exists.
        let peer = format!("{prefix}-{pid}-p");
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        run(&["ip", "link", "set", &peer, "netns", &ns.name]);
        let host_cidr = format!("{}/24", ns.host_ip);
        run(&["ip", "addr", "add", &host_cidr, "dev", &ns.host_link]);
        run(&["ip", "link", "set", &ns.host_link, "up"]);
        let cidr = format!("{}/24", ns.ip);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns.exec_ok(&["ip", "link", "set", &peer, "name", "eth0"]);
        ns.exec_ok(&["ip", "addr", "add", &cidr, "dev", "eth0"]);
        ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        ns.exec_ok(&["ip", "route", "add", "default", "via", &ns.host_ip]);
        ns
    }

    /// Adds another host address on the link (`BASE.X.N`), returned.
    pub fn add_host_ip(&self, n: u8) -> String {
        let ip = format!("{}.{n}", self.subnet);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &self.host_link,
        ]);
        ip
    }

    /// `ip netns exec NS args...` as root, to completion; panics when it fails.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// `ip netns exec NS args...` as root, to completion: whether it succeeded, and its
    /// stdout and stderr.
    pub fn exec(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {args:?}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A command inside the namespace as `uid` (and the same gid, no other groups), not
    /// started; killed if dropped while running.
    pub fn command(&self, uid: u32, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// A plain `curl` GET from inside the namespace as `uid`: `Ok(body, trimmed)` on a 2xx
    /// answer, `Err(curl's error)` otherwise.
    pub async fn curl(&self, uid: u32, url: &str) -> Result<String, String> {
        let out = self
            .command(uid, &["curl", "-fsS", "-m", "5", "--noproxy", "*", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "curl {url} as uid {uid}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its end of the veth pair, and with it the host's.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_link])
            .stderr(Stdio::null())
            .status();
    }
}
