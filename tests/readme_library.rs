//! The README's library section names exactly the crate's root re-exports,
//! so what it tells an embedder to import is what `src/lib.rs` offers.

use std::collections::BTreeSet;
use std::path::Path;

/// The names of the first `use remote_tagger::{...};` block of `readme`.
fn readme_imports(readme: &str) -> BTreeSet<String> {
    let start = readme
        .find("use remote_tagger::{")
        .expect("the README's library section has a `use remote_tagger::{...}` block");
    let block = &readme[start + "use remote_tagger::{".len()..];
    let block = &block[..block.find("};").expect("the block ends with `};`")];
    names(block)
}

/// The names the root of `lib` re-exports with `pub use module::{...};`.
fn root_reexports(lib: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = lib;
    while let Some(at) = rest.find("\npub use ") {
        rest = &rest[at + "\npub use ".len()..];
        let statement = &rest[..rest.find(';').expect("a `pub use` ends with `;`")];
        let list = match statement.find('{') {
            Some(open) => &statement[open + 1..statement.rfind('}').unwrap()],
            None => statement.rsplit("::").next().unwrap(),
        };
        out.extend(names(list));
    }
    out
}

fn names(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_imports_what_the_crate_root_re_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |file: &str| std::fs::read_to_string(root.join(file)).unwrap();
    let exported = root_reexports(&read("src/lib.rs"));
    assert!(
        exported.contains("RemoteTagger"),
        "found no root re-exports in src/lib.rs: {exported:?}"
    );
    assert_eq!(readme_imports(&read("README.md")), exported);
}
