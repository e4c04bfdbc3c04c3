//! Configuration: a TOML file plus `INKAN_<SECTION>__<KEY>` environment
//! overrides, validated in full before anything binds a port.
//!
//! [`Config::from_figment`] is the one entry point; tests build their own
//! figment from a TOML string instead of touching the process environment.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// Exit code for a configuration the process refuses to run with (EX_CONFIG...
/// in sysexits terms `EX_USAGE`, as linkerd does).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// More serving threads than this only adds contention.
const MAX_WORKERS: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Issuer and resource base, e.g. `https://mcp.example.com`; no trailing slash.
    pub public_url: String,
    pub listen: SocketAddr,
    /// Threads serving HTTP, each running its own single-threaded runtime
    /// and accepting from the same socket (nginx's worker model); `0` means
    /// one per CPU.
    #[serde(default)]
    pub workers: usize,
    pub hanko: HankoConfig,
    #[serde(default)]
    pub tokens: TokensConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub oauth: OAuthConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub revocation: RevocationConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HankoConfig {
    /// Hanko's public API; JWKS at `<api_url>/.well-known/jwks.json`.
    pub api_url: String,
    /// Expected `aud` of session JWTs.
    pub audience: String,
    /// Expected `iss`, checked only when set.
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// Admin API for session liveness checks (optional).
    #[serde(default)]
    pub admin_api_url: Option<String>,
    #[serde(default)]
    pub admin_api_key: Option<String>,
    /// Where the login page loads Hanko Elements from.
    #[serde(default = "default_elements_url")]
    pub elements_url: String,
    /// How long a liveness answer is trusted.
    #[serde(default = "default_liveness_cache", with = "humantime_serde")]
    pub liveness_cache: Duration,
    /// How long cached JWKS keys keep verifying while Hanko is unreachable.
    #[serde(default = "default_jwks_max_staleness", with = "humantime_serde")]
    pub jwks_max_staleness: Duration,
    /// Minimum time between refreshes triggered by an unknown `kid`.
    #[serde(default = "default_jwks_cooldown", with = "humantime_serde")]
    pub jwks_refresh_cooldown: Duration,
    /// A development sign-in endpoint (`inkan dev` points it at the emulator's
    /// `/dev/sign-in`): the login page then also offers a plain email form.
    #[serde(default)]
    pub dev_sign_in_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// No token outlives the Hanko session that created its grant.
    pub bind_to_session: bool,
    /// How long a rotated-away refresh token still returns the same successor.
    #[serde(with = "humantime_serde")]
    pub refresh_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub code_ttl: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(30 * 86400),
            bind_to_session: true,
            refresh_grace: Duration::from_secs(30),
            code_ttl: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Sqlite,
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// SQLite database file.
    pub path: PathBuf,
    /// Standalone Redis.
    pub url: Option<String>,
    /// Redis Cluster seed nodes; when set, `url` is ignored.
    pub nodes: Vec<String>,
    /// Key prefix, so several deployments can share one Redis.
    pub prefix: String,
    /// How often SQLite deletes expired rows.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How often coalesced `last_used` updates are written.
    #[serde(with = "humantime_serde")]
    pub touch_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sqlite,
            path: PathBuf::from("inkan.db"),
            url: None,
            nodes: Vec::new(),
            prefix: "inkan:".into(),
            sweep_interval: Duration::from_secs(300),
            touch_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// Dynamic registrations unused this long expire.
    #[serde(with = "humantime_serde")]
    pub registration_ttl: Duration,
    /// Registrations per client IP per minute.
    pub registrations_per_minute: u32,
    /// Accept https `client_id`s (Client ID Metadata Documents).
    pub client_id_metadata_documents: bool,
    /// When non-empty, only these hosts may serve metadata documents.
    pub cimd_allowed_hosts: Vec<String>,
    /// TEST-ONLY switch: permit metadata documents on loopback/private
    /// addresses, including plain `http://127.0.0.1:<port>` URLs, so tests can
    /// serve documents locally. Never enable it in production: it opens the
    /// server to SSRF against internal networks.
    pub cimd_allow_private_addresses: bool,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            registration_ttl: Duration::from_secs(30 * 86400),
            registrations_per_minute: 20,
            client_id_metadata_documents: true,
            cimd_allowed_hosts: Vec::new(),
            cimd_allow_private_addresses: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Largest request body proxied upstream, in bytes.
    pub body_limit: u64,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time to the upstream's response headers.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Validated tokens cached in process; `0` disables the cache.
    pub cache_capacity: u64,
    /// Safety-net TTL of a cached validation, bounding staleness if every
    /// invalidation signal is lost.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long shutdown waits for in-flight streams.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Longest a client may take to send a request head, and longest an
    /// idle keep-alive connection stays open (slow-loris protection).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Origins allowed by CORS on the MCP endpoints and OAuth routes; empty means any.
    pub cors_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            body_limit: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(60),
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogoutScope {
    /// Logout revokes every grant of the user.
    User,
    /// Logout revokes only grants made under this Hanko session.
    Session,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    pub on_logout: LogoutScope,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            on_logout: LogoutScope::User,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info,inkan=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Served at `/mcp/<id>`.
    pub id: String,
    pub name: String,
    /// `http://` or `https://` URL of the MCP endpoint.
    pub upstream: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// PEM file with the CA certificates that sign an https upstream's
    /// certificate (a private CA); without it the system's roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca_file: Option<PathBuf>,
}

/// The certificates in a PEM file, for trusting a private CA.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

fn default_cookie_name() -> String {
    "hanko".into()
}
fn default_elements_url() -> String {
    "https://cdn.jsdelivr.net/npm/@teamhanko/hanko-elements@2.1.0/dist/elements.js".into()
}
fn default_liveness_cache() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_max_staleness() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_jwks_cooldown() -> Duration {
    Duration::from_secs(30)
}

/// Durations as humans write them: `"90s"`, `"1h"`, `"30d"`.
mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{s}' is not a duration ({e}); write e.g. \"90s\", \"15m\", \"1h\", \"30d\""
            ))
        })
    }
}

