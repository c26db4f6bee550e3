//! AWS Signature Version 4 for access keys: parsing the `Authorization`
//! header, the canonical request and the signature check, as AWS documents
//! them ("Create a signed AWS API request") and botocore's `SigV4Auth`
//! signs. An access key's secret is derived from a root key, never stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use ring::{digest, hmac};
use tether_types::{AccessKeyId, UnixMillis};

use crate::RootKey;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's `x-amz-date` may be from the server's clock.
pub const MAX_SKEW_MS: i64 = 15 * 60 * 1000;

/// The secret access key of `id`, derived from the root key it names.
pub fn access_key_secret(root: &RootKey, id: &AccessKeyId) -> String {
    let mut msg = b"tether access key v1\0".to_vec();
    msg.extend_from_slice(id.as_str().as_bytes());
    URL_SAFE_NO_PAD.encode(root.derive(&msg))
}

/// Why a signed request was refused. Coarse on purpose: the client learns
/// which rule it broke, never anything about the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("the Authorization header is not AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...")]
    Malformed,
    #[error("the credential scope must be <key>/<yyyymmdd>/{0}/<service>/aws4_request")]
    Scope(String),
    #[error("x-amz-date is missing, malformed or not signed")]
    Date,
    #[error("the request is more than 15 minutes away from the server's clock")]
    Skew,
    #[error("the host header must be signed")]
    Host,
    #[error("x-amz-content-sha256 does not match the body")]
    BodyHash,
    #[error("the signature does not match")]
    Signature,
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: Vec<u8>,
}

impl Authorization {
    pub fn parse(header: &str) -> Result<Self, SigV4Error> {
        let rest = header.strip_prefix(ALGORITHM).ok_or(SigV4Error::Malformed)?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=').ok_or(SigV4Error::Malformed)?;
            let slot = match k {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut signature,
                _ => return Err(SigV4Error::Malformed),
            };
            if slot.replace(v).is_some() {
                return Err(SigV4Error::Malformed);
            }
        }
        let (credential, signed, signature) = (
            credential.ok_or(SigV4Error::Malformed)?,
            signed.ok_or(SigV4Error::Malformed)?,
            signature.ok_or(SigV4Error::Malformed)?,
        );
        let scope: Vec<&str> = credential.split('/').collect();
        let [key, date, region, service, "aws4_request"] = scope[..] else { return Err(SigV4Error::Malformed) };
        if key.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SigV4Error::Malformed);
        }
        let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
        if signed_headers.iter().any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase())) {
            return Err(SigV4Error::Malformed);
        }
        if signature.len() != 64 {
            return Err(SigV4Error::Malformed);
        }
        Ok(Authorization {
            access_key_id: key.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers,
            signature: hex_decode(signature).ok_or(SigV4Error::Malformed)?,
        })
    }
}

/// The parts of an HTTP request a signature covers.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent, before any percent-decoding.
    pub path: &'a str,
    /// The query as sent, without the `?`.
    pub query: &'a str,
    /// Every header, names in any case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

fn header<'a>(req: &'a Request<'_>, name: &str) -> impl Iterator<Item = &'a str> {
    req.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The unreserved characters of the SigV4 documentation's `uri-encode`:
/// everything else is `%XX`, upper case.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
const UNRESERVED_AND_SLASH: &AsciiSet = &UNRESERVED.remove(b'/');

fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    percent_encode(s, if keep_slash { UNRESERVED_AND_SLASH } else { UNRESERVED }).to_string()
}

/// The path with `.` and `..` segments removed (RFC 3986 5.2.4), as
/// botocore normalises it before signing.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
            }
            s => out.push(s),
        }
        // A trailing dot segment leaves a trailing slash.
        if i == segments.len() - 1 && matches!(*seg, "." | "..") {
            out.push("");
        }
    }
    let p = out.join("/");
    if p.is_empty() { "/".into() } else { p }
}

