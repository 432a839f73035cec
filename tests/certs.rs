//! `hub certs`: a development PKI that real TLS verification accepts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

fn cert(dir: &Path, name: &str) -> CertificateDer<'static> {
    hub::tls::load_certs(&dir.join(name)).unwrap().remove(0)
}

#[test]
fn writes_a_pki_that_verifies_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let out = common::run(
        &common::hub_bin(),
        &[
            "certs",
            "--dir",
            dir.to_str().unwrap(),
            "--node",
            "edge-1",
            "--node",
            "edge-2",
            "--host",
            "cloud.example",
            "--host",
            "10.1.2.3",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    for f in [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "node-edge-1.crt",
        "node-edge-1.key",
        "node-edge-2.crt",
        "node-edge-2.key",
    ] {
        assert!(listed.contains(f), "{f} not listed: {listed}");
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        if f.ends_with(".key") {
            assert_eq!(mode, 0o600, "{f}");
        } else {
            assert_eq!(mode, 0o644, "{f}");
        }
    }
    for (crt, key) in [
        ("server.crt", "server.key"),
        ("node-edge-1.crt", "node-edge-1.key"),
    ] {
        hub::tls::Credentials::load(&dir.join(crt), &dir.join(key)).unwrap();
    }

    let roots = std::sync::Arc::new(hub::tls::load_roots(&dir.join("ca.crt")).unwrap());
    let now = UnixTime::now();
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), hub::tls::provider())
        .build()
        .unwrap();
    for host in ["cloud.example", "10.1.2.3"] {
        server
            .verify_server_cert(
                &cert(&dir, "server.crt"),
                &[],
                &ServerName::try_from(host).unwrap(),
                &[],
                now,
            )
            .unwrap_or_else(|e| panic!("server certificate for {host}: {e}"));
    }
    assert!(
        server
            .verify_server_cert(
                &cert(&dir, "server.crt"),
                &[],
                &ServerName::try_from("localhost").unwrap(),
                &[],
                now
            )
            .is_err(),
        "only the given hosts"
    );
    // A node certificate is a client certificate, not a server one.
    assert!(
        server
            .verify_server_cert(
                &cert(&dir, "node-edge-1.crt"),
                &[],
                &ServerName::try_from("edge-1").unwrap(),
                &[],
                now
            )
            .is_err()
    );

    let client = WebPkiClientVerifier::builder_with_provider(roots, hub::tls::provider())
        .build()
        .unwrap();
    for node in ["node-edge-1.crt", "node-edge-2.crt"] {
        client
            .verify_client_cert(&cert(&dir, node), &[], now)
            .unwrap();
    }
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = dir.to_str().unwrap();
    let hub = common::hub_bin();
    assert_eq!(
        common::run(&hub, &["certs", "--dir", d]).status.code(),
        Some(0)
    );
    let before = std::fs::read(dir.join("ca.crt")).unwrap();

    let again = common::run(&hub, &["certs", "--dir", d]);
    assert_eq!(again.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.join("ca.crt")).unwrap(),
        before,
        "nothing was overwritten"
    );

    // Loosen a key's mode: --force writes it back owner-only.
    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let forced = common::run(&hub, &["certs", "--dir", d, "--force"]);
    assert_eq!(forced.status.code(), Some(0));
    assert_ne!(
        std::fs::read(dir.join("ca.crt")).unwrap(),
        before,
        "a new CA"
    );
    assert_eq!(
        std::fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        dir.join("node-edge-node.crt").exists(),
        "the default node is edge-node"
    );
}

#[test]
fn refuses_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("pki");
    for (node, why) in [
        ("../escape", "node id \"../escape\" has the character '/'"),
        (
            "..",
            "node id \"..\" must start and end with a letter or a digit",
        ),
        ("EDGE", "node id \"EDGE\" has the upper-case letter 'E'"),
    ] {
        let out = common::run(
            &common::hub_bin(),
            &["certs", "--dir", d.to_str().unwrap(), "--node", node],
        );
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{node}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!d.exists(), "nothing written");
    }
}
