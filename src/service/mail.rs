//! Outgoing email: a durable outbox and its delivery.
//!
//! A use case that sends mail writes the message into the `mail_outbox` table in the same
//! transaction as the change it announces (see [`outbox_message`]), sealed with the tenant's
//! data key because it may carry a secret (a reset link). [`deliver_due`] claims due messages
//! with a conditional update (safe with several instances on one database), opens each one and
//! hands it to SMTP, or, with no SMTP server configured, writes it as an `.eml` file into
//! `<data_dir>/mailbox/`. A failed attempt is retried with exponential back-off (30 s, 1 min,
//! 2 min, … capped at 1 h) up to `mail_max_attempts`; a permanent refusal (an SMTP 5xx reply)
//! or the last attempt marks the message failed. The sealed text is cleared once the message is
//! sent or failed; `last_error` keeps only the SMTP stage and reply code, never an address or
//! the server's text. `kasho serve` runs [`deliver_due`] every few seconds. An erasure removes
//! the mailbox files addressed to the erased customer ([`remove_mailbox_files`]), and a message
//! whose recipient no longer has a login in its tenant (an erased customer's, queued before the
//! erasure) is marked failed instead of delivered.
//!
//! The SMTP client is a small RFC 5321 one (EHLO, MAIL, RCPT, DATA with dot-stuffing, QUIT)
//! with STARTTLS (RFC 3207; required in production, the relay's certificate verified against
//! the Mozilla roots or `smtp_ca_file`) and AUTH PLAIN or LOGIN (RFC 4954), which is only ever
//! sent inside TLS (issue 13 item 17).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::Core;
use crate::clock::Timestamp;
use crate::config::mail::{SmtpAuth, SmtpTarget};
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;
use crate::service::keys::KeyOwner;
use crate::store::keys::MAIL_OUTBOX_MESSAGE;
use crate::store::mail::{NewOutboxMessage, OutboxRecord};
use crate::store::outbox::Delivery;

/// Where and how mail is delivered.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// The SMTP relay; `None`: messages are written to `mailbox_dir` instead.
    pub smtp: Option<SmtpTarget>,
    /// The `From` address (also the SMTP envelope sender).
    pub from: String,
    /// The public base URL of the service, used in links (no trailing slash).
    pub public_url: String,
    /// `<data_dir>/mailbox`.
    pub mailbox_dir: PathBuf,
    /// Attempts before a message is marked failed.
    pub max_attempts: u32,
}

/// What is sealed into the outbox: the envelope recipient and the RFC 5322 text.
#[derive(Serialize, Deserialize)]
struct Sealed {
    to: String,
    data: String,
}

/// Composes a plain-text message and seals it for the outbox of `tenant`. `to` must be a
/// parsed email address (so it cannot inject headers).
pub async fn outbox_message(
    core: &Core,
    tenant: &TenantId,
    owner: &KeyOwner,
    kind: &'static str,
    to: &str,
    subject: &str,
    body: &str,
) -> AppResult<NewOutboxMessage> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = core.clock.now();
    let data = compose(&core.settings.mail.from, to, subject, body, &id, now);
    let sealed = serde_json::to_vec(&Sealed {
        to: to.to_owned(),
        data,
    })
    .map_err(AppError::internal)?;
    let message = core
        .keyring
        .seal(tenant, owner, MAIL_OUTBOX_MESSAGE, &id, &sealed)
        .await?;
    Ok(NewOutboxMessage {
        id,
        tenant_id: tenant.to_string(),
        kind,
        message,
        created_at: now,
    })
}

/// The RFC 5322 text of a plain-text message (CRLF line endings).
fn compose(from: &str, to: &str, subject: &str, body: &str, id: &str, now: Timestamp) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(now.unix_seconds())
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let mut text = format!(
        "From: Kasho <{from}>\r\nTo: <{to}>\r\nSubject: {}\r\nDate: {date}\r\n\
         Message-ID: <{id}@{domain}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        clean(subject)
    );
    for line in body.lines() {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text
}

/// What one delivery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub sent: u64,
    /// Attempts that failed and will be retried.
    pub retried: u64,
    /// Messages given up on.
    pub failed: u64,
}

