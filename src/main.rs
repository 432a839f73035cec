//! The `hub` binary: dispatch on the name it was started as, or on its first argument.

use std::path::Path;
use std::process::ExitCode;

use argh::FromArgs;
use hub::cli::{CertsArgs, CloudArgs, Command, EdgeArgs, Hub};
use hub::config::{CloudConfig, EdgeConfig};
use hub::console;

/// Exit code for a bad command line or configuration.
const USAGE: u8 = 2;
/// Exit code for a failure while running.
const FAILURE: u8 = 1;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let argv0 = args.first().map(String::as_str).unwrap_or("hub");
    let name = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("hub");
    let given: Vec<String> = args.iter().skip(1).cloned().collect();
    let command = match name {
        "cloudhub" => parse::<CloudArgs>(name, &given).map(Command::Cloud),
        "edgehub" => parse::<EdgeArgs>(name, &given).map(Command::Edge),
        _ => match parse::<Hub>(name, &hub::cli::numbers_as_content(&given)) {
            Err(code) => Err(code),
            Ok(Hub { version: true, .. }) => {
                return match console::line(format_args!("hub {}", env!("CARGO_PKG_VERSION"))) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => e.exit_code(),
                };
            }
            Ok(Hub {
                command: Some(c), ..
            }) => Ok(c),
            Ok(Hub { command: None, .. }) => {
                console::warn(format_args!(
                    "{name}: no command given; run `{name} help` for the list"
                ));
                Err(ExitCode::from(USAGE))
            }
        },
    };
    match command {
        Ok(c) => run(c),
        Err(code) => code,
    }
}

/// Parses `args` as `T`, printing help (exit 0) or the usage error (exit 2) when that is the result.
fn parse<T: FromArgs>(name: &str, args: &[String]) -> Result<T, ExitCode> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    T::from_args(&[name], &words).map_err(|early| match early.status {
        Ok(()) => match console::text(&early.output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => e.exit_code(),
        },
        Err(()) => {
            console::warn_text(&early.output);
            if let Some(hint) = hub::cli::usage_hint(name, args, &early.output) {
                console::warn(hint);
            }
            ExitCode::from(USAGE)
        }
    })
}

/// Prints `text` as the command's one line of output: status 0, also when the reader closed the
/// pipe; 1 when standard output failed otherwise.
fn print_line(text: impl std::fmt::Display) -> ExitCode {
    match console::line(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.exit_code(),
    }
}

fn run(command: Command) -> ExitCode {
    init_logging();
    match command {
        Command::Cloud(args) => {
            let config = match CloudConfig::load(&args.config) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            if args.check {
                return print_line(config.summary());
            }
            serve(|shutdown| hub::cloud::run(config, shutdown))
        }
        Command::Edge(args) => {
            let config = match EdgeConfig::load(&args.config) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            if args.check {
                return print_line(config.summary());
            }
            serve(|shutdown| hub::edge::run(config, shutdown))
        }
        Command::Certs(args) => certs(args),
        Command::Pub(args) => hub::commands::publish(args),
        Command::Sub(args) => hub::commands::subscribe(args),
        Command::Req(args) => hub::commands::request(args),
        Command::Nodes(args) => hub::commands::nodes(args),
        Command::Status(args) => hub::commands::status(args),
    }
}

/// Runs a hub until SIGTERM/SIGINT; exit 0 after a clean stop, 1 when it could not run.
fn serve<F, Fut>(hub: F) -> ExitCode
where
    F: FnOnce(hub::shutdown::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let open_files = hub::open_files::raise_limit();
    log::debug!("open-file limit {open_files}");
    let (trigger, shutdown) = hub::shutdown::channel();
    if let Err(e) = hub::shutdown::on_signals(trigger) {
        log::error!("cannot watch for signals: {e}");
        return ExitCode::from(FAILURE);
    }
    match smol::block_on(hub(shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(FAILURE)
        }
    }
}

fn config_error(e: hub::config::ConfigError) -> ExitCode {
    console::warn(e);
    ExitCode::from(USAGE)
}

fn certs(args: CertsArgs) -> ExitCode {
    let opts = hub::pki::PkiOptions {
        dir: args.dir,
        nodes: if args.node.is_empty() {
            vec!["edge-node".into()]
        } else {
            args.node
        },
        hosts: if args.host.is_empty() {
            vec!["localhost".into(), "127.0.0.1".into()]
        } else {
            args.host
        },
        days: args.days,
        force: args.force,
    };
    match hub::pki::write(&opts) {
        Ok(files) => {
            for f in files {
                if let Err(e) = console::line(f.display()) {
                    return e.exit_code();
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            console::warn(format_args!("hub certs: {e}"));
            ExitCode::from(match e {
                hub::pki::PkiError::Exists(_) | hub::pki::PkiError::BadName(_) => USAGE,
                _ => FAILURE,
            })
        }
    }
}

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise.
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}
