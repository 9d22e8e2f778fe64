//! A network namespace of its own for one agent, joined to this machine by a veth pair, with
//! nftables rules inside it that drop, reset or cut the agent's packets on command (the
//! kernel's own faults, which the user-space `fault_proxy` cannot give: lost segments that
//! TCP retransmits, RSTs the kernel sends, a route that goes silent). This kernel has no
//! netem; nftables is what TESTBED.md found working. Needs root and `nft` (Debian nftables).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// What the namespace's output chain does to the agent's packets towards the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFault {
    /// No rule: every packet passes.
    Clear,
    /// `pct` percent of the packets dropped at random (TCP retransmits them).
    Loss(u32),
    /// Every new segment answered by a TCP reset from the kernel.
    Reset,
    /// Every packet dropped: the host is gone until the rule is cleared.
    Partition,
}

pub struct NetNs {
    pub name: String,
    /// The host's address on the link, which the agent inside reaches this machine by.
    pub host_ip: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether namespaces with nftables can be made here: root and `nft`. Under CI=true their
/// absence is a failure, never a silent skip.
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        (root && nft) || std::env::var("CI").is_err(),
        "CI=true but network namespaces with nftables are unavailable (root: {root}, nft: {nft}); scripts/test.sh installs nftables"
    );
    root && nft
}

fn run(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl NetNs {
    /// A new namespace `pcfPIDxN` linked to this machine: host 10.213.S.1, agent 10.213.S.2.
    pub fn create() -> NetNs {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let name = format!("pcf{tag}");
        let (host, inner) = (format!("vh{tag}"), format!("vn{tag}"));
        // Addresses are reused 250 namespaces later, long after a trial dropped the first.
        let subnet = n % 250;
        let host_ip = format!("10.213.{subnet}.1");
        // A namespace left by an earlier, killed run of this process id goes first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs {
            name: name.clone(),
            host_ip: host_ip.clone(),
        };
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &inner,
        ]);
        run(&["ip", "link", "set", &inner, "netns", &name]);
        run(&["ip", "addr", "add", &format!("{host_ip}/30"), "dev", &host]);
        run(&["ip", "link", "set", &host, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["ip", "netns", "exec", &name];
            a.extend_from_slice(args);
            run(&a);
        };
        let agent_ip = format!("10.213.{subnet}.2/30");
        inside(&["ip", "addr", "add", &agent_ip, "dev", &inner]);
        inside(&["ip", "link", "set", &inner, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        inside(&["nft", "add", "table", "inet", "fault"]);
        inside(&[
            "nft",
            "add chain inet fault out { type filter hook output priority 0 ; }",
        ]);
        ns
    }

    /// Replaces the rule on the agent's packets towards the host.
    pub fn set(&self, fault: NetFault) {
        let mut rules = vec!["flush chain inet fault out".to_string()];
        let to_host = format!("ip daddr {}", self.host_ip);
        match fault {
            NetFault::Clear => {}
            NetFault::Loss(pct) => rules.push(format!(
                "add rule inet fault out {to_host} numgen random mod 100 < {pct} drop"
            )),
            NetFault::Reset => rules.push(format!(
                "add rule inet fault out {to_host} tcp flags != rst reject with tcp reset"
            )),
            NetFault::Partition => rules.push(format!("add rule inet fault out {to_host} drop")),
        }
        // One nft transaction: the chain is never seen half replaced.
        let script = rules.join("\n") + "\n";
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success(), "nft: {script}");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