/// The canonical request (AWS: "Create a canonical request").
pub fn canonical_request(req: &Request<'_>, signed_headers: &[String], body_sha256: &str) -> String {
    // The path is encoded once more (every service but S3 does so).
    let path = uri_encode(remove_dot_segments(req.path).as_bytes(), true);
    let mut query: Vec<(String, String)> = req
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decoded = |s: &str| percent_decode_str(s).collect::<Vec<u8>>();
            (uri_encode(&decoded(k), false), uri_encode(&decoded(v), false))
        })
        .collect();
    query.sort();
    let query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> =
            header(req, name).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!("{}\n{path}\n{query}\n{headers}\n{}\n{body_sha256}", req.method, signed_headers.join(";"))
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex_encode(digest::digest(&digest::SHA256, b).as_ref())
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The signing key of a secret for one day, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// `20261202T101500Z` as Unix milliseconds.
fn parse_amz_date(s: &str) -> Option<UnixMillis> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return None;
    }
    let rfc3339 = format!("{}-{}-{}T{}:{}:{}Z", &s[0..4], &s[4..6], &s[6..8], &s[9..11], &s[11..13], &s[13..15]);
    let at = humantime::parse_rfc3339(&rfc3339).ok()?;
    i64::try_from(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// Checks a request signed with the access key's `secret` for `region` and
/// service `tether`, at `now`. The body's SHA-256 is always computed here:
/// a body changed in flight fails even if the client sent no hash.
pub fn verify(
    auth: &Authorization,
    req: &Request<'_>,
    secret: &str,
    region: &str,
    now: UnixMillis,
) -> Result<(), SigV4Error> {
    if auth.region != region || auth.service != "tether" {
        return Err(SigV4Error::Scope(region.to_owned()));
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::Host);
    }
    if !auth.signed_headers.iter().any(|h| h == "x-amz-date") {
        return Err(SigV4Error::Date);
    }
    let amz_date = header(req, "x-amz-date").next().ok_or(SigV4Error::Date)?;
    let at = parse_amz_date(amz_date).ok_or(SigV4Error::Date)?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::Date);
    }
    if (now - at).abs() > MAX_SKEW_MS {
        return Err(SigV4Error::Skew);
    }
    let body_sha256 = sha256_hex(req.body);
    if let Some(claimed) = header(req, "x-amz-content-sha256").next()
        && !claimed.eq_ignore_ascii_case(&body_sha256)
    {
        return Err(SigV4Error::BodyHash);
    }
    let canonical = canonical_request(req, &auth.signed_headers, &body_sha256);
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let to_sign = format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", sha256_hex(canonical.as_bytes()));
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &key), to_sign.as_bytes(), &auth.signature)
        .map_err(|_| SigV4Error::Signature)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    b.len().is_multiple_of(2).then_some(())?;
    b.chunks(2).map(|c| Some(hex_val(c[0])? << 4 | hex_val(c[1])?)).collect()
}

pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example ("get-vanilla" of the SigV4 test suite):
    /// the signature botocore and every SDK produce for it.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let headers = [
            ("Host".to_owned(), "example.amazonaws.com".to_owned()),
            ("X-Amz-Date".to_owned(), "20150830T123600Z".to_owned()),
        ];
        let req = Request { method: "GET", path: "/", query: "", headers: &headers, body: b"" };
        let auth = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        )
        .unwrap();
        let canonical = canonical_request(&req, &auth.signed_headers, &sha256_hex(b""));
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let scope = "20150830/us-east-1/service/aws4_request";
        let to_sign = format!("{ALGORITHM}\n20150830T123600Z\n{scope}\n{}", sha256_hex(canonical.as_bytes()));
        let key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "service");
        assert_eq!(hex_encode(&hmac(&key, to_sign.as_bytes())), hex_encode(&auth.signature));
    }

    #[test]
    fn canonical_query_and_path_are_encoded_and_sorted() {
        let headers = [("host".to_owned(), "h".to_owned())];
        let req = Request {
            method: "POST",
            path: "/v1/tokens/tok-1:revoke",
            query: "b=2&a=%3D1&a=0&empty",
            headers: &headers,
            body: b"{}",
        };
        let c = canonical_request(&req, &["host".to_owned()], "x");
        assert_eq!(c, "POST\n/v1/tokens/tok-1%3Arevoke\na=%3D1&a=0&b=2&empty=\nhost:h\n\nhost\nx");
        assert_eq!(remove_dot_segments("/a/./b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/"), "/");
    }

    #[test]
    fn dates_parse() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160_000));
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
    }

    #[test]
    fn bad_headers_are_malformed() {
        for h in ["", "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request", "Bearer x"] {
            assert!(Authorization::parse(h).is_err(), "{h}");
        }
    }
}
