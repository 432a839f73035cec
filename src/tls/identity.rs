//! The identity in a peer certificate: subject common names, DNS subject alternative names and
//! the serial number, read with a small DER walker.
//!
//! Only certificates that rustls' WebPKI verifier has already accepted (chained to the configured
//! CA) reach this code; it reads three fields and never allocates more than the input holds.

/// What a certificate says about who holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// Subject common names (normally one).
    pub common_names: Vec<String>,
    /// DNS names from the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// The serial number, hex, for logs.
    pub serial: String,
}

impl CertIdentity {
    /// Reads the identity from a DER certificate; `None` when it is not X.509 as expected.
    pub fn from_der(der: &[u8]) -> Option<CertIdentity> {
        let mut input = der;
        let mut cert = expect(&mut input, SEQUENCE)?;
        let mut tbs = expect(&mut cert, SEQUENCE)?;
        if tbs.first() == Some(&VERSION_TAG) {
            tlv(&mut tbs)?;
        }
        let serial = expect(&mut tbs, INTEGER)?;
        tlv(&mut tbs)?; // signature algorithm
        tlv(&mut tbs)?; // issuer
        tlv(&mut tbs)?; // validity
        let subject = expect(&mut tbs, SEQUENCE)?;
        tlv(&mut tbs)?; // subject public key info
        let mut id = CertIdentity {
            serial: serial
                .iter()
                .skip_while(|b| **b == 0)
                .map(|b| format!("{b:02x}"))
                .collect(),
            ..CertIdentity::default()
        };
        if id.serial.is_empty() {
            id.serial.push('0');
        }
        id.common_names = common_names(subject)?;
        while !tbs.is_empty() {
            let (tag, value) = tlv(&mut tbs)?;
            if tag == EXTENSIONS_TAG {
                id.dns_names = dns_names(value)?;
            }
        }
        Some(id)
    }

    /// Whether `node_id` is this certificate's identity: a common name or a DNS name equal to it,
    /// byte for byte. Node ids have one canonical form (lower case, `config::valid_id`), so a
    /// certificate written `EDGE` is not node `edge`: comparing without regard to case would let
    /// one certificate speak for every spelling of a name (`docs/protocol.md` §4).
    pub fn is(&self, node_id: &str) -> bool {
        self.common_names
            .iter()
            .chain(&self.dns_names)
            .any(|n| n == node_id)
    }

    /// A short description for logs: `CN=…, DNS=…, serial …`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .common_names
            .iter()
            .map(|n| format!("CN={}", n.escape_debug()))
            .collect();
        parts.extend(
            self.dns_names
                .iter()
                .map(|n| format!("DNS={}", n.escape_debug())),
        );
        parts.push(format!("serial {}", self.serial));
        parts.join(", ")
    }
}

pub(super) const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
pub(super) const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
pub(super) const VERSION_TAG: u8 = 0xa0;
const EXTENSIONS_TAG: u8 = 0xa3;
const DNS_NAME_TAG: u8 = 0x82;
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads one tag-length-value; `None` on anything malformed.
pub(super) fn tlv<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers do not occur in the fields read here
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |v, b| v << 8 | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (value, after) = rest.split_at(len);
    *input = after;
    Some((tag, value))
}

pub(super) fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
    match tlv(input)? {
        (t, v) if t == tag => Some(v),
        _ => None,
    }
}

/// Text of a directory string (UTF8String, PrintableString, IA5String, TeletexString).
fn text(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 => String::from_utf8(value.to_vec()).ok(),
        0x14 => Some(value.iter().map(|b| char::from(*b)).collect()),
        _ => None,
    }
}

fn common_names(mut name: &[u8]) -> Option<Vec<String>> {
    let mut names = Vec::new();
    while !name.is_empty() {
        let mut rdn = expect(&mut name, SET)?;
        while !rdn.is_empty() {
            let mut attr = expect(&mut rdn, SEQUENCE)?;
            let oid = expect(&mut attr, OID)?;
            let (tag, value) = tlv(&mut attr)?;
            if oid == OID_COMMON_NAME {
                names.extend(text(tag, value));
            }
        }
    }
    Some(names)
}

fn dns_names(mut extensions: &[u8]) -> Option<Vec<String>> {
    let mut list = expect(&mut extensions, SEQUENCE)?;
    let mut names = Vec::new();
    while !list.is_empty() {
        let mut ext = expect(&mut list, SEQUENCE)?;
        let oid = expect(&mut ext, OID)?;
        if ext.first() == Some(&BOOLEAN) {
            tlv(&mut ext)?;
        }
        let mut value = expect(&mut ext, OCTET_STRING)?;
        if oid != OID_SUBJECT_ALT_NAME {
            continue;
        }
        let mut general_names = expect(&mut value, SEQUENCE)?;
        while !general_names.is_empty() {
            let (tag, v) = tlv(&mut general_names)?;
            if tag == DNS_NAME_TAG {
                names.push(String::from_utf8(v.to_vec()).ok()?);
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};

    fn cert(cn: Option<&str>, sans: &[&str], serial: u64) -> Vec<u8> {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "acme");
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.serial_number = Some(SerialNumber::from(serial));
        p.self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn reads_cn_sans_and_serial() {
        let id = CertIdentity::from_der(&cert(
            Some("edge-1"),
            &["edge-1.example", "10.0.0.1", "other"],
            0xab12,
        ))
        .unwrap();
        assert_eq!(id.common_names, vec!["edge-1"]);
        assert_eq!(
            id.dns_names,
            vec!["edge-1.example", "other"],
            "IP SANs are not names"
        );
        assert_eq!(id.serial, "ab12");
        assert!(id.is("edge-1") && id.is("other") && !id.is("edge-2") && !id.is("10.0.0.1"));
        assert_eq!(
            id.describe(),
            "CN=edge-1, DNS=edge-1.example, DNS=other, serial ab12"
        );
    }

    #[test]
    fn names_compare_byte_for_byte() {
        let id = CertIdentity::from_der(&cert(Some("edge"), &["edge"], 4)).unwrap();
        assert!(id.is("edge"));
        for other in ["EDGE", "Edge", "edge ", "edge."] {
            assert!(!id.is(other), "{other:?}");
        }
        let upper = CertIdentity::from_der(&cert(Some("GW"), &["Gw"], 5)).unwrap();
        assert!(!upper.is("gw"), "a certificate for GW or Gw is not node gw");
        let odd = CertIdentity::from_der(&cert(Some("a\nb"), &[], 6)).unwrap();
        assert_eq!(odd.describe(), "CN=a\\nb, serial 06");
    }

    #[test]
    fn san_only_and_cn_only() {
        let san = CertIdentity::from_der(&cert(None, &["node-7"], 1)).unwrap();
        assert!(san.common_names.is_empty() && san.is("node-7"));
        let cn = CertIdentity::from_der(&cert(Some("node-8"), &[], 2)).unwrap();
        assert!(cn.dns_names.is_empty() && cn.is("node-8") && !cn.is("node-7"));
    }

    #[test]
    fn garbage_is_none_never_a_panic() {
        let good = cert(Some("n"), &["n"], 3);
        for cut in 0..good.len() {
            let _ = CertIdentity::from_der(&good[..cut]);
        }
        let mut flipped = good.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = CertIdentity::from_der(&flipped);
            flipped[i] ^= 0xff;
        }
        assert!(CertIdentity::from_der(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(CertIdentity::from_der(b"").is_none());
    }
}