/// One thing wrong with a configuration: which key, what value, what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub accepted: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.accepted)?;
        if !self.value.is_empty() {
            write!(f, " (got {})", self.value)?;
        }
        Ok(())
    }
}

/// All the errors found in one configuration.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// File (when it exists or was named explicitly) overlaid by `INKAN_*` env.
    pub fn figment(path: &Path, explicit: bool) -> Result<Figment, ConfigErrors> {
        if explicit && !path.exists() {
            return Err(ConfigErrors(vec![ConfigError {
                key: "--config".into(),
                value: path.display().to_string(),
                accepted: "the configuration file must exist".into(),
            }]));
        }
        Ok(Figment::new()
            .merge(Toml::file(path))
            .merge(Env::prefixed("INKAN_").split("__")))
    }

    /// Parses from a TOML string (tests and `inkan dev`).
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigErrors> {
        Config::from_figment(Figment::from(Toml::string(toml)))
    }

    /// Overlays `extra` (any serializable value, e.g. a table built in code).
    pub fn from_figment_with<T: Serialize>(
        base: Figment,
        extra: T,
    ) -> Result<Config, ConfigErrors> {
        Config::from_figment(base.merge(Serialized::defaults(extra)))
    }

    /// Extracts and validates. Every problem is reported, not just the first.
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigErrors> {
        let config: Config = figment.extract().map_err(|errs| {
            ConfigErrors(
                errs.into_iter()
                    .map(|e| {
                        let key = if e.path.is_empty() {
                            "(top level)".to_string()
                        } else {
                            e.path.join(".")
                        };
                        ConfigError {
                            key,
                            value: String::new(),
                            accepted: e.kind.to_string(),
                        }
                    })
                    .collect(),
            )
        })?;
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err = |key: &str, value: &str, accepted: &str| {
            errs.push(ConfigError {
                key: key.into(),
                value: format!("'{value}'"),
                accepted: accepted.into(),
            })
        };

        check_base_url(&mut err, "public_url", &self.public_url);
        if self.workers > MAX_WORKERS {
            err(
                "workers",
                &self.workers.to_string(),
                &format!("0 (one per CPU) up to {MAX_WORKERS}"),
            );
        }
        if self.public_url.ends_with('/') {
            err(
                "public_url",
                &self.public_url,
                "public_url must not end with '/'",
            );
        }
        check_base_url(&mut err, "hanko.api_url", &self.hanko.api_url);
        if self.hanko.audience.trim().is_empty() {
            err(
                "hanko.audience",
                &self.hanko.audience,
                "must name the audience of Hanko session JWTs",
            );
        }
        if let Some(admin) = &self.hanko.admin_api_url {
            check_base_url(&mut err, "hanko.admin_api_url", admin);
        }
        if self.hanko.admin_api_key.is_some() && self.hanko.admin_api_url.is_none() {
            err(
                "hanko.admin_api_key",
                "***",
                "is only used together with hanko.admin_api_url",
            );
        }
        if !is_token_name(&self.hanko.cookie_name) {
            err(
                "hanko.cookie_name",
                &self.hanko.cookie_name,
                "must be a cookie name (letters, digits, '-', '_')",
            );
        }
        if !self.hanko.elements_url.starts_with("https://")
            && !self.hanko.elements_url.starts_with("http://")
        {
            err(
                "hanko.elements_url",
                &self.hanko.elements_url,
                "must be an http(s) URL",
            );
        }

        if let Some(dev) = &self.hanko.dev_sign_in_url {
            check_base_url(&mut err, "hanko.dev_sign_in_url", dev);
        }

        let t = &self.tokens;
        let d = |d: Duration| humantime::format_duration(d).to_string();
        if t.access_ttl < Duration::from_secs(1) || t.access_ttl > Duration::from_secs(86400) {
            err(
                "tokens.access_ttl",
                &d(t.access_ttl),
                "must be between 1s and 24h",
            );
        }
        if t.refresh_ttl < t.access_ttl || t.refresh_ttl > Duration::from_secs(365 * 86400) {
            err(
                "tokens.refresh_ttl",
                &d(t.refresh_ttl),
                "must be at least tokens.access_ttl and at most 365d",
            );
        }
        if t.refresh_grace > Duration::from_secs(300) {
            err(
                "tokens.refresh_grace",
                &d(t.refresh_grace),
                "must be at most 5m",
            );
        }
        if t.code_ttl < Duration::from_secs(1) || t.code_ttl > Duration::from_secs(600) {
            err(
                "tokens.code_ttl",
                &d(t.code_ttl),
                "must be between 1s and 10m",
            );
        }

        match self.store.backend {
            StoreBackend::Sqlite => {
                if self.store.path.as_os_str().is_empty() {
                    err("store.path", "", "must name the SQLite database file");
                }
            }
            StoreBackend::Redis => {
                if self.store.url.is_none() && self.store.nodes.is_empty() {
                    err(
                        "store.url",
                        "",
                        "backend \"redis\" needs store.url (standalone) or store.nodes (cluster)",
                    );
                }
                for (i, u) in self
                    .store
                    .url
                    .iter()
                    .chain(self.store.nodes.iter())
                    .enumerate()
                {
                    if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                        let key = if self.store.url.is_some() && i == 0 {
                            "store.url".to_string()
                        } else {
                            "store.nodes".into()
                        };
                        err(&key, &mask_url(u), "must be a redis:// or rediss:// URL");
                    }
                }
            }
        }

        let g = &self.gateway;
        if g.body_limit == 0 {
            err(
                "gateway.body_limit",
                "0",
                "must be a positive number of bytes",
            );
        }
        for (key, value) in [
            ("gateway.connect_timeout", g.connect_timeout),
            ("gateway.first_byte_timeout", g.first_byte_timeout),
            ("gateway.header_read_timeout", g.header_read_timeout),
        ] {
            if value.is_zero() {
                err(
                    key,
                    &d(value),
                    "must be a positive duration, such as \"30s\"",
                );
            }
        }

        if self.services.is_empty() {
            err(
                "services",
                "[]",
                "configure at least one [[services]] entry",
            );
        }
        let mut seen = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let key = |k: &str| format!("services[{i}].{k}");
            if !is_token_name(&s.id) {
                err(
                    &key("id"),
                    &s.id,
                    "must be letters, digits, '-' or '_' (it becomes /mcp/<id>)",
                );
            }
            if !seen.insert(s.id.as_str()) {
                err(
                    &key("id"),
                    &s.id,
                    "duplicate service id; each service needs its own",
                );
            }
            let https = match url::Url::parse(&s.upstream) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    u.scheme() == "https"
                }
                _ => {
                    err(
                        &key("upstream"),
                        &s.upstream,
                        "must be an http or https URL",
                    );
                    false
                }
            };
            if let Some(ca) = &s.upstream_ca_file {
                let shown = ca.display().to_string();
                if !https {
                    err(
                        &key("upstream_ca_file"),
                        &shown,
                        "only for an https upstream",
                    );
                } else if let Err(why) = read_ca_file(ca) {
                    err(&key("upstream_ca_file"), &shown, &why);
                }
            }
            for scope in &s.scopes {
                if scope.is_empty()
                    || scope
                        .chars()
                        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
                {
                    err(
                        &key("scopes"),
                        scope,
                        "scopes are non-empty and contain no spaces, quotes or backslashes",
                    );
                }
                if scope == "offline_access" {
                    err(
                        &key("scopes"),
                        scope,
                        "offline_access is not a service scope; refresh tokens are always issued",
                    );
                }
            }
        }
        errs
    }

    pub fn service(&self, id: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.id == id)
    }

    /// `<public_url>/mcp/<service>`: the resource (audience) of a service.
    pub fn resource_url(&self, service_id: &str) -> String {
        format!("{}/mcp/{service_id}", self.public_url)
    }

    /// The effective configuration as TOML with secrets masked.
    /// How many serving threads `workers` asks for on this machine.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        if c.hanko.admin_api_key.is_some() {
            c.hanko.admin_api_key = Some("********".into());
        }
        c.store.url = c.store.url.as_deref().map(mask_url);
        c.store.nodes = c.store.nodes.iter().map(|n| mask_url(n)).collect();
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

