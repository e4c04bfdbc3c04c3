//! Client ID Metadata Documents: a `client_id` that is an https URL names a
//! JSON document describing the client, fetched from that URL.
//!
//! Fetching a URL chosen by a stranger is a server-side request forgery
//! risk, so: https only; we resolve the name ourselves, check every address
//! (no loopback, private, link-local, unique-local, CGNAT, documentation,
//! multicast or unspecified ranges, IPv4-mapped IPv6 included) and hand only
//! checked addresses to the connector, so the connection is pinned to what we
//! checked; no redirects; at most 5 KB; at most 5 s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header;
use moka::Expiry;
use moka::future::Cache;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::Deserialize;
use url::{Host, Url};

use super::client::validate_redirect_uri;
use super::now;
use crate::config::OAuthConfig;
use crate::store::{Client, ClientAuthMethod, ClientSource};

const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const CACHE_CAPACITY: u64 = 10_000;
const MIN_CACHE: Duration = Duration::from_secs(5 * 60);
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, thiserror::Error)]
pub enum DocumentError {
    #[error("client_id is not an acceptable document URL: {0}")]
    BadUrl(String),
    #[error("host is not on oauth.cimd_allowed_hosts")]
    HostNotAllowed,
    #[error("address {0} is not public")]
    PrivateAddress(IpAddr),
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("invalid document: {0}")]
    Invalid(String),
}

/// A fetched, validated client and how long it may be cached.
#[derive(Clone)]
struct Cached {
    client: Arc<Client>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Cached> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Cached, _at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct DocumentFetcher {
    http: reqwest::Client,
    cache: Cache<String, Cached>,
    allowed_hosts: Vec<String>,
    allow_private: bool,
}

impl DocumentFetcher {
    pub fn new(config: &OAuthConfig) -> Self {
        let allow_private = config.cimd_allow_private_addresses;
        let http = reqwest::Client::builder()
            .dns_resolver(CheckedResolver { allow_private })
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .no_proxy()
            .build()
            .expect("static reqwest configuration is valid");
        DocumentFetcher {
            http,
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(PerEntryTtl)
                .build(),
            allowed_hosts: config
                .cimd_allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allow_private,
        }
    }

    /// The client a document URL describes, from cache or freshly fetched.
    /// Concurrent requests for one URL share a single fetch.
    pub async fn get(&self, client_id: &str) -> Result<Arc<Client>, DocumentError> {
        self.cache
            .try_get_with(client_id.to_string(), self.fetch(client_id))
            .await
            .map(|c| c.client)
            .map_err(|e| (*e).clone())
    }

