//! Transport security: the rustls server configuration (TLS 1.3 and 1.2 only, TLS 1.2 limited to
//! ECDHE key exchange with AEAD suites, ALPN `h2` and `http/1.1`, the aws-lc-rs provider),
//! reloading a renewed certificate without a restart, the acceptor that hands a verified client
//! certificate to the request (mTLS for platform admins), and the self-signed development
//! certificate of `kasho dev-cert`.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use axum_server::accept::Accept;
use axum_server::tls::TlsService;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use zeroize::Zeroizing;

/// Where the server's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM bundle of the CAs whose client certificates are accepted (mTLS); `None`: the server
    /// asks for no client certificate.
    pub client_ca: Option<PathBuf>,
}

/// On a request's extensions when its connection presented a client certificate that the
/// configured client CA verified: the SHA-256 fingerprint (lower-case hex) of the leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// The cipher suites Kasho offers: every TLS 1.3 suite, and for TLS 1.2 only ECDHE key
/// exchange with an AEAD (AES-GCM or ChaCha20-Poly1305). No RSA key exchange, no CBC, no
/// 3DES, no RC4.
pub fn allowed_suite(s: CipherSuite) -> bool {
    use CipherSuite as C;
    matches!(
        s,
        C::TLS13_AES_256_GCM_SHA384
            | C::TLS13_AES_128_GCM_SHA256
            | C::TLS13_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// The aws-lc-rs provider narrowed to [`allowed_suite`].
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.retain(|s| allowed_suite(s.suite()));
    Arc::new(p)
}

/// The bytes of the TLS files as read at one moment.
struct FileBytes {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl FileBytes {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::Read {
                path: p.to_owned(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            cert: read(&files.cert)?,
            key: Zeroizing::new(read(&files.key)?),
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }

    /// Identifies the contents, to notice a renewal.
    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            self.cert.as_slice(),
            self.key.as_slice(),
            self.client_ca.as_deref().unwrap_or_default(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    }
}

/// A parsed server configuration and what identifies it.
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    /// SHA-256 fingerprint of the served leaf certificate.
    pub fingerprint: String,
    digest: [u8; 32],
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn build(files: &TlsFiles, bytes: &FileBytes) -> Result<Loaded, TlsError> {
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = certs.first() else {
        return Err(invalid(
            &files.cert,
            "holds no CERTIFICATE block".to_owned(),
        ));
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_slice(&bytes.key)
        .map_err(|e| invalid(&files.key, format!("not a PEM private key: {e}")))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&files.client_ca, &bytes.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| invalid(path, format!("not a PEM CA bundle: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid(path, "holds no CERTIFICATE block".to_owned()));
            }
            // Optional at the TLS layer: tenant users connect without one; `authorize`
            // refuses platform admins whose connection presented none.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid(path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            &files.key,
            format!("the key does not fit the certificate chain: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        fingerprint,
        digest: bytes.digest(),
    })
}

/// Reads and parses the TLS files (blocking file reads; call at start-up or off the runtime).
pub fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    build(files, &FileBytes::read(files)?)
}

/// Watches the TLS files every `every` and on SIGHUP. When they changed and parse, new
/// handshakes use the new configuration; connections already open keep theirs. A file that
/// does not read or parse keeps the previous certificate and logs an error (once per change).
pub fn spawn_reloader(config: RustlsConfig, files: TlsFiles, first: &Loaded, every: Duration) {
    let mut last = first.digest;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut read_failing = false;
        loop {
            #[cfg(unix)]
            let by_signal = tokio::select! {
                _ = ticks.tick() => false,
                () = hangup(&mut hup) => true,
            };
            #[cfg(not(unix))]
            let by_signal = {
                ticks.tick().await;
                false
            };
            let f = files.clone();
            let Ok(read) = tokio::task::spawn_blocking(move || FileBytes::read(&f)).await else {
                continue;
            };
            let bytes = match read {
                Ok(b) => b,
                Err(e) => {
                    if !read_failing || by_signal {
                        tracing::error!(error = %e, "cannot read the TLS files; still serving the previous certificate");
                    }
                    read_failing = true;
                    continue;
                }
            };
            read_failing = false;
            let digest = bytes.digest();
            if digest == last {
                if by_signal {
                    tracing::info!("SIGHUP: the TLS files are unchanged");
                }
                continue;
            }
            last = digest;
            let f = files.clone();
            match tokio::task::spawn_blocking(move || build(&f, &bytes)).await {
                Ok(Ok(loaded)) => {
                    config.reload_from_config(loaded.config);
                    tracing::info!(
                        certificate_sha256 = %loaded.fingerprint,
                        "reloaded the TLS certificate; new connections use it, open ones keep theirs"
                    );
                }
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    "the changed TLS files do not load; still serving the previous certificate"
                ),
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    });
}

#[cfg(unix)]
async fn hangup(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(sig) => {
            if sig.recv().await.is_none() {
                *s = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// The TLS acceptor of `kasho serve`: rustls (with its handshake timeout), then the verified
/// client certificate, if any, put on every request of the connection as a
/// [`ClientCertificate`] extension.
#[derive(Clone)]
pub struct ClientCertAcceptor {
    inner: RustlsAcceptor,
}

impl ClientCertAcceptor {
    pub fn new(config: RustlsConfig, handshake_timeout: Duration) -> Self {
        Self {
            inner: RustlsAcceptor::new(config).handshake_timeout(handshake_timeout),
        }
    }
}

type AcceptFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

impl<S> Accept<TcpStream, S> for ClientCertAcceptor
where
    RustlsAcceptor: Accept<TcpStream, S, Stream = TlsStream<TcpStream>, Service = TlsService<S>>,
    <RustlsAcceptor as Accept<TcpStream, S>>::Future: Send + 'static,
    S: Send + 'static,
{
    type Stream = TlsStream<TcpStream>;
    type Service = WithClientCert<TlsService<S>>;
    type Future = AcceptFuture<(Self::Stream, Self::Service)>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let handshake = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            // rustls keeps the peer's chain only when the verifier accepted it.
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| ClientCertificate {
                    sha256: fingerprint(leaf),
                });
            Ok((
                stream,
                WithClientCert {
                    inner: service,
                    cert,
                },
            ))
        })
    }
}

/// Puts the connection's verified client certificate on each request.
#[derive(Clone)]
pub struct WithClientCert<S> {
    inner: S,
    cert: Option<ClientCertificate>,
}

impl<S, B> tower::Service<Request<B>> for WithClientCert<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(c) = &self.cert {
            req.extensions_mut().insert(c.clone());
        }
        self.inner.call(req)
    }
}

