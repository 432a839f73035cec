//! Real NATS servers for the cluster tests: Debian's `nats-server` (2.9) with JetStream on, each
//! with a temporary store folder, on loopback; one server alone or three routed into a cluster.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Hub;

/// One running `nats-server`; killed when dropped.
pub struct Nats {
    /// Its log (stderr), read like a hub's.
    pub process: Hub,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its JetStream store folder.
    pub store: PathBuf,
    /// The arguments it was started with, to start it again on the same ports and store.
    args: Vec<String>,
    name: String,
}

impl Nats {
    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts one server with JetStream on, storing under `dir/name`, on a free client port
    /// (`-p -1`), and waits for its "Server is ready" line.
    pub fn start(dir: &Path, name: &str) -> Nats {
        Nats::launch(dir, name, &["-p", "-1"])
    }

    /// [`start`](Self::start) with TLS required of clients, and a client certificate chaining
    /// to the dev PKI's CA in `pki` (`--tlsverify`); the server shows `pki`'s server
    /// certificate.
    pub fn start_tls(dir: &Path, name: &str, pki: &Path) -> Nats {
        let file = |f: &str| pki.join(f).to_str().unwrap().to_owned();
        let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
        Nats::launch(
            dir,
            name,
            &[
                "-p",
                "-1",
                "--tlsverify",
                "--tlscert",
                &cert,
                "--tlskey",
                &key,
                "--tlscacert",
                &ca,
            ],
        )
    }

    fn launch(dir: &Path, name: &str, extra: &[&str]) -> Nats {
        let store = dir.join(format!("nats-{name}"));
        std::fs::create_dir_all(&store).unwrap();
        // Room for a message of apps.max-message-bytes (1 MiB) with hub's headers, as the
        // README's server has (NATS' own default is 1 MiB in all).
        let conf = dir.join(format!("nats-{name}.conf"));
        std::fs::write(&conf, "max_payload: 8MB\n").unwrap();
        let mut args: Vec<String> = [
            "-c",
            conf.to_str().unwrap(),
            "-js",
            "-sd",
            store.to_str().unwrap(),
            "-a",
            "127.0.0.1",
            "-n",
            name,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut nats = Nats {
            process: Nats::spawn(name, &args),
            port: 0,
            store,
            args,
            name: name.to_owned(),
        };
        let line = nats.process.wait_for("Listening for client connections on");
        nats.port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
        nats.process.wait_for("Server is ready");
        // From now on on the same port and store, should it be started again.
        let i = nats.args.iter().position(|a| a == "-p").unwrap();
        nats.args[i + 1] = nats.port.to_string();
        nats
    }

    fn spawn(name: &str, args: &[String]) -> Hub {
        let path = which_nats_server();
        let mut command = Command::new(path);
        command.args(args);
        Hub::spawn(&format!("nats {name}"), command)
    }

    /// Kills the server (SIGKILL).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the server again on the same client port and store, after [`kill9`](Self::kill9).
    pub fn restart(&mut self) {
        self.process = Nats::spawn(&self.name, &self.args);
        self.process.wait_for("Server is ready");
    }
}

/// Three servers routed into one JetStream cluster (`hubtest`), each on a free client port;
/// returns once a metadata leader is elected. The route ports must be known before any server
/// starts (each lists all three), so they are free ports picked first.
pub fn cluster3(dir: &Path) -> Vec<Nats> {
    let routes: Vec<u16> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let all = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let servers: Vec<Nats> = routes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let cluster = format!("nats://127.0.0.1:{p}");
            Nats::launch(
                dir,
                &format!("n{}", i + 1),
                &[
                    "-p",
                    "-1",
                    "--cluster_name",
                    "hubtest",
                    "--cluster",
                    &cluster,
                    "--routes",
                    &all,
                ],
            )
        })
        .collect();
    // Followers log "JetStream cluster new metadata leader: NAME", the leader "Self is new
    // JetStream cluster metadata leader".
    for s in &servers {
        s.process
            .first_line("naming a metadata leader", super::PATIENCE, |l| {
                l.contains("metadata leader")
            });
    }
    servers
}

fn which_nats_server() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("nats-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("nats-server is not installed (scripts/test-deps.sh installs Debian's)");
}