    async fn fetch(&self, client_id: &str) -> Result<Cached, DocumentError> {
        let url = self.check_url(client_id)?;
        let mut response = self
            .http
            .get(url)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| DocumentError::Fetch(error_chain(&e)))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(DocumentError::Fetch(format!("HTTP {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(DocumentError::TooLarge);
        }
        let ttl = cache_ttl(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| DocumentError::Fetch(error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(DocumentError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let client = parse_document(client_id, &body)?;
        Ok(Cached {
            client: Arc::new(client),
            ttl,
        })
    }

    fn check_url(&self, client_id: &str) -> Result<Url, DocumentError> {
        let url = Url::parse(client_id).map_err(|e| DocumentError::BadUrl(e.to_string()))?;
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(DocumentError::BadUrl(
                "no fragment or credentials allowed".into(),
            ));
        }
        let host = url
            .host()
            .ok_or_else(|| DocumentError::BadUrl("no host".into()))?;
        let test_document = self.allow_private
            && url.scheme() == "http"
            && host == Host::<&str>::Ipv4(Ipv4Addr::LOCALHOST);
        if url.scheme() != "https" && !test_document {
            return Err(DocumentError::BadUrl("only https is fetched".into()));
        }
        if !self.allowed_hosts.is_empty() {
            let name = url.host_str().unwrap_or_default().to_ascii_lowercase();
            if !self.allowed_hosts.contains(&name) {
                return Err(DocumentError::HostNotAllowed);
            }
        }
        // Literal addresses never reach the resolver, so check them here.
        let literal = match host {
            Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            Host::Domain(_) => None,
        };
        if let Some(ip) = literal
            && !self.allow_private
            && !is_public(ip)
        {
            return Err(DocumentError::PrivateAddress(ip));
        }
        Ok(url)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// How long to keep a document: its `max-age`, within [5 min, 24 h].
fn cache_ttl(headers: &reqwest::header::HeaderMap) -> Duration {
    let max_age = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|n| n.trim_matches('"').parse::<u64>().ok());
    max_age
        .map(Duration::from_secs)
        .unwrap_or(MIN_CACHE)
        .clamp(MIN_CACHE, MAX_CACHE)
}

#[derive(Deserialize)]
struct Document {
    client_id: String,
    redirect_uris: Option<Vec<String>>,
    client_name: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    grant_types: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
}

fn parse_document(client_id: &str, body: &[u8]) -> Result<Client, DocumentError> {
    let doc: Document =
        serde_json::from_slice(body).map_err(|e| DocumentError::Invalid(e.to_string()))?;
    if doc.client_id != client_id {
        return Err(DocumentError::Invalid(
            "client_id in the document differs from its URL".into(),
        ));
    }
    let redirect_uris = doc
        .redirect_uris
        .filter(|u| !u.is_empty())
        .ok_or_else(|| DocumentError::Invalid("redirect_uris is required".into()))?;
    for uri in &redirect_uris {
        validate_redirect_uri(uri).map_err(DocumentError::Invalid)?;
    }
    // A document cannot carry a secret, so its client is public.
    if doc
        .token_endpoint_auth_method
        .as_deref()
        .is_some_and(|m| m != "none")
    {
        return Err(DocumentError::Invalid(
            "token_endpoint_auth_method must be \"none\"".into(),
        ));
    }
    let https =
        |u: Option<String>| u.filter(|u| Url::parse(u).is_ok_and(|p| p.scheme() == "https"));
    Ok(Client {
        client_id: doc.client_id,
        client_name: doc
            .client_name
            .map(|n| n.chars().take(200).collect::<String>()),
        client_uri: https(doc.client_uri),
        logo_uri: https(doc.logo_uri),
        redirect_uris,
        grant_types: doc
            .grant_types
            .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]),
        auth_method: ClientAuthMethod::None,
        secret_hash: None,
        source: ClientSource::MetadataDocument,
        created_at: now(),
        expires_at: None,
    })
}

/// Resolves names and refuses any that has a non-public address; the
/// connector then connects only to the addresses returned here.
struct CheckedResolver {
    allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{} has no addresses", name.as_str()).into());
            }
            if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(Box::new(DocumentError::PrivateAddress(bad.ip()))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Whether an address is globally routable (not internal, not reserved).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        // CGNAT 100.64.0.0/10
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments 192.0.0.0/24
        || (a == 192 && b == 0 && c == 0)
        // benchmarking 198.18.0.0/15
        || (a == 198 && (b == 18 || b == 19))
        // reserved 240.0.0.0/4
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // unique local fc00::/7
        || (seg[0] & 0xfe00) == 0xfc00
        // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfe80
        // site-local (deprecated) fec0::/10
        || (seg[0] & 0xffc0) == 0xfec0
        // documentation 2001:db8::/32 and 3fff::/20
        || (seg[0] == 0x2001 && seg[1] == 0x0db8)
        || (seg[0] == 0x3fff && seg[1] < 0x1000)
        // IPv4-compatible ::/96, NAT64 64:ff9b::/96 could reach internal v4
        || (seg[0..6] == [0, 0, 0, 0, 0, 0])
        || (seg[0] == 0x64 && seg[1] == 0xff9b)
        // 6to4 2002::/16 embeds arbitrary v4 addresses
        || seg[0] == 0x2002)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn allow_list_and_scheme_are_enforced_before_any_fetch() {
        let config = OAuthConfig {
            cimd_allowed_hosts: vec!["claude.ai".into()],
            ..OAuthConfig::default()
        };
        let fetcher = DocumentFetcher::new(&config);
        assert!(
            fetcher
                .check_url("https://claude.ai/oauth/claude-code-client-metadata")
                .is_ok()
        );
        assert!(matches!(
            fetcher.check_url("https://evil.example/x"),
            Err(DocumentError::HostNotAllowed)
        ));
        let open = DocumentFetcher::new(&OAuthConfig::default());
        assert!(matches!(
            open.check_url("http://client.example/x"),
            Err(DocumentError::BadUrl(_))
        ));
        assert!(matches!(
            open.check_url("http://127.0.0.1:8000/x"),
            Err(DocumentError::BadUrl(_))
        ));
        assert!(matches!(
            open.check_url("https://[fd00::1]/x"),
            Err(DocumentError::PrivateAddress(_))
        ));
    }

    #[test]
    fn cache_lifetime_is_bounded() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(cache_ttl(&h), MIN_CACHE);
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=3600".parse().unwrap(),
        );
        assert_eq!(cache_ttl(&h), Duration::from_secs(3600));
        h.insert(header::CACHE_CONTROL, "max-age=9999999".parse().unwrap());
        assert_eq!(cache_ttl(&h), MAX_CACHE);
        h.insert(header::CACHE_CONTROL, "max-age=1".parse().unwrap());
        assert_eq!(cache_ttl(&h), MIN_CACHE);
    }

    #[test]
    fn document_must_name_itself_and_list_redirects() {
        let id = "https://client.example/meta.json";
        let ok = format!(
            r#"{{"client_id":"{id}","redirect_uris":["http://127.0.0.1/cb"],"client_name":"C"}}"#
        );
        let c = parse_document(id, ok.as_bytes()).unwrap();
        assert_eq!(c.source, ClientSource::MetadataDocument);
        assert_eq!(c.auth_method, ClientAuthMethod::None);
        let other =
            r#"{"client_id":"https://evil.example/x","redirect_uris":["https://a.example/cb"]}"#;
        assert!(parse_document(id, other.as_bytes()).is_err());
        let none = format!(r#"{{"client_id":"{id}"}}"#);
        assert!(parse_document(id, none.as_bytes()).is_err());
        let bad = format!(r#"{{"client_id":"{id}","redirect_uris":["http://evil.example/cb"]}}"#);
        assert!(parse_document(id, bad.as_bytes()).is_err());
    }
}