/// A self-signed development certificate.
pub struct DevCert {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    /// The names and addresses it is valid for.
    pub names: Vec<String>,
    pub days: i64,
}

/// How long a development certificate is valid.
pub const DEV_CERT_DAYS: i64 = 90;

/// A self-signed ECDSA P-256 certificate for localhost, 127.0.0.1 and ::1 plus `hosts`, valid
/// [`DEV_CERT_DAYS`] days. For development only: nothing vouches for it.
pub fn dev_cert(hosts: &[String]) -> Result<DevCert, String> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        let h = h.trim();
        if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{h}` is not a host name or address"));
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(h)) {
            names.push(h.to_owned());
        }
    }
    let mut params =
        CertificateParams::new(names.clone()).map_err(|e| format!("bad host name: {e}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Kasho development certificate");
    dn.push(
        DnType::OrganizationName,
        "kasho dev-cert (self-signed, not for production)",
    );
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(DEV_CERT_DAYS);
    params.is_ca = IsCa::ExplicitNoCa;
    // Subject and Authority Key Identifiers (the same key: self-signed). RFC 5280 requires the
    // AKI, and strict verifiers (Python `cryptography`, sslyze) refuse a certificate without
    // it even when told to trust it.
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate a key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    Ok(DevCert {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        names,
        days: DEV_CERT_DAYS,
    })
}

/// Writes `contents` to `path` through a temporary file and a rename, so a watching server
/// never reads half a file; `mode` applies on Unix.
pub fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "tmp-{}",
        hex::encode(crate::crypto::random_bytes::<4>().unwrap_or_default())
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ecdhe_aead_suites_are_offered() {
        let p = provider();
        assert!(!p.cipher_suites.is_empty());
        for s in &p.cipher_suites {
            let name = format!("{:?}", s.suite());
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}"
            );
            assert!(name.contains("GCM") || name.contains("CHACHA20"), "{name}");
        }
        assert!(!allowed_suite(CipherSuite::TLS_RSA_WITH_AES_128_CBC_SHA));
        assert!(!allowed_suite(
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
        ));
    }

    #[test]
    fn a_dev_cert_loads_and_a_mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let a = dev_cert(&["kasho.test".into()]).unwrap_or_else(|e| unreachable!("{e}"));
        let b = dev_cert(&[]).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(a.names.contains(&"kasho.test".to_owned()) && a.names.len() == 4);
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
        };
        write_replacing(&files.cert, a.cert_pem.as_bytes(), 0o644)
            .unwrap_or_else(|e| unreachable!("{e}"));
        write_replacing(&files.key, a.key_pem.as_bytes(), 0o600)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let loaded = load(&files).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            loaded.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        write_replacing(&files.key, b.key_pem.as_bytes(), 0o600)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let e = load(&files)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("does not fit"), "{e}");
        write_replacing(&files.cert, b"garbage", 0o644).unwrap_or_else(|e| unreachable!("{e}"));
        let e = load(&files)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no CERTIFICATE"), "{e}");
    }
}
