//! Helpers shared by the integration tests: a generated PKI and the built binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `hub` binary cargo built for these tests.
pub fn hub_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hub"))
}

/// Runs the binary at `bin` with `args` and returns what it did.
pub fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the hub binary")
}

/// A fresh development PKI (nodes `edge-node` and `other-node`) written by `hub::pki`.
pub fn dev_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    hub::pki::write(&hub::pki::PkiOptions {
        dir: pki.clone(),
        nodes: vec!["edge-node".into(), "other-node".into()],
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        days: 1,
        force: false,
    })
    .expect("write the dev PKI");
    pki
}

/// Lays a dev PKI out the way KubeEdge does under `root` (standing in for `/etc/kubeedge/`):
/// `ca/rootCA.crt`, `certs/edge.crt`, `certs/edge.key`, plus `certs/other.key` (a key that
/// belongs to no certificate there) and `certs/garbage.pem` (not PEM at all).
pub fn kubeedge_layout(root: &Path) {
    let pki = dev_pki(root);
    std::fs::create_dir_all(root.join("ca")).unwrap();
    std::fs::create_dir_all(root.join("certs")).unwrap();
    let copy = |from: &str, to: &str| std::fs::copy(pki.join(from), root.join(to)).unwrap();
    copy("ca.crt", "ca/rootCA.crt");
    copy("node-edge-node.crt", "certs/edge.crt");
    copy("node-edge-node.key", "certs/edge.key");
    copy("node-other-node.key", "certs/other.key");
    std::fs::write(root.join("certs/garbage.pem"), b"\x00\x01not pem at all\n").unwrap();
}

/// `text` with KubeEdge's `/etc/kubeedge/` replaced by `root`.
pub fn relocate(text: &str, root: &Path) -> String {
    text.replace("/etc/kubeedge/", &format!("{}/", root.display()))
}
