//! TLS refusals on both transports: expired and not yet valid client certificates, a client
//! certificate that is not for client authentication, a cloud certificate for another name than
//! the one the edge dials, and an expired cloud certificate. The side that refuses logs why, and
//! the edge's log says why it could not connect.

mod common;

use std::path::{Path, PathBuf};

use common::{Cloud, CloudSpec, EdgeSpec, Hub, Proto};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

const BOTH: [Proto; 2] = [Proto::Websocket, Proto::Quic];

/// The dev PKI's CA in `pki`, loaded back to issue more certificates: the same key and subject,
/// so what it signs chains to `pki/ca.crt`.
struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl DevCa {
    fn load(pki: &Path) -> DevCa {
        let key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
        let der = hub::tls::load_certs(&pki.join("ca.crt")).unwrap().remove(0);
        let subject = hub::tls::CertIdentity::from_der(&der).unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name = name(&subject.common_names[0]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        DevCa { cert, key }
    }

    /// Issues a certificate with subject `cn`, subject alternative names `sans`, extended key
    /// usage `usage`, valid between now + `from` and now + `until`; writes `NAME.crt` and
    /// `NAME.key` into `dir` and returns their paths.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        dir: &Path,
        file: &str,
        cn: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
        from: Duration,
        until: Duration,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now + from;
        params.not_after = now + until;
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (crt, k) = (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (crt, k)
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn setup() -> (tempfile::TempDir, PathBuf, DevCa) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let ca = DevCa::load(&pki);
    (tmp, pki, ca)
}

/// A cloud whose certificate is `cert`/`key` (issued by the dev CA) instead of the dev PKI's.
fn cloud_with_certificate(dir: &Path, pki: &Path, cert: &Path, key: &Path) -> Cloud {
    let alt = dir.join("alt-pki");
    std::fs::create_dir_all(&alt).unwrap();
    std::fs::copy(pki.join("ca.crt"), alt.join("ca.crt")).unwrap();
    std::fs::copy(cert, alt.join("server.crt")).unwrap();
    std::fs::copy(key, alt.join("server.key")).unwrap();
    common::start_cloud(dir, &alt, &CloudSpec::default())
}

/// Waits for the edge's "cannot connect" line and the cloud's refusal of that attempt.
fn refused_both_sides(edge: &mut Hub, cloud: &mut Cloud, proto: Proto) -> (String, String) {
    let at_edge = edge.wait_for("cannot connect to the cloud");
    let at_cloud = cloud
        .hub
        .wait_for(&format!("refused {} connection from", proto.name()));
    (at_edge, at_cloud)
}

fn assert_has(line: &str, words: &[&str]) {
    for w in words {
        assert!(line.contains(w), "{w:?} not in: {line}");
    }
}

/// A client certificate the cloud must refuse, with the words each side must log. A certificate
/// from `ca` without that defect gets in, on the same cloud.
fn client_certificate_is_refused(
    dir: &Path,
    pki: &Path,
    ca: &DevCa,
    cert: (PathBuf, PathBuf),
    cloud_says: &[&str],
    edge_says: &[(Proto, &[&str])],
) {
    let mut cloud = common::start_cloud(dir, pki, &CloudSpec::default());
    let good = ca.issue(
        dir,
        "fresh-node-1",
        "node-1",
        &["node-1"],
        ExtendedKeyUsagePurpose::ClientAuth,
        Duration::hours(-1),
        Duration::days(1),
    );
    for proto in BOTH {
        let mut spec = EdgeSpec::new(proto, pki, "node-1", cloud.port(proto));
        (spec.cert, spec.key) = good.clone();
        let mut control = spec.start(dir);
        control.wait_for(&format!("connected to the cloud over {}", proto.name()));

        let mut spec = EdgeSpec::new(proto, pki, "edge-node", cloud.port(proto));
        (spec.cert, spec.key) = cert.clone();
        let mut edge = spec.start(dir);
        let (at_edge, at_cloud) = refused_both_sides(&mut edge, &mut cloud, proto);
        assert_has(&at_cloud, cloud_says);
        let words = edge_says.iter().find(|(p, _)| *p == proto).unwrap().1;
        assert_has(&at_edge, words);
        // It keeps trying and keeps being refused; no link is ever made.
        edge.wait_for("cannot connect to the cloud");
        assert!(edge.lines_with("connected to the cloud over").is_empty());
        assert!(cloud.hub.lines_with("node edge-node connected").is_empty());
    }
}

#[test]
fn expired_client_certificate_is_refused() {
    let (tmp, pki, ca) = setup();
    let cert = ca.issue(
        tmp.path(),
        "expired-edge-node",
        "edge-node",
        &["edge-node"],
        ExtendedKeyUsagePurpose::ClientAuth,
        Duration::days(-30),
        Duration::days(-1),
    );
    client_certificate_is_refused(
        tmp.path(),
        &pki,
        &ca,
        cert,
        &["invalid peer certificate: certificate expired"],
        &[
            // Over TCP the edge learns only the TLS alert; QUIC carries the cloud's reason.
            (
                Proto::Websocket,
                &["received fatal alert: CertificateExpired"],
            ),
            (
                Proto::Quic,
                &["invalid peer certificate: certificate expired"],
            ),
        ],
    );
}

/// A certificate for `EDGE-NODE` (another spelling of the node id) presented by node
/// `edge-node`: ids compare byte for byte, so it is not that node's certificate.
#[test]
fn certificate_for_another_spelling_of_the_node_is_refused() {
    let (tmp, pki, ca) = setup();
    let cert = ca.issue(
        tmp.path(),
        "upper-edge-node",
        "EDGE-NODE",
        &["EDGE-NODE"],
        ExtendedKeyUsagePurpose::ClientAuth,
        Duration::hours(-1),
        Duration::days(1),
    );
    client_certificate_is_refused(
        tmp.path(),
        &pki,
        &ca,
        cert,
        &[
            "identity mismatch",
            "CN=EDGE-NODE, DNS=EDGE-NODE",
            "is not node edge-node",
        ],
        &[
            (Proto::Websocket, &["403 identity mismatch"]),
            (Proto::Quic, &["identity mismatch"]),
        ],
    );
}

#[test]
fn client_certificate_not_yet_valid_is_refused() {
    let (tmp, pki, ca) = setup();
    let cert = ca.issue(
        tmp.path(),
        "future-edge-node",
        "edge-node",
        &["edge-node"],
        ExtendedKeyUsagePurpose::ClientAuth,
        Duration::days(1),
        Duration::days(30),
    );
    client_certificate_is_refused(
        tmp.path(),
        &pki,
        &ca,
        cert,
        &["invalid peer certificate: certificate not valid yet"],
        &[
            // TLS has no alert for "not yet valid"; rustls sends certificate_expired.
            (
                Proto::Websocket,
                &["received fatal alert: CertificateExpired"],
            ),
            (
                Proto::Quic,
                &["invalid peer certificate: certificate not valid yet"],
            ),
        ],
    );
}

#[test]
fn certificate_not_for_client_authentication_is_refused() {
    let (tmp, pki, ca) = setup();
    // Right CA, right name, valid, but issued for a server.
    let cert = ca.issue(
        tmp.path(),
        "server-edge-node",
        "edge-node",
        &["edge-node"],
        ExtendedKeyUsagePurpose::ServerAuth,
        Duration::hours(-1),
        Duration::days(1),
    );
    client_certificate_is_refused(
        tmp.path(),
        &pki,
        &ca,
        cert,
        &[
            "invalid peer certificate: certificate does not allow extended key usage for client authentication",
        ],
        &[
            (
                Proto::Websocket,
                &["received fatal alert: UnsupportedCertificate"],
            ),
            (
                Proto::Quic,
                &["certificate does not allow extended key usage for client authentication"],
            ),
        ],
    );
}

#[test]
fn cloud_certificate_for_another_name_is_refused_by_the_edge() {
    let (tmp, pki, ca) = setup();
    // Valid and from the right CA, but only for `localhost`: an edge dialling 127.0.0.1 refuses it.
    let (crt, key) = ca.issue(
        tmp.path(),
        "localhost-only",
        "hub cloud",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
        Duration::hours(-1),
        Duration::days(1),
    );
    let mut cloud = cloud_with_certificate(tmp.path(), &pki, &crt, &key);
    for proto in BOTH {
        let mut edge = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto)).start(tmp.path());
        let (at_edge, at_cloud) = refused_both_sides(&mut edge, &mut cloud, proto);
        assert_has(
            &at_edge,
            &["invalid peer certificate: certificate not valid for name \"127.0.0.1\""],
        );
        // Over TCP the cloud learns only the TLS alert; QUIC carries the edge's reason.
        assert_has(
            &at_cloud,
            match proto {
                Proto::Websocket => &["TLS: received fatal alert: BadCertificate"],
                Proto::Quic => &["aborted by peer", "certificate not valid for name"],
            },
        );
        assert!(edge.lines_with("connected to the cloud over").is_empty());

        // The same cloud dialled by the name on its certificate is accepted.
        let spec = EdgeSpec::new(proto, &pki, "node-1", cloud.port(proto));
        let file = spec.write(tmp.path());
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(
            &file,
            text.replace("wss://127.0.0.1:", "wss://localhost:")
                .replace("url: 127.0.0.1:", "url: localhost:"),
        )
        .unwrap();
        let mut by_name = Hub::start("edge by name", &["edge", "-c", file.to_str().unwrap()]);
        by_name.wait_for(&format!("connected to the cloud over {}", proto.name()));
        cloud
            .hub
            .wait_for(&format!("node node-1 connected over {}", proto.name()));
    }
}

#[test]
fn expired_cloud_certificate_is_refused_by_the_edge() {
    let (tmp, pki, ca) = setup();
    let (crt, key) = ca.issue(
        tmp.path(),
        "expired-server",
        "hub cloud",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        Duration::days(-30),
        Duration::days(-1),
    );
    let mut cloud = cloud_with_certificate(tmp.path(), &pki, &crt, &key);
    for proto in BOTH {
        let mut edge = EdgeSpec::new(proto, &pki, "edge-node", cloud.port(proto)).start(tmp.path());
        let (at_edge, at_cloud) = refused_both_sides(&mut edge, &mut cloud, proto);
        assert_has(&at_edge, &["invalid peer certificate: certificate expired"]);
        assert_has(
            &at_cloud,
            match proto {
                Proto::Websocket => &["TLS: received fatal alert: CertificateExpired"],
                Proto::Quic => &[
                    "aborted by peer",
                    "invalid peer certificate: certificate expired",
                ],
            },
        );
        assert!(edge.lines_with("connected to the cloud over").is_empty());
        assert!(cloud.hub.lines_with("node edge-node connected").is_empty());
    }
}
