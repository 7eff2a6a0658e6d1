//! Compiles the Rust examples of the documentation: every ```rust block of
//! docs/client.md becomes the body of an async function in
//! `$OUT_DIR/doc_examples.rs`, which the `it` test binary includes, so an
//! example that no longer compiles fails the build of the tests.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/client.md");
    println!("cargo::rerun-if-changed={}", doc.display());
    let text = std::fs::read_to_string(&doc).expect("docs/client.md");
    let mut out = String::new();
    let mut block: Option<(usize, String)> = None;
    let mut count = 0;
    for (n, line) in text.lines().enumerate() {
        match &mut block {
            None if line.trim_start() == "```rust" => block = Some((n + 2, String::new())),
            Some((start, code)) if line.trim_start() == "```" => {
                // Examples share `client` (made by the first) and use `?`.
                count += 1;
                writeln!(
                    out,
                    "/// docs/client.md, the example at line {start}.\n\
                     #[allow(unused, clippy::all)]\n\
                     pub async fn example_{count}(client: roster_client::RosterClient) \
                     -> Result<(), Box<dyn std::error::Error>> {{\n{code}\nOk(())\n}}\n"
                )
                .unwrap();
                block = None;
            }
            Some((_, code)) => {
                code.push_str(line);
                code.push('\n');
            }
            None => {}
        }
    }
    assert!(block.is_none(), "docs/client.md: an unclosed ```rust block");
    writeln!(
        out,
        "/// Examples compiled.\npub const COUNT: usize = {count};"
    )
    .unwrap();
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("doc_examples.rs");
    std::fs::write(dest, out).unwrap();
}
