//! `flare`: what support needs, in one archive, optionally sent to Datadog.
//!
//! The archive holds `tagger-list.json` (the mirror, as `list --json`
//! prints it), `status.json` (the client's state and last error, for when
//! the sync failed), `metrics.txt` (a scrape of the client's metrics),
//! `config.json` (the effective configuration; the token file's path but
//! never the token, the API key as its last 5 characters), `version.txt`,
//! and `logs.txt` (the tail of `--log-file`, when set).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use remote_tagger::client::RemoteTagger;
use remote_tagger::datadog_config::AgentEndpoint;
use remote_tagger::flare::{self, FlareFile, FlareUpload};
use remote_tagger::{build_info, metrics};
use serde_json::json;

use super::client_commands::{tagger_list_json, wait_whole_store};
use super::terminal::escape;
use super::{CliResult, FlareArgs, LoggingSettings};

/// How much of the log file goes in: recent enough to matter, small
/// enough to upload.
const LOG_TAIL_BYTES: u64 = 2 * 1024 * 1024;

pub async fn flare(args: FlareArgs, logging: &LoggingSettings) -> CliResult {
    let api_key = args
        .api_key
        .as_deref()
        .map(str::trim)
        .filter(|key| !key.is_empty());
    if args.send.is_some() && api_key.is_none() {
        return Err("--send needs a Datadog API key: pass --api-key or set DD_API_KEY".to_owned());
    }
    let hostname = flare::hostname();
    let endpoint = args.connect.endpoint()?;
    let config = args.connect.client_config(Some(&args.subscription))?;
    let target = config.target.clone();
    let tagger = RemoteTagger::start(config).map_err(|e| e.to_string())?;
    let registry = metrics::client_registry(&tagger);
    // A flare is most wanted when things are broken: an unsynced mirror is
    // reported, not fatal.
    if let Err(error) = wait_whole_store(&tagger, &target, &args.sync).await {
        eprintln!(
            "remote-tagger: warning: {}; the flare holds what the mirror has",
            escape(&error)
        );
    }
    let entities = tagger.mirror().list();
    let status = tagger.status().borrow().clone();
    let scrape = metrics::encode(&registry);
    tagger.stop().await;

    let mut files = vec![
        FlareFile::new("tagger-list.json", pretty(&tagger_list_json(&entities))),
        FlareFile::new(
            "status.json",
            pretty(&json!({
                "target": target,
                "state": format!("{:?}", status.state),
                "mirrored_entities": status.mirrored_entities,
                "extension_aware": status.extension_aware,
                "last_error": status.last_error.as_ref().map(ToString::to_string),
            })),
        ),
        FlareFile::new("metrics.txt", scrape),
        FlareFile::new(
            "config.json",
            pretty(&effective_config(&args, &endpoint, logging, &hostname)),
        ),
        FlareFile::new("version.txt", build_info::report()),
    ];
    if let Some(log_file) = &logging.log_file {
        let logs = flare::log_tail(log_file, LOG_TAIL_BYTES)
            .unwrap_or_else(|e| format!("cannot read the log file {}: {e}\n", log_file.display()));
        files.push(FlareFile::new("logs.txt", logs));
    }

    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let top = format!("remote-tagger-flare-{hostname}-{stamp}");
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("{top}.tar.gz")));
    flare::write_archive(&output, &top, &files).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!(
            "cannot write the flare to {}: something is already there, and a flare never \
             overwrites a file nor follows a link (remove it or choose another --output)",
            output.display()
        ),
        _ => format!(
            "cannot write the flare to {}: {e} (check --output)",
            output.display()
        ),
    })?;
    eprintln!("remote-tagger: flare written to {}", output.display());

    if let (Some(site_url), Some(api_key)) = (&args.send, api_key) {
        send(&output, site_url, api_key, &args, hostname).await?;
    }
    Ok(())
}

