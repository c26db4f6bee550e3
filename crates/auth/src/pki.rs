//! Agent identity by X.509: the control plane's certificate authority, the
//! certificates it issues (server certificates for `--tls auto`, client
//! certificates for agents from their CSRs) and reading a node's identity
//! back from a verified client certificate.
//!
//! Keys are ECDSA P-256 made with ring (through rcgen). A node certificate
//! names its node in one SAN URI, `tether://org/<org id>/node/<node id>`;
//! nothing in the CSR but its public key is used, so an agent cannot ask
//! for another name, a CA bit or a longer life.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
    SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use tether_types::{NodeId, OrgId, UnixMillis};

/// A PKI operation failed: a bad CSR, PEM that does not parse, a
/// certificate without a node name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PkiError(pub String);

fn err(what: &str) -> impl Fn(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError(format!("{what}: {e}"))
}

/// The URI a node certificate carries.
pub fn node_uri(org: &OrgId, node: &NodeId) -> String {
    format!("tether://org/{org}/node/{node}")
}

/// A certificate authority: its certificate and its signing key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate with its key (both PEM), as written to disk.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a node certificate says, read back from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    pub org: OrgId,
    pub node: NodeId,
    /// Hex of the serial number.
    pub serial: String,
    pub not_before: UnixMillis,
    pub not_after: UnixMillis,
}

fn at(ms: UnixMillis) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = crate::random_bytes();
    // Positive and never shortened by DER's leading-zero rule.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    rcgen::string::Ia5String::try_from(s).map_err(|e| PkiError(format!("{s:?} is not a valid name: {e}")))
}