/// How long a claimed message stays with its worker before another may take it over.
const LEASE_SECONDS: i64 = 120;
const BATCH: i64 = 20;
/// The first retry's delay; each further one doubles, up to [`MAX_BACKOFF_SECONDS`].
const BASE_BACKOFF_SECONDS: i64 = 30;
const MAX_BACKOFF_SECONDS: i64 = 3600;

/// Seconds before the next attempt after `attempts` failed ones.
pub fn backoff_seconds(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    BASE_BACKOFF_SECONDS
        .saturating_mul(1i64 << exp)
        .min(MAX_BACKOFF_SECONDS)
}

/// Delivers every message due now: one pass, as `kasho serve` runs it periodically (tests call
/// it directly).
pub async fn deliver_due(core: &Core) -> AppResult<DeliveryCounts> {
    let mut counts = DeliveryCounts::default();
    // A bounded number of batches: retried messages are not due again within the pass.
    for _ in 0..50 {
        let now = core.clock.now();
        let batch = core
            .store
            .claim_mail(now, now.plus_seconds(LEASE_SECONDS), BATCH)
            .await?;
        if batch.is_empty() {
            break;
        }
        for msg in batch {
            let outcome = attempt(core, &msg).await;
            match &outcome {
                Delivery::Done => {
                    counts.sent += 1;
                    tracing::info!(mail_id = %msg.id, kind = %msg.kind, attempts = msg.attempts, "mail delivered");
                }
                Delivery::Retry {
                    next_attempt_at,
                    error,
                } => {
                    counts.retried += 1;
                    tracing::warn!(mail_id = %msg.id, kind = %msg.kind, attempts = msg.attempts, error = %error,
                        retry_at = %next_attempt_at.to_rfc3339(), "mail delivery failed; will retry");
                }
                Delivery::Failed { error } => {
                    counts.failed += 1;
                    tracing::error!(mail_id = %msg.id, kind = %msg.kind, attempts = msg.attempts, error = %error,
                        "mail delivery failed; giving up");
                }
            }
            core.store
                .finish_mail(&msg.id, core.clock.now(), &outcome)
                .await?;
        }
    }
    Ok(counts)
}

async fn attempt(core: &Core, msg: &OutboxRecord) -> Delivery {
    let settings = &core.settings.mail;
    let give_up = |error: String| Delivery::Failed { error };
    let Some(stored) = msg.message.as_deref() else {
        return give_up("the message text is missing".into());
    };
    let Some(tenant) = TenantId::parse(&msg.tenant_id) else {
        return give_up("the message names no valid tenant".into());
    };
    let opened = match core
        .keyring
        .open_text(&MAIL_OUTBOX_MESSAGE.at(tenant.as_str(), &msg.id), stored)
        .await
    {
        Ok(t) => t,
        Err(_) => return give_up("cannot open the sealed message".into()),
    };
    let sealed: Sealed = match serde_json::from_str(&opened) {
        Ok(s) => s,
        Err(_) => return give_up("the sealed message is malformed".into()),
    };
    // Every message goes to a login of its tenant (an invitation, a reset link). One whose
    // login has gone since it was queued (an erased customer's, whose address was replaced) is
    // not sent, nor written to the mailbox: the erasure removed its files, and nothing may
    // write a new one.
    if let Ok(to) = crate::domain::values::Email::parse(&sealed.to) {
        match super::users::find_by_email(core, Some(&tenant), &to).await {
            Ok(Some(_)) => {}
            Ok(None) => return give_up("the recipient's login no longer exists".into()),
            Err(_) => {
                return Delivery::Retry {
                    next_attempt_at: core.clock.now().plus_seconds(backoff_seconds(msg.attempts)),
                    error: "recipient check: storage unavailable".into(),
                };
            }
        }
    }
    let result = match &settings.smtp {
        Some(target) => send_smtp(target, &settings.from, &sealed.to, &sealed.data)
            .await
            .map_err(|e| (e.to_string(), e.permanent())),
        None => write_mailbox(&settings.mailbox_dir, &msg.id, &sealed.data)
            .await
            .map_err(|e| (format!("mailbox: {}", e.kind()), false)),
    };
    match result {
        Ok(()) => Delivery::Done,
        Err((error, permanent)) => {
            let max = i64::from(settings.max_attempts.max(1));
            if permanent || msg.attempts >= max {
                give_up(error)
            } else {
                Delivery::Retry {
                    next_attempt_at: core.clock.now().plus_seconds(backoff_seconds(msg.attempts)),
                    error,
                }
            }
        }
    }
}

