//! The architecture, checked against the code: every import in `src/` points down the layer
//! table (the same table as docs/ARCHITECTURE.md's "Layers"), `src/http/` has no import cycle,
//! and the module map in docs/ARCHITECTURE.md names every file of `src/`.
//!
//! The checker reads the source text, not the compiler's view: `use` declarations (grouped
//! trees included), `crate::…`/`super::…`/`self::…` paths anywhere in code, paths through a
//! child module (`routes::all()` in `http/mod.rs`), and `crate::some_macro!` calls of
//! `#[macro_export]` macros (resolved to the file that defines them). Comments and string
//! literals are skipped. Each path is resolved to the deepest module of `src/` it names, and that
//! module's file is the import's target.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first, and the layers each may import (besides itself). The first
/// segment of a module path is its layer (`src/service/auth.rs` is in `service`); `lib` is
/// `src/lib.rs` (it only declares the modules) and `main` is `src/main.rs`, the binary, which
/// reaches the library as `kasho::…`.
const LAYERS: &[(&str, &[&str])] = &[
    ("ids", &[]),
    ("clock", &[]),
    ("log_limit", &[]),
    ("crypto", &["clock"]),
    ("tls", &["crypto", "clock", "ids", "log_limit"]),
    ("domain", &["crypto", "clock", "ids", "log_limit"]),
    (
        "observability",
        &["domain", "crypto", "clock", "ids", "log_limit"],
    ),
    (
        "store",
        &[
            "domain",
            "observability",
            "crypto",
            "clock",
            "ids",
            "log_limit",
        ],
    ),
    (
        "error",
        &["store", "domain", "crypto", "clock", "ids", "log_limit"],
    ),
    (
        "config",
        &["domain", "tls", "crypto", "clock", "ids", "log_limit"],
    ),
    (
        "service",
        &[
            "config",
            "error",
            "store",
            "domain",
            "observability",
            "crypto",
            "clock",
            "ids",
            "log_limit",
        ],
    ),
    (
        "http",
        &[
            "service",
            "error",
            "store",
            "domain",
            "observability",
            "tls",
            "crypto",
            "clock",
            "ids",
            "log_limit",
        ],
    ),
    (
        "app",
        &[
            "http",
            "service",
            "config",
            "error",
            "store",
            "domain",
            "observability",
            "tls",
            "crypto",
            "clock",
            "ids",
            "log_limit",
        ],
    ),
    (
        "cli",
        &[
            "app",
            "http",
            "service",
            "config",
            "error",
            "store",
            "domain",
            "observability",
            "tls",
            "crypto",
            "clock",
            "ids",
            "log_limit",
        ],
    ),
    ("main", &["cli"]),
    ("lib", &[]),
];

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `src/` (`src/…`, with `/`), sorted.
fn src_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else {
                let rel = p
                    .strip_prefix(manifest_dir())
                    .expect("under the manifest dir")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&manifest_dir().join("src"), &mut out);
    out
}

/// Every `.rs` file under `src/`, with its text.
fn source_files() -> Vec<(String, String)> {
    src_files()
        .into_iter()
        .filter(|f| f.ends_with(".rs"))
        .map(|f| {
            let text = std::fs::read_to_string(manifest_dir().join(&f))
                .unwrap_or_else(|e| panic!("{f}: {e}"));
            (f, text)
        })
        .collect()
}

/// The module path of a file: `src/http/handlers/mod.rs` → `[http, handlers]`, `src/lib.rs` →
/// `[]`. `src/main.rs` is its own crate: `None`.
fn module_of(file: &str) -> Option<Vec<String>> {
    let rel = file.strip_prefix("src/")?.strip_suffix(".rs")?;
    if rel == "main" {
        return None;
    }
    let mut segs: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
        segs.pop();
    }
    Some(segs)
}

fn layer_of_file(file: &str) -> String {
    match module_of(file) {
        None => "main".to_owned(),
        Some(m) => m.first().cloned().unwrap_or_else(|| "lib".to_owned()),
    }
}

