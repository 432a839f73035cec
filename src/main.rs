//! The `hub` binary: dispatch on the name it was started as, or on its first argument.

use std::path::Path;
use std::process::ExitCode;

use argh::FromArgs;
use hub::cli::{CertsArgs, CloudArgs, Command, EdgeArgs, Hub};
use hub::config::{CloudConfig, EdgeConfig};

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
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let command = match name {
        "cloudhub" => parse::<CloudArgs>(name, &rest).map(Command::Cloud),
        "edgehub" => parse::<EdgeArgs>(name, &rest).map(Command::Edge),
        _ => match parse::<Hub>(name, &rest) {
            Err(code) => Err(code),
            Ok(Hub { version: true, .. }) => {
                println!("hub {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Ok(Hub {
                command: Some(c), ..
            }) => Ok(c),
            Ok(Hub { command: None, .. }) => {
                eprintln!("{name}: no command given; run `{name} help` for the list");
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
fn parse<T: FromArgs>(name: &str, args: &[&str]) -> Result<T, ExitCode> {
    T::from_args(&[name], args).map_err(|early| match early.status {
        Ok(()) => {
            print!("{}", early.output);
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprint!("{}", early.output);
            if !early.output.ends_with('\n') {
                eprintln!();
            }
            ExitCode::from(USAGE)
        }
    })
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
                println!("{}", config.summary());
                return ExitCode::SUCCESS;
            }
            serve(|shutdown| hub::cloud::run(config, shutdown))
        }
        Command::Edge(args) => {
            let config = match EdgeConfig::load(&args.config) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            if args.check {
                println!("{}", config.summary());
                return ExitCode::SUCCESS;
            }
            serve(|shutdown| hub::edge::run(config, shutdown))
        }
        Command::Certs(args) => certs(args),
        Command::Pub(args) => hub::commands::publish(args),
        Command::Sub(args) => hub::commands::subscribe(args),
        Command::Req(args) => hub::commands::request(args),
        Command::Nodes(args) => hub::commands::nodes(args),
    }
}

/// Runs a hub until SIGTERM/SIGINT; exit 0 after a clean stop, 1 when it could not run.
fn serve<F, Fut>(hub: F) -> ExitCode
where
    F: FnOnce(hub::shutdown::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
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
    eprintln!("{e}");
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
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hub certs: {e}");
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
