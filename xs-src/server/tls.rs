//! TLS with rustls and its ring crypto provider: the server configuration
//! built from the `ssl_*` options, and what the `tls` scope extension
//! reports about a connection (PAGI-SPEC 4).

use crate::config::Config;
use crate::server::transport::Transport;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The TLS facts of one connection, for `$scope->{extensions}{tls}`.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// Wire value: 0x0303 TLS 1.2, 0x0304 TLS 1.3.
    pub version: u16,
    /// IANA cipher suite id.
    pub cipher_suite: u16,
    pub server_cert: Arc<String>,
    /// PEM client certificates, leaf first.
    pub client_chain: Vec<String>,
    /// RFC 4514 subject of the leaf client certificate.
    pub client_name: Option<String>,
}

/// A built server configuration plus the PEM of the server certificate.
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    pub server_cert_pem: Arc<String>,
}

/// Builds the server configuration; errors name the file or option at fault.
pub fn build(cfg: &Config) -> Result<Tls, String> {
    let cert = pem_source(cfg.ssl_cert_pem.as_deref(), cfg.ssl_cert_file.as_deref(), "ssl_cert")?
        .ok_or("ssl_cert_file is required for TLS")?;
    let key = pem_source(cfg.ssl_key_pem.as_deref(), cfg.ssl_key_file.as_deref(), "ssl_key")?
        .ok_or("ssl_key_file is required for TLS")?;
    let certs = parse_certs(&cert)?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.name));
    }
    let key_der = parse_key(&key)?;
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(list) = cfg.ssl_cipher_list.as_deref().filter(|l| !l.is_empty()) {
        let wanted: Vec<&str> = list.split([':', ',']).map(str::trim).filter(|s| !s.is_empty()).collect();
        for name in &wanted {
            if !provider.cipher_suites.iter().any(|s| suite_name(s) == *name) {
                let known: Vec<String> = provider.cipher_suites.iter().map(|s| suite_name(s)).collect();
                return Err(format!("ssl_cipher_list: unknown suite '{name}' (known: {})", known.join(", ")));
            }
        }
        provider.cipher_suites.retain(|s| wanted.contains(&suite_name(s).as_str()));
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.ssl_min_version.as_str() {
        "TLSv1_3" => &[&rustls::version::TLS13],
        "TLSv1_2" | "" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        other => return Err(format!("ssl_min_version must be TLSv1_2 or TLSv1_3, got '{other}'")),
    };
    let provider = Arc::new(provider);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let ca = pem_source(cfg.ssl_ca_pem.as_deref(), cfg.ssl_ca_file.as_deref(), "ssl_ca")?;
    let builder = match (cfg.ssl_verify_client.as_str(), ca) {
        ("none" | "", _) => builder.with_no_client_auth(),
        (mode @ ("optional" | "require"), Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in parse_certs(&ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.name))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == "optional" { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("{}: {e}", ca.name))?)
        }
        ("optional" | "require", None) => return Err("ssl_verify_client needs ssl_ca_file".into()),
        (other, _) => return Err(format!("ssl_verify_client must be none, optional or require, got '{other}'")),
    };
    let mut config = builder
        .with_single_cert(certs.clone(), key_der)
        .map_err(|e| format!("{} / {}: {e}", cert.name, key.name))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls { config: Arc::new(config), server_cert_pem: Arc::new(pem("CERTIFICATE", &certs[0])) })
}

/// One PEM item (certificate chain, key or CA list) and the name messages
/// give it.
struct PemSource {
    data: Vec<u8>,
    name: String,
}

/// The `*_pem` text when Perl handed it over (read before privileges were
/// dropped, so the engine never reopens the file), else the file's content.
fn pem_source(pem: Option<&str>, file: Option<&str>, option: &str) -> Result<Option<PemSource>, String> {
    let name = match file {
        Some(path) => format!("{option}_file '{path}'"),
        None => format!("{option}_pem"),
    };
    let data = match (pem, file) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(path)) => std::fs::read(path).map_err(|e| format!("cannot read '{path}': {e}"))?,
        (None, None) => return Ok(None),
    };
    Ok(Some(PemSource { data, name }))
}

fn parse_certs(src: &PemSource) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut &src.data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", src.name))
}

fn parse_key(src: &PemSource) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut &src.data[..])
        .map_err(|e| format!("{}: bad PEM: {e}", src.name))?
        .ok_or_else(|| format!("{}: no private key found", src.name))
}

fn suite_name(s: &rustls::SupportedCipherSuite) -> String {
    format!("{:?}", s.suite())
}

/// PEM text of one DER item.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What the handshake agreed, for the scope.
pub fn info(conn: &rustls::ServerConnection, server_cert: &Arc<String>) -> TlsInfo {
    let version = conn.protocol_version().map_or(0, |v| u16::from(v));
    let cipher_suite = conn.negotiated_cipher_suite().map_or(0, |s| u16::from(s.suite()));
    let peer = conn.peer_certificates().unwrap_or(&[]);
    let client_chain = peer.iter().map(|c| pem("CERTIFICATE", c)).collect();
    let client_name = peer.first().and_then(|leaf| {
        x509_parser::parse_x509_certificate(leaf).ok().map(|(_, cert)| cert.subject().to_string())
    });
    TlsInfo { version, cipher_suite, server_cert: server_cert.clone(), client_chain, client_name }
}

impl Transport for TlsStream<TcpStream> {
    /// Bytes must be encrypted, so files are copied, not sendfile'd.
    fn poll_send_file(&mut self, _cx: &mut std::task::Context<'_>, _file: &std::fs::File, _offset: u64, _len: u64) -> Option<std::task::Poll<std::io::Result<usize>>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_text_wins_and_the_file_is_never_opened() {
        let src = pem_source(Some("TEXT"), Some("/nonexistent/key.pem"), "ssl_key").unwrap().unwrap();
        assert_eq!(src.data, b"TEXT");
        assert_eq!(src.name, "ssl_key_file '/nonexistent/key.pem'");
        let err = pem_source(None, Some("/nonexistent/key.pem"), "ssl_key").err().unwrap();
        assert!(err.contains("cannot read '/nonexistent/key.pem'"), "{err}");
        assert!(pem_source(None, None, "ssl_ca").unwrap().is_none());
        assert_eq!(pem_source(Some("T"), None, "ssl_ca").unwrap().unwrap().name, "ssl_ca_pem");
        let bad = PemSource { data: b"no key here".to_vec(), name: "ssl_key_pem".into() };
        assert_eq!(parse_key(&bad).err().unwrap(), "ssl_key_pem: no private key found");
    }
}
