//! Records the versions of the main dependencies (from Cargo.lock) so
//! `pagi-server --version` can report what the engine was built with.
fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut found = Vec::new();
    for wanted in ["tokio", "httparse", "tungstenite", "rustls"] {
        let mut lines = lock.lines();
        while let Some(line) = lines.next() {
            if line == format!("name = \"{wanted}\"") {
                if let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \"")) {
                    found.push(format!("{wanted} {}", v.trim_end_matches('"')));
                }
                break;
            }
        }
    }
    println!("cargo:rustc-env=PAGI_DEP_VERSIONS={}", found.join(", "));
}
