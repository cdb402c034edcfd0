//! Puts libtorch's folder on the rpath of this package's binaries and tests (tch does not).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(lib) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&lib).join("lib");
        let lib = std::fs::canonicalize(&lib).unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
