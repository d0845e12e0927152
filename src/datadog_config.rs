//! The Datadog Agent's own configuration: where its IPC server listens and
//! where its token and certificate live, read from `datadog.yaml` and the
//! `DD_*` environment variables with the Agent's defaults and precedence, so
//! a client on an Agent's host needs no other setting.
//!
//! The Agent resolves (and this module does the same):
//! - the address: `ipc_address` (deprecated) if set, else `cmd_host`
//!   (default `localhost`), which must be `localhost` or a loopback IP: the
//!   Agent refuses to start otherwise; the port: `cmd_port` (default 5001);
//! - the token: `auth_token_file_path`, else `auth_token` next to
//!   `datadog.yaml`;
//! - the certificate: `ipc_cert_file_path`, else `ipc_cert.pem` next to the
//!   token file.
//!
//! Each key's environment variable (`DD_` and the key in capitals) wins over
//! the file; an empty variable or value counts as unset, and keys match in
//! any case, as Viper reads them. Paths are taken as written: a relative
//! path is relative to the current directory, as for the Agent's own CLI.
//! Every other key is ignored.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use remote_tagger::client::RemoteTagger;
//! use remote_tagger::datadog_config::AgentEndpoint;
//!
//! let agent = AgentEndpoint::from_datadog_config("/etc/datadog-agent/datadog.yaml".as_ref())?;
//! let tagger = RemoteTagger::start(agent.client_config())?;
//! # drop(tagger); Ok(()) }
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use saphyr::{Scalar, Yaml, YamlLoader};
use saphyr_parser::Parser;

use crate::client::{ClientConfig, TlsSettings};
use crate::defaults;

/// The Agent's default `cmd_host`.
pub const DEFAULT_CMD_HOST: &str = "localhost";
/// The Agent's default `cmd_port`.
pub const DEFAULT_CMD_PORT: u16 = defaults::PORT;
/// The Agent's token file name, next to its configuration by default.
pub const AUTH_TOKEN_FILE_NAME: &str = "auth_token";
/// The Agent's certificate file name, next to its token file by default.
pub const IPC_CERT_FILE_NAME: &str = "ipc_cert.pem";
/// What the Agent looks for in a configuration folder.
pub const CONFIG_FILE_NAME: &str = "datadog.yaml";

/// The keys of `datadog.yaml` that say where the IPC server is; each is
/// overridden by its [`env_var`].
const IPC_ADDRESS: &str = "ipc_address";
const CMD_HOST: &str = "cmd_host";
const CMD_PORT: &str = "cmd_port";
const AUTH_TOKEN_FILE_PATH: &str = "auth_token_file_path";
const IPC_CERT_FILE_PATH: &str = "ipc_cert_file_path";

/// The variable the Agent reads for `key`: `DD_` and the key in capitals.
fn env_var(key: &str) -> String {
    format!("DD_{}", key.to_ascii_uppercase())
}

/// Where a Datadog Agent's IPC server is, and the files to authenticate to
/// it and to verify it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEndpoint {
    /// `HOST:PORT`, an IPv6 host in brackets.
    pub target: String,
    /// The bearer token file.
    pub auth_token_file: PathBuf,
    /// `ipc_cert.pem`: the certificate the server presents, followed by its key.
    pub ipc_cert_file: PathBuf,
}

