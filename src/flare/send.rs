//! Uploading a flare the way the Datadog Agent does, so Datadog's intake
//! treats ours like an Agent's:
//!
//! 1. `HEAD <site>/support/flare[/<case id>]`, following redirects; the chain
//!    must end in 200 or 404 (the endpoint expects POST, so 404 is fine).
//!    Where it ends is where the flare goes: a POST that gets redirected
//!    loses its body.
//! 2. A streamed (chunked) `multipart/form-data` POST there, redirects not
//!    followed: fields `case_id` and `email` when given, the file part
//!    `flare_file`, then `hostname` and `version`.
//!
//! The API key travels in the `DD-API-KEY` header of both. An attempt that
//! meets a connection error or a 5xx answer is retried, up to
//! [`FlareUpload::attempts`] in all, [`FlareUpload::retry_delay`] apart;
//! anything else is final. Proxies come from `HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY` and `NO_PROXY`.

use std::path::Path;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::multipart::{Form, Part};
use reqwest::{Response, StatusCode, redirect};

use crate::error_text::error_chain;

/// The Agent's flare path under the site's flare host.
pub const SUPPORT_PATH: &str = "/support/flare";

const API_KEY_HEADER: &str = "DD-API-KEY";

/// Longest part of an unexpected answer quoted in an error.
const SAMPLE_CHARS: usize = 150;

/// Where and how to send a flare.
#[derive(Debug, Clone)]
pub struct FlareUpload {
    /// The Datadog site's flare host, e.g. `https://flare.datadoghq.com`;
    /// [`SUPPORT_PATH`] and the case id are appended as the Agent does.
    pub site_url: String,
    /// The support case to attach the flare to; `None` opens a new one.
    pub case_id: Option<String>,
    /// The address Datadog support answers to.
    pub email: Option<String>,
    /// The Datadog API key the upload is authorized with.
    pub api_key: String,
    /// The host the flare is from, as support sees it.
    pub hostname: String,
    /// The version reported with the flare (this build's).
    pub version: String,
    /// Attempts in all (the Agent makes 3).
    pub attempts: u32,
    /// Pause between attempts (the Agent waits 1 s).
    pub retry_delay: Duration,
    /// Limit on each request, upload included (the Agent's is 60 s).
    pub timeout: Duration,
}

impl FlareUpload {
    /// The Agent's settings, this host's name and this build's version.
    pub fn new(site_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            site_url: site_url.into(),
            case_id: None,
            email: None,
            api_key: api_key.into(),
            hostname: super::hostname(),
            version: crate::build_info::VERSION.to_owned(),
            attempts: 3,
            retry_delay: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
        }
    }

    /// `<site>/support/flare[/<case id>]`.
    pub fn endpoint(&self) -> String {
        let mut url = format!("{}{SUPPORT_PATH}", self.site_url.trim_end_matches('/'));
        if let Some(case_id) = &self.case_id {
            url.push('/');
            url.push_str(case_id);
        }
        url
    }
}

/// Why a flare was not accepted. The messages are the Agent's, one line
/// each; none quotes more of the API key than its last 5 characters.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlareSendError {
    /// The archive could not be read.
    #[error("cannot read the flare archive {path}: {reason}")]
    Archive {
        /// The archive file.
        path: String,
        /// The system's message.
        reason: String,
    },
    /// The HTTP client could not be built (its reason).
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// No connection to the flare endpoint.
    #[error("cannot reach {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// The HTTP client's reason.
        reason: String,
    },
    /// The redirect probe that finds the regional URL failed.
    #[error("could not determine the flare URL via redirects: HTTP {code} {text}")]
    Resolve {
        /// The HTTP status code.
        code: u16,
        /// The status text.
        text: String,
    },
    /// Datadog refused the API key.
    #[error("HTTP 403 Forbidden: {}", forbidden_hint(key_tail))]
    Forbidden {
        /// The key's last characters, empty when there is no key.
        key_tail: String,
    },
    /// Another HTTP error status.
    #[error("HTTP {code} {text}")]
    Status {
        /// The HTTP status code.
        code: u16,
        /// The status text.
        text: String,
    },
    /// A 200 answer that is not JSON.
    #[error("the server answered 200 but {what}; it said: {sample:?}")]
    NotJson {
        /// What it is instead.
        what: String,
        /// The start of the body.
        sample: String,
    },
    #[error(
        "the server answered 200 with JSON that is not a flare answer ({reason}); it said: {sample:?}"
    )]
    /// A 200 answer whose JSON is not a flare receipt.
    BadJson {
        /// The JSON parser's reason.
        reason: String,
        /// The start of the body.
        sample: String,
    },
    #[error(
        "the server refused the flare: {error}{}",
        request_suffix(request_uuid)
    )]
    /// Datadog answered with an error in its JSON.
    Refused {
        /// Its error text.
        error: String,
        /// The request id to quote to support, when given.
        request_uuid: Option<String>,
    },
}

