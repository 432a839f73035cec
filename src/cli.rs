//! The command line: `hub <command>`, or `cloudhub` / `edgehub` through a link of that name.

use std::path::PathBuf;

use argh::{ArgsInfo, FromArgs};

/// Default cloud configuration file.
pub const DEFAULT_CLOUD_CONFIG: &str = "/etc/hub/cloudhub.yaml";
/// Default edge configuration file.
pub const DEFAULT_EDGE_CONFIG: &str = "/etc/hub/edgehub.yaml";

#[derive(FromArgs, ArgsInfo, Debug)]
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

#[derive(FromArgs, ArgsInfo, Debug)]
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
    /// `hub status`.
    Status(StatusArgs),
}

#[derive(FromArgs, ArgsInfo, Debug)]
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

#[derive(FromArgs, ArgsInfo, Debug)]
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

#[derive(FromArgs, ArgsInfo, Debug)]
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

#[derive(FromArgs, ArgsInfo, Debug)]
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
    /// publish one message per line of standard input (each line is its content); a bad line
    /// is reported with its number and the others still go
    #[argh(switch)]
    pub stdin: bool,
    /// the content: JSON (kept as written, e.g. -5 or 1e400), or else taken as a string; a
    /// string that starts with '-' goes after `--`
    #[argh(positional)]
    pub content: Option<String>,
}

#[derive(FromArgs, ArgsInfo, Debug)]
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
    /// a durable subscription of this name: what arrives while no subscriber of the name is
    /// connected is kept on disk by the hub and comes first next time
    #[argh(option, short = 's')]
    pub session: Option<String>,
    /// answer every sync request with this content (JSON, or else a string)
    #[argh(option)]
    pub reply: Option<String>,
    /// answer every sync request with its own content
    #[argh(switch)]
    pub echo: bool,
}

#[derive(FromArgs, ArgsInfo, Debug)]
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
    /// the content: JSON (kept as written, e.g. -5 or 1e400), or else taken as a string; a
    /// string that starts with '-' goes after `--`
    #[argh(positional)]
    pub content: Option<String>,
}

#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "nodes")]
/// List the nodes a cloud hub knows: connected ones with protocol, address, since when, round
/// trip and messages in flight, and every node with messages queued for it; with each, why its
/// last link ended.
pub struct NodesArgs {
    /// endpoint: ws://HOST:PORT or unix:PATH (default $HUB_URL or ws://127.0.0.1:10050)
    #[argh(option, short = 'u', default = "default_url()")]
    pub url: String,
    /// print the JSON the hub answered instead of a table
    #[argh(switch)]
    pub json: bool,
}

/// The application endpoint `hub status` asks unless told otherwise: `$HUB_URL`, else the
/// edge's default.
pub fn default_edge_url() -> String {
    std::env::var("HUB_URL").unwrap_or_else(|_| "ws://127.0.0.1:10060".into())
}

#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "status")]
/// Show an edge hub's link to the cloud: its state, protocol, cloud address, up since, round
/// trip, messages queued and in flight, the last error and the reconnects so far.
pub struct StatusArgs {
    /// the edge's endpoint: ws://HOST:PORT or unix:PATH (default $HUB_URL or
    /// ws://127.0.0.1:10060)
    #[argh(option, short = 'u', default = "default_edge_url()")]
    pub url: String,
    /// print the JSON the hub answered instead of a table
    #[argh(switch)]
    pub json: bool,
}

/// Whether `word` is a JSON number that starts with `-` (`-5`, `-3.5`, `-1e400`): text argh
/// would take for an option name, although no option is spelt like that. Checked with the same
/// JSON parser that then reads the content (`client::content_arg`), so the two always agree.
fn is_negative_number(word: &str) -> bool {
    word.starts_with('-') && serde_json::from_str::<&serde_json::value::RawValue>(word).is_ok()
}

/// The subcommand named in `args` (the words after the program name): its index and what argh
/// knows of it. Words before it are `hub`'s own switches (`-V`, `--help`).
fn find_subcommand(args: &[String]) -> Option<(usize, argh::CommandInfoWithArgs)> {
    let index = args.iter().position(|a| !a.starts_with('-'))?;
    Hub::get_args_info()
        .commands
        .into_iter()
        .find(|c| c.name == args[index])
        .map(|c| (index, c.command))
}

