//! The validity window of a certificate (RFC 5280 section 4.1.2.5), read with a small DER walker
//! so that credentials can be checked before they are used.

use std::fmt;

/// A certificate's `notBefore` and `notAfter`, in seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first second the certificate is valid.
    pub not_before: i64,
    /// The last second the certificate is valid.
    pub not_after: i64,
}

/// Where a time lies with respect to a [`Validity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Before `notBefore`.
    NotYetValid,
    /// Within the window.
    Valid,
    /// After `notAfter`.
    Expired,
}

impl Validity {
    /// Reads the validity of the DER certificate `der`; `None` when it is not X.509 as expected.
    pub fn from_der(der: &[u8]) -> Option<Validity> {
        let mut input = der;
        let mut cert = expect(&mut input, SEQUENCE)?;
        let mut tbs = expect(&mut cert, SEQUENCE)?;
        if tbs.first() == Some(&VERSION_TAG) {
            tlv(&mut tbs)?;
        }
        expect(&mut tbs, INTEGER)?; // serial
        expect(&mut tbs, SEQUENCE)?; // signature algorithm
        expect(&mut tbs, SEQUENCE)?; // issuer
        let mut validity = expect(&mut tbs, SEQUENCE)?;
        let not_before = time(&mut validity)?;
        let not_after = time(&mut validity)?;
        Some(Validity {
            not_before,
            not_after,
        })
    }

    /// Where `now` (seconds since the Unix epoch) lies.
    pub fn at(&self, now: i64) -> Window {
        if now < self.not_before {
            Window::NotYetValid
        } else if now > self.not_after {
            Window::Expired
        } else {
            Window::Valid
        }
    }
}

/// Seconds since the Unix epoch, for logs: `YYYY-MM-DD HH:MM:SS UTC`.
pub struct Utc(pub i64);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, secs) = (self.0.div_euclid(86_400), self.0.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// Seconds since the Unix epoch now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION_TAG: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Reads one tag-length-value; `None` on anything malformed.
fn tlv<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, rest) = input.split_first()?;
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

fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
    match tlv(input)? {
        (t, v) if t == tag => Some(v),
        _ => None,
    }
}

/// A `Time` (UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`, RFC 5280 section
/// 4.1.2.5) as seconds since the Unix epoch.
fn time(input: &mut &[u8]) -> Option<i64> {
    let (tag, value) = tlv(input)?;
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = num(&digits[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (num(&digits[..4])?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| num(&rest[i..i + 2]);
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number from [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for day in [-1, 0, 59, 11_016, 20_000, 47_482] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(
            Utc(951_782_400 + 3661).to_string(),
            "2000-02-29 01:01:01 UTC"
        );
    }

    #[test]
    fn times() {
        let mut utc: &[u8] = b"\x17\x0d491231235959Z";
        assert_eq!(time(&mut utc), Some(2_524_607_999));
        let mut utc: &[u8] = b"\x17\x0d500101000000Z";
        assert_eq!(time(&mut utc), Some(-631_152_000));
        let mut generalized: &[u8] = b"\x18\x0f99991231235959Z";
        assert_eq!(time(&mut generalized), Some(253_402_300_799));
        let mut bad: &[u8] = b"\x17\x0d4912312359590";
        assert_eq!(time(&mut bad), None);
    }

    #[test]
    fn validity_of_an_issued_certificate() {
        let ca = crate::pki::Authority::new(2).unwrap();
        let (pem, _) = ca.issue_node("edge-node").unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let v = Validity::from_der(&der).unwrap();
        let now = now();
        // The dev PKI issues certificates valid from an hour ago for the given days.
        assert!((v.not_before - (now - 3600)).abs() < 120, "{v:?}");
        assert!((v.not_after - (now + 2 * 86_400)).abs() < 120, "{v:?}");
        assert_eq!(v.at(now), Window::Valid);
        assert_eq!(v.at(v.not_after + 1), Window::Expired);
        assert_eq!(v.at(v.not_before - 1), Window::NotYetValid);
        assert_eq!(Validity::from_der(&der[..der.len() / 2]), None);
    }
}
