//! An HTTPS client of the provisioning API with the operator's `admin` certificate.
//!
//! Each manager serves the API; the client tries them in turn and stays with the first that
//! answers. A request that cannot reach a manager (connection refused, handshake failed,
//! connection lost before an answer) moves on to the next one; an answer of 503 (an election,
//! no quorum) is retried for a while. Only requests that are safe to send twice are retried
//! after the connection was lost mid-way: reads, and import chunks (whose batches are applied
//! once, see `docs/provisioning.md`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use onehop_overlay::crl::CrlStore;
use onehop_overlay::farmfile::FarmFile;
use onehop_overlay::tls::{Credentials, TlsFiles};
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The provisioning API's well-known port.
pub const API_PORT: u16 = 8443;

/// How long one request may take (an import chunk included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to connect and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long 503 answers (an election) are retried.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(15);

/// An error answer of the API, or a failure to get one.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error.
    #[error("{status}: {}{}", .body.message, .body.field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Status {
        /// The HTTP status.
        status: u16,
        /// The error's body.
        body: ErrorBody,
    },
    /// No manager could be reached.
    #[error("no manager answered: {0}")]
    Unreachable(String),
    /// The answer was not what the API gives.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ApiError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The body of an error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// `invalid`, `not_found`, `exists`, `conflict`, `forbidden`, `unavailable`, ...
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// The field at fault.
    #[serde(default)]
    pub field: Option<String>,
}

/// A failed exchange: whether the request may have reached the manager, and why.
#[derive(Debug)]
struct Failure {
    sent: bool,
    why: String,
}

/// A client of the API.
pub struct Client {
    managers: Vec<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
    /// The manager that answered last (tried first).
    preferred: std::sync::atomic::AtomicUsize,
}

