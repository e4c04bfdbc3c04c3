//! The MCP tools: `whoami` (the verified identity inkan asserted) and `echo`.

use http::request::Parts;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::assertion::Verifier;

/// Identity headers inkan adds next to the signed assertion; `whoami` reports
/// the ones it saw so tests can compare them with the verified claims.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-inkan-user",
    "x-inkan-email",
    "x-inkan-client",
    "x-inkan-scopes",
    "x-inkan-services",
];

pub const ASSERTION_HEADER: &str = "x-inkan-assertion";

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// Text to send back unchanged.
    pub text: String,
}

/// One instance per MCP session; the verifier (and its key cache) is shared.
#[derive(Clone)]
pub struct DemoServer {
    verifier: Verifier,
}

impl DemoServer {
    pub fn new(verifier: Verifier) -> Self {
        DemoServer { verifier }
    }
}

#[tool_router]
impl DemoServer {
    #[tool(
        description = "Who inkan says is calling: the verified identity assertion and the identity headers received"
    )]
    async fn whoami(&self, Extension(parts): Extension<Parts>) -> CallToolResult {
        let claims = match self
            .verifier
            .verify(parts.headers.get(ASSERTION_HEADER))
            .await
        {
            Ok(claims) => claims,
            Err(e) => return CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
        };
        let headers: Map<String, Value> = IDENTITY_HEADERS
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(*name)?.to_str().ok()?;
                Some(((*name).to_owned(), Value::from(value)))
            })
            .collect();
        let body = json!({
            "sub": claims.sub,
            "email": claims.email,
            "client_id": claims.client_id,
            "scope": claims.scope,
            "aud": claims.aud,
            "iss": claims.iss,
            "headers": headers,
        });
        CallToolResult::success(vec![ContentBlock::text(body.to_string())])
    }

    #[tool(description = "Returns its text argument unchanged")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }
}

#[tool_handler(
    name = "inkan-demo-upstream",
    instructions = "A demo MCP service behind inkan: `whoami` shows the caller's verified identity, `echo` repeats text"
)]
impl ServerHandler for DemoServer {}
