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
    /// `hub pub`.
    Pub(PubArgs),
    /// `hub sub`.
    Sub(SubArgs),
    /// `hub req`.
    Req(ReqArgs),
    /// `hub nodes`.
    Nodes(NodesArgs),
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

/// The application endpoint the client commands use unless told otherwise: `$HUB_URL`, else the
/// cloud's default.
pub fn default_url() -> String {
    std::env::var("HUB_URL").unwrap_or_else(|_| "ws://127.0.0.1:10050".into())
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "pub")]
/// Publish a message through a hub's application endpoint and wait until it is accepted (in the
/// durable queue). From the cloud, address a node with resource node/NODE-ID/....
pub struct PubArgs {
    /// endpoint: ws://HOST:PORT or unix:PATH (default $HUB_URL or ws://127.0.0.1:10050)
    #[argh(option, short = 'u', default = "default_url()")]
    pub url: String,
    /// route.resource
    #[argh(option, short = 'r')]
    pub resource: String,
    /// route.group (default user)
    #[argh(option, short = 'g', default = "String::from(\"user\")")]
    pub group: String,
    /// route.operation (default update)
    #[argh(option, short = 'o', default = "String::from(\"update\")")]
    pub operation: String,
    /// route.source (default hub-cli)
    #[argh(option, short = 's', default = "String::from(\"hub-cli\")")]
    pub source: String,
    /// publish one message per line of standard input (each line is its content)
    #[argh(switch)]
    pub stdin: bool,
    /// the content: JSON, or else taken as a string
    #[argh(positional)]
    pub content: Option<String>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "sub")]
/// Subscribe through a hub's application endpoint and print each message as a JSON line.
pub struct SubArgs {
    /// endpoint: ws://HOST:PORT or unix:PATH (default $HUB_URL or ws://127.0.0.1:10050)
    #[argh(option, short = 'u', default = "default_url()")]
    pub url: String,
    /// only messages of this route.group
    #[argh(option, short = 'g')]
    pub group: Option<String>,
    /// only messages whose route.resource starts with this (default: all)
    #[argh(option, short = 'r', default = "String::new()")]
    pub resource: String,
    /// stop after this many messages
    #[argh(option, short = 'n')]
    pub count: Option<u64>,
    /// answer every sync request with this content (JSON, or else a string)
    #[argh(option)]
    pub reply: Option<String>,
    /// answer every sync request with its own content
    #[argh(switch)]
    pub echo: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "req")]
/// Send a sync request through a hub's application endpoint and print the answer; exit 1 when
/// the answer is an error (no answer in time, nobody subscribed, refused).
pub struct ReqArgs {
    /// endpoint: ws://HOST:PORT or unix:PATH (default $HUB_URL or ws://127.0.0.1:10050)
    #[argh(option, short = 'u', default = "default_url()")]
    pub url: String,
    /// route.resource
    #[argh(option, short = 'r')]
    pub resource: String,
    /// route.group (default user)
    #[argh(option, short = 'g', default = "String::from(\"user\")")]
    pub group: String,
    /// route.operation (default query)
    #[argh(option, short = 'o', default = "String::from(\"query\")")]
    pub operation: String,
    /// give up after this many seconds (default 35; the hub's own apps.request-timeout answers
    /// first)
    #[argh(option, short = 't', default = "35.0")]
    pub timeout: f64,
    /// the content: JSON, or else taken as a string
    #[argh(positional)]
    pub content: Option<String>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "nodes")]
/// List the nodes a cloud hub knows: connected ones with protocol, address and since when, and
/// every node with messages queued for it.
pub struct NodesArgs {
    /// endpoint: ws://HOST:PORT or unix:PATH (default $HUB_URL or ws://127.0.0.1:10050)
    #[argh(option, short = 'u', default = "default_url()")]
    pub url: String,
    /// print the JSON the hub answered instead of a table
    #[argh(switch)]
    pub json: bool,
}
