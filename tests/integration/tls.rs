//! Transport: a real `kasho serve` child process with certificates from `kasho dev-cert`, and
//! clients speaking TLS through tokio-rustls, or raw bytes where a real client would refuse to
//! (TLS 1.1, weak suites, oversized and slow headers). SQLite only: nothing here depends on
//! the storage backend.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::{Backend, PASSWORD, Served, TestApp, free_port};

const HSTS: &str = "max-age=63072000; includeSubDomains";

/// The settings every development server here runs with (cheap hashing, no MFA gate).
fn dev_env() -> Vec<(&'static str, String)> {
    vec![
        ("KASHO_ARGON2_MEMORY_KIB", "64".into()),
        ("KASHO_ARGON2_ITERATIONS", "1".into()),
        ("KASHO_MFA_REQUIRED_ROLES", String::new()),
    ]
}

/// `kasho serve` with only `env` on top (not `support::serve_command`'s test settings: some of
/// these servers run as production, which refuses cheap hashing).
fn serve_command(app: &TestApp, port: u16, env: &[(&'static str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kasho"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(app.data_dir.path())
    .args(["--database-url", &app.database_url])
    .env("KASHO_LOG_LEVEL", "info")
    .env("KASHO_LOG_FORMAT", "text")
    .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts a server and waits until it accepts connections.
async fn start(app: &TestApp, env: &[(&'static str, String)]) -> Served {
    let port = free_port();
    let log = app.data_dir.path().join(format!("serve-{port}.log"));
    let mut cmd = serve_command(app, port, env);
    cmd.stderr(std::fs::File::create(&log).unwrap());
    Served::start(cmd, port, log).await
}

/// `kasho dev-cert --out-dir dir [args]`; returns the two paths it printed.
fn dev_cert(dir: &Path, args: &[&str]) -> (PathBuf, PathBuf) {
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(["dev-cert", "--out-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no {name} line in {text}"))
    };
    (line("KASHO_TLS_CERT_FILE"), line("KASHO_TLS_KEY_FILE"))
}

fn tls_env(cert: &Path, key: &Path) -> Vec<(&'static str, String)> {
    let mut env = dev_env();
    env.push(("KASHO_TLS_CERT_FILE", cert.display().to_string()));
    env.push(("KASHO_TLS_KEY_FILE", key.display().to_string()));
    env
}

fn certs(pem: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What a client offers.
#[derive(Default)]
struct ClientOptions {
    tls12_only: bool,
    suites: Option<Vec<rustls::CipherSuite>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

/// A TLS client trusting exactly the certificates in `trusted`.
fn connector(trusted: &[&Path], opts: ClientOptions) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for p in trusted {
        for c in certs(p) {
            roots.add(c).unwrap();
        }
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(only) = &opts.suites {
        provider.cipher_suites.retain(|s| only.contains(&s.suite()));
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if opts.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match opts.identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

type Tls = BufReader<TlsStream<TcpStream>>;

async fn connect(c: &TlsConnector, port: u16) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), c.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))??;
    Ok(BufReader::new(s))
}

/// The leaf certificate the server presented on this connection.
fn presented(s: &Tls) -> String {
    sha256(s.get_ref().get_ref().1.peer_certificates().unwrap()[0].as_ref())
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// One HTTP/1.1 request on an open (keep-alive) connection.
async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let fut = async {
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.get_mut().write_all(req.as_bytes()).await.unwrap();
        s.get_mut().flush().await.unwrap();
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            s.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut buf = vec![0; len];
        s.read_exact(&mut buf).await.unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&buf).unwrap_or(Value::Null),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("an answer in time")
}

/// A raw ClientHello record (legacy version `version`, only `suites`) with the extensions a
/// TLS 1.2 ECDHE handshake needs (groups x25519/P-256, uncompressed points, ECDSA/RSA
/// signatures), so a refusal can only be about the version or the suites.
fn client_hello(version: [u8; 2], suites: &[u16]) -> Vec<u8> {
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // supported_groups
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, // sig algs
    ];
    let mut body = Vec::new();
    body.extend(version);
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // null compression only
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut hs = vec![0x01]; // ClientHello
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

/// Sends `hello` and returns the first 7 bytes the server answers (one alert record is 7).
async fn first_record(port: u16, hello: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(hello).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while got.len() < 7 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

/// Asserts a fatal alert with `description` came back, and no ServerHello (handshake record).
fn assert_fatal_alert(got: &[u8], description: u8, what: &str) {
    assert!(got.len() >= 7, "{what}: no alert, got {got:02x?}");
    assert_eq!(
        got[0], 0x15,
        "{what}: expected an alert record, not {got:02x?} (0x16 would be a ServerHello)"
    );
    assert_eq!(&got[3..5], &[0x00, 0x02], "{what}: {got:02x?}");
    assert_eq!(got[5], 2, "{what}: the alert is fatal: {got:02x?}");
    assert_eq!(got[6], description, "{what}: alert description: {got:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_modern_tls_with_hsts_and_refuses_tls11_and_weak_suites() {
    let app = TestApp::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = dev_cert(dir.path(), &[]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key is private");
    }
    let server = start(&app, &tls_env(&cert, &key)).await;

    // Default client: TLS 1.3, the dev certificate, HSTS on the answer.
    let mut s = connect(&connector(&[&cert], ClientOptions::default()), server.port)
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let r = http(&mut s, "GET", "/healthz", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some(HSTS));
    // An error answer carries it too.
    let r = http(&mut s, "GET", "/v1/no-such-route", None, None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("strict-transport-security"), Some(HSTS));

    // A TLS 1.2-only client with one strong suite gets in.
    let strong = ClientOptions {
        tls12_only: true,
        suites: Some(vec![
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ]),
        ..Default::default()
    };
    let mut s = connect(&connector(&[&cert], strong), server.port)
        .await
        .unwrap();
    let conn = &s.get_ref().get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        conn.negotiated_cipher_suite().map(|c| c.suite()),
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    );
    assert_eq!(
        http(&mut s, "GET", "/healthz", None, None).await.status,
        200
    );

    // TLS 1.1: a fatal protocol_version alert (70), no ServerHello.
    let suites = [0xc013, 0x002f, 0x0035, 0x000a];
    let got = first_record(server.port, &client_hello([0x03, 0x02], &suites)).await;
    assert_fatal_alert(&got, 70, "TLS 1.1 ClientHello");
    // TLS 1.2 with only weak suites (RSA key exchange, CBC, 3DES, RC4): handshake_failure (40).
    let weak = [0x002f, 0x000a, 0xc013, 0x0005];
    let got = first_record(server.port, &client_hello([0x03, 0x03], &weak)).await;
    assert_fatal_alert(&got, 40, "weak-suite ClientHello");
    // The same hello with one strong suite added is answered with a ServerHello: the
    // refusal above is about the suites, not the hand-built bytes.
    let got = first_record(server.port, &client_hello([0x03, 0x03], &[0x002f, 0xc02b])).await;
    assert_eq!(got.first(), Some(&0x16), "a ServerHello: {got:02x?}");

    // dev-cert refuses to overwrite without --force.
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(["dev-cert", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    drop(server);
    app.cleanup().await;
}

async fn wait_for_certificate(c: &TlsConnector, port: u16, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(s) = connect(c, port).await
            && presented(&s) == want
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_restart_or_dropping_connections() {
    let app = TestApp::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = dev_cert(dir.path(), &[]);
    let old_pem = dir.path().join("old.pem");
    std::fs::copy(&cert, &old_pem).unwrap();
    let old = sha256(certs(&cert)[0].as_ref());
    let mut env = tls_env(&cert, &key);
    // Polling is off in effect: the first renewal is picked up by SIGHUP.
    env.push(("KASHO_TLS_RELOAD_INTERVAL_SECONDS", "86400".into()));
    env.push(("KASHO_HEADER_READ_TIMEOUT_SECONDS", "60".into()));
    let server = start(&app, &env).await;

    let trust_old = connector(&[&old_pem], ClientOptions::default());
    let mut before = connect(&trust_old, server.port).await.unwrap();
    assert_eq!(presented(&before), old);
    assert_eq!(
        http(&mut before, "GET", "/healthz", None, None)
            .await
            .status,
        200
    );

    // Renew in place (as certbot or a secret mount would), then SIGHUP.
    dev_cert(dir.path(), &["--force"]);
    let new = sha256(certs(&cert)[0].as_ref());
    assert_ne!(old, new);
    let trust_both = connector(&[&old_pem, &cert], ClientOptions::default());
    let hup = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    assert!(
        wait_for_certificate(&trust_both, server.port, &new).await,
        "the renewed certificate is served after SIGHUP: {}",
        server.log()
    );
    // The connection opened before the renewal still serves requests.
    assert_eq!(
        http(&mut before, "GET", "/healthz", None, None)
            .await
            .status,
        200
    );
    assert_eq!(presented(&before), old);

    // A broken renewal keeps the certificate being served, and says so in the log.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = connect(&trust_both, server.port).await.unwrap();
    assert_eq!(presented(&s), new, "the previous certificate is kept");
    assert!(
        server
            .log()
            .contains("still serving the previous certificate"),
        "{}",
        server.log()
    );
    drop(server);

    // Without a signal: the files are polled every tls_reload_interval_seconds.
    let (cert, key) = dev_cert(dir.path(), &["--force"]);
    let first = sha256(certs(&cert)[0].as_ref());
    let mut env = tls_env(&cert, &key);
    env.push(("KASHO_TLS_RELOAD_INTERVAL_SECONDS", "1".into()));
    let server = start(&app, &env).await;
    std::fs::copy(&cert, &old_pem).unwrap();
    let s = connect(
        &connector(&[&old_pem], ClientOptions::default()),
        server.port,
    )
    .await
    .unwrap();
    assert_eq!(presented(&s), first);
    dev_cert(dir.path(), &["--force"]);
    let second = sha256(certs(&cert)[0].as_ref());
    let trust_both = connector(&[&old_pem, &cert], ClientOptions::default());
    assert!(
        wait_for_certificate(&trust_both, server.port, &second).await,
        "polling picks up the renewal: {}",
        server.log()
    );
    drop(server);
    app.cleanup().await;
}

/// A CA and a client certificate it issued, generated with rcgen, plus an outsider's.
struct Pki {
    ca_pem: String,
    client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    outsider: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let ca_key = KeyPair::generate_for(alg).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "Kasho test admin CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |issuer: Option<&Issuer<'_, &KeyPair>>| {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "platform admin");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = match issuer {
            Some(i) => p.signed_by(&key, i).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        (
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
    };
    Pki {
        ca_pem: ca_cert.pem(),
        client: leaf(Some(&issuer)),
        outsider: leaf(None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_admins_need_a_client_certificate_and_tenant_users_do_not() {
    let app = TestApp::new(Backend::Sqlite).await;
    let admin_email = "root@platform.test";
    let user = kasho::store::NewUser {
        id: kasho::ids::UserId::generate(),
        tenant_id: None,
        email_hash: kasho::service::users::email_hash(
            &app.core,
            None,
            kasho::domain::values::Email::parse(admin_email)
                .unwrap()
                .as_str(),
        ),
        email: kasho::domain::values::Email::parse(admin_email)
            .unwrap()
            .as_str()
            .to_owned(),
        password_hash: app.core.hasher.hash(&PASSWORD.into()).await.unwrap(),
        roles: vec![kasho::domain::authz::Role::PlatformAdmin],
        created_at: app.core.clock.now(),
    };
    app.core.store.create_user(&user, &[]).await.unwrap();
    let admin = app.login(None, admin_email, PASSWORD).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = app.tenant(&admin, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = dev_cert(dir.path(), &[]);
    let pki = pki();
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    let mut env = tls_env(&cert, &key);
    env.push(("KASHO_TLS_CLIENT_CA_FILE", ca_path.display().to_string()));
    let server = start(&app, &env).await;

    let anonymous = connector(&[&cert], ClientOptions::default());
    let with_cert = connector(
        &[&cert],
        ClientOptions {
            identity: Some((pki.client.0.clone(), pki.client.1.clone_key())),
            ..Default::default()
        },
    );

    // Without a client certificate: the platform admin's token and a platform sign-in are
    // refused; the tenant's manager works as usual.
    let mut s = connect(&anonymous, server.port).await.unwrap();
    let r = http(&mut s, "GET", "/v1/tenants", Some(&admin), None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.code(), "client_certificate_required");
    assert_eq!(r.body["error"]["type"], "permission_error");
    let platform_login = json!({ "email": admin_email, "password": PASSWORD });
    let r = http(
        &mut s,
        "POST",
        "/v1/auth/login",
        None,
        Some(&platform_login),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.code(), "client_certificate_required");
    let r = http(&mut s, "GET", "/v1/me", Some(&t.manager_token), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tenant_login =
        json!({ "tenant": "acme", "email": "manager@acme.test", "password": PASSWORD });
    let r = http(&mut s, "POST", "/v1/auth/login", None, Some(&tenant_login)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["access_token"].is_string());

    // With a certificate the CA issued: allowed.
    let mut s = connect(&with_cert, server.port).await.unwrap();
    let r = http(&mut s, "GET", "/v1/tenants", Some(&admin), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(
        &mut s,
        "POST",
        "/v1/auth/login",
        None,
        Some(&platform_login),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["access_token"].is_string());

    // A certificate from another issuer is refused at the handshake.
    let outsider = connector(
        &[&cert],
        ClientOptions {
            identity: Some((pki.outsider.0.clone(), pki.outsider.1.clone_key())),
            ..Default::default()
        },
    );
    let refused = match connect(&outsider, server.port).await {
        Err(_) => true,
        // TLS 1.3: the client learns of the refusal on its first read.
        Ok(mut s) => {
            let _ = s
                .get_mut()
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut buf = [0u8; 16];
            !matches!(
                tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
                Ok(Ok(n)) if n > 0
            )
        }
    };
    assert!(refused, "an unknown issuer's client certificate is refused");

    // Both refusals are security events in the platform chain.
    let chain = kasho::domain::audit::chain_for(None);
    let refusals: Vec<_> = app
        .audit_chain(&chain)
        .await
        .into_iter()
        .filter(|e| {
            e.security_event.as_deref() == Some("authorization_refused")
                && e.reason.as_deref() == Some("client_certificate_required")
        })
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    drop(server);
    app.cleanup().await;
}

fn production_env(app: &TestApp) -> Vec<(&'static str, String)> {
    // The keys the test app generated, handed over as production expects them.
    let keys = app.data_dir.path().join("keys");
    vec![
        ("KASHO_ENV", "production".into()),
        (
            "KASHO_JWT_SIGNING_KEY_FILE",
            keys.join("jwt-signing-key.pem").display().to_string(),
        ),
        (
            "KASHO_MASTER_KEY_FILE",
            keys.join("master.key").display().to_string(),
        ),
        // Production refuses to drop platform admins' MFA (issue 14 item 8).
        ("KASHO_MFA_REQUIRED_ROLES", "PLATFORM_ADMIN".into()),
        // Emailed links must be https in production (issue 13 item 17).
        ("KASHO_PUBLIC_URL", "https://kasho.test".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_plain_http_unless_a_proxy_terminates_tls() {
    let app = TestApp::new(Backend::Sqlite).await;
    let env = production_env(&app);
    let out = serve_command(&app, free_port(), &env)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("production refuses to serve plain HTTP")
            && text.contains("KASHO_TLS_CERT_FILE")
            && text.contains("KASHO_ALLOW_PLAIN_HTTP"),
        "{text}"
    );
    // One TLS file without the other is a configuration error.
    let mut half = env.clone();
    half.push(("KASHO_TLS_CERT_FILE", "/nonexistent/cert.pem".into()));
    let out = serve_command(&app, free_port(), &half)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("`tls_cert_file`") && text.contains("tls_key_file must be set"),
        "{text}"
    );

    let mut env = env;
    env.push(("KASHO_ALLOW_PLAIN_HTTP", "true".into()));
    let server = start(&app, &env).await;
    let mut s = BufReader::new(
        TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap(),
    );
    let r = http(&mut s, "GET", "/healthz", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some(HSTS));
    assert!(
        server.log().contains("TLS must be terminated by the proxy"),
        "{}",
        server.log()
    );
    drop(server);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_slow_clients_are_cut_off() {
    let app = TestApp::new(Backend::Sqlite).await;
    let mut env = dev_env();
    env.push(("KASHO_HEADER_READ_TIMEOUT_SECONDS", "1".into()));
    let server = start(&app, &env).await;
    let port = server.port;

    // Development over plain HTTP: no HSTS (it would pin browsers to HTTPS on localhost).
    let mut s = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    let r = http(&mut s, "GET", "/healthz", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), None);

    let raw = |req: String| async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    // Headers within max_header_bytes (16 KiB by default) are served...
    let fits = raw(format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(8_000)
    ))
    .await;
    assert!(fits.starts_with("HTTP/1.1 200"), "{fits}");
    // ...a bigger header block is answered 431 and the connection closed.
    let big = raw(format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    ))
    .await;
    assert!(
        big.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{big}"
    );

    // Slowloris: a request line and half a header, then nothing. The server hangs up after
    // header_read_timeout_seconds (1 s here) without serving it.
    let started = Instant::now();
    let slow = raw("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: a".to_owned()).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    assert!(!slow.contains("200"), "{slow}");
    // So is one that sends nothing but the start of an HTTP/2 preface, which leaves hyper
    // still detecting the protocol (bounded by the first-request timeout, not the header one).
    let started = Instant::now();
    let tiny = raw("PRI * HTTP/2.0".to_owned()).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{tiny}");
    assert!(!tiny.contains("200"), "{tiny}");
    drop(server);
    app.cleanup().await;
}
