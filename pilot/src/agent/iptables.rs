//! `pilot-agent iptables`: the sidecar's traffic capture, Istio's `istio-iptables`.
//!
//! Run once per pod by the init container (root, NET_ADMIN) in the pod's network namespace.
//! The rules live in the `nat` table, in four chains:
//!
//! - `ISTIO_INBOUND` (from `PREROUTING`): inbound TCP to the captured ports goes to
//!   `ISTIO_IN_REDIRECT`, which `REDIRECT`s it to the proxy's inbound port (`-z`, 15006). The
//!   proxy's own ports (15001, 15006, 15020, 15021, 15090) and `-d` are never captured.
//! - `ISTIO_OUTPUT` (from `OUTPUT`): outbound TCP, except the excluded ports (`-o`), the
//!   proxy's own connections (owner uid `-u` / gid `-g`, 1337), traffic over `lo` and to
//!   127.0.0.1, and the excluded ranges (`-x`), goes to `ISTIO_REDIRECT` when its destination
//!   is in `-i`; `ISTIO_REDIRECT` `REDIRECT`s it to the proxy's outbound port (`-p`, 15001).
//!   One exception over `lo`, as in Istio: the proxy's connection to the pod's own address
//!   (not 127.0.0.1) is the pod calling itself through the mesh, and goes to the proxy's
//!   inbound side (`ISTIO_IN_REDIRECT`). The proxy's inbound passthrough source (127.0.0.6)
//!   is left alone.
//!
//! The rules are data: [`Options::from_args`] checks the flags ([`FlagError`] names the bad
//! one), [`rules`] turns the options into `iptables-restore` input, [`apply`] installs it with
//! `iptables-restore --noflush` (the chains are declared, hence emptied, by the input itself;
//! earlier jumps to them are removed first, so a second run replaces the first). IPv6 rules
//! (`ip6tables-restore`) are installed only when an IPv6 range is given to `-i` or `-x`.
//! Only `REDIRECT` interception is implemented; `-m TPROXY` is refused.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::Context as _;

/// Ports of the proxy itself, never captured inbound: the agent's status port (15020), the
/// health port (15021) and Envoy's Prometheus port (15090). The outbound and inbound capture
/// ports are added from `-p` and `-z`.
pub const ALWAYS_EXCLUDED_INBOUND: [u16; 3] = [15090, 15021, 15020];

/// Flags of `pilot-agent iptables`, with Istio's `istio-iptables` names.
#[derive(Debug, Clone, clap::Args)]
pub struct IptablesArgs {
    /// The proxy's outbound port: captured outbound TCP is redirected to it.
    #[arg(short = 'p', long = "envoy-port", value_name = "PORT", default_value_t = 15001,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub proxy_port: u16,

    /// The proxy's inbound port: captured inbound TCP is redirected to it.
    #[arg(short = 'z', long = "inbound-capture-port", value_name = "PORT",
          default_value_t = 15006, value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_capture_port: u16,

    /// UID of the proxy, whose own connections are never captured.
    #[arg(
        short = 'u',
        long = "proxy-uid",
        value_name = "UID",
        default_value_t = 1337
    )]
    pub proxy_uid: u32,

    /// GID of the proxy, whose own connections are never captured [default: the -u value].
    #[arg(short = 'g', long = "proxy-gid", value_name = "GID")]
    pub proxy_gid: Option<u32>,

    /// How inbound connections reach the proxy. Only REDIRECT is supported yet.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        value_name = "MODE",
        value_enum,
        ignore_case = true,
        default_value = "REDIRECT"
    )]
    pub mode: Mode,

    /// Outbound destinations to capture: comma-separated CIDRs or addresses, `*` for all, or
    /// empty for none.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        value_name = "CIDRS",
        default_value = "*"
    )]
    pub include_ranges: String,

    /// Outbound destinations never captured: comma-separated CIDRs or addresses.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        value_name = "CIDRS",
        default_value = ""
    )]
    pub exclude_ranges: String,

    /// Inbound ports to capture: comma-separated, `*` for all, or empty for none.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        value_name = "PORTS",
        default_value = "*"
    )]
    pub include_inbound_ports: String,

    /// Inbound ports never captured, besides the proxy's own (15001, 15006, 15020, 15021,
    /// 15090, or the -p and -z values): comma-separated.
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        value_name = "PORTS",
        default_value = ""
    )]
    pub exclude_inbound_ports: String,

    /// Outbound destination ports never captured: comma-separated.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        value_name = "PORTS",
        default_value = ""
    )]
    pub exclude_outbound_ports: String,

    /// Print the rules without installing them.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
}

