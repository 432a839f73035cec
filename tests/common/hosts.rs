//! Edges with a private `/etc/hosts` (a user and mount namespace, `unshare -rm`), so that a
//! host name can resolve to addresses of the test's choosing on loopback.

use std::path::Path;
use std::process::Command;

use super::Hub;

/// Whether this machine lets an unprivileged process give a child its own `/etc/hosts`: probed
/// with `address` for a made-up name.
pub fn private_hosts_available(dir: &Path, address: &str) -> bool {
    let hosts = dir.join("probe-hosts");
    std::fs::write(&hosts, format!("{address} probe-only-name\n")).unwrap();
    Command::new("unshare")
        .args([
            "-rm",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && getent hosts probe-only-name",
        ])
        .arg(&hosts)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts the edge configured in `file` with `hosts` as its `/etc/hosts`.
pub fn start_edge_with_hosts(name: &str, file: &Path, hosts: &Path) -> Hub {
    start_edge_logging(name, file, hosts, "info")
}

/// [`start_edge_with_hosts`] with `RUST_LOG` set to `filter`.
pub fn start_edge_logging(name: &str, file: &Path, hosts: &Path, filter: &str) -> Hub {
    let mut command = Command::new("unshare");
    command
        .args([
            "-rm",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && RUST_LOG=\"$1\" && shift && export RUST_LOG && exec \"$@\"",
        ])
        .arg(hosts)
        .arg(filter)
        .arg(super::hub_bin())
        .args(["edge", "-c"])
        .arg(file);
    Hub::spawn(name, command)
}
