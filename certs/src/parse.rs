//! Small helpers over x509-parser and time conversions shared by the modules.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use crate::{Error, Result};

/// Parse one DER certificate; trailing bytes are an error.
pub(crate) fn certificate(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| Error::Certificate(e.into()))?;
    if !rest.is_empty() {
        return Err(Error::CertificateShape("trailing bytes after certificate"));
    }
    Ok(cert)
}

/// The single common name of `name`, `None` if it has none. Several common names, or one that
/// is not a string, are an error (described by the returned text).
pub(crate) fn common_name(name: &X509Name<'_>) -> std::result::Result<Option<String>, &'static str> {
    let mut cns = strings(name.iter_common_name(), "common name is not a string")?;
    match cns.len() {
        0 => Ok(None),
        1 => Ok(cns.pop()),
        _ => Err("more than one common name"),
    }
}

/// Every organization of `name`, in order.
pub(crate) fn organizations(name: &X509Name<'_>) -> std::result::Result<Vec<String>, &'static str> {
    strings(name.iter_organization(), "organization is not a string")
}

fn strings<'a>(
    attrs: impl Iterator<Item = &'a AttributeTypeAndValue<'a>>,
    not_a_string: &'static str,
) -> std::result::Result<Vec<String>, &'static str> {
    attrs.map(|attr| attr.as_str().map(str::to_owned).map_err(|_| not_a_string)).collect()
}

/// An ASN.1 time as a `SystemTime` (whole seconds).
pub(crate) fn system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// `t` truncated to whole seconds as an `OffsetDateTime`, within what a certificate can carry
/// (1970 to 9999).
pub(crate) fn offset_date_time(t: SystemTime) -> Result<OffsetDateTime> {
    let secs = t.duration_since(UNIX_EPOCH).map_err(|_| Error::Validity("time before 1970"))?.as_secs();
    let secs = i64::try_from(secs).map_err(|_| Error::Validity("time after year 9999"))?;
    let dt = OffsetDateTime::from_unix_timestamp(secs).map_err(|_| Error::Validity("time after year 9999"))?;
    if dt.year() > 9999 {
        return Err(Error::Validity("time after year 9999"));
    }
    Ok(dt)
}