/// The text with comments removed and string and character literals emptied; line breaks are
/// kept so line numbers stay right.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let n = c.len();
    let mut out = String::with_capacity(n);
    let newlines = |from: usize, to: usize, out: &mut String| {
        for ch in &c[from..to.min(n)] {
            if *ch == '\n' {
                out.push('\n');
            }
        }
    };
    let ident_char = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < n {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        if at(i) == '/' && at(i + 1) == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if at(i) == '/' && at(i + 1) == '*' {
            let start = i;
            let mut depth = 0;
            while i < n {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
            newlines(start, i, &mut out);
            continue;
        }
        let prev_ident = i > 0 && ident_char(c[i - 1]);
        // Raw strings: r"…", r#"…"#, br"…".
        if !prev_ident && (at(i) == 'r' || (at(i) == 'b' && at(i + 1) == 'r')) {
            let mut k = if at(i) == 'b' { i + 2 } else { i + 1 };
            let mut hashes = 0;
            while at(k) == '#' {
                hashes += 1;
                k += 1;
            }
            if at(k) == '"' {
                let start = i;
                k += 1;
                'raw: while k < n {
                    if c[k] == '"' && (0..hashes).all(|h| at(k + 1 + h) == '#') {
                        k += 1 + hashes;
                        break 'raw;
                    }
                    k += 1;
                }
                out.push_str("\"\"");
                newlines(start, k, &mut out);
                i = k;
                continue;
            }
        }
        if at(i) == '"' || (!prev_ident && at(i) == 'b' && at(i + 1) == '"') {
            let start = i;
            i += if at(i) == 'b' { 2 } else { 1 };
            while i < n && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
            newlines(start, i, &mut out);
            continue;
        }
        if at(i) == '\'' {
            // A character literal ('x', '\n', '\u{..}'), else a lifetime or label.
            if at(i + 1) == '\\' {
                let mut k = i + 3;
                while k < n && c[k] != '\'' {
                    k += 1;
                }
                i = k + 1;
                out.push_str("' '");
                continue;
            }
            if at(i + 2) == '\'' {
                i += 3;
                out.push_str("' '");
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// Tokens of stripped text: identifiers (a leading `$` kept, for `$crate`), `::`, and single
/// punctuation characters; each with its line.
fn tokens(text: &str) -> Vec<(String, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic()
            || ch == '_'
            || (ch == '$' && c.get(i + 1).is_some_and(|x| x.is_alphabetic() || *x == '_'))
        {
            let start = i;
            i += 1;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((c[start..i].iter().collect(), line));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(("::".to_owned(), line));
            i += 2;
        } else {
            out.push((ch.to_string(), line));
            i += 1;
        }
    }
    out
}

/// One import found in a file.
#[derive(Debug, Clone)]
struct Import {
    line: usize,
    /// The path as written, e.g. `crate::service::auth::record` or `use super::Core`.
    text: String,
    /// The file of the deepest module it names.
    target: String,
}

/// The crate as the checker sees it: files by module path, and exported macros' files.
struct Crate {
    files: BTreeMap<Vec<String>, String>,
    macros: BTreeMap<String, String>,
}

impl Crate {
    fn new(sources: &[(String, String)]) -> Self {
        let mut files = BTreeMap::new();
        let mut macros = BTreeMap::new();
        for (file, text) in sources {
            if let Some(m) = module_of(file) {
                files.insert(m, file.clone());
            }
            let toks = tokens(&strip(text));
            for (i, (t, _)) in toks.iter().enumerate() {
                if t == "macro_export" {
                    let rest = toks.iter().skip(i).take(40).collect::<Vec<_>>();
                    if let Some(k) = rest.iter().position(|(t, _)| t == "macro_rules")
                        && let Some((name, _)) = rest.get(k + 2)
                    {
                        macros.insert(name.clone(), file.clone());
                    }
                }
            }
        }
        Self { files, macros }
    }

    fn is_child(&self, parent: &[String], name: &str) -> bool {
        let mut m = parent.to_vec();
        m.push(name.to_owned());
        self.files.contains_key(&m)
    }

    /// The file a path names, from module `current` (`None`: a path into another crate).
    fn resolve(
        &self,
        current: &[String],
        path: &[String],
        bin: bool,
    ) -> Option<Result<String, String>> {
        let first = path.first()?.as_str();
        let (mut base, rest): (Vec<String>, &[String]) = match first {
            "crate" | "$crate" if !bin => (Vec::new(), &path[1..]),
            "kasho" if bin => (Vec::new(), &path[1..]),
            "self" if !bin => (current.to_vec(), &path[1..]),
            "super" if !bin => {
                let mut base = current.to_vec();
                let mut k = 0;
                while path.get(k).is_some_and(|s| s == "super") {
                    base.pop();
                    k += 1;
                }
                (base, &path[k..])
            }
            name if !bin && self.is_child(current, name) => (current.to_vec(), path),
            _ => return None,
        };
        // Below the crate root the deepest module named is the target; at the root only a
        // module or an exported macro (`crate::warn_limited!`) can follow.
        let mut deepest = (!base.is_empty())
            .then(|| self.files.get(&base).cloned())
            .flatten();
        for seg in rest {
            base.push(seg.clone());
            match self.files.get(&base) {
                Some(f) => deepest = Some(f.clone()),
                None => break,
            }
        }
        if deepest.is_none()
            && let Some(f) = rest.first().and_then(|name| self.macros.get(name))
        {
            return Some(Ok(f.clone()));
        }
        Some(deepest.ok_or_else(|| format!("`{}` names no module of src/", path.join("::"))))
    }
}

/// The imports of one file, and any paths that resolve to nothing.
fn imports(krate: &Crate, file: &str, text: &str) -> (Vec<Import>, Vec<String>) {
    let bin = module_of(file).is_none();
    let file_module = module_of(file).unwrap_or_default();
    let toks = tokens(&strip(text));
    let mut found = Vec::new();
    let mut unresolved = Vec::new();
    // Inline modules (`mod tests { … }`) move `self` and `super`.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let current = |inline: &[(String, usize)]| {
        let mut m = file_module.clone();
        m.extend(inline.iter().map(|(n, _)| n.clone()));
        m
    };
    let mut record = |current: &[String], path: &[String], text: String, line: usize| match krate
        .resolve(current, path, bin)
    {
        Some(Ok(target)) => found.push(Import { line, text, target }),
        Some(Err(e)) => unresolved.push(format!("{file}:{line}: {e}")),
        None => {}
    };
    let mut i = 0;
    while i < toks.len() {
        let (t, line) = (&toks[i].0, toks[i].1);
        match t.as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if toks.get(i + 2).is_some_and(|(t, _)| t == "{") => {
                inline.push((toks[i + 1].0.clone(), depth));
            }
            "use" => {
                let mut j = i + 1;
                let mut tree = Vec::new();
                while j < toks.len() && toks[j].0 != ";" {
                    tree.push(toks[j].0.clone());
                    j += 1;
                }
                let cur = current(&inline);
                for path in use_paths(&tree) {
                    record(&cur, &path, format!("use {}", path.join("::")), line);
                }
                i = j;
                continue;
            }
            _ => {
                let starts_path = toks.get(i + 1).is_some_and(|(t, _)| t == "::")
                    && !(i > 0 && toks[i - 1].0 == "::");
                if starts_path {
                    let mut path = vec![t.clone()];
                    let mut j = i + 1;
                    while toks.get(j).is_some_and(|(t, _)| t == "::")
                        && toks.get(j + 1).is_some_and(|(t, _)| {
                            t.starts_with(|c: char| c.is_alphabetic() || c == '_')
                        })
                    {
                        path.push(toks[j + 1].0.clone());
                        j += 2;
                    }
                    let cur = current(&inline);
                    let text = path.join("::");
                    record(&cur, &path, text, line);
                    i = j;
                    continue;
                }
            }
        }
        i += 1;
    }
    (found, unresolved)
}