fn check_base_url(err: &mut impl FnMut(&str, &str, &str), key: &str, value: &str) {
    match url::Url::parse(value) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
            if u.query().is_some() || u.fragment().is_some() {
                err(key, value, "must not carry a query or fragment");
            }
        }
        _ => err(key, value, "must be an absolute http(s) URL"),
    }
}

fn is_token_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Hides the password of a `redis://user:pass@host` URL.
pub fn mask_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("********"));
            parsed.to_string()
        }
        _ => u.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        public_url = "https://mcp.example.com"
        listen = "127.0.0.1:8080"
        [hanko]
        api_url = "https://tenant.hanko.io"
        audience = "mcp.example.com"
        [[services]]
        id = "notes"
        name = "Team notes"
        upstream = "http://127.0.0.1:9000/mcp"
        scopes = ["notes:read", "notes:write"]
    "#;

    fn errors_of(toml: &str) -> Vec<ConfigError> {
        Config::from_toml_str(toml)
            .expect_err("config should be refused")
            .0
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::from_toml_str(GOOD).unwrap();
        assert_eq!(c.tokens.access_ttl, Duration::from_secs(3600));
        assert_eq!(c.tokens.refresh_ttl, Duration::from_secs(30 * 86400));
        assert!(c.tokens.bind_to_session);
        assert_eq!(c.store.backend, StoreBackend::Sqlite);
        assert_eq!(c.hanko.cookie_name, "hanko");
        assert_eq!(c.resource_url("notes"), "https://mcp.example.com/mcp/notes");
        assert_eq!(c.workers, 0);
        assert!(c.worker_threads() >= 1, "one serving thread per CPU");
        let three = GOOD.replacen(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nworkers = 3",
            1,
        );
        assert_eq!(Config::from_toml_str(&three).unwrap().worker_threads(), 3);
    }

    #[test]
    fn durations_are_human() {
        let c = Config::from_toml_str(&format!(
            "{GOOD}\n[tokens]\naccess_ttl = \"15m\"\nrefresh_ttl = \"7d\"\n"
        ))
        .unwrap();
        assert_eq!(c.tokens.access_ttl, Duration::from_secs(900));
        assert_eq!(c.tokens.refresh_ttl, Duration::from_secs(7 * 86400));
        let e = errors_of(&format!("{GOOD}\n[tokens]\naccess_ttl = \"soon\"\n"));
        assert_eq!(e[0].key, "tokens.access_ttl");
        assert!(
            e[0].accepted.contains("'soon' is not a duration"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn bad_values_name_key_value_and_what_is_accepted() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "https://mcp.example.com\"",
                "https://mcp.example.com/\"",
                "public_url",
                "must not end with '/'",
            ),
            (
                "upstream = \"http://127.0.0.1:9000/mcp\"",
                "upstream = \"ftp://x/mcp\"",
                "services[0].upstream",
                "must be an http or https URL",
            ),
            (
                "upstream = \"http://127.0.0.1:9000/mcp\"",
                "upstream = \"http://x/mcp\"\nupstream_ca_file = \"/etc/hostname\"",
                "services[0].upstream_ca_file",
                "only for an https upstream",
            ),
            (
                "upstream = \"http://127.0.0.1:9000/mcp\"",
                "upstream = \"https://x/mcp\"\nupstream_ca_file = \"/nonexistent/ca.pem\"",
                "services[0].upstream_ca_file",
                "cannot read it",
            ),
            (
                "upstream = \"http://127.0.0.1:9000/mcp\"",
                "upstream = \"https://x/mcp\"\nupstream_ca_file = \"Cargo.toml\"",
                "services[0].upstream_ca_file",
                "holds no PEM certificate",
            ),
            (
                "[hanko]",
                "[store]\nbackend = \"redis\"\n[hanko]",
                "store.url",
                "needs store.url",
            ),
            (
                "[hanko]",
                "[store]\nbackend = \"etcd\"\n[hanko]",
                "store.backend",
                "etcd",
            ),
            (
                "id = \"notes\"",
                "id = \"no tes\"",
                "services[0].id",
                "letters",
            ),
            (
                "listen = \"127.0.0.1:8080\"",
                "listen = \"127.0.0.1:8080\"\nworkers = 1000",
                "workers",
                "up to 256",
            ),
            (
                "[hanko]",
                "[gateway]\nheader_read_timeout = \"0s\"\n[hanko]",
                "gateway.header_read_timeout",
                "must be a positive duration",
            ),
        ];
        for (from, to, key, needle) in cases {
            let errs = errors_of(&GOOD.replacen(from, to, 1));
            let hit = errs
                .iter()
                .find(|e| e.key == *key)
                .unwrap_or_else(|| panic!("no error for {key}: {errs:?}"));
            assert!(hit.to_string().contains(needle), "{key}: {hit}");
        }
    }

    #[test]
    fn duplicate_service_ids_are_refused() {
        let dup = format!(
            "{GOOD}\n[[services]]\nid = \"notes\"\nname = \"again\"\nupstream = \"http://127.0.0.1:9001/mcp\"\n"
        );
        let errs = errors_of(&dup);
        assert!(
            errs.iter()
                .any(|e| e.key == "services[1].id" && e.accepted.contains("duplicate")),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errs = errors_of(&GOOD.replace("[hanko]", "[hanko]\napi_ulr = \"x\""));
        assert!(
            errs.iter().any(|e| e.accepted.contains("api_ulr")),
            "{errs:?}"
        );
    }

    #[test]
    fn secrets_are_masked() {
        let c = Config::from_toml_str(&GOOD.replace(
            "[hanko]",
            "[store]\nbackend = \"redis\"\nurl = \"redis://u:hunter2@127.0.0.1:6379\"\n[hanko]\nadmin_api_url = \"https://t.hanko.io/admin\"\nadmin_api_key = \"sekrit\"",
        ))
        .unwrap();
        let shown = c.to_masked_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("sekrit"),
            "{shown}"
        );
        assert!(shown.contains("********"));
    }
}