/// Why the Agent's configuration gave no endpoint. Each is one line naming
/// the file or variable, and the key.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatadogConfigError {
    /// The config file could not be read.
    #[error("cannot read the Datadog Agent config {}: {reason}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The system's message.
        reason: String,
    },
    /// The config file is not YAML.
    #[error("the Datadog Agent config {} is not valid YAML: {reason}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The YAML parser's message, with the position.
        reason: String,
    },
    /// `origin` is the file, or the environment variable that set the key.
    #[error("{origin}: {key}: {reason}")]
    Key {
        /// The file, or the environment variable, that set the key.
        origin: String,
        /// The key (`cmd_port`, `ipc_address`...).
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

impl AgentEndpoint {
    /// Reads `path` (a `datadog.yaml`, or the folder holding one) and this
    /// process's `DD_*` environment variables.
    pub fn from_datadog_config(path: &Path) -> Result<Self, DatadogConfigError> {
        Self::from_datadog_config_with_env(path, |name| std::env::var(name).ok())
    }

    /// As [`Self::from_datadog_config`], with the environment looked up by
    /// `env` instead of the process's.
    pub fn from_datadog_config_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, DatadogConfigError> {
        let path = if path.is_dir() {
            path.join(CONFIG_FILE_NAME)
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&path).map_err(|e| DatadogConfigError::Unreadable {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Self::from_datadog_yaml(&path, &text, env)
    }

    /// Resolves from `text`, the contents of the configuration at `path`.
    fn from_datadog_yaml(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, DatadogConfigError> {
        let document = load_first_document(path, text)?;
        let settings = Settings {
            path,
            document: &document,
            env: &env,
        };
        let host = match settings.get(IPC_ADDRESS)? {
            Some(address) => address,
            None => settings
                .get(CMD_HOST)?
                .unwrap_or_else(|| Setting::default(CMD_HOST, DEFAULT_CMD_HOST)),
        };
        let port = match settings.get(CMD_PORT)? {
            Some(port) => port.port()?,
            None => DEFAULT_CMD_PORT,
        };
        let target = host.loopback_target(port)?;
        let auth_token_file = match settings.get(AUTH_TOKEN_FILE_PATH)? {
            Some(setting) => PathBuf::from(setting.text),
            None => sibling(path, AUTH_TOKEN_FILE_NAME),
        };
        let ipc_cert_file = match settings.get(IPC_CERT_FILE_PATH)? {
            Some(setting) => PathBuf::from(setting.text),
            None => sibling(&auth_token_file, IPC_CERT_FILE_NAME),
        };
        Ok(Self {
            target,
            auth_token_file,
            ipc_cert_file,
        })
    }

    /// A client of this Agent: its target and token, verifying the server
    /// against its `ipc_cert.pem`; the other settings are the defaults.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(
            self.target.clone(),
            self.auth_token_file.clone(),
            TlsSettings::verify(self.ipc_cert_file.clone()),
        )
    }
}

/// `name` in the folder of `file`, as Go's `filepath.Join(filepath.Dir(file), name)`.
fn sibling(file: &Path, name: &str) -> PathBuf {
    file.parent().unwrap_or(Path::new("")).join(name)
}

/// The first document of `text` (the only one the Agent reads), or an
/// empty one. Duplicate keys are accepted, the last one winning, as the
/// Agent's YAML reader does.
fn load_first_document<'input>(
    path: &Path,
    text: &'input str,
) -> Result<Yaml<'input>, DatadogConfigError> {
    let mut loader = YamlLoader::<Yaml>::default();
    loader.allow_duplicate_keys(true);
    let malformed = |error: &saphyr::ScanError| DatadogConfigError::Malformed {
        path: path.to_owned(),
        reason: format!(
            "line {} column {}: {}",
            error.marker().line(),
            error.marker().col() + 1,
            error.info()
        ),
    };
    Parser::new_from_str(text)
        .load(&mut loader, true)
        .map_err(|e| malformed(&e))?;
    if let Some(error) = loader.error() {
        return Err(malformed(error));
    }
    let document = loader
        .into_documents()
        .into_iter()
        .next()
        .unwrap_or(Yaml::Value(Scalar::Null));
    match document {
        Yaml::Mapping(_) | Yaml::Value(Scalar::Null) => Ok(document),
        _ => Err(DatadogConfigError::Malformed {
            path: path.to_owned(),
            reason: "the top level is not a mapping of keys to values".to_owned(),
        }),
    }
}

/// The keys of one configuration and the environment over it.
struct Settings<'a, 'input, E> {
    path: &'a Path,
    document: &'a Yaml<'input>,
    env: &'a E,
}