/// The paths of a use tree (the tokens between `use` and `;`): `crate::{a::b, c::{self, d}}`
/// → `crate::a::b`, `crate::c`, `crate::c::d`. `as` renames and globs end a path.
fn use_paths(tree: &[String]) -> Vec<Vec<String>> {
    fn walk(tree: &[String], mut k: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
        let mut path = prefix.to_vec();
        while k < tree.len() {
            match tree[k].as_str() {
                "{" => {
                    k += 1;
                    while k < tree.len() && tree[k] != "}" {
                        k = walk(tree, k, &path, out);
                        if tree.get(k).is_some_and(|t| t == ",") {
                            k += 1;
                        }
                    }
                    return k + 1;
                }
                "," | "}" => break,
                "::" => k += 1,
                "as" => k += 2,
                "*" => k += 1,
                "self" if !path.is_empty() => k += 1,
                seg => {
                    path.push(seg.to_owned());
                    k += 1;
                }
            }
        }
        if !path.is_empty() {
            out.push(path);
        }
        k
    }
    let mut out = Vec::new();
    walk(tree, 0, &[], &mut out);
    out
}

/// What the checker finds in a set of files: imports against the layer table, paths that name
/// no module, and the import cycles among the files of `src/http/`.
#[derive(Debug, Default)]
struct Findings {
    against_layers: Vec<String>,
    unresolved: Vec<String>,
    http_cycles: Vec<String>,
}

