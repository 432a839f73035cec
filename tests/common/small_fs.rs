//! A small filesystem for tests about a full disk: a tmpfs mounted in a private mount
//! namespace (`unshare -m`), with hubs and tools run inside it through `nsenter`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A small tmpfs at `dir`, mounted in a private mount namespace held by `holder`.
pub struct SmallFs {
    holder: Child,
    /// Where the filesystem is mounted.
    pub dir: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `4m`) at `dir` (which must
    /// exist) in a new mount namespace, or returns `None` (saying why on stderr) when this
    /// machine cannot make mount namespaces.
    pub fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        let probe = Command::new("unshare")
            .args(["-m", "--propagation", "private", "true"])
            .stderr(Stdio::piped())
            .output();
        match probe {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!(
                    "SKIPPED: mount namespaces are unavailable here (`unshare -m` failed: {})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            Err(e) => {
                eprintln!("SKIPPED: mount namespaces are unavailable here (no unshare: {e})");
                return None;
            }
        }
        // The holder mounts, says so, then waits on its stdin: it ends when the test drops it
        // (or dies), and the namespace with its mount ends with the last process inside.
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size},mode=0700 hub-small-fs \"$1\" && echo mounted && exec cat"
            ))
            .arg("sh")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "mounted",
            "mounting a tmpfs in the namespace failed"
        );
        Some(SmallFs {
            holder,
            dir: dir.to_owned(),
        })
    }

    /// A command running the built `hub` with `args` inside the namespace.
    pub fn hub(&self, args: &[&str]) -> Command {
        self.command(&super::hub_bin(), args)
    }

    /// `program args` inside the namespace.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "--"])
            .arg(program)
            .args(args);
        c
    }

    /// Fills the filesystem to the last block with one file.
    pub fn fill(&self) {
        let filler = self.dir.join("filler");
        let out = self
            .command(
                Path::new("dd"),
                &[
                    "if=/dev/zero",
                    &format!("of={}", filler.display()),
                    "bs=64k",
                ],
            )
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("No space left on device"), "dd: {said}");
    }

    /// Frees what [`fill`](Self::fill) took.
    pub fn free(&self) {
        let filler = self.dir.join("filler");
        let ok = self
            .command(Path::new("rm"), &[filler.to_str().unwrap()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "rm {}", filler.display());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