/// Removes the development mailbox's messages addressed to any of `addresses` (lower-cased):
/// what an erasure calls once it has committed, so no `.eml` file keeps an erased customer's
/// address or links. Only the `To:` header of each file is compared; a file that cannot be
/// read is left (and logged). Does nothing when mail goes to SMTP (nothing is kept here then).
pub async fn remove_mailbox_files(core: &Core, addresses: &[String]) {
    if addresses.is_empty() {
        return;
    }
    let dir = core.settings.mail.mailbox_dir.clone();
    let wanted: Vec<String> = addresses.iter().map(|a| format!("<{a}>")).collect();
    let removed = tokio::task::spawn_blocking(move || remove_addressed(&dir, &wanted)).await;
    match removed {
        Ok(Ok(n)) if n > 0 => {
            tracing::info!(removed = n, "mailbox files of an erased customer removed")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e.kind(), "could not clean the mailbox after an erasure")
        }
        Err(e) => tracing::warn!(error = %e, "could not clean the mailbox after an erasure"),
    }
}

fn remove_addressed(dir: &std::path::Path, wanted: &[String]) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // The header block ends at the first empty line.
        let to = text
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix("To: "))
            .map(str::to_ascii_lowercase);
        if to.is_some_and(|t| wanted.iter().any(|w| t.trim() == w)) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes `<dir>/<id>.eml` (mode 0600 in a 0700 directory), atomically by renaming.