fn check(sources: &[(String, String)]) -> Findings {
    let table: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(l, may)| (*l, may.iter().copied().collect()))
        .collect();
    let krate = Crate::new(sources);
    let mut findings = Findings::default();
    let mut http_graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in sources {
        let from = layer_of_file(file);
        let Some(allowed) = table.get(from.as_str()) else {
            findings.against_layers.push(format!(
                "{file}: layer `{from}` has no row in the layer table"
            ));
            continue;
        };
        let (found, unresolved) = imports(&krate, file, text);
        findings.unresolved.extend(unresolved);
        if file.starts_with("src/http/") {
            http_graph.entry(file.clone()).or_default();
        }
        for imp in found {
            let to = layer_of_file(&imp.target);
            if to != from && !allowed.contains(to.as_str()) {
                findings.against_layers.push(format!(
                    "{file}:{}: `{}` ({from} must not import {to})",
                    imp.line, imp.text
                ));
            }
            if file.starts_with("src/http/")
                && imp.target.starts_with("src/http/")
                && imp.target != *file
            {
                http_graph
                    .entry(file.clone())
                    .or_default()
                    .insert(imp.target);
            }
        }
    }
    findings.http_cycles = cycles(&http_graph);
    findings
}

/// One cycle per strongly connected group of files, written `a → b → … → a`.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    // The shortest path from `from` to `to` (breadth first), as the files after `from`.
    let path = |from: &str, to: &str| -> Option<Vec<String>> {
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from.to_owned()]);
        while let Some(f) = queue.pop_front() {
            for next in graph.get(&f).into_iter().flatten() {
                if next == to {
                    let mut p = vec![to.to_owned()];
                    let mut at = f.clone();
                    while at != from {
                        p.push(at.clone());
                        at = prev[&at].clone();
                    }
                    p.reverse();
                    return Some(p);
                }
                if !prev.contains_key(next) && next != from {
                    prev.insert(next.clone(), f.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        None
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for file in graph.keys() {
        if seen.contains(file) {
            continue;
        }
        if let Some(p) = path(file, file) {
            let group: BTreeSet<String> = graph
                .keys()
                .filter(|g| *g == file || (path(file, g).is_some() && path(g, file).is_some()))
                .cloned()
                .collect();
            out.push(format!(
                "{file} → {} ({} files in the cycle)",
                p.join(" → "),
                group.len()
            ));
            seen.extend(group);
        }
    }
    out
}

#[test]
fn every_import_in_src_points_down_the_layer_table() {
    let findings = check(&source_files());
    assert!(
        findings.unresolved.is_empty(),
        "paths the layer check cannot place:\n{}",
        findings.unresolved.join("\n")
    );
    assert!(
        findings.against_layers.is_empty(),
        "imports against the layers (docs/ARCHITECTURE.md, \"Layers\"):\n{}",
        findings.against_layers.join("\n")
    );
}

#[test]
fn the_files_of_src_http_import_each_other_without_a_cycle() {
    let findings = check(&source_files());
    assert!(
        findings.http_cycles.is_empty(),
        "import cycles in src/http/:\n{}",
        findings.http_cycles.join("\n")
    );
}

fn sample(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
        .collect()
}

/// The checker itself: it sees grouped `use` trees, `super` (in a file and in an inline
/// module), inline `crate::` paths, child-module paths and exported macros, and ignores
/// comments and strings.
#[test]
fn the_layer_check_names_the_file_and_the_import_against_the_direction() {
    let files = sample(&[
        (
            "src/lib.rs",
            "pub mod domain; pub mod service; pub mod store; pub mod ids; pub mod log_limit;",
        ),
        ("src/ids.rs", ""),
        (
            "src/log_limit.rs",
            "#[macro_export]\nmacro_rules! warn_limited { () => { $crate::log_limit::admit() } }",
        ),
        ("src/service/mod.rs", "pub mod auth;"),
        ("src/service/auth.rs", "pub fn record() {}"),
        (
            "src/store/mod.rs",
            "pub mod rows;\nuse crate::{ids::TenantId, domain::Money};",
        ),
        ("src/store/rows.rs", "use super::super::service::auth;"),
        (
            "src/domain/mod.rs",
            "//! Not an import: crate::service::auth::record\n\
             pub mod ledger;\n\
             use crate::{\n    ids::AccountId,\n    service::{self, auth::record as r},\n};\n\
             const S: &str = \"crate::store::Store\";\n\
             fn f() { crate::warn_limited!(); let c = '\"'; }\n",
        ),
        (
            "src/domain/ledger.rs",
            "fn f<'a>(x: &'a str) {\n    let _ = crate::store::rows::Row::new();\n}\n\
             #[cfg(test)]\nmod tests {\n    use super::super::Money;\n    use super::f;\n}\n",
        ),
    ]);
    let f = check(&files);
    let mut expected = vec![
        "src/domain/ledger.rs:2: `crate::store::rows::Row::new` (domain must not import store)",
        "src/domain/mod.rs:3: `use crate::service` (domain must not import service)",
        "src/domain/mod.rs:3: `use crate::service::auth::record` (domain must not import service)",
        "src/store/rows.rs:1: `use super::super::service::auth` (store must not import service)",
    ];
    expected.sort_unstable();
    let mut got = f.against_layers.clone();
    got.sort();
    assert_eq!(got, expected, "{f:#?}");
    assert!(f.unresolved.is_empty(), "{f:#?}");

    // A path into nothing is reported, not skipped.
    let f = check(&sample(&[
        ("src/lib.rs", ""),
        ("src/domain/mod.rs", "use crate::nowhere::X;"),
    ]));
    assert_eq!(
        f.unresolved,
        vec!["src/domain/mod.rs:1: `crate::nowhere::X` names no module of src/"]
    );
}

#[test]
fn the_cycle_check_finds_a_cycle_through_the_parent_module() {
    let files = sample(&[
        ("src/lib.rs", "pub mod http; pub mod service;"),
        ("src/service/mod.rs", "pub struct Core;"),
        (
            "src/http/mod.rs",
            "mod routes; mod handlers; mod error;\npub struct AppState;\nfn router() { routes::all(); }",
        ),
        ("src/http/routes.rs", "use super::handlers::users;"),
        ("src/http/handlers/mod.rs", "pub mod users;"),
        (
            "src/http/handlers/users.rs",
            "use crate::http::AppState;\nuse crate::http::error::E;",
        ),
        ("src/http/error.rs", "use crate::service::Core;"),
    ]);
    let f = check(&files);
    assert!(f.against_layers.is_empty(), "{f:#?}");
    assert_eq!(
        f.http_cycles,
        vec![
            "src/http/handlers/users.rs → src/http/mod.rs → src/http/routes.rs → \
             src/http/handlers/users.rs (3 files in the cycle)"
        ]
    );
}

fn architecture_md() -> String {
    std::fs::read_to_string(manifest_dir().join("docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md")
}

#[test]
fn the_module_map_names_every_file_of_src() {
    let doc = architecture_md();
    let map = doc
        .split("\n## ")
        .find(|s| s.starts_with("Module map"))
        .expect("docs/ARCHITECTURE.md has a \"## Module map\" section");
    let missing: Vec<String> = src_files()
        .into_iter()
        .filter(|f| !map.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md's module map does not name these files of src/ (as `src/…`):\n{}",
        missing.join("\n")
    );
}

/// The "Layers" table of docs/ARCHITECTURE.md is the table this test enforces: rows
/// `` | `layer` | … | `a`, `b` | `` (the last cell lists what the layer may import, or `—`).
#[test]
fn the_layer_table_in_the_docs_is_the_one_enforced() {
    let doc = architecture_md();
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("docs/ARCHITECTURE.md has a \"## Layers\" section");
    let documented: BTreeMap<String, BTreeSet<String>> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let layer = cells[0].trim_matches('`').to_owned();
            let may = cells
                .last()
                .expect("cells")
                .split(',')
                .map(|s| s.trim().trim_matches('`').to_owned())
                .filter(|s| !s.is_empty() && s != "—")
                .collect();
            (layer, may)
        })
        .collect();
    let enforced: BTreeMap<String, BTreeSet<String>> = LAYERS
        .iter()
        .map(|(l, may)| {
            (
                (*l).to_owned(),
                may.iter().map(|s| (*s).to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(
        documented, enforced,
        "docs/ARCHITECTURE.md \"Layers\" vs LAYERS in this test"
    );
}
