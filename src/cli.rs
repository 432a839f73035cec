//! The command line: `hub <command>`, or `cloudhub` / `edgehub` through a link of that name.

use std::path::PathBuf;

use argh::FromArgs;

/// Default cloud configuration file.
pub const DEFAULT_CLOUD_CONFIG: &str = "/etc/hub/cloudhub.yaml";
/// Default edge configuration file.
pub const DEFAULT_EDGE_CONFIG: &str = "/etc/hub/edgehub.yaml";

#[derive(FromArgs, Debug)]
/// hub: a cloud/edge messaging hub. `hub cloud` accepts edge nodes over WebSocket and QUIC with
/// mutual TLS; `hub edge` connects a gateway to it. Linked as `cloudhub` or `edgehub`, the binary
/// acts as `hub cloud` or `hub edge`.
pub struct Hub {
    /// print the version and exit
    #[argh(switch, short = 'V')]
    pub version: bool,
    #[argh(subcommand)]
    /// what to do
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
/// The subcommands.
pub enum Command {
    /// `hub cloud`.
    Cloud(CloudArgs),
    /// `hub edge`.
    Edge(EdgeArgs),
    /// `hub certs`.
    Certs(CertsArgs),
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "cloud")]
/// Run the cloud hub (CloudHub): accept edge nodes over WebSocket and QUIC with mutual TLS.
pub struct CloudArgs {
    /// configuration file (default /etc/hub/cloudhub.yaml)
    #[argh(option, short = 'c', default = "PathBuf::from(DEFAULT_CLOUD_CONFIG)")]
    pub config: PathBuf,
    /// validate the configuration, print a one-line summary and exit
    #[argh(switch)]
    pub check: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "edge")]
/// Run the edge hub (EdgeHub): connect this gateway to the cloud hub and keep the link up.
pub struct EdgeArgs {
    /// configuration file (default /etc/hub/edgehub.yaml)
    #[argh(option, short = 'c', default = "PathBuf::from(DEFAULT_EDGE_CONFIG)")]
    pub config: PathBuf,
    /// validate the configuration, print a one-line summary and exit
    #[argh(switch)]
    pub check: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "certs")]
/// Write a development PKI: a CA, a server certificate for the cloud and one client certificate per
/// node (CN and DNS name = node id). Files: ca.crt, ca.key, server.crt, server.key,
/// node-<id>.crt, node-<id>.key; keys are readable by their owner only.
pub struct CertsArgs {
    /// directory to write to (default ./pki)
    #[argh(option, short = 'd', default = "PathBuf::from(\"pki\")")]
    pub dir: PathBuf,
    /// node id to issue a client certificate for; repeat for more (default edge-node)
    #[argh(option, short = 'n')]
    pub node: Vec<String>,
    /// DNS name or IP address for the server certificate; repeat for more (default localhost and
    /// 127.0.0.1)
    #[argh(option)]
    pub host: Vec<String>,
    /// validity in days (default 365)
    #[argh(option, default = "365")]
    pub days: u32,
    /// overwrite existing files
    #[argh(switch)]
    pub force: bool,
}