fn forbidden_hint(key_tail: &str) -> String {
    if key_tail.is_empty() {
        "the API key is missing (--api-key or DD_API_KEY)".to_owned()
    } else {
        format!("make sure your API key is valid (API key ending with: {key_tail})")
    }
}

fn request_suffix(request_uuid: &Option<String>) -> String {
    request_uuid
        .as_ref()
        .map(|uuid| format!(" (request uuid {uuid})"))
        .unwrap_or_default()
}

/// What Datadog answered to an accepted flare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlareReceipt {
    /// The support case the flare went to.
    pub case_id: Option<String>,
    /// Datadog's id of the upload.
    pub request_uuid: Option<String>,
}

impl std::fmt::Display for FlareReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("your flare was uploaded")?;
        if let Some(case_id) = &self.case_id {
            write!(f, "; case id {case_id}")?;
        }
        if let Some(uuid) = &self.request_uuid {
            write!(f, "; request uuid {uuid}")?;
        }
        Ok(())
    }
}

/// The flare intake's JSON answer.
#[derive(Debug, serde::Deserialize)]
struct IntakeAnswer {
    /// A number from Datadog; a string is accepted too.
    #[serde(default)]
    case_id: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    request_uuid: Option<String>,
}

/// Whether another attempt may succeed.
enum AttemptError {
    Transient(FlareSendError),
    Final(FlareSendError),
}

/// Sends the archive at `archive` (see the module docs).
pub async fn send(archive: &Path, upload: &FlareUpload) -> Result<FlareReceipt, FlareSendError> {
    let client_error = |e: reqwest::Error| FlareSendError::Client(error_chain(&e));
    let resolver = reqwest::Client::builder()
        .timeout(upload.timeout)
        .build()
        .map_err(client_error)?;
    let poster = reqwest::Client::builder()
        .timeout(upload.timeout)
        .redirect(redirect::Policy::none())
        .build()
        .map_err(client_error)?;
    let attempts = upload.attempts.max(1);
    let mut attempt = 1;
    loop {
        let error = match attempt_once(&resolver, &poster, archive, upload).await {
            Ok(receipt) => return Ok(receipt),
            Err(AttemptError::Final(error)) => return Err(error),
            Err(AttemptError::Transient(error)) => error,
        };
        if attempt >= attempts {
            return Err(error);
        }
        tracing::warn!(
            attempt,
            attempts,
            "flare upload failed, retrying in {:?}: {error}",
            upload.retry_delay
        );
        tokio::time::sleep(upload.retry_delay).await;
        attempt += 1;
    }
}