impl Ca {
    /// A new CA, valid ten years from `now`.
    pub fn generate(common_name: &str, now: UnixMillis) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, common_name);
            dn
        };
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = at(now - 60_000);
        params.not_after = at(now + 10 * 365 * 86_400_000);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(err("signing the CA certificate"))?;
        let cert_pem = cert.pem();
        let key_again = KeyPair::from_pem(&key.serialize_pem()).map_err(err("copying the CA key"))?;
        Ok(Ca { cert_pem, key: key_again, issuer: Issuer::new(params, key) })
    }

    /// A CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(err("reading the CA key"))?;
        let key_again = KeyPair::from_pem(key_pem).map_err(err("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key_again).map_err(err("reading the CA certificate"))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError(format!("reading the CA certificate: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError(format!("reading the CA certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(PkiError("the CA certificate is not a CA (no basicConstraints CA bit)".into()));
        }
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError("the CA key does not belong to the CA certificate".into()));
        }
        Ok(Ca { cert_pem: cert_pem.to_owned(), key, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA certificate as DER, for trust stores.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("our own PEM parses").into_owned()
    }

    /// A server certificate (and a new key) for these DNS names and
    /// addresses.
    pub fn issue_server(&self, names: &[String], now: UnixMillis, lifetime: Duration) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err("generating the server key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("tether"));
            dn
        };
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(ia5(n)?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = at(now - 60_000);
        params.not_after = at(now + lifetime.as_millis() as i64);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer).map_err(err("signing the server certificate"))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A client certificate for `node` from the agent's CSR (PEM or DER):
    /// only the CSR's public key is used, after its signature is checked.
    pub fn issue_node(
        &self,
        csr: &[u8],
        org: &OrgId,
        node: &NodeId,
        now: UnixMillis,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let der = if csr.starts_with(b"-----BEGIN") {
            CertificateSigningRequestDer::from_pem_slice(csr).map_err(|e| PkiError(format!("the CSR: {e}")))?
        } else {
            CertificateSigningRequestDer::from(csr.to_vec())
        };
        let asked = CertificateSigningRequestParams::from_der(&der).map_err(err("the CSR"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, node.as_str());
            dn.push(DnType::OrganizationName, org.as_str());
            dn
        };
        params.subject_alt_names = vec![SanType::URI(ia5(&node_uri(org, node))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        // Backdated for clocks a little behind ours, by at most a tenth of
        // the lifetime, so that renewal at two thirds stays in the future.
        let skew = (lifetime.as_millis() as i64 / 10).min(60_000);
        params.not_before = at(now - skew);
        params.not_after = at(now + lifetime.as_millis() as i64);
        params.serial_number = Some(random_serial());
        let signed = CertificateSigningRequestParams { params, public_key: asked.public_key };
        Ok(signed.signed_by(&self.issuer).map_err(err("signing the node certificate"))?.pem())
    }
}

/// The node a certificate (DER) names, with its serial and validity. It
/// does not check the signature: the TLS handshake did, against our CA.
pub fn node_cert(der: &[u8]) -> Result<NodeCert, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError(format!("the certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError(format!("the certificate's names: {e}")))?
        .ok_or_else(|| PkiError("the certificate names no node".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (uri, extra) = (uris.next(), uris.next());
    let uri = match (uri, extra) {
        (Some(u), None) => u,
        _ => return Err(PkiError("the certificate must name exactly one node".into())),
    };
    let rest = uri.strip_prefix("tether://org/").ok_or_else(|| PkiError(format!("{uri:?} is not a node name")))?;
    let (org, node) = rest.split_once("/node/").ok_or_else(|| PkiError(format!("{uri:?} is not a node name")))?;
    let org = OrgId::parse(org).map_err(|e| PkiError(e.to_string()))?;
    let node = NodeId::parse(node).map_err(|e| PkiError(e.to_string()))?;
    let v = cert.validity();
    Ok(NodeCert {
        org,
        node,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: v.not_before.timestamp() * 1000,
        not_after: v.not_after.timestamp() * 1000,
    })
}

/// The validity of a certificate in PEM: (not before, not after).
pub fn validity_pem(pem: &str) -> Result<(UnixMillis, UnixMillis), PkiError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError(format!("the certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError(format!("the certificate: {e}")))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp() * 1000, v.not_after.timestamp() * 1000))
}

/// A new agent key (ECDSA P-256) and a CSR for it, both PEM.
pub fn new_node_key() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err("generating the node key"))?;
    let csr = CertificateParams::default().serialize_request(&key).map_err(err("making the CSR"))?;
    Ok((key.serialize_pem(), csr.pem().map_err(err("encoding the CSR"))?))
}

/// A CSR (PEM) for an existing key (PEM), for renewal with a fresh key.
pub fn csr_for(key_pem: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(err("reading the node key"))?;
    let csr = CertificateParams::default().serialize_request(&key).map_err(err("making the CSR"))?;
    csr.pem().map_err(err("encoding the CSR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = 1_780_000_000_000;

    fn ids() -> (OrgId, NodeId) {
        (OrgId::from_random([1; 10]), NodeId::from_random([2; 10]))
    }

    #[test]
    fn node_certificate_names_the_node_from_the_csr_key_only() {
        let ca = Ca::generate("test CA", NOW).unwrap();
        let (org, node) = ids();
        let (_key, csr) = new_node_key().unwrap();
        let pem = ca.issue_node(csr.as_bytes(), &org, &node, NOW, Duration::from_secs(3600)).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let got = node_cert(&der).unwrap();
        assert_eq!((got.org, got.node), (org, node));
        assert_eq!(got.not_after - got.not_before, 3_600_000 + 60_000);
        assert_eq!(validity_pem(&pem).unwrap(), (got.not_before, got.not_after));
        // DER CSRs are taken too.
        let der_csr = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap();
        let (org2, node2) = ids();
        assert!(ca.issue_node(&der_csr, &org2, &node2, NOW, Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn a_tampered_or_garbage_csr_is_refused() {
        let ca = Ca::generate("test CA", NOW).unwrap();
        let (org, node) = ids();
        let (_key, csr) = new_node_key().unwrap();
        let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap().to_vec();
        let n = der.len();
        der[n - 5] ^= 0x55; // inside the signature
        assert!(ca.issue_node(&der, &org, &node, NOW, Duration::from_secs(60)).is_err());
        assert!(ca.issue_node(b"not a csr", &org, &node, NOW, Duration::from_secs(60)).is_err());
    }

    #[test]
    fn ca_round_trips_through_pem_and_checks_its_key() {
        let ca = Ca::generate("test CA", NOW).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let (org, node) = ids();
        let (_key, csr) = new_node_key().unwrap();
        assert!(again.issue_node(csr.as_bytes(), &org, &node, NOW, Duration::from_secs(60)).is_ok());
        let other = Ca::generate("other", NOW).unwrap();
        assert!(Ca::from_pem(ca.cert_pem(), &other.key_pem()).is_err(), "a key of another CA");
        let server = ca.issue_server(&["localhost".into()], NOW, Duration::from_secs(60)).unwrap();
        assert!(Ca::from_pem(&server.cert_pem, &server.key_pem).is_err(), "not a CA");
    }

    #[test]
    fn server_certificate_has_names_and_addresses() {
        let ca = Ca::generate("test CA", NOW).unwrap();
        let s = ca.issue_server(&["localhost".into(), "127.0.0.1".into()], NOW, Duration::from_secs(60)).unwrap();
        let der = CertificateDer::from_pem_slice(s.cert_pem.as_bytes()).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 2);
        assert!(node_cert(&der).is_err(), "a server certificate names no node");
    }
}