impl Client {
    /// A client of `managers` (their API addresses), with the admin credentials in `tls`.
    pub fn new(managers: Vec<SocketAddr>, tls: &TlsFiles) -> anyhow::Result<Client> {
        anyhow::ensure!(!managers.is_empty(), "no manager address given");
        let creds = Credentials::load(tls)?;
        let crl = CrlStore::open(creds.ca.to_vec(), tls.crl.clone())?;
        let mut cfg = creds.client_config(&crl.current())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            managers,
            tls: Arc::new(cfg),
            preferred: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A client of the farm in `dir` (its `farm.json`), with the farm's admin certificate.
    pub fn for_farm(dir: &Path) -> anyhow::Result<Client> {
        let farm = FarmFile::load(dir)?;
        let admin = farm.admin.clone().ok_or_else(|| {
            anyhow::anyhow!("{}/farm.json names no admin certificate", dir.display())
        })?;
        let managers: Vec<SocketAddr> = farm
            .members
            .iter()
            .filter(|m| m.kind == "manager")
            .map(|m| {
                m.addr("api")
                    .unwrap_or_else(|| SocketAddr::new(m.ip, API_PORT))
            })
            .collect();
        Client::new(managers, &farm.client_tls(&admin))
    }

    /// One exchange with one manager. The error says whether the request may have reached it.
    async fn once(
        &self,
        addr: SocketAddr,
        method: &Method,
        path: &str,
        content_type: &str,
        body: &Bytes,
        key: Option<&str>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let before = |e: String| Failure {
            sent: false,
            why: e,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| before(format!("{addr}: connect timed out")))?
            .map_err(|e| before(format!("{addr}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| before(format!("{addr}: TLS handshake timed out")))?
            .map_err(|e| before(format!("{addr}: TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| before(format!("{addr}: {}", chain(&e))))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, content_type);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| before(e.to_string()))?;
        let after = |e: String| Failure { sent: true, why: e };
        let exchange = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| after(format!("{addr}: {}", chain(&e))))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| after(format!("{addr}: {}", chain(&e))))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| after(format!("{addr}: no answer within {REQUEST_TIMEOUT:?}")))?
    }

    /// Sends a request and returns the status and body of the answer. `retry_safe`: the request
    /// may be sent twice (reads, import chunks); others are never sent again once they may have
    /// reached a manager.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
        retry_safe: bool,
    ) -> Result<(u16, Bytes), ApiError> {
        self.raw_keyed(method, path, content_type, body, retry_safe, None)
            .await
    }

    /// A JSON request with an `Idempotency-Key` (the API applies a request with the same key
    /// once and answers a retry with the first outcome), so it is retried like a read: on
    /// another manager, after a failover, until it has an answer.
    pub async fn call_idempotent<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        key: &str,
    ) -> Result<T, ApiError> {
        let bytes = json_body(body)?;
        let (status, bytes) = self
            .raw_keyed(method, path, "application/json", bytes, true, Some(key))
            .await?;
        decode(status, &bytes)
    }

    async fn raw_keyed(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
        retry_safe: bool,
        key: Option<&str>,
    ) -> Result<(u16, Bytes), ApiError> {
        use std::sync::atomic::Ordering;
        let retry_safe = retry_safe || method == Method::GET;
        let start = Instant::now();
        let n = self.managers.len();
        loop {
            let first = self.preferred.load(Ordering::Relaxed);
            let mut errors = Vec::new();
            let mut unavailable = None;
            for k in 0..n {
                let i = (first + k) % n;
                match self
                    .once(self.managers[i], &method, path, content_type, &body, key)
                    .await
                {
                    Ok((status, bytes)) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        if status != StatusCode::SERVICE_UNAVAILABLE {
                            return Ok((status.as_u16(), bytes));
                        }
                        // 503: an election or no quorum. Retry if nothing was written.
                        let nothing_written = serde_json::from_slice::<ErrorBody>(&bytes)
                            .is_ok_and(|b| b.message.contains("nothing was written"));
                        if !retry_safe && !nothing_written {
                            return Ok((status.as_u16(), bytes));
                        }
                        unavailable = Some(bytes);
                        break;
                    }
                    Err(f) if refused(&f.why) => {
                        return Err(ApiError::Unreachable(format!(
                            "{}: the manager refused this client's certificate (revoked, expired or not from the farm's CA?)",
                            f.why
                        )));
                    }
                    Err(f) if f.sent && !retry_safe => {
                        return Err(ApiError::Unreachable(format!(
                            "{}; the request may have been applied: read it back before trying again",
                            f.why
                        )));
                    }
                    Err(f) => errors.push(f.why),
                }
            }
            if start.elapsed() > UNAVAILABLE_RETRY {
                return match unavailable {
                    Some(bytes) => Ok((503, bytes)),
                    None => Err(ApiError::Unreachable(errors.join("; "))),
                };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A JSON request; an error status becomes [`ApiError::Status`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ApiError> {
        let bytes = json_body(body)?;
        let (status, bytes) = self
            .raw(method, path, "application/json", bytes, false)
            .await?;
        decode(status, &bytes)
    }
}

/// The bytes of a JSON body (none for `None`).
fn json_body(body: Option<&serde_json::Value>) -> Result<Bytes, ApiError> {
    match body {
        Some(v) => serde_json::to_vec(v)
            .map(Bytes::from)
            .map_err(|e| ApiError::Protocol(e.to_string())),
        None => Ok(Bytes::new()),
    }
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether a failure is the server refusing our certificate (no use trying again).
fn refused(why: &str) -> bool {
    let w = why.to_ascii_lowercase();
    w.contains("alert") && (w.contains("certificate") || w.contains("revoked"))
}

/// Decodes an answer: 2xx as `T` (an empty body as JSON null), anything else as an error.
pub fn decode<T: DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<T, ApiError> {
    if (200..300).contains(&status) {
        let text: &[u8] = if bytes.is_empty() { b"null" } else { bytes };
        serde_json::from_slice(text).map_err(|e| {
            ApiError::Protocol(format!("{status}: {e}: {}", String::from_utf8_lossy(bytes)))
        })
    } else {
        let body = serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
            code: "error".into(),
            message: String::from_utf8_lossy(bytes).into_owned(),
            field: None,
        });
        Err(ApiError::Status { status, body })
    }
}

/// Percent-encodes a path segment (an AOR has `@`, user parts may have more).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@+".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
