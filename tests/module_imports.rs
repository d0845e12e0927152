//! No two modules of `src/` import each other (issue 18): a module that
//! needs a sibling's code gets it from a module both depend on, so each file
//! reads, tests and changes without the other.
//!
//! The check reads every `use` and every `crate::`/`super::`/`self::`/
//! child-module path of `src/**/*.rs` (comments and strings left out),
//! resolves it to the file that defines or re-exports the item (following
//! `use` re-exports, as `super::Store` leads through `server/mod.rs` to
//! `server/store.rs`), and fails on a pair of files that reach each other.
//! A parent and its child are not a pair: the parent declares and
//! re-exports the child, and the child using its parent's items is how a
//! module tree is built. A file's inline modules (`mod tests`) belong to it.
//! The library and the binary (`main.rs`, `cli/`) are separate crates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from its crate root (`["mirror", "record"]`).
type ModPath = Vec<String>;

/// One file module: where it is, and what its `use` declarations bring in
/// (local name -> absolute path), for following re-exports.
struct FileModule {
    file: String,
    uses: BTreeMap<String, ModPath>,
    /// Every path it references, absolute, with the line it is on.
    references: Vec<(ModPath, usize)>,
}

/// The file modules of one crate.
type Crate = BTreeMap<ModPath, FileModule>;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

/// The tokens of Rust source that paths are made of, each with its line;
/// comments, string and char literals become nothing or `Other`.
fn tokens(source: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == 'r'
            && (at(i + 1) == '"' || (at(i + 1) == '#' && matches!(at(i + 2), '"' | '#')))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| at(j + 1 + h) == '#') {
                    j += 1 + hashes;
                    break;
                }
                if chars[j] == '\n' {
                    line += 1;
                }
                j += 1;
            }
            i = j;
            out.push((Token::Other, line));
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if at(i) == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
            out.push((Token::Other, line));
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}'), or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
            out.push((Token::Other, line));
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push((Token::Ident(word), line));
        } else {
            let token = match c {
                ':' if at(i + 1) == ':' => {
                    i += 1;
                    Token::PathSep
                }
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                ';' => Token::Semi,
                '*' => Token::Star,
                _ => Token::Other,
            };
            i += 1;
            out.push((token, line));
        }
    }
    out
}

/// The paths a use tree starting at `tokens[*i]` names (`a::{b, c::*}` ->
/// `a::b`, `a::c::*`), each with the name it binds (`as` renames
/// included); leaves `*i` after the tree.
fn use_tree(tokens: &[(Token, usize)], i: &mut usize, prefix: &[String]) -> Vec<(ModPath, String)> {
    let mut path = prefix.to_vec();
    let mut out = Vec::new();
    while let Some((token, _)) = tokens.get(*i) {
        match token {
            Token::Ident(word) if word == "as" => {
                *i += 1;
                if let Some((Token::Ident(alias), _)) = tokens.get(*i) {
                    *i += 1;
                    out.push((path.clone(), alias.clone()));
                }
                return out;
            }
            Token::Ident(word) => {
                path.push(word.clone());
                *i += 1;
            }
            Token::PathSep => *i += 1,
            Token::Star => {
                path.push("*".to_owned());
                *i += 1;
            }
            Token::Open => {
                *i += 1;
                loop {
                    out.extend(use_tree(tokens, i, &path));
                    match tokens.get(*i) {
                        Some((Token::Comma, _)) => *i += 1,
                        Some((Token::Close, _)) => {
                            *i += 1;
                            break;
                        }
                        _ => break,
                    }
                    if let Some((Token::Close, _)) = tokens.get(*i) {
                        *i += 1;
                        break;
                    }
                }
                return out;
            }
            _ => break,
        }
    }
    if path.len() > prefix.len() {
        let name = match path.last().map(String::as_str) {
            Some("self") => {
                path.pop();
                path.last().cloned().unwrap_or_default()
            }
            _ => path.last().cloned().unwrap_or_default(),
        };
        out.push((path, name));
    }
    out
}

