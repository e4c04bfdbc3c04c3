//! The `inkan` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, EXIT_BAD_CONFIG};

#[derive(Debug, Parser)]
#[command(
    name = "inkan",
    version,
    about = "Passkey sign-in and OAuth 2.1 in front of MCP servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway and authorization server.
    Serve {
        /// Configuration file (TOML); `INKAN_<SECTION>__<KEY>` variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run everything on this machine: Hanko emulator, demo MCP server, gateway.
    Dev {
        /// Where the SQLite store and dev keys live (survives restarts).
        #[arg(long, default_value = ".inkan-dev")]
        data_dir: PathBuf,
        /// Gateway port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Hanko emulator port on 127.0.0.1.
        #[arg(long, default_value_t = 8081)]
        hanko_port: u16,
        /// Demo upstream MCP server port on 127.0.0.1.
        #[arg(long, default_value_t = 8082)]
        upstream_port: u16,
    },
    /// Validate the configuration and print it with secrets masked.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Revoke grants in the configured store (operator use).
    #[command(group(clap::ArgGroup::new("target").required(true)))]
    Revoke {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Every grant of this Hanko user id.
        #[arg(long, group = "target")]
        user: Option<String>,
        /// Every grant made under this Hanko session id.
        #[arg(long, group = "target")]
        session: Option<String>,
        /// Every grant of this OAuth client.
        #[arg(long, group = "target")]
        client: Option<String>,
        /// One grant.
        #[arg(long, group = "target")]
        grant: Option<String>,
    },
}

/// Loads the configuration the way `serve`, `check-config` and `revoke` do.
pub fn load_config(path: Option<PathBuf>) -> Result<Config, crate::config::ConfigErrors> {
    let explicit = path.is_some();
    let path = path.unwrap_or_else(|| PathBuf::from("inkan.toml"));
    Config::from_figment(Config::figment(&path, explicit)?)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts")
}

/// `serve`'s main thread is its first serving thread (see
/// [`crate::server::run`]), so its runtime is single-threaded too.
fn serving_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts")
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load_config(config) {
            Ok(c) => {
                println!("# configuration is valid; effective values (secrets masked):");
                print!("{}", c.to_masked_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Serve { config } => match load_config(config) {
            Ok(c) => match serving_runtime().block_on(crate::serve::serve(c)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("inkan serve: {e:#}");
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_BAD_CONFIG as u8)
            }
        },
        Command::Dev {
            data_dir,
            port,
            hanko_port,
            upstream_port,
        } => {
            let ports = crate::dev::DevPorts {
                gateway: port,
                hanko: hanko_port,
                upstream: upstream_port,
            };
            match runtime().block_on(crate::dev::run(&data_dir, ports)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("inkan dev: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Revoke {
            config,
            user,
            session,
            client,
            grant,
        } => {
            use crate::revocation::operator::{self, Target};
            // clap's required "target" group guarantees exactly one of these.
            let target = user
                .map(Target::User)
                .or(session.map(Target::Session))
                .or(client.map(Target::Client))
                .or(grant.map(Target::Grant))
                .expect("clap requires one revocation target");
            match load_config(config) {
                Ok(c) => operator::run(&c, &target),
                Err(e) => {
                    eprint!("{e}");
                    ExitCode::from(EXIT_BAD_CONFIG as u8)
                }
            }
        }
    }
}
