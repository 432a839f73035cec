//! The validity window of a certificate (RFC 5280 section 4.1.2.5), read with the DER walker of
//! [`super::identity`] so that credentials can be checked before they are used; dates are the
//! `time` crate's.

use std::fmt;

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::identity::{INTEGER, SEQUENCE, VERSION_TAG, expect, tlv};

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
        match OffsetDateTime::from_unix_timestamp(self.0) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            Err(_) => write!(f, "{} s after the Unix epoch", self.0),
        }
    }
}

/// Seconds since the Unix epoch now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

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
    let field = |i: usize| num(&rest[i..i + 2]).and_then(|v| u8::try_from(v).ok());
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    let date =
        Date::from_calendar_date(i32::try_from(year).ok()?, Month::try_from(month).ok()?, day)
            .ok()?;
    // A leap second (60) counts as the second before it.
    let time = Time::from_hms(hour, min, sec.min(59)).ok()?;
    Some(
        PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_print_as_utc() {
        assert_eq!(
            Utc(951_782_400 + 3661).to_string(),
            "2000-02-29 01:01:01 UTC"
        );
        assert_eq!(Utc(0).to_string(), "1970-01-01 00:00:00 UTC");
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
        let mut no_such_day: &[u8] = b"\x17\x0d490230000000Z";
        assert_eq!(time(&mut no_such_day), None);
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
