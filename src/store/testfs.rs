//! Tests on a small filesystem: a tmpfs mounted in a private mount namespace, so a test can fill
//! the disk for real without touching the machine's own filesystems.
//!
//! [`on_small_fs`] runs this very test binary again, filtered to the one test, inside
//! `unshare -m` with a tmpfs mounted on a fresh folder; there the test's body runs. The mount
//! exists only in that namespace and ends with the child process, so nothing is left mounted.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The variables telling the child which test runs its body, and where.
const TEST_VAR: &str = "HUB_SMALL_FS_TEST";
const DIR_VAR: &str = "HUB_SMALL_FS_DIR";

/// Runs `body` with a folder on a fresh tmpfs of `size` (as `mount -o size=` takes it, e.g.
/// `"1m"`). `test` is the test's full name (`store::log::tests::…`). Skips, saying so, when this
/// machine cannot make mount namespaces; panics when the body fails.
pub(crate) fn on_small_fs(test: &str, size: &str, body: impl FnOnce(&Path)) {
    if std::env::var(TEST_VAR).as_deref() == Ok(test) {
        let dir = PathBuf::from(std::env::var(DIR_VAR).expect("the folder is given"));
        body(&dir);
        return;
    }
    let probe = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED {test}: mount namespaces are unavailable here (`unshare -m` failed)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size={size},mode=0700 hub-small-fs \"$1\" && exec \"$0\" --exact \"$2\" --nocapture --test-threads=1"
        ))
        .arg(&exe)
        .arg(tmp.path())
        .arg(test)
        .env(TEST_VAR, test)
        .env(DIR_VAR, tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} on a {size} filesystem failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Fills the filesystem holding `dir` with a file `filler` until a write fails for lack of
/// space; returns its path (delete it to free the space).
pub(crate) fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let chunk = vec![0x55u8; 4096];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if super::space::is_out_of_space(&e) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever fits in the last partial block, byte by byte would be slow: 64 bytes at a time.
    while f.write_all(&chunk[..64]).is_ok() {}
    path
}