async fn write_mailbox(dir: &std::path::Path, id: &str, data: &str) -> std::io::Result<()> {
    let dir = dir.to_owned();
    let id = id.to_owned();
    let data = data.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        crate::crypto::keys::create_private_dir(&dir)?;
        let tmp = dir.join(format!(".{id}.eml.tmp"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(data.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{id}.eml")))
    })
    .await
    .map_err(std::io::Error::other)?
}

// ---------------------------------------------------------------------------------------------
// SMTP (RFC 5321) with STARTTLS (RFC 3207) and AUTH (RFC 4954).

/// A failed SMTP exchange: the stage and the reply code, nothing the server said besides.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("smtp {stage}: {kind}")]
    Io {
        stage: &'static str,
        kind: std::io::ErrorKind,
    },
    #[error("smtp {stage}: timed out")]
    Timeout { stage: &'static str },
    #[error("smtp {stage}: reply {code}")]
    Refused { stage: &'static str, code: u16 },
    #[error("smtp {stage}: malformed reply")]
    Malformed { stage: &'static str },
    /// The server does not offer what the configuration requires (STARTTLS, an AUTH
    /// mechanism): nothing was sent in clear. Retried, since an attacker on the path may be
    /// stripping the capability.
    #[error("smtp {stage}: not offered by the server")]
    NotOffered { stage: &'static str },
    /// The TLS handshake failed (an untrusted or mismatching certificate, no common version).
    #[error("smtp starttls: handshake failed ({kind})")]
    Tls { kind: std::io::ErrorKind },
}

impl SmtpError {
    /// A 5xx reply: the server will not take this message, retrying does not help.
    pub fn permanent(&self) -> bool {
        matches!(self, SmtpError::Refused { code, .. } if (500..600).contains(code))
    }
}

/// A connection to the server, plain or inside TLS.
trait SmtpStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> SmtpStream for T {}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

struct Conn {
    io: BufReader<Box<dyn SmtpStream>>,
    /// The text lines of the last reply (after the code), upper-cased: EHLO's capabilities.
    lines: Vec<String>,
}

impl Conn {
    async fn reply(&mut self, stage: &'static str) -> Result<u16, SmtpError> {
        self.lines.clear();
        let lines = &mut self.lines;
        let io = &mut self.io;
        let read = async {
            let mut code = None;
            let mut total = 0usize;
            loop {
                let mut line = String::new();
                let n = io.read_line(&mut line).await.map_err(|e| SmtpError::Io {
                    stage,
                    kind: e.kind(),
                })?;
                total += n;
                if n == 0 || total > 64 * 1024 || line.len() < 3 {
                    return Err(SmtpError::Malformed { stage });
                }
                let c: u16 = line
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .ok_or(SmtpError::Malformed { stage })?;
                if code.is_some_and(|prev| prev != c) {
                    return Err(SmtpError::Malformed { stage });
                }
                code = Some(c);
                lines.push(line.get(4..).unwrap_or("").trim().to_ascii_uppercase());
                // "250-…" continues, "250 …" (or a bare "250") ends the reply.
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(c);
                }
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, read)
            .await
            .map_err(|_| SmtpError::Timeout { stage })?
    }

    async fn send(&mut self, stage: &'static str, bytes: &[u8]) -> Result<(), SmtpError> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        tokio::time::timeout(COMMAND_TIMEOUT, write)
            .await
            .map_err(|_| SmtpError::Timeout { stage })?
            .map_err(|e| SmtpError::Io {
                stage,
                kind: e.kind(),
            })
    }

    /// Sends a command and expects a reply in `ok`.
    async fn command(
        &mut self,
        stage: &'static str,
        line: &str,
        ok: &[u16],
    ) -> Result<u16, SmtpError> {
        self.send(stage, format!("{line}\r\n").as_bytes()).await?;
        let code = self.reply(stage).await?;
        if ok.contains(&code) {
            Ok(code)
        } else {
            Err(SmtpError::Refused { stage, code })
        }
    }

    /// Whether the last (EHLO) reply lists the `keyword` extension.
    fn offers(&self, keyword: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l.split_whitespace().next() == Some(keyword))
    }

    /// The AUTH mechanisms of the last (EHLO) reply.
    fn auth_mechanisms(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("AUTH ").or_else(|| l.strip_prefix("AUTH=")))
            .flat_map(|m| m.split_whitespace().map(str::to_owned))
            .collect()
    }

    /// STARTTLS: asks, then runs the TLS handshake on the same connection. Anything the server
    /// sent after its `220` and before the handshake (which an attacker on the path could
    /// have injected in clear) aborts the connection rather than being read as a reply.
    async fn starttls(self, target: &SmtpTarget) -> Result<Conn, SmtpError> {
        let mut c = self;
        c.command("starttls", "STARTTLS", &[220]).await?;
        if !c.io.buffer().is_empty() {
            return Err(SmtpError::Malformed { stage: "starttls" });
        }
        let connector =
            crate::service::alerts::tls_connector(target.ca_file.as_deref()).map_err(|_| {
                SmtpError::Tls {
                    kind: std::io::ErrorKind::InvalidInput,
                }
            })?;
        let name = rustls_pki_types::ServerName::try_from(target.host.clone()).map_err(|_| {
            SmtpError::Tls {
                kind: std::io::ErrorKind::InvalidInput,
            }
        })?;
        let plain = c.io.into_inner();
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, plain))
            .await
            .map_err(|_| SmtpError::Timeout { stage: "starttls" })?
            .map_err(|e| SmtpError::Tls { kind: e.kind() })?;
        Ok(Conn {
            io: BufReader::new(Box::new(tls)),
            lines: Vec::new(),
        })
    }

    /// AUTH PLAIN (or LOGIN when the server offers only that), inside TLS.
    async fn authenticate(&mut self, auth: &SmtpAuth) -> Result<(), SmtpError> {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        use secrecy::ExposeSecret;
        let mechanisms = self.auth_mechanisms();
        if mechanisms.iter().any(|m| m == "PLAIN") {
            let mut raw = zeroize::Zeroizing::new(Vec::new());
            raw.push(0);
            raw.extend_from_slice(auth.username.as_bytes());
            raw.push(0);
            raw.extend_from_slice(auth.password.expose_secret().as_bytes());
            let line = zeroize::Zeroizing::new(format!("AUTH PLAIN {}", STANDARD.encode(&*raw)));
            self.command("auth", &line, &[235]).await?;
            Ok(())
        } else if mechanisms.iter().any(|m| m == "LOGIN") {
            self.command("auth", "AUTH LOGIN", &[334]).await?;
            self.command("auth", &STANDARD.encode(auth.username.as_bytes()), &[334])
                .await?;
            let pass =
                zeroize::Zeroizing::new(STANDARD.encode(auth.password.expose_secret().as_bytes()));
            self.command("auth", &pass, &[235]).await?;
            Ok(())
        } else {
            Err(SmtpError::NotOffered { stage: "auth" })
        }
    }
}

