//! Reduces the template this build is made from to its declaration document (see `src/declare.rs`),
//! so that a cold start reads a few kilobytes of JSON rather than parsing the whole SAM template.

#[path = "src/declare.rs"]
#[allow(dead_code)]
mod declare;

fn main() {
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
    println!("cargo::rerun-if-changed={template}");
    println!("cargo::rerun-if-changed=src/declare.rs");
    let text = std::fs::read_to_string(template).unwrap_or_else(|e| panic!("reading {template}: {e}"));
    let declaration = declare::declare(&text).unwrap_or_else(|e| panic!("{template} is not valid YAML: {e}"));
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("declaration.json");
    std::fs::write(&out, declaration.to_string()).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