impl<E: Fn(&str) -> Option<String>> Settings<'_, '_, E> {
    /// `key` from its environment variable, else from the file; `None`
    /// when unset, null or empty in both.
    fn get(&self, key: &'static str) -> Result<Option<Setting>, DatadogConfigError> {
        let var = env_var(key);
        if let Some(value) = (self.env)(&var).filter(|value| !value.is_empty()) {
            return Ok(Some(Setting {
                key,
                origin: format!("environment variable {var}"),
                text: value,
                number: None,
            }));
        }
        let Some(node) = self.file_value(key) else {
            return Ok(None);
        };
        let origin = self.path.display().to_string();
        let wrong_type = |found: &str| DatadogConfigError::Key {
            origin: origin.clone(),
            key,
            reason: format!("expected a single value, found {found}"),
        };
        let (text, number) = match untagged(node) {
            Yaml::Value(Scalar::Null) => return Ok(None),
            Yaml::Value(Scalar::String(text)) => (text.to_string(), None),
            Yaml::Value(Scalar::Integer(number)) => (number.to_string(), Some(*number as f64)),
            Yaml::Value(Scalar::FloatingPoint(number)) => {
                (number.to_string(), Some(number.into_inner()))
            }
            Yaml::Value(Scalar::Boolean(value)) => (value.to_string(), None),
            Yaml::Mapping(_) => return Err(wrong_type("a mapping")),
            Yaml::Sequence(_) => return Err(wrong_type("a list")),
            _ => return Err(wrong_type("a tagged value that does not parse")),
        };
        if text.is_empty() {
            return Ok(None);
        }
        Ok(Some(Setting {
            key,
            origin,
            text,
            number,
        }))
    }

    /// The top-level value whose key is `name` in any case (the last one
    /// if several are).
    fn file_value(&self, name: &str) -> Option<&Yaml<'_>> {
        let Yaml::Mapping(mapping) = self.document else {
            return None;
        };
        mapping
            .iter()
            .rev()
            .find(|(key, _)| {
                matches!(untagged(key), Yaml::Value(Scalar::String(text)) if text.eq_ignore_ascii_case(name))
            })
            .map(|(_, value)| value)
    }
}

/// The node under any tags (`!!str 5001`).
fn untagged<'a, 'input>(node: &'a Yaml<'input>) -> &'a Yaml<'input> {
    match node {
        Yaml::Tagged(_, inner) => untagged(inner),
        other => other,
    }
}

/// One key's value as the Agent's `GetString` sees it, and where it came from.
struct Setting {
    key: &'static str,
    origin: String,
    text: String,
    /// The value when the file wrote a number.
    number: Option<f64>,
}

impl Setting {
    fn default(key: &'static str, text: &str) -> Self {
        Self {
            key,
            origin: "the default".to_owned(),
            text: text.to_owned(),
            number: None,
        }
    }

    fn error(&self, reason: String) -> DatadogConfigError {
        DatadogConfigError::Key {
            origin: self.origin.clone(),
            key: self.key,
            reason,
        }
    }

    /// A port, written as a number or a numeric string.
    fn port(&self) -> Result<u16, DatadogConfigError> {
        let port = match self.number {
            Some(number) if number.fract() == 0.0 && (1.0..=65535.0).contains(&number) => {
                Some(number as u16)
            }
            Some(_) => None,
            None => self.text.trim().parse().ok().filter(|port| *port != 0),
        };
        port.ok_or_else(|| {
            self.error(format!(
                "expected a port number from 1 to 65535, found {:?}",
                self.text
            ))
        })
    }

