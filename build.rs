//! Links the `hub` binary, in release builds for Linux, with `link/idle-text.ld`: the functions an
//! idle hub runs placed together at the start of the text (output section `.text.idle`), so that
//! the kernel, which maps text in blocks around each page touched, maps about as much as an idle
//! hub runs (idle `hub edge` RSS; docs/benchmarks.md, "Idle footprint"). The script only orders
//! sections; scripts/idle-text.sh regenerates it. `HUB_IDLE_TEXT=off` links without it: valgrind
//! names only the functions in `.text`, so profiles by function want that (the script's own
//! profiling build does).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/idle-text.ld");
    println!("cargo:rerun-if-env-changed=HUB_IDLE_TEXT");
    let var = |name| std::env::var(name).unwrap_or_default();
    let wanted = var("HUB_IDLE_TEXT") != "off";
    if wanted && var("CARGO_CFG_TARGET_OS") == "linux" && var("PROFILE") == "release" {
        let script = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("link/idle-text.ld");
        println!("cargo:rustc-link-arg-bin=hub=-Wl,-T,{}", script.display());
    }
}
