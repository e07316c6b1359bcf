//! Network namespaces for the fault suite: every node runs in a namespace of its own, joined
//! to a bridge, so one node can be cut off completely (a black hole: packets dropped, peers
//! time out) and healed. Needs root and iproute2/iptables; everything made here is named with
//! a run prefix and removed when the [`Netns`] is dropped, and stale runs of dead processes
//! are removed when a new one starts.

use std::process::Command;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces of one cluster.
pub struct Netns {
    prefix: String,
    subnet: u8,
    nodes: Vec<u64>,
}

impl Netns {
    /// Removes namespaces and links left by fault-suite processes that no longer run.
    pub fn remove_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix("kmf") else {
                continue;
            };
            let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(name) = line.split(": ").nth(1) else {
                    continue;
                };
                let name = name.split('@').next().unwrap_or(name);
                if let Some(rest) = name.strip_prefix("kf") {
                    let pid: Option<i32> = rest.split('x').next().and_then(|p| p.parse().ok());
                    let alive =
                        pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
                    if !alive {
                        let _ = run(&["ip", "link", "del", name]);
                    }
                }
            }
        }
    }

    /// Creates a namespace per node (addresses `10.<subnet>.0.<index+1>`) on a bridge with
    /// `10.<subnet>.0.254` in this namespace.
    pub fn create(slot: u8, nodes: &[u64]) -> Result<Netns, String> {
        let pid = std::process::id();
        let ns = Netns {
            prefix: format!("kmf{pid}-{slot}"),
            subnet: 100 + slot,
            nodes: nodes.to_vec(),
        };
        ns.setup().inspect_err(|_| ns.teardown())?;
        Ok(ns)
    }

    fn bridge(&self) -> String {
        // Interface names are at most 15 bytes.
        format!("kf{}x{}b", std::process::id(), self.subnet - 100)
    }

    fn veth(&self, i: usize) -> String {
        format!("kf{}x{}v{i}", std::process::id(), self.subnet - 100)
    }

    /// The namespace of `node`.
    pub fn name(&self, node: u64) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// The address of `node`.
    pub fn addr(&self, node: u64) -> String {
        let i = self
            .nodes
            .iter()
            .position(|n| *n == node)
            .expect("a node of this cluster");
        format!("10.{}.0.{}", self.subnet, i + 1)
    }

    fn setup(&self) -> Result<(), String> {
        let br = self.bridge();
        run(&["ip", "link", "add", &br, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.{}.0.254/24", self.subnet),
            "dev",
            &br,
        ])?;
        run(&["ip", "link", "set", &br, "up"])?;
        // Bridged packets may traverse this namespace's FORWARD chain (br_netfilter), whose
        // policy Docker sets to DROP.
        run(&[
            "iptables", "-I", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ])?;
        for (i, node) in self.nodes.iter().enumerate() {
            let ns = self.name(*node);
            let veth = self.veth(i);
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &br])?;
            run(&["ip", "link", "set", &veth, "up"])?;
            let addr = format!("{}/24", self.addr(*node));
            run(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", "eth0",
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Cuts `node` off from everyone: every packet in or out of its namespace is dropped.
    pub fn isolate(&self, node: u64) -> Result<(), String> {
        let ns = self.name(node);
        run(&[
            "ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-i", "eth0", "-j", "DROP",
        ])?;
        run(&[
            "ip", "netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-o", "eth0", "-j", "DROP",
        ])
    }

    /// Restores `node`'s links.
    pub fn heal(&self, node: u64) -> Result<(), String> {
        run(&["ip", "netns", "exec", &self.name(node), "iptables", "-F"])
    }

    fn teardown(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let _ = run(&["ip", "netns", "del", &self.name(*node)]);
            let _ = run(&["ip", "link", "del", &self.veth(i)]);
        }
        let br = self.bridge();
        let _ = run(&[
            "iptables", "-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ]);
        let _ = run(&["ip", "link", "del", &br]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown();
    }
}