/// How inbound connections are handed to the proxy (`-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// NAT to the proxy's inbound port (the proxy sees the original destination through
    /// SO_ORIGINAL_DST).
    #[value(name = "REDIRECT")]
    Redirect,
    /// Transparent proxying in the mangle table, keeping the source address (not supported
    /// yet).
    #[value(name = "TPROXY")]
    Tproxy,
}

/// A bad flag value, naming the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// Not a CIDR or address.
    #[error("{flag}: {value:?} is not an IP range ({reason})")]
    BadRange {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// Not a port number.
    #[error("{flag}: {value:?} is not a port number (1-65535)")]
    BadPort { flag: &'static str, value: String },
    /// `*` next to other values.
    #[error("{flag}: \"*\" means all and cannot be combined with other values (got {value:?})")]
    MixedWildcard { flag: &'static str, value: String },
    /// `*` where it means nothing.
    #[error("{flag}: \"*\" is not allowed here (got {value:?})")]
    Wildcard { flag: &'static str, value: String },
    /// A mode that is not implemented.
    #[error("{flag}: {value} interception is not supported yet; use REDIRECT (the default)")]
    Unsupported { flag: &'static str, value: String },
}

const FLAG_MODE: &str = "-m/--istio-inbound-interception-mode";
const FLAG_INCLUDE_RANGES: &str = "-i/--istio-service-cidr";
const FLAG_EXCLUDE_RANGES: &str = "-x/--istio-service-exclude-cidr";
const FLAG_INBOUND_PORTS: &str = "-b/--istio-inbound-ports";
const FLAG_EXCLUDE_INBOUND: &str = "-d/--istio-local-exclude-ports";
const FLAG_EXCLUDE_OUTBOUND: &str = "-o/--istio-local-outbound-ports-exclude";

/// What is captured: everything (`*`), or only the listed values (none when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture<T> {
    All,
    Only(Vec<T>),
}

/// An IP range: an address and a prefix length, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// An address family, with its own tables and loopback addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Checked options of `pilot-agent iptables`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub proxy_port: u16,
    pub inbound_capture_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// Outbound destinations to capture (`-i`).
    pub include_ranges: Capture<Cidr>,
    /// Outbound destinations never captured (`-x`).
    pub exclude_ranges: Vec<Cidr>,
    /// Inbound ports to capture (`-b`).
    pub inbound_ports: Capture<u16>,
    /// Inbound ports never captured (`-d`, without the proxy's own).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports never captured (`-o`).
    pub exclude_outbound_ports: Vec<u16>,
}

// === impl Options ===

impl Options {
    /// Checks the flags.
    pub fn from_args(args: &IptablesArgs) -> Result<Options, FlagError> {
        if args.mode == Mode::Tproxy {
            return Err(FlagError::Unsupported {
                flag: FLAG_MODE,
                value: "TPROXY".into(),
            });
        }
        let include_ranges = match wildcard_list(FLAG_INCLUDE_RANGES, &args.include_ranges)? {
            None => Capture::All,
            Some(items) => Capture::Only(ranges(FLAG_INCLUDE_RANGES, &items)?),
        };
        let exclude_ranges = match wildcard_list(FLAG_EXCLUDE_RANGES, &args.exclude_ranges)? {
            None => {
                return Err(FlagError::Wildcard {
                    flag: FLAG_EXCLUDE_RANGES,
                    value: args.exclude_ranges.clone(),
                });
            }
            Some(items) => ranges(FLAG_EXCLUDE_RANGES, &items)?,
        };
        let inbound_ports = match wildcard_list(FLAG_INBOUND_PORTS, &args.include_inbound_ports)? {
            None => Capture::All,
            Some(items) => Capture::Only(ports(FLAG_INBOUND_PORTS, &items)?),
        };
        Ok(Options {
            proxy_port: args.proxy_port,
            inbound_capture_port: args.inbound_capture_port,
            proxy_uid: args.proxy_uid,
            proxy_gid: args.proxy_gid.unwrap_or(args.proxy_uid),
            include_ranges,
            exclude_ranges,
            inbound_ports,
            exclude_inbound_ports: plain_ports(FLAG_EXCLUDE_INBOUND, &args.exclude_inbound_ports)?,
            exclude_outbound_ports: plain_ports(
                FLAG_EXCLUDE_OUTBOUND,
                &args.exclude_outbound_ports,
            )?,
        })
    }

    /// The families to install rules for: IPv4 always, IPv6 when a range of `-i` or `-x` is
    /// IPv6.
    pub fn families(&self) -> Vec<Family> {
        let mut all = self.exclude_ranges.iter().collect::<Vec<_>>();
        if let Capture::Only(r) = &self.include_ranges {
            all.extend(r);
        }
        if all.iter().any(|c| c.family() == Family::V6) {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    /// Inbound ports never captured: the proxy's own, then `-d`, without duplicates.
    pub fn inbound_excluded(&self) -> Vec<u16> {
        let mut ports = vec![self.proxy_port, self.inbound_capture_port];
        ports.extend(ALWAYS_EXCLUDED_INBOUND);
        ports.extend(&self.exclude_inbound_ports);
        dedup(ports)
    }
}

/// Splits a comma-separated list: `None` for `*` alone; empty items are skipped.
fn wildcard_list(flag: &'static str, value: &str) -> Result<Option<Vec<String>>, FlagError> {
    let items: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if items.iter().any(|s| s == "*") {
        if items.len() == 1 {
            return Ok(None);
        }
        return Err(FlagError::MixedWildcard {
            flag,
            value: value.into(),
        });
    }
    Ok(Some(items))
}

fn ranges(flag: &'static str, items: &[String]) -> Result<Vec<Cidr>, FlagError> {
    let parsed = items
        .iter()
        .map(|s| {
            Cidr::parse(s).map_err(|reason| FlagError::BadRange {
                flag,
                value: s.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(dedup(parsed))
}

fn ports(flag: &'static str, items: &[String]) -> Result<Vec<u16>, FlagError> {
    let parsed = items
        .iter()
        .map(|s| match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(FlagError::BadPort {
                flag,
                value: s.clone(),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(dedup(parsed))
}

/// A port list where `*` means nothing.
fn plain_ports(flag: &'static str, value: &str) -> Result<Vec<u16>, FlagError> {
    match wildcard_list(flag, value)? {
        Some(items) => ports(flag, &items),
        None => Err(FlagError::Wildcard {
            flag,
            value: value.into(),
        }),
    }
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

// === impl Cidr ===

impl Cidr {
    /// Parses `ADDR/LEN` or a bare address (a host range); host bits are cleared.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("prefix length {p:?} is not 0 to {max}")),
            },
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }

    /// The range's family.
    pub fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// === impl Family ===

impl Family {
    /// The loopback address the rules leave alone.
    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// The source address of the proxy's inbound passthrough connections to the app.
    fn passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }

    /// The iptables binary of this family.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The iptables-restore binary of this family.
    pub fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// The jumps from the built-in chains into ours, as `iptables -t nat -D` arguments (removed
/// before installing, so that a second run does not add them twice).
const JUMPS: [[&str; 6]; 2] = [
    ["PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND", ""],
    ["OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT", ""],
];

/// The `iptables-restore --noflush` input of `opts` for `family`: the nat table's four
/// chains, declared (hence emptied) and filled.
pub fn rules(opts: &Options, family: Family) -> String {
    let mut r = Rules::default();
    r.line(format!(
        "# pilot-agent iptables: traffic capture for the sidecar ({}-restore --noflush)",
        family.iptables()
    ));
    r.line("*nat");
    for chain in [
        "ISTIO_INBOUND",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
        "ISTIO_REDIRECT",
    ] {
        r.line(format!(":{chain} - [0:0]"));
    }

    // Inbound: PREROUTING -> ISTIO_INBOUND -> ISTIO_IN_REDIRECT -> the proxy's inbound port.
    let excluded = opts.inbound_excluded();
    match &opts.inbound_ports {
        Capture::Only(ports) if ports.iter().all(|p| excluded.contains(p)) => {}
        _ => r.line("-A PREROUTING -p tcp -j ISTIO_INBOUND"),
    }
    match &opts.inbound_ports {
        Capture::All => {
            for port in &excluded {
                r.line(format!("-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
            }
            r.line("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT");
        }
        Capture::Only(ports) => {
            for port in ports.iter().filter(|p| !excluded.contains(p)) {
                r.line(format!(
                    "-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT"
                ));
            }
        }
    }
    r.line(format!(
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        opts.inbound_capture_port
    ));

    // Outbound: OUTPUT -> ISTIO_OUTPUT -> ISTIO_REDIRECT -> the proxy's outbound port.
    r.line("-A OUTPUT -p tcp -j ISTIO_OUTPUT");
    for port in &opts.exclude_outbound_ports {
        r.line(format!("-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN"));
    }
    let localhost = family.localhost();
    r.line(format!(
        "-A ISTIO_OUTPUT -s {} -o lo -j RETURN",
        family.passthrough_source()
    ));
    for (kind, id) in [("uid", opts.proxy_uid), ("gid", opts.proxy_gid)] {
        // The proxy calling the pod's own address over lo: the pod calling itself through
        // the mesh, handled by the proxy's inbound side.
        r.line(format!(
            "-A ISTIO_OUTPUT ! -d {localhost} -o lo -m owner --{kind}-owner {id} -j ISTIO_IN_REDIRECT"
        ));
        // The app over lo (to itself, not through the proxy): left alone.
        r.line(format!(
            "-A ISTIO_OUTPUT -o lo -m owner ! --{kind}-owner {id} -j RETURN"
        ));
        // The proxy's own connections: left alone.
        r.line(format!(
            "-A ISTIO_OUTPUT -m owner --{kind}-owner {id} -j RETURN"
        ));
    }
    r.line(format!("-A ISTIO_OUTPUT -d {localhost} -j RETURN"));
    for cidr in opts.exclude_ranges.iter().filter(|c| c.family() == family) {
        r.line(format!("-A ISTIO_OUTPUT -d {cidr} -j RETURN"));
    }
    match &opts.include_ranges {
        Capture::All => r.line("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
        Capture::Only(ranges) => {
            for cidr in ranges.iter().filter(|c| c.family() == family) {
                r.line(format!("-A ISTIO_OUTPUT -d {cidr} -j ISTIO_REDIRECT"));
            }
        }
    }
    r.line(format!(
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        opts.proxy_port
    ));
    r.line("COMMIT");
    r.text
}

/// iptables-restore input, a line at a time.
#[derive(Debug, Default)]
struct Rules {
    text: String,
}

// === impl Rules ===

impl Rules {
    fn line(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "{}", line.as_ref());
    }
}

/// Installs `text` (from [`rules`]) for `family`: removes earlier jumps into our chains, then
/// runs `iptables-restore --noflush`. Fails with iptables' own message.
pub fn apply(text: &str, family: Family) -> anyhow::Result<()> {
    let iptables = family.iptables();
    for jump in JUMPS {
        let args: Vec<&str> = jump.into_iter().filter(|a| !a.is_empty()).collect();
        // Until there is none left (a few at most; bounded all the same).
        for _ in 0..16 {
            let removed = Command::new(iptables)
                .args(["-t", "nat", "-D"])
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("cannot run {iptables} (is iptables installed?)"))?;
            if !removed.success() {
                break;
            }
        }
    }

    let restore = family.restore();
    let mut child = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {restore} (is iptables installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write the rules to {restore}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("{restore} did not finish"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{restore} --noflush failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `pilot-agent iptables`: checks the flags, prints the rules, and installs them unless
/// `--dry-run`.
pub fn run(args: &IptablesArgs) -> anyhow::Result<()> {
    let opts = Options::from_args(args)?;
    let families = opts.families();
    if !families.contains(&Family::V6) {
        tracing::info!(
            "no IPv6 range in -i or -x: IPv6 traffic is not captured (ip6tables untouched)"
        );
    }
    let mut stdout = std::io::stdout().lock();
    for family in families {
        let text = rules(&opts, family);
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        if !args.dry_run {
            apply(&text, family)?;
            tracing::info!("installed the {} rules above", family.iptables());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The subcommand's flags as the binary parses them.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: IptablesArgs,
    }

    fn opts(flags: &[&str]) -> Result<Options, FlagError> {
        let cli =
            Cli::try_parse_from(std::iter::once("iptables").chain(flags.iter().copied())).unwrap();
        Options::from_args(&cli.args)
    }

    fn v4(flags: &[&str]) -> String {
        rules(&opts(flags).unwrap(), Family::V4)
    }

    /// The rule lines (not the comment, table and chain declarations).
    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.starts_with("-A ")).collect()
    }

    #[test]
    fn default_rules() {
        let expected = "\
# pilot-agent iptables: traffic capture for the sidecar (iptables-restore --noflush)
*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15001 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15006 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";
        assert_eq!(v4(&[]), expected);
        let o = opts(&[]).unwrap();
        assert_eq!(o.families(), vec![Family::V4]);
        assert_eq!(o.proxy_gid, 1337);
    }

    #[test]
    fn ports_uid_and_gid_are_the_flags() {
        let text = v4(&["-p", "16001", "-z", "16006", "-u", "1000", "-g", "2000"]);
        let l = lines(&text);
        assert!(l.contains(&"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001"));
        assert!(l.contains(&"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006"));
        assert!(l.contains(&"-A ISTIO_INBOUND -p tcp --dport 16001 -j RETURN"));
        assert!(l.contains(&"-A ISTIO_INBOUND -p tcp --dport 16006 -j RETURN"));
        assert!(l.contains(&"-A ISTIO_OUTPUT -m owner --uid-owner 1000 -j RETURN"));
        assert!(l.contains(&"-A ISTIO_OUTPUT -m owner --gid-owner 2000 -j RETURN"));
        assert!(!text.contains("1337"), "{text}");
    }

    #[test]
    fn include_and_exclude_ranges() {
        let text = v4(&[
            "-i",
            "10.0.0.0/8, 172.16.0.1/12",
            "-x",
            "10.96.0.10,10.1.0.0/16",
        ]);
        let out: Vec<_> = lines(&text)
            .into_iter()
            .filter(|l| l.starts_with("-A ISTIO_OUTPUT -d"))
            .collect();
        assert_eq!(
            out,
            [
                "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A ISTIO_OUTPUT -d 10.96.0.10/32 -j RETURN",
                "-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN",
                "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
                // host bits cleared
                "-A ISTIO_OUTPUT -d 172.16.0.0/12 -j ISTIO_REDIRECT",
            ]
        );
        assert!(
            !text.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
            "{text}"
        );

        // No outbound capture at all, but the owner and lo rules stay.
        let none = v4(&["-i", ""]);
        assert!(!none.contains("-j ISTIO_REDIRECT\n"), "{none}");
        assert!(none.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT"), "{none}");
    }

    #[test]
    fn ipv6_ranges_get_ip6tables_rules() {
        let o = opts(&["-i", "10.0.0.0/8,fd00::/8", "-x", "fd00::10"]).unwrap();
        assert_eq!(o.families(), vec![Family::V4, Family::V6]);
        let v4 = rules(&o, Family::V4);
        assert!(!v4.contains("fd00"), "{v4}");
        let v6 = rules(&o, Family::V6);
        assert!(v6.contains("(ip6tables-restore --noflush)"), "{v6}");
        assert!(
            v6.contains("-A ISTIO_OUTPUT -d fd00::10/128 -j RETURN"),
            "{v6}"
        );
        assert!(
            v6.contains("-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT"),
            "{v6}"
        );
        assert!(v6.contains("-A ISTIO_OUTPUT -d ::1/128 -j RETURN"), "{v6}");
        assert!(
            v6.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"),
            "{v6}"
        );
        assert!(!v6.contains("10.0.0.0"), "{v6}");
    }

    #[test]
    fn inbound_ports_list_vs_all() {
        let all = v4(&["-b", "*", "-d", "22,15021"]);
        let inbound: Vec<_> = lines(&all)
            .into_iter()
            .filter(|l| l.starts_with("-A ISTIO_INBOUND"))
            .collect();
        assert_eq!(
            inbound,
            [
                "-A ISTIO_INBOUND -p tcp --dport 15001 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15006 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            ]
        );

        // A list captures only its ports; the proxy's own and -d are never captured.
        let list = v4(&["-b", "9080,8080,15090,22,9080", "-d", "22"]);
        let inbound: Vec<_> = lines(&list)
            .into_iter()
            .filter(|l| l.starts_with("-A ISTIO_INBOUND") || l.starts_with("-A PREROUTING"))
            .collect();
        assert_eq!(
            inbound,
            [
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT",
            ]
        );

        // None: no jump from PREROUTING at all.
        let none = v4(&["-b", ""]);
        assert!(!none.contains("PREROUTING"), "{none}");
        assert!(!none.contains("-A ISTIO_INBOUND"), "{none}");
    }

    #[test]
    fn excluded_outbound_ports_come_first() {
        let text = v4(&["-o", "3306, 6379"]);
        let out: Vec<_> = lines(&text)
            .into_iter()
            .filter(|l| l.starts_with("-A ISTIO_OUTPUT"))
            .take(3)
            .collect();
        assert_eq!(
            out,
            [
                "-A ISTIO_OUTPUT -p tcp --dport 3306 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp --dport 6379 -j RETURN",
                "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
            ]
        );
    }

    #[test]
    fn bad_input_is_refused_naming_the_flag() {
        let err = opts(&["-i", "10.0.0.0/33"]).unwrap_err();
        assert!(matches!(
            err,
            FlagError::BadRange {
                flag: FLAG_INCLUDE_RANGES,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("-i/--istio-service-cidr") && msg.contains("10.0.0.0/33"),
            "{msg}"
        );

        let err = opts(&["-x", "10.0.0.0/8,not-an-ip"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("-x/--istio-service-exclude-cidr: \"not-an-ip\""),
            "{err}"
        );
        assert!(matches!(
            opts(&["-x", "*"]),
            Err(FlagError::Wildcard { .. })
        ));
        assert!(matches!(
            opts(&["-i", "*,10.0.0.0/8"]),
            Err(FlagError::MixedWildcard { .. })
        ));

        let err = opts(&["-b", "80,http"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "-b/--istio-inbound-ports: \"http\" is not a port number (1-65535)"
        );
        assert!(matches!(
            opts(&["-d", "0"]),
            Err(FlagError::BadPort {
                flag: FLAG_EXCLUDE_INBOUND,
                ..
            })
        ));
        assert!(matches!(
            opts(&["-o", "70000"]),
            Err(FlagError::BadPort {
                flag: FLAG_EXCLUDE_OUTBOUND,
                ..
            })
        ));

        let err = opts(&["-m", "TPROXY"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("TPROXY interception is not supported yet"),
            "{err}"
        );
        assert_eq!(opts(&["-m", "redirect"]).unwrap(), opts(&[]).unwrap());

        // clap refuses what is not even the right type.
        assert!(Cli::try_parse_from(["iptables", "-p", "0"]).is_err());
        assert!(Cli::try_parse_from(["iptables", "-u", "nobody"]).is_err());
        assert!(Cli::try_parse_from(["iptables", "-m", "NAT"]).is_err());
    }
}