/// The DATA payload: CRLF line endings, leading dots doubled, and the terminating `.` line.
pub fn dot_stuff(data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 16);
    for line in data.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    // `split` yields an empty last piece after a final newline: drop its extra CRLF.
    if data.ends_with('\n') {
        out.truncate(out.len() - 2);
    }
    out.push_str(".\r\n");
    out
}

/// Sends one message to `target`: STARTTLS first when the target says so (nothing else is sent
/// before TLS, and a server that does not offer it gets nothing), then AUTH if configured.
pub async fn send_smtp(
    target: &SmtpTarget,
    from: &str,
    to: &str,
    data: &str,
) -> Result<(), SmtpError> {
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| SmtpError::Timeout { stage: "connect" })?
    .map_err(|e| SmtpError::Io {
        stage: "connect",
        kind: e.kind(),
    })?;
    let mut c = Conn {
        io: BufReader::new(Box::new(stream)),
        lines: Vec::new(),
    };
    let greeting = c.reply("greeting").await?;
    if greeting != 220 {
        return Err(SmtpError::Refused {
            stage: "greeting",
            code: greeting,
        });
    }
    let helo = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    if target.starttls {
        // STARTTLS is an ESMTP extension: no HELO fallback, no plain-text fallback.
        c.command("ehlo", &format!("EHLO {helo}"), &[250]).await?;
        if !c.offers("STARTTLS") {
            return Err(SmtpError::NotOffered { stage: "starttls" });
        }
        c = c.starttls(target).await?;
        // RFC 3207: forget what was learnt in clear and ask again.
        c.command("ehlo", &format!("EHLO {helo}"), &[250]).await?;
        if let Some(auth) = &target.auth {
            c.authenticate(auth).await?;
        }
    } else if c
        .command("ehlo", &format!("EHLO {helo}"), &[250])
        .await
        .is_err()
    {
        c.command("helo", &format!("HELO {helo}"), &[250]).await?;
    }
    c.command("mail", &format!("MAIL FROM:<{from}>"), &[250])
        .await?;
    c.command("rcpt", &format!("RCPT TO:<{to}>"), &[250, 251])
        .await?;
    c.command("data", "DATA", &[354]).await?;
    c.send("data", dot_stuff(data).as_bytes()).await?;
    let code = c.reply("data").await?;
    if code != 250 {
        return Err(SmtpError::Refused {
            stage: "data",
            code,
        });
    }
    // The message is accepted; a failing QUIT changes nothing.
    let _ = c.command("quit", "QUIT", &[221]).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_stuffed_and_lines_end_in_crlf() {
        assert_eq!(dot_stuff("a\r\n.b\n..c\r\n"), "a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff("x"), "x\r\n.\r\n");
        assert_eq!(dot_stuff(".\r\n"), "..\r\n.\r\n");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let d: Vec<i64> = (1..=9).map(backoff_seconds).collect();
        assert_eq!(d, vec![30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

    #[test]
    fn composed_messages_have_headers_and_crlf() {
        let m = compose(
            "k@example.com",
            "u@example.com",
            "Hi\r\nBcc: x",
            "line1\nline2",
            "id1",
            Timestamp::from_unix_seconds(0),
        );
        assert!(m.contains("Subject: Hi  Bcc: x\r\n"), "{m}");
        assert!(m.contains("Message-ID: <id1@example.com>"));
        assert!(m.ends_with("\r\n\r\nline1\r\nline2\r\n"));
    }
}