/// `args` (the words after the program name) arranged so that argh reads a negative number as
/// CONTENT.
///
/// argh takes every word that starts with `-` for an option, so `hub pub -r t -5` would fail
/// with "Unrecognized argument: -5" while `hub pub -r t -- -5` works. When a command that takes
/// CONTENT is given a negative JSON number where an option name would stand, its options
/// (with their values) keep their order in front and its positional words move, in their order,
/// behind a `--`. Everything else is returned unchanged; a word that starts with `-` and is not
/// a number still needs the `--` (see [`usage_hint`]).
pub fn numbers_as_content(args: &[String]) -> Vec<String> {
    let unchanged = args.to_vec();
    let Some((at, info)) = find_subcommand(args) else {
        return unchanged;
    };
    if info.positionals.is_empty() {
        return unchanged;
    }
    let takes_value = |word: &str| {
        info.flags.iter().any(|f| {
            matches!(f.kind, argh::FlagInfoKind::Option { .. })
                && (f.long == word || f.short.is_some_and(|c| word == format!("-{c}")))
        })
    };
    let mut options = Vec::new();
    let mut positionals = Vec::new();
    let mut moved = false;
    let mut words = args[at + 1..].iter();
    while let Some(word) = words.next() {
        if word == "--" {
            positionals.extend(words.by_ref().cloned());
            break;
        }
        if is_negative_number(word) {
            moved = true;
            positionals.push(word.clone());
        } else if word.starts_with('-') || word == "help" {
            options.push(word.clone());
            if takes_value(word) {
                options.extend(words.next().cloned());
            }
        } else {
            positionals.push(word.clone());
        }
    }
    if !moved {
        return unchanged;
    }
    let mut out = args[..=at].to_vec();
    out.extend(options);
    out.push("--".into());
    out.extend(positionals);
    out
}

/// A line to add to argh's usage error for `args`, when the error is a word starting with `-`
/// that the command does not know and the command takes CONTENT: how to pass such content.
pub fn usage_hint(program: &str, args: &[String], error: &str) -> Option<String> {
    let word = error.strip_prefix("Unrecognized argument: ")?.trim();
    if !word.starts_with('-') || word.starts_with("--") {
        return None;
    }
    let (at, info) = find_subcommand(args)?;
    if info.positionals.is_empty() {
        return None;
    }
    Some(format!(
        "To give CONTENT that starts with '-', put `--` before it: {program} {} [OPTIONS] -- {word}",
        args[at]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn negative_numbers() {
        for yes in ["-5", "-0", "-3.5", "-1e400", "-2E+3", "-0.5e-7"] {
            assert!(is_negative_number(yes), "{yes}");
        }
        for no in [
            "5", "-", "--", "-r", "-05", "-5.", "-.5", "-1e", "-1e+", "-5x", "--5",
        ] {
            assert!(!is_negative_number(no), "{no}");
        }
    }

    #[test]
    fn negative_numbers_become_content() {
        let cases = [
            ("pub -r t -5", "pub -r t -- -5"),
            ("pub -5 -r t", "pub -r t -- -5"),
            ("pub -r -5 -3.5", "pub -r -5 -- -3.5"),
            (
                "pub --resource t --stdin -1e400",
                "pub --resource t --stdin -- -1e400",
            ),
            ("req -t 2 -r x -7", "req -t 2 -r x -- -7"),
            ("pub -r t 5", "pub -r t 5"),
            ("pub -r t -- -5", "pub -r t -- -5"),
            ("pub -r t -x", "pub -r t -x"),
            ("sub -n 3 --reply -5", "sub -n 3 --reply -5"),
            ("cloud -c -5", "cloud -c -5"),
            ("-V", "-V"),
        ];
        for (given, want) in cases {
            assert_eq!(numbers_as_content(&words(given)), words(want), "{given}");
        }
        let parsed = Hub::from_args(&["hub"], &["pub", "-r", "t", "--", "-5"]).unwrap();
        assert!(matches!(
            parsed.command,
            Some(Command::Pub(PubArgs { content: Some(c), .. })) if c == "-5"
        ));
    }

    #[test]
    fn hint_for_dash_content() {
        let hint = usage_hint("hub", &words("pub -r t -x"), "Unrecognized argument: -x\n");
        assert_eq!(
            hint.as_deref(),
            Some(
                "To give CONTENT that starts with '-', put `--` before it: hub pub [OPTIONS] -- -x"
            )
        );
        assert_eq!(
            usage_hint("hub", &words("nodes -x"), "Unrecognized argument: -x\n"),
            None
        );
    }
}