async fn attempt_once(
    resolver: &reqwest::Client,
    poster: &reqwest::Client,
    archive: &Path,
    upload: &FlareUpload,
) -> Result<FlareReceipt, AttemptError> {
    let endpoint = upload.endpoint();
    let api_key = upload.api_key.trim();
    let resolved = resolver
        .head(&endpoint)
        .header(API_KEY_HEADER, api_key)
        .send()
        .await
        .map_err(|e| transport_error(&endpoint, e))?;
    let status = resolved.status();
    if status != StatusCode::OK && status != StatusCode::NOT_FOUND {
        let error = FlareSendError::Resolve {
            code: status.as_u16(),
            text: reason(status),
        };
        return Err(if status.is_server_error() {
            AttemptError::Transient(error)
        } else {
            AttemptError::Final(error)
        });
    }
    let post_url = resolved.url().clone();
    tracing::debug!(%post_url, "flare URL resolved");
    let form = form(archive, upload).await.map_err(AttemptError::Final)?;
    let response = poster
        .post(post_url.clone())
        .header(API_KEY_HEADER, api_key)
        .multipart(form)
        .send()
        .await
        .map_err(|e| transport_error(post_url.as_str(), e))?;
    let retryable = response.status().is_server_error();
    analyze(response, api_key).await.map_err(|error| {
        if retryable {
            AttemptError::Transient(error)
        } else {
            AttemptError::Final(error)
        }
    })
}

/// Connection failures and timeouts may pass; a malformed request or a
/// redirect loop will not.
fn transport_error(url: &str, error: reqwest::Error) -> AttemptError {
    let described = FlareSendError::Connect {
        url: url.to_owned(),
        reason: error_chain(&error),
    };
    if error.is_builder() || error.is_redirect() {
        AttemptError::Final(described)
    } else {
        AttemptError::Transient(described)
    }
}

/// The form, in the Agent's field order, the archive streamed from disk.
async fn form(archive: &Path, upload: &FlareUpload) -> Result<Form, FlareSendError> {
    let unreadable = |e: std::io::Error| FlareSendError::Archive {
        path: archive.display().to_string(),
        reason: e.to_string(),
    };
    let file = tokio::fs::File::open(archive).await.map_err(unreadable)?;
    let file_name = archive.file_name().map_or_else(
        || "flare.tar.gz".to_owned(),
        |name| name.to_string_lossy().into_owned(),
    );
    let part = Part::stream(reqwest::Body::from(file))
        .file_name(file_name)
        .mime_str("application/octet-stream")
        .expect("a valid MIME type");
    let mut form = Form::new();
    if let Some(case_id) = &upload.case_id {
        form = form.text("case_id", case_id.clone());
    }
    if let Some(email) = &upload.email {
        form = form.text("email", email.clone());
    }
    Ok(form
        .part("flare_file", part)
        .text("hostname", upload.hostname.clone())
        .text("version", upload.version.clone()))
}

/// The Agent's reading of the intake's answer.
async fn analyze(response: Response, api_key: &str) -> Result<FlareReceipt, FlareSendError> {
    let status = response.status();
    if status == StatusCode::FORBIDDEN {
        return Err(FlareSendError::Forbidden {
            key_tail: super::api_key_tail(api_key).to_owned(),
        });
    }
    if status != StatusCode::OK {
        return Err(FlareSendError::Status {
            code: status.as_u16(),
            text: reason(status),
        });
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    // An unreadable body reads as empty: the status line already said 200.
    let body = response.text().await.unwrap_or_default();
    let sample: String = body.chars().take(SAMPLE_CHARS).collect();
    match content_type {
        Some(content_type) if content_type.starts_with("application/json") => {}
        Some(content_type) => {
            return Err(FlareSendError::NotJson {
                what: format!("with the content type {content_type}, not application/json"),
                sample,
            });
        }
        None => {
            return Err(FlareSendError::NotJson {
                what: "with no content type".to_owned(),
                sample,
            });
        }
    }
    let answer: IntakeAnswer =
        serde_json::from_str(&body).map_err(|e| FlareSendError::BadJson {
            reason: e.to_string(),
            sample: sample.clone(),
        })?;
    if let Some(error) = answer.error.filter(|error| !error.is_empty()) {
        return Err(FlareSendError::Refused {
            error,
            request_uuid: answer.request_uuid,
        });
    }
    Ok(FlareReceipt {
        case_id: answer.case_id.map(|id| match id {
            serde_json::Value::String(text) => text,
            other => other.to_string(),
        }),
        request_uuid: answer.request_uuid,
    })
}

/// The status's reason phrase ("Service Unavailable"), or "" for a code
/// without one.
fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or_default().to_owned()
}