async fn send(
    archive: &Path,
    site_url: &str,
    api_key: &str,
    args: &FlareArgs,
    hostname: String,
) -> CliResult {
    let mut upload = FlareUpload::new(site_url, api_key);
    upload.case_id = args.case_id.clone();
    upload.email = args.email.clone();
    upload.hostname = hostname;
    eprintln!("remote-tagger: sending the flare to {}", upload.endpoint());
    let receipt = flare::send(archive, &upload)
        .await
        .map_err(|e| format!("flare not sent: {e}"))?;
    println!("{receipt}");
    Ok(())
}

/// The configuration this flare ran with. Secrets stay out: the token is
/// never read here (only its file's path is shown), the API key shows only
/// its last 5 characters.
fn effective_config(
    args: &FlareArgs,
    endpoint: &AgentEndpoint,
    logging: &LoggingSettings,
    hostname: &str,
) -> serde_json::Value {
    let connect = &args.connect;
    let path = |path: &Path| path.display().to_string();
    json!({
        "target": endpoint.target,
        "auth_token_file": path(&endpoint.auth_token_file),
        "ca_file": path(&endpoint.ipc_cert_file),
        "datadog_config": connect.datadog_config.as_deref().map(path),
        "server_name": connect.server_name,
        "client_cert_file": connect.client_cert_file.as_deref().map(path),
        "no_client_cert": connect.no_client_cert,
        "insecure_skip_verify": connect.insecure_skip_verify,
        "insecure_plaintext": connect.insecure_plaintext,
        "cardinality": args.subscription.cardinality.as_str(),
        "prefixes": args.subscription.prefixes,
        "sync": args.sync,
        "logging": logging,
        "rust_log": std::env::var("RUST_LOG").ok(),
        "flare": {
            "output": args.output.as_deref().map(path),
            "send": args.send,
            "case_id": args.case_id,
            "email": args.email,
            "api_key": args.api_key.as_deref().map(flare::redact_api_key),
            "hostname": hostname,
        },
    })
}

fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values always serialize");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn the_configuration_shows_no_secret() {
        let key = "0123456789abcdef0123456789SECRET";
        let cli = Cli::parse_from([
            "remote-tagger",
            "flare",
            "--auth-token-file",
            "/etc/datadog-agent/auth_token",
            "--api-key",
            key,
            "--send",
            "https://flare.example",
        ]);
        let Command::Flare(args) = cli.command else {
            panic!("parsed as flare");
        };
        let logging = LoggingSettings {
            log_level: None,
            log_format: super::super::LogFormat::Text,
            log_file: Some(PathBuf::from("/var/log/remote-tagger.log")),
        };
        let endpoint = args.connect.endpoint().unwrap();
        let config = effective_config(&args, &endpoint, &logging, "host").to_string();
        assert!(!config.contains(key), "{config}");
        assert!(!config.contains("0123456789"), "{config}");
        assert!(config.contains("ECRET"), "{config}");
        assert!(config.contains("/etc/datadog-agent/auth_token"), "{config}");
        assert!(config.contains("/var/log/remote-tagger.log"), "{config}");
    }

    #[test]
    fn the_configuration_shows_what_the_datadog_config_resolved_to() {
        let dir = tempfile::tempdir().unwrap();
        let datadog_yaml = dir.path().join("datadog.yaml");
        std::fs::write(&datadog_yaml, "cmd_port: 6002\n").unwrap();
        let cli = Cli::parse_from([
            "remote-tagger",
            "flare",
            "--datadog-config",
            datadog_yaml.to_str().unwrap(),
        ]);
        let Command::Flare(args) = cli.command else {
            panic!("parsed as flare");
        };
        let logging = LoggingSettings {
            log_level: None,
            log_format: super::super::LogFormat::Text,
            log_file: None,
        };
        let endpoint = args.connect.endpoint().unwrap();
        let config = effective_config(&args, &endpoint, &logging, "host");
        assert_eq!(config["target"], "localhost:6002");
        let path = |name: &str| dir.path().join(name).display().to_string();
        assert_eq!(config["auth_token_file"], path("auth_token"));
        assert_eq!(config["ca_file"], path("ipc_cert.pem"));
        assert_eq!(config["datadog_config"], path("datadog.yaml"));
    }
}