    /// `HOST:PORT` for this host, which the Agent accepts only as
    /// `localhost` or a loopback IP address.
    fn loopback_target(&self, port: u16) -> Result<String, DatadogConfigError> {
        let host = self.text.as_str();
        if host == DEFAULT_CMD_HOST {
            return Ok(format!("{host}:{port}"));
        }
        match host.parse::<IpAddr>() {
            Ok(ip) if ip.to_canonical().is_loopback() => Ok(match ip {
                IpAddr::V4(_) => format!("{host}:{port}"),
                IpAddr::V6(_) => format!("[{host}]:{port}"),
            }),
            _ => Err(self.error(format!(
                "{host:?} is neither localhost nor a loopback IP address, which the Agent \
                 refuses too (give --target to reach another address)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::client::TlsMode;

    const CONFIG: &str = "/etc/datadog-agent/datadog.yaml";

    /// Resolves `yaml` as the file at [`CONFIG`] under the environment `vars`.
    fn resolve(yaml: &str, vars: &[(&str, &str)]) -> Result<AgentEndpoint, DatadogConfigError> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        AgentEndpoint::from_datadog_yaml(Path::new(CONFIG), yaml, |name| vars.get(name).cloned())
    }

    fn endpoint(target: &str, token: &str, cert: &str) -> AgentEndpoint {
        AgentEndpoint {
            target: target.to_owned(),
            auth_token_file: token.into(),
            ipc_cert_file: cert.into(),
        }
    }

    fn error_text(yaml: &str, vars: &[(&str, &str)]) -> String {
        resolve(yaml, vars).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_config_gives_the_agents_defaults_next_to_it() {
        let defaults = endpoint(
            "localhost:5001",
            "/etc/datadog-agent/auth_token",
            "/etc/datadog-agent/ipc_cert.pem",
        );
        assert_eq!(resolve("", &[]).unwrap(), defaults);
        assert_eq!(resolve("# only comments\n", &[]).unwrap(), defaults);
        assert_eq!(resolve("~\n", &[]).unwrap(), defaults);
        // A real configuration: many keys we do not know, nested ones too.
        let busy = "api_key: ENC[api_key]\nsite: datadoghq.eu\nlogs_enabled: true\n\
                    logs_config:\n  container_collect_all: true\n  processing_rules: [{type: exclude_at_match}]\n\
                    tags: [env:prod, team:core]\nanchored: &a {x: 1}\nreused: *a\n";
        assert_eq!(resolve(busy, &[]).unwrap(), defaults);
    }

    #[test]
    fn each_key_is_read() {
        let yaml = "cmd_host: 127.0.0.1\ncmd_port: 5101\n\
                    auth_token_file_path: /run/dd/token\nipc_cert_file_path: /run/dd/cert.pem\n";
        assert_eq!(
            resolve(yaml, &[]).unwrap(),
            endpoint("127.0.0.1:5101", "/run/dd/token", "/run/dd/cert.pem")
        );
    }

    #[test]
    fn the_certificate_follows_a_moved_token_file() {
        assert_eq!(
            resolve("auth_token_file_path: /var/lib/dd/auth_token\n", &[]).unwrap(),
            endpoint(
                "localhost:5001",
                "/var/lib/dd/auth_token",
                "/var/lib/dd/ipc_cert.pem"
            )
        );
        // ... unless it is set too.
        assert_eq!(
            resolve(
                "auth_token_file_path: /var/lib/dd/auth_token\nipc_cert_file_path: /tls/ipc.pem\n",
                &[]
            )
            .unwrap()
            .ipc_cert_file,
            PathBuf::from("/tls/ipc.pem")
        );
    }

    #[test]
    fn dd_variables_win_over_the_file() {
        let yaml = "cmd_host: 127.0.0.1\ncmd_port: 5101\nauth_token_file_path: /file/token\n\
                    ipc_cert_file_path: /file/cert.pem\n";
        let vars = [
            ("DD_CMD_HOST", "::1"),
            ("DD_CMD_PORT", "6001"),
            ("DD_AUTH_TOKEN_FILE_PATH", "/env/token"),
            ("DD_IPC_CERT_FILE_PATH", "/env/cert.pem"),
        ];
        assert_eq!(
            resolve(yaml, &vars).unwrap(),
            endpoint("[::1]:6001", "/env/token", "/env/cert.pem")
        );
        // One variable overrides its key only; the certificate follows the
        // token the variable moved.
        assert_eq!(
            resolve(
                "cmd_port: 5101\n",
                &[("DD_AUTH_TOKEN_FILE_PATH", "/env/token")]
            )
            .unwrap(),
            endpoint("localhost:5101", "/env/token", "/env/ipc_cert.pem")
        );
        // An empty variable is unset, as for the Agent.
        assert_eq!(
            resolve("cmd_port: 5101\n", &[("DD_CMD_PORT", "")])
                .unwrap()
                .target,
            "localhost:5101"
        );
    }

    #[test]
    fn the_deprecated_ipc_address_wins_over_cmd_host() {
        assert_eq!(
            resolve("ipc_address: 127.0.0.2\ncmd_host: 127.0.0.1\n", &[])
                .unwrap()
                .target,
            "127.0.0.2:5001"
        );
        assert_eq!(
            resolve("cmd_host: 127.0.0.1\n", &[("DD_IPC_ADDRESS", "::1")])
                .unwrap()
                .target,
            "[::1]:5001"
        );
    }

    #[test]
    fn hosts_are_what_the_agent_accepts_with_ipv6_in_brackets() {
        let target =
            |host: &str| resolve(&format!("cmd_host: \"{host}\"\n"), &[]).map(|e| e.target);
        assert_eq!(target("localhost").unwrap(), "localhost:5001");
        assert_eq!(target("127.0.0.1").unwrap(), "127.0.0.1:5001");
        assert_eq!(target("127.3.4.5").unwrap(), "127.3.4.5:5001");
        assert_eq!(target("::1").unwrap(), "[::1]:5001");
        assert_eq!(
            target("::ffff:127.0.0.1").unwrap(),
            "[::ffff:127.0.0.1]:5001"
        );
        for refused in [
            "10.0.0.7",
            "0.0.0.0",
            "::",
            "agent.example",
            "LOCALHOST",
            "[::1]",
        ] {
            let error = target(refused).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "{CONFIG}: cmd_host: {refused:?} is neither localhost nor a loopback IP \
                     address, which the Agent refuses too (give --target to reach another address)"
                )
            );
        }
        let error = error_text("", &[("DD_CMD_HOST", "192.168.1.1")]);
        assert!(
            error.starts_with("environment variable DD_CMD_HOST: cmd_host: \"192.168.1.1\""),
            "{error}"
        );
    }

    #[test]
    fn the_port_is_a_number_or_a_numeric_string() {
        let target = |value: &str| resolve(&format!("cmd_port: {value}\n"), &[]).map(|e| e.target);
        assert_eq!(target("5002").unwrap(), "localhost:5002");
        assert_eq!(target("\"5003\"").unwrap(), "localhost:5003");
        assert_eq!(target("'5004'").unwrap(), "localhost:5004");
        assert_eq!(target("!!str 5005").unwrap(), "localhost:5005");
        assert_eq!(target("5006.0").unwrap(), "localhost:5006");
        assert_eq!(target("~").unwrap(), "localhost:5001");
        assert_eq!(target("\"\"").unwrap(), "localhost:5001");
        for (bad, shown) in [
            ("0", "0"),
            ("65536", "65536"),
            ("-1", "-1"),
            ("5001.5", "5001.5"),
            ("abc", "abc"),
            ("true", "true"),
        ] {
            assert_eq!(
                target(bad).unwrap_err().to_string(),
                format!(
                    "{CONFIG}: cmd_port: expected a port number from 1 to 65535, found {shown:?}"
                )
            );
        }
        assert_eq!(
            error_text("", &[("DD_CMD_PORT", "port")]),
            "environment variable DD_CMD_PORT: cmd_port: expected a port number from 1 to 65535, \
             found \"port\""
        );
    }

    #[test]
    fn a_key_of_the_wrong_type_is_named() {
        assert_eq!(
            error_text("cmd_port:\n  value: 5001\n", &[]),
            format!("{CONFIG}: cmd_port: expected a single value, found a mapping")
        );
        assert_eq!(
            error_text("auth_token_file_path: [/a, /b]\n", &[]),
            format!("{CONFIG}: auth_token_file_path: expected a single value, found a list")
        );
        assert_eq!(
            error_text("cmd_port: !!int abc\n", &[]),
            format!(
                "{CONFIG}: cmd_port: expected a single value, found a tagged value that does not parse"
            )
        );
        // A wrong type the variable hides is not an error: it is not read.
        assert!(resolve("cmd_port: [1]\n", &[("DD_CMD_PORT", "5001")]).is_ok());
    }

    #[test]
    fn keys_match_in_any_case_and_the_last_duplicate_wins() {
        assert_eq!(
            resolve("CMD_PORT: 5002\n", &[]).unwrap().target,
            "localhost:5002"
        );
        assert_eq!(
            resolve("cmd_port: 5002\nlogs_config: {}\ncmd_port: 5003\n", &[])
                .unwrap()
                .target,
            "localhost:5003"
        );
    }

    #[test]
    fn paths_are_taken_as_written() {
        let resolved = resolve(
            "auth_token_file_path: run/auth_token\nipc_cert_file_path: ./ipc.pem\n",
            &[],
        )
        .unwrap();
        assert_eq!(resolved.auth_token_file, PathBuf::from("run/auth_token"));
        assert_eq!(resolved.ipc_cert_file, PathBuf::from("./ipc.pem"));
        // The defaults sit next to the configuration, however it was named.
        let relative = |config: &str| {
            AgentEndpoint::from_datadog_yaml(Path::new(config), "", |_| None).unwrap()
        };
        assert_eq!(
            relative("datadog.yaml"),
            endpoint("localhost:5001", "auth_token", "ipc_cert.pem")
        );
        assert_eq!(
            relative("conf/datadog.yaml"),
            endpoint("localhost:5001", "conf/auth_token", "conf/ipc_cert.pem")
        );
    }

    #[test]
    fn malformed_yaml_is_one_line_naming_the_file_and_the_place() {
        for yaml in [
            "cmd_port: [5001\n",
            "a: b: c\n",
            "key: \"unterminated\n",
            "cmd_port: 1\n  cmd_host: x\n",
            "cmd_port: *undefined\n",
        ] {
            let error = error_text(yaml, &[]);
            assert!(
                error.starts_with(&format!(
                    "the Datadog Agent config {CONFIG} is not valid YAML: line "
                )),
                "{yaml:?}: {error}"
            );
            assert_eq!(error.lines().count(), 1, "{error}");
        }
        assert_eq!(
            error_text("a: b: c\n", &[]),
            format!(
                "the Datadog Agent config {CONFIG} is not valid YAML: line 1 column 5: mapping \
                 values are not allowed in this context"
            )
        );
        assert_eq!(
            error_text("- cmd_port\n- 5001\n", &[]),
            format!(
                "the Datadog Agent config {CONFIG} is not valid YAML: the top level is not a \
                 mapping of keys to values"
            )
        );
    }

    #[test]
    fn files_are_read_from_disk_or_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("datadog.yaml");
        std::fs::write(&config, "cmd_port: 5009\n").unwrap();
        let expected = AgentEndpoint {
            target: "localhost:5009".to_owned(),
            auth_token_file: dir.path().join("auth_token"),
            ipc_cert_file: dir.path().join("ipc_cert.pem"),
        };
        let no_env = |_: &str| None;
        assert_eq!(
            AgentEndpoint::from_datadog_config_with_env(&config, no_env).unwrap(),
            expected
        );
        // The folder, as the Agent's -c takes it.
        assert_eq!(
            AgentEndpoint::from_datadog_config_with_env(dir.path(), no_env).unwrap(),
            expected
        );
        let missing = dir.path().join("nope.yaml");
        let error = AgentEndpoint::from_datadog_config_with_env(&missing, no_env)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "cannot read the Datadog Agent config {}: ",
                missing.display()
            )),
            "{error}"
        );
        std::fs::write(&config, b"cmd_port: \xff\n").unwrap();
        let error = AgentEndpoint::from_datadog_config_with_env(&config, no_env)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot read the Datadog Agent config"),
            "{error}"
        );
        assert_eq!(error.lines().count(), 1);
    }

    #[test]
    fn the_client_config_verifies_against_the_agents_certificate() {
        let agent = endpoint("localhost:5001", "/a/auth_token", "/a/ipc_cert.pem");
        let config = agent.client_config();
        assert_eq!(config.target, "localhost:5001");
        assert_eq!(config.auth_token_file, PathBuf::from("/a/auth_token"));
        assert_eq!(
            config.tls.mode,
            TlsMode::Verify {
                ca_file: "/a/ipc_cert.pem".into()
            }
        );
    }
}