/// `path` as seen from module `current` of a crate whose file modules are
/// `modules`: absolute, or `None` for another crate's or a local item.
fn absolute(path: &[String], current: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut base = current.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some(first) => {
            let mut child = current.to_vec();
            child.push(first.to_owned());
            if !modules.contains(&child) {
                return None;
            }
        }
        None => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Reads the files of one crate: `files` maps each module path to its file.
fn read_crate(files: &BTreeMap<ModPath, (String, String)>) -> Crate {
    let modules: BTreeSet<ModPath> = files.keys().cloned().collect();
    let mut out = Crate::new();
    for (module, (file, source)) in files {
        let tokens = tokens(source);
        let mut uses = BTreeMap::new();
        let mut references = Vec::new();
        // Inline modules open at a brace depth; their paths extend the file's.
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0;
        let mut i = 0;
        while i < tokens.len() {
            let current: ModPath = module
                .iter()
                .cloned()
                .chain(inline.iter().map(|(name, _)| name.clone()))
                .collect();
            let (token, line) = &tokens[i];
            match token {
                Token::Open => {
                    depth += 1;
                    i += 1;
                }
                Token::Close => {
                    if inline.last().is_some_and(|(_, at)| *at == depth) {
                        inline.pop();
                    }
                    depth -= 1;
                    i += 1;
                }
                Token::Ident(word) if word == "mod" => {
                    if let (Some((Token::Ident(name), _)), Some((Token::Open, _))) =
                        (tokens.get(i + 1), tokens.get(i + 2))
                    {
                        inline.push((name.clone(), depth + 1));
                        depth += 1;
                        i += 3;
                    } else {
                        i += 1;
                    }
                }
                Token::Ident(word) if word == "use" => {
                    i += 1;
                    for (path, name) in use_tree(&tokens, &mut i, &[]) {
                        if let Some(target) = absolute(&path, &current, &modules) {
                            if inline.is_empty() && name != "*" {
                                uses.insert(name, target.clone());
                            }
                            references.push((target, *line));
                        }
                    }
                }
                Token::Ident(word) => {
                    let after_sep = i > 0 && tokens[i - 1].0 == Token::PathSep;
                    let mut path = vec![word.clone()];
                    let mut j = i + 1;
                    while let (Some((Token::PathSep, _)), Some((Token::Ident(next), _))) =
                        (tokens.get(j), tokens.get(j + 1))
                    {
                        path.push(next.clone());
                        j += 2;
                    }
                    if !after_sep
                        && path.len() > 1
                        && let Some(target) = absolute(&path, &current, &modules)
                    {
                        references.push((target, *line));
                    }
                    i = j;
                }
                _ => i += 1,
            }
        }
        out.insert(
            module.clone(),
            FileModule {
                file: file.clone(),
                uses,
                references,
            },
        );
    }
    out
}

/// The file module that defines what `path` names: the longest file module
/// it starts with, followed through that module's `use` re-exports.
fn defining_module(krate: &Crate, path: &[String]) -> ModPath {
    let module_of = |path: &[String]| -> usize {
        (0..=path.len())
            .rev()
            .find(|&n| krate.contains_key(&path[..n]))
            .unwrap_or(0)
    };
    let mut path = path.to_vec();
    // A few hops at most; a re-export cycle (which rustc refuses) ends here.
    for _ in 0..8 {
        let module_len = module_of(&path);
        let module = &krate[&path[..module_len]];
        match path.get(module_len).and_then(|name| module.uses.get(name)) {
            Some(target) if target.as_slice() != path.as_slice() => {
                let mut next = target.clone();
                next.extend(path[module_len + 1..].iter().cloned());
                path = next;
            }
            _ => break,
        }
    }
    path[..module_of(&path)].to_vec()
}

/// Every pair of files of `krate` that reach each other, neither an
/// ancestor of the other, as one line naming both and where each does it.
fn mutual_imports(krate: &Crate) -> Vec<String> {
    let mut edges: BTreeMap<(ModPath, ModPath), usize> = BTreeMap::new();
    for (module, file) in krate {
        for (path, line) in &file.references {
            let target = defining_module(krate, path);
            if &target != module {
                edges.entry((module.clone(), target)).or_insert(*line);
            }
        }
    }
    let related = |a: &ModPath, b: &ModPath| a.starts_with(b) || b.starts_with(a);
    let mut pairs = Vec::new();
    for ((from, to), line) in &edges {
        if from < to
            && !related(from, to)
            && let Some(back) = edges.get(&(to.clone(), from.clone()))
        {
            pairs.push(format!(
                "{} (line {line}) and {} (line {back}) import each other",
                krate[from].file, krate[to].file
            ));
        }
    }
    pairs
}

/// The module path of a file under `src/` (`mirror/record.rs` ->
/// `mirror::record`, `core/mod.rs` -> `core`, `lib.rs` -> the root).
fn module_path(relative: &Path) -> ModPath {
    let mut parts: ModPath = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
    {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The library's and the binary's files (`main.rs` and `cli/`), by module.
fn crates_of(src: &Path) -> [BTreeMap<ModPath, (String, String)>; 2] {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let [mut lib, mut bin] = [BTreeMap::new(), BTreeMap::new()];
    for path in files {
        let relative = path.strip_prefix(src).unwrap();
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let name = format!("src/{}", relative.display());
        let is_bin = relative == Path::new("main.rs") || relative.starts_with("cli");
        let krate = if is_bin { &mut bin } else { &mut lib };
        krate.insert(module_path(relative), (name, source));
    }
    [lib, bin]
}

#[test]
fn no_two_modules_of_src_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let [lib, bin] = crates_of(&src);
    assert!(
        lib.len() > 40,
        "found only {} library files under {}",
        lib.len(),
        src.display()
    );
    let pairs: Vec<String> = [lib, bin]
        .iter()
        .flat_map(|files| mutual_imports(&read_crate(files)))
        .collect();
    assert!(
        pairs.is_empty(),
        "modules that import each other:\n{}",
        pairs.join("\n")
    );
}

/// The check on a small tree: it finds siblings that reach each other
/// (directly, through a parent's re-export, or from code rather than a
/// `use`), and leaves alone what is not a pair.
#[test]
fn the_check_finds_mutual_imports_and_only_those() {
    let tree = |files: &[(&str, &str)]| -> BTreeMap<ModPath, (String, String)> {
        files
            .iter()
            .map(|(file, source)| {
                (
                    module_path(Path::new(file)),
                    (file.to_string(), source.to_string()),
                )
            })
            .collect()
    };
    let check = |files: &[(&str, &str)]| mutual_imports(&read_crate(&tree(files)));
    let parent = "mod a; mod b; mod c; pub use a::A; pub use b::B; pub(crate) use c::C;";

    // a -> b by a use, b -> a through the parent's re-export.
    let cycle = check(&[
        ("m/mod.rs", parent),
        ("m/a.rs", "use super::b::B; pub struct A;"),
        ("m/b.rs", "pub struct B(super::A);"),
        ("m/c.rs", "pub struct C;"),
    ]);
    assert_eq!(
        cycle,
        ["m/a.rs (line 1) and m/b.rs (line 1) import each other"]
    );

    // Across the tree, by `crate::` paths inside a function.
    let cycle = check(&[
        ("lib.rs", "mod x; mod y;"),
        ("x.rs", "pub fn f() {}\nfn g() { crate::y::h() }"),
        ("y.rs", "pub fn h() {\n    crate::x::f()\n}"),
    ]);
    assert_eq!(cycle, ["x.rs (line 2) and y.rs (line 2) import each other"]);

    // One way only, parent and child, inline test modules, and paths in
    // comments or strings: no pair.
    let clean = check(&[
        (
            "m/mod.rs",
            "mod a; mod b; mod c; pub use a::A; pub use b::B; pub(crate) use c::C; struct P(a::A);",
        ),
        ("m/a.rs", "use super::{b::B, C}; pub struct A(super::P);"),
        (
            "m/b.rs",
            "// use super::a::A;\npub struct B; const S: &str = \"super::a::A\";\n#[cfg(test)]\nmod tests { use super::*; }",
        ),
        (
            "m/c.rs",
            "pub struct C; fn f() -> char { 'a' } fn g<'a>(x: &'a str) -> &'a str { x }",
        ),
    ]);
    assert_eq!(clean, Vec::<String>::new());
}
