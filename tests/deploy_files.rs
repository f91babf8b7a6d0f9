//! The deployment files under `deploy/` (deploy/README.md): the container
//! image, the compose file and the Kubernetes manifests. Docker and a
//! cluster are not available to the tests, so this checks what can be
//! checked without them: every YAML file parses; the compose file runs three
//! replicas on a healthy Postgres behind a TCP load balancer; the manifests
//! run the migrations once and probe the replicas through gRPC health; the
//! Dockerfile builds in stages and runs as a non-root user; and every
//! `LOCKSTEP_*` variable and `--flag` they hand to `lockstep` exists in that
//! subcommand's `--help` of the binary built here.
//!
//! Limit: the crate has no YAML dependency, so the YAML files are read by the
//! small parser below. It understands the subset these files use — block
//! mappings and sequences, plain, quoted and block scalars, one-line flow
//! collections, anchors, aliases and `<<` merges, `---` documents — and
//! refuses anything else (tags, multi-line plain or flow scalars, tabs,
//! unexpected indentation, duplicate keys) with the file and line, so a file
//! it accepts is valid YAML meaning what the checks read. It does not type
//! scalars (all are strings) and is no substitute for `docker compose config`
//! or `kubectl apply --dry-run=server`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------
// A YAML subset.

#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Null,
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// `a.b.c` through nested mappings.
    fn at(&self, path: &str) -> Option<&Yaml> {
        path.split('.').try_fold(self, |node, key| node.get(key))
    }

    fn str_at(&self, path: &str) -> Option<&str> {
        self.at(path).and_then(Yaml::as_str)
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    fn seq(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            _ => &[],
        }
    }

    fn entries(&self) -> &[(String, Yaml)] {
        match self {
            Yaml::Map(entries) => entries,
            _ => &[],
        }
    }

    fn strings(&self) -> Vec<String> {
        self.seq()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}

struct Line {
    /// 1-based, for messages.
    no: usize,
    indent: usize,
    /// The content after the indentation, comments and trailing blanks
    /// removed.
    text: String,
}

struct Parser<'a> {
    file: &'a str,
    /// The raw lines of the document (block scalars read these).
    raw: Vec<&'a str>,
    lines: Vec<Line>,
    pos: usize,
    anchors: HashMap<String, Yaml>,
}

type Res<T> = Result<T, String>;

/// Every document of a YAML file (empty documents left out).
fn parse_yaml(file: &str, text: &str) -> Res<Vec<Yaml>> {
    let mut docs = Vec::new();
    let mut chunk: Vec<(usize, &str)> = Vec::new();
    let all: Vec<&str> = text.lines().collect();
    for (i, line) in all.iter().enumerate() {
        if line.trim_end() == "---" {
            docs.extend(parse_document(file, &chunk)?);
            chunk.clear();
        } else if line.starts_with("---") || line.starts_with("...") || line.starts_with('%') {
            return Err(format!(
                "{file}:{}: unsupported document marker or directive",
                i + 1
            ));
        } else {
            chunk.push((i + 1, line));
        }
    }
    docs.extend(parse_document(file, &chunk)?);
    Ok(docs)
}

fn parse_document(file: &str, chunk: &[(usize, &str)]) -> Res<Option<Yaml>> {
    let mut lines = Vec::new();
    for &(no, raw) in chunk {
        let indent = raw.len() - raw.trim_start_matches([' ', '\t']).len();
        if raw[..indent].contains('\t') {
            return Err(format!("{file}:{no}: a tab in the indentation"));
        }
        lines.push(Line {
            no,
            indent,
            text: strip_comment(&raw[indent..]).trim_end().to_owned(),
        });
    }
    let mut p = Parser {
        file,
        raw: chunk.iter().map(|&(_, r)| r).collect(),
        lines,
        pos: 0,
        anchors: HashMap::new(),
    };
    if p.next_content().is_none() {
        return Ok(None);
    }
    let doc = p.node(-1)?;
    if let Some(i) = p.next_content() {
        return Err(p.err(i, "unexpected content (wrong indentation?)"));
    }
    Ok(Some(doc))
}

/// Cuts a `#` comment outside quotes (at the start, or after a blank).
fn strip_comment(s: &str) -> &str {
    let (mut single, mut double, mut prev_blank) = (false, false, true);
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if double => escaped = !escaped,
            '"' if !single && !escaped => double = !double,
            '\'' if !double => single = !single,
            '#' if !single && !double && prev_blank => return &s[..i],
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
        prev_blank = c == ' ' || c == '\t';
    }
    s
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: rest` (or `key:`), with the key plain or quoted.
fn split_key(text: &str) -> Option<(String, String)> {
    if text.starts_with(['[', '{', '&', '*', '|', '>', '!']) || is_seq_item(text) {
        return None;
    }
    let (key, after) = if text.starts_with(['"', '\'']) {
        let mut cur = Cursor { s: text, i: 0 };
        let key = cur.quoted().ok()?;
        (key, text[cur.i..].trim_start())
    } else {
        let bytes = text.as_bytes();
        let colon = (0..bytes.len())
            .find(|&i| bytes[i] == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' '))?;
        (text[..colon].trim_end().to_owned(), &text[colon..])
    };
    let rest = after.strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with(' ')) || key.is_empty() {
        return None;
    }
    Some((key, rest.trim().to_owned()))
}

impl Parser<'_> {
    fn err(&self, i: usize, msg: &str) -> String {
        format!("{}:{}: {msg}", self.file, self.lines[i].no)
    }

    fn next_content(&self) -> Option<usize> {
        (self.pos..self.lines.len()).find(|&i| !self.lines[i].text.is_empty())
    }

    /// The node on the next lines, indented more than `parent`; `Null` if
    /// there is none.
    fn node(&mut self, parent: isize) -> Res<Yaml> {
        let Some(i) = self.next_content() else {
            return Ok(Yaml::Null);
        };
        let indent = self.lines[i].indent;
        if indent as isize <= parent {
            return Ok(Yaml::Null);
        }
        let text = self.lines[i].text.clone();
        if is_seq_item(&text) {
            self.seq(indent)
        } else if split_key(&text).is_some() {
            self.map(indent)
        } else {
            self.pos = i + 1;
            self.value(&text, i, indent)
        }
    }

    fn map(&mut self, indent: usize) -> Res<Yaml> {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        let mut merged: Vec<Yaml> = Vec::new();
        while let Some(i) = self.next_content() {
            let line = &self.lines[i];
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return Err(self.err(
                    i,
                    "unexpected indentation (multi-line scalars are not supported)",
                ));
            }
            if is_seq_item(&line.text) {
                return Err(self.err(i, "a sequence item where a mapping key was expected"));
            }
            let Some((key, rest)) = split_key(&line.text) else {
                return Err(self.err(i, "expected `key: value`"));
            };
            self.pos = i + 1;
            let value = if rest.is_empty() {
                match self.next_content() {
                    // `key:` then `- item` at the key's own indentation.
                    Some(j)
                        if self.lines[j].indent == indent && is_seq_item(&self.lines[j].text) =>
                    {
                        self.seq(indent)?
                    }
                    _ => self.node(indent as isize)?,
                }
            } else {
                self.value(&rest, i, indent)?
            };
            if key == "<<" {
                merged.push(value);
            } else if entries.iter().any(|(k, _)| *k == key) {
                return Err(self.err(i, &format!("duplicate key {key:?}")));
            } else {
                entries.push((key, value));
            }
        }
        // `<<: *anchor` (or a list of them): keys given here win.
        for m in merged {
            let sources = match m {
                Yaml::Seq(items) => items,
                other => vec![other],
            };
            for source in sources {
                let Yaml::Map(src) = source else {
                    return Err(format!("{}: `<<` must merge a mapping", self.file));
                };
                for (k, v) in src {
                    if !entries.iter().any(|(e, _)| *e == k) {
                        entries.push((k, v));
                    }
                }
            }
        }
        Ok(Yaml::Map(entries))
    }

    fn seq(&mut self, indent: usize) -> Res<Yaml> {
        let mut items = Vec::new();
        while let Some(i) = self.next_content() {
            let line = &self.lines[i];
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return Err(self.err(i, "unexpected indentation"));
            }
            if !is_seq_item(&line.text) {
                break;
            }
            let after = line.text[1..].to_owned();
            let rest = after.trim_start();
            if rest.is_empty() {
                self.pos = i + 1;
                items.push(self.node(indent as isize)?);
            } else if is_seq_item(rest) || split_key(rest).is_some() {
                // `- key: value` opens a mapping (or `- - x` a sequence)
                // whose indentation is the column after the dash.
                let column = indent + 1 + (after.len() - rest.len());
                self.lines[i].indent = column;
                self.lines[i].text = rest.to_owned();
                items.push(self.node(indent as isize)?);
            } else {
                self.pos = i + 1;
                items.push(self.value(rest, i, indent)?);
            }
        }
        Ok(Yaml::Seq(items))
    }

    /// The value after `key: ` or `- ` on line `i`, whose block indentation
    /// is `indent`.
    fn value(&mut self, text: &str, i: usize, indent: usize) -> Res<Yaml> {
        let mut text = text.trim();
        let mut anchor = None;
        if let Some(after) = text.strip_prefix('&') {
            let end = after.find(' ').unwrap_or(after.len());
            anchor = Some(after[..end].to_owned());
            text = after[end..].trim_start();
        }
        let value = if text.is_empty() {
            self.node(indent as isize)?
        } else if let Some(header) = text.strip_prefix(['|', '>']) {
            self.block_scalar(text.starts_with('|'), header, i, indent)?
        } else {
            let mut cur = Cursor { s: text, i: 0 };
            let v = cur
                .flow(false, &self.anchors)
                .map_err(|e| self.err(i, &e))?;
            cur.blanks();
            if cur.i != text.len() {
                return Err(self.err(i, &format!("unexpected {:?}", &text[cur.i..])));
            }
            v
        };
        if let Some(name) = anchor {
            self.anchors.insert(name, value.clone());
        }
        Ok(value)
    }

    fn block_scalar(&mut self, literal: bool, header: &str, i: usize, indent: usize) -> Res<Yaml> {
        let chomp = match header {
            "" => "clip",
            "-" => "strip",
            "+" => "keep",
            _ => return Err(self.err(i, "unsupported block scalar header")),
        };
        let mut body: Vec<&str> = Vec::new();
        let mut j = i + 1;
        let mut content_indent = None;
        while j < self.raw.len() {
            let raw = self.raw[j];
            if raw.trim().is_empty() {
                body.push("");
                j += 1;
                continue;
            }
            let ind = raw.len() - raw.trim_start().len();
            if ind <= indent {
                break;
            }
            let ci = *content_indent.get_or_insert(ind);
            if ind < ci {
                return Err(self.err(j, "block scalar line less indented than its first"));
            }
            body.push(&raw[ci..]);
            j += 1;
        }
        self.pos = j;
        while body.len() > 1 && body.last() == Some(&"") && chomp != "keep" {
            body.pop();
        }
        let mut s = if literal {
            body.join("\n")
        } else {
            body.join(" ")
        };
        if chomp != "strip" && !s.is_empty() {
            s.push('\n');
        }
        Ok(Yaml::Str(s))
    }
}

struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }

    fn blanks(&mut self) {
        while self.peek() == Some(' ') {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// A scalar or flow collection; `in_flow` inside `[...]`/`{...}`.
    fn flow(&mut self, in_flow: bool, anchors: &HashMap<String, Yaml>) -> Result<Yaml, String> {
        self.blanks();
        match self.peek() {
            Some('[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.blanks();
                    if self.eat(']') {
                        return Ok(Yaml::Seq(items));
                    }
                    items.push(self.flow(true, anchors)?);
                    self.blanks();
                    if !self.eat(',') && self.peek() != Some(']') {
                        return Err(
                            "expected `,` or `]` (flow collections must fit one line)".into()
                        );
                    }
                }
            }
            Some('{') => {
                self.i += 1;
                let mut entries: Vec<(String, Yaml)> = Vec::new();
                loop {
                    self.blanks();
                    if self.eat('}') {
                        return Ok(Yaml::Map(entries));
                    }
                    let Yaml::Str(key) = self.flow(true, anchors)? else {
                        return Err("a flow mapping key must be a scalar".into());
                    };
                    self.blanks();
                    if !self.eat(':') {
                        return Err(format!("expected `:` after {key:?}"));
                    }
                    self.blanks();
                    let value = if matches!(self.peek(), Some(',' | '}')) {
                        Yaml::Null
                    } else {
                        self.flow(true, anchors)?
                    };
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(format!("duplicate key {key:?}"));
                    }
                    entries.push((key, value));
                    self.blanks();
                    if !self.eat(',') && self.peek() != Some('}') {
                        return Err(
                            "expected `,` or `}` (flow collections must fit one line)".into()
                        );
                    }
                }
            }
            Some('"' | '\'') => self.quoted().map(Yaml::Str),
            Some('*') => {
                self.i += 1;
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| !matches!(c, ' ' | ',' | ']' | '}'))
                {
                    self.i += 1;
                }
                let name = &self.s[start..self.i];
                anchors
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("unknown alias *{name}"))
            }
            Some(c) if "!&%@`|>".contains(c) => Err(format!("unsupported YAML: {c:?}")),
            None => Ok(Yaml::Null),
            Some(_) => {
                let start = self.i;
                let rest = &self.s[start..];
                let len = if in_flow {
                    let b = rest.as_bytes();
                    (0..b.len())
                        .find(|&k| {
                            matches!(b[k], b',' | b']' | b'}')
                                || (b[k] == b':'
                                    && (k + 1 == b.len()
                                        || matches!(b[k + 1], b' ' | b',' | b']' | b'}')))
                        })
                        .unwrap_or(b.len())
                } else {
                    if rest.contains(": ") {
                        return Err(format!(
                            "{rest:?}: a plain scalar may not contain `: ` (quote it)"
                        ));
                    }
                    rest.len()
                };
                self.i += len;
                let word = rest[..len].trim();
                Ok(match word {
                    "" | "~" | "null" => Yaml::Null,
                    w => Yaml::Str(w.to_owned()),
                })
            }
        }
    }

    fn quoted(&mut self) -> Result<String, String> {
        let q = self.peek().ok_or("expected a quote")?;
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self
                .peek()
                .ok_or("unterminated quoted scalar (must fit one line)")?;
            self.i += c.len_utf8();
            match c {
                '\'' if q == '\'' => {
                    if self.eat('\'') {
                        out.push('\'');
                    } else {
                        return Ok(out);
                    }
                }
                '"' if q == '"' => return Ok(out),
                '\\' if q == '"' => {
                    let e = self.peek().ok_or("unterminated escape")?;
                    self.i += e.len_utf8();
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        '"' => '"',
                        '\\' => '\\',
                        '/' => '/',
                        '0' => '\0',
                        other => return Err(format!("unsupported escape \\{other}")),
                    });
                }
                c => out.push(c),
            }
        }
    }
}

#[test]
fn the_yaml_subset_parser_reads_what_it_should_and_refuses_the_rest() {
    let docs = parse_yaml(
        "t.yaml",
        "# c\na: &x\n  b: \"q # not a comment\"\n  c: [1, 'two', {d: e}]\nf:\n- g: h # c\n  i: j\n- k\nl:\n  <<: *x\n  b: own\nm: |\n  line 1\n\n  line 2\n---\nn: postgres://u:p@h:5432/db\n",
    )
    .expect("parses");
    assert_eq!(docs.len(), 2);
    let d = &docs[0];
    assert_eq!(d.str_at("a.b"), Some("q # not a comment"));
    assert_eq!(d.at("a.c").unwrap().seq()[2].str_at("d"), Some("e"));
    assert_eq!(d.at("f").unwrap().seq()[0].str_at("i"), Some("j"));
    assert_eq!(d.at("f").unwrap().seq()[1].as_str(), Some("k"));
    assert_eq!(d.str_at("l.b"), Some("own"));
    assert_eq!(d.at("l.c").unwrap().strings(), ["1", "two"]);
    assert_eq!(d.str_at("m"), Some("line 1\n\nline 2\n"));
    assert_eq!(docs[1].str_at("n"), Some("postgres://u:p@h:5432/db"));
    for bad in [
        "a: b\n  c: d\n",
        "a:\n\tb: c\n",
        "a: [1,\n  2]\n",
        "a: b: c\n",
        "a: 1\na: 2\n",
        "a: *nope\n",
        "a: !tag x\n",
        "- a\nb: c\n",
    ] {
        assert!(parse_yaml("bad.yaml", bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------
// The files.

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every YAML file under deploy/, by path relative to the repository, with
/// its documents.
fn deploy_yaml() -> BTreeMap<String, Vec<Yaml>> {
    let mut files = Vec::new();
    yaml_files(&repo().join("deploy"), &mut files);
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(repo()).unwrap().display().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let docs = parse_yaml(&rel, &text).unwrap_or_else(|e| panic!("{e}"));
            (rel, docs)
        })
        .collect()
}

/// Every Kubernetes object under deploy/k8s/, with the file it is in.
fn k8s_objects() -> Vec<(String, Yaml)> {
    deploy_yaml()
        .into_iter()
        .filter(|(f, _)| f.starts_with("deploy/k8s/"))
        .flat_map(|(f, docs)| docs.into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

fn k8s_one(kind: &str) -> Yaml {
    let found: Vec<_> = k8s_objects()
        .into_iter()
        .filter(|(_, o)| o.str_at("kind") == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "deploy/k8s/ should hold exactly one {kind}");
    found.into_iter().next().unwrap().1
}

fn compose() -> Yaml {
    let docs = parse_yaml("deploy/compose.yaml", &read("deploy/compose.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 1, "deploy/compose.yaml: one document");
    docs.into_iter().next().unwrap()
}

/// The compose services that run the Lockstep image.
fn compose_replicas(compose: &Yaml) -> Vec<(String, Yaml)> {
    compose
        .at("services")
        .expect("compose: services")
        .entries()
        .iter()
        .filter(|(_, s)| {
            s.str_at("build.dockerfile") == Some("deploy/Dockerfile")
                || s.str_at("image").is_some_and(|i| i.starts_with("lockstep"))
        })
        .cloned()
        .collect()
}

fn env_map(service: &Yaml) -> BTreeMap<String, String> {
    match service.at("environment") {
        Some(Yaml::Map(entries)) => entries
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
            .collect(),
        Some(Yaml::Seq(items)) => items
            .iter()
            .filter_map(Yaml::as_str)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The Dockerfile's instructions: (keyword, arguments), continuation lines
/// joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (kw, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((kw.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// The Dockerfile's stages: alias (or index) and instructions.
fn docker_stages() -> Vec<(String, Vec<(String, String)>)> {
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (kw, args) in dockerfile() {
        if kw == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => stages.len().to_string(),
            };
            stages.push((name, Vec::new()));
        } else if let Some((_, body)) = stages.last_mut() {
            body.push((kw, args));
        }
    }
    stages
}

/// `lockstep <sub> --help`, from the binary built with these tests.
fn help(sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([sub, "--help"])
        .output()
        .expect("running lockstep");
    assert!(
        out.status.success(),
        "`lockstep {sub} --help` failed: the deploy files run `lockstep {sub}`, which this binary lacks\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `--flags` and `LOCKSTEP_*` names of a help text.
fn names_in_help(help: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for word in help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        if (word.starts_with("--") && word.len() > 2) || word.starts_with("LOCKSTEP_") {
            names.insert(word.to_owned());
        }
    }
    names
}

/// The `LOCKSTEP_*` names anywhere in a text.
fn lockstep_vars(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.starts_with("LOCKSTEP_") && w.len() > "LOCKSTEP_".len())
        .map(str::to_owned)
        .collect()
}

/// One run of `lockstep` that a deploy file sets up.
struct Invocation {
    origin: String,
    args: Vec<String>,
    env: BTreeSet<String>,
}

/// Every `lockstep` run the Dockerfile, the compose file and the manifests
/// configure. The image's own `ENV` is checked against its `CMD` only: any
/// other subcommand run in the image ignores what it does not read.
fn invocations() -> Vec<Invocation> {
    let stages = docker_stages();
    let (_, runtime) = stages.last().expect("a FROM");
    let image_env: BTreeSet<String> = runtime
        .iter()
        .filter(|(kw, _)| kw == "ENV")
        .flat_map(|(_, args)| {
            args.split_whitespace()
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    let cmd: Vec<String> = runtime
        .iter()
        .rev()
        .find(|(kw, _)| kw == "CMD")
        .and_then(|(_, args)| serde_json::from_str(args).ok())
        .expect("deploy/Dockerfile: CMD as a JSON array");
    let mut out = vec![Invocation {
        origin: "deploy/Dockerfile".into(),
        args: cmd.clone(),
        env: image_env
            .iter()
            .filter(|k| k.starts_with("LOCKSTEP_"))
            .cloned()
            .collect(),
    }];
    let compose = compose();
    for (name, service) in compose_replicas(&compose) {
        let args = match service.at("command") {
            Some(Yaml::Seq(_)) => service.at("command").unwrap().strings(),
            Some(Yaml::Str(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => cmd.clone(),
        };
        out.push(Invocation {
            origin: format!("deploy/compose.yaml service {name}"),
            args,
            env: env_map(&service).into_keys().collect(),
        });
    }
    for (file, object) in k8s_objects() {
        let pod = object
            .at("spec.template.spec")
            .or(object.at("spec.jobTemplate.spec.template.spec"));
        let Some(pod) = pod else { continue };
        for key in ["initContainers", "containers"] {
            for c in pod.at(key).map(Yaml::seq).unwrap_or_default() {
                if !c.str_at("image").is_some_and(|i| i.contains("lockstep")) {
                    continue;
                }
                let mut args = match c.at("command") {
                    Some(command) => command.strings().into_iter().skip(1).collect(),
                    None => Vec::new(),
                };
                match c.at("args") {
                    Some(a) => args.extend(a.strings()),
                    None if c.at("command").is_none() => args = cmd.clone(),
                    None => {}
                }
                let env = c
                    .at("env")
                    .map(Yaml::seq)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| e.str_at("name").map(str::to_owned))
                    .collect();
                out.push(Invocation {
                    origin: format!("{file} container {}", c.str_at("name").unwrap_or("?")),
                    args,
                    env,
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The checks.

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = deploy_yaml();
    assert!(
        files.contains_key("deploy/compose.yaml"),
        "{:?}",
        files.keys()
    );
    let k8s = files
        .keys()
        .filter(|f| f.starts_with("deploy/k8s/"))
        .count();
    assert!(
        k8s >= 4,
        "deploy/k8s/: the Job, Deployment, Service and PodDisruptionBudget files; found {k8s}"
    );
    for (file, object) in k8s_objects() {
        for field in ["apiVersion", "kind", "metadata.name"] {
            assert!(
                object.str_at(field).is_some(),
                "{file}: an object without {field}"
            );
        }
    }
}

#[test]
fn every_flag_and_env_var_the_deploy_files_pass_exists_in_lockstep_help() {
    let mut helps: HashMap<String, BTreeSet<String>> = HashMap::new();
    let invocations = invocations();
    assert!(
        invocations.len() >= 6,
        "the image, three compose replicas, the migration Job and the Deployment"
    );
    for inv in &invocations {
        let sub = inv
            .args
            .first()
            .unwrap_or_else(|| panic!("{}: no lockstep subcommand", inv.origin));
        let known = helps
            .entry(sub.clone())
            .or_insert_with(|| names_in_help(&help(sub)));
        for arg in inv.args.iter().skip(1).filter(|a| a.starts_with("--")) {
            let flag = arg.split('=').next().unwrap();
            assert!(
                known.contains(flag),
                "{}: `lockstep {sub}` has no {flag}",
                inv.origin
            );
        }
        for var in inv.env.iter().filter(|v| v.starts_with("LOCKSTEP_")) {
            assert!(
                known.contains(var),
                "{}: `lockstep {sub} --help` names no {var}",
                inv.origin
            );
        }
    }
    // Also every LOCKSTEP_* name a comment or a value mentions.
    let all: BTreeSet<String> = helps.values().flatten().cloned().collect();
    let mut texts = vec![("deploy/Dockerfile".to_owned(), read("deploy/Dockerfile"))];
    for file in deploy_yaml().keys() {
        texts.push((file.clone(), read(file)));
    }
    for (file, text) in texts {
        for var in lockstep_vars(&text) {
            assert!(
                all.contains(&var),
                "{file} names {var}, which no `lockstep … --help` it runs names"
            );
        }
    }
}

#[test]
fn the_image_builds_in_stages_and_runs_lockstep_serve_as_a_non_root_user() {
    let stages = docker_stages();
    assert!(
        stages.len() >= 2,
        "deploy/Dockerfile: a build stage and a runtime stage"
    );
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    let builds = stages.iter().any(|(_, body)| {
        body.iter()
            .any(|(kw, args)| kw == "RUN" && args.contains("cargo build --release --locked"))
    });
    assert!(
        builds,
        "deploy/Dockerfile: no stage runs `cargo build --release --locked`"
    );
    let (_, runtime) = stages.last().unwrap();
    for (kw, args) in runtime.iter().filter(|(kw, _)| kw == "COPY") {
        if let Some(from) = args
            .split_whitespace()
            .find_map(|w| w.strip_prefix("--from="))
        {
            assert!(
                names.contains(&from),
                "{kw} --from={from}: no such stage in {names:?}"
            );
        }
    }
    assert!(
        runtime.iter().any(|(kw, a)| kw == "COPY"
            && a.contains("--from=")
            && a.ends_with("/usr/local/bin/lockstep")),
        "the runtime stage copies the built binary to /usr/local/bin/lockstep"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(kw, _)| kw == "USER")
        .map(|(_, u)| u.clone())
        .expect("deploy/Dockerfile: the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as {user}");
    let last = |kw: &str| {
        runtime
            .iter()
            .rev()
            .find(|(k, _)| k == kw)
            .map(|(_, a)| a.clone())
    };
    assert_eq!(last("ENTRYPOINT").as_deref(), Some(r#"["lockstep"]"#));
    assert_eq!(last("CMD").as_deref(), Some(r#"["serve"]"#));

    // Whatever a file says about grpc_health_probe, the image has it.
    let mentions = deploy_yaml()
        .keys()
        .any(|f| read(f).contains("grpc_health_probe"));
    if mentions {
        assert!(
            runtime
                .iter()
                .any(|(kw, a)| kw == "COPY" && a.ends_with("/usr/local/bin/grpc_health_probe")),
            "probes run grpc_health_probe, which the image lacks"
        );
    }
}

#[test]
fn the_build_context_holds_everything_cargo_build_reads() {
    // What `cargo build` reads: the manifest, the lock file, build.rs and
    // proto/, the sources (with include_str! assets), the embedded
    // migrations, and the bench targets Cargo.toml declares.
    let mut needed = vec![
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "proto",
        "src",
        "migrations",
    ];
    if read("Cargo.toml").contains("[[bench]]") {
        needed.push("benches");
    }
    let ignore = read(".dockerignore");
    let excluded = |path: &str| {
        let mut out = false;
        for pat in ignore
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (negate, pat) = match pat.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, pat),
            };
            let pat = pat.trim_start_matches('/').trim_end_matches('/');
            if pat == "*" || pat == "**" || pat == path || path.starts_with(&format!("{pat}/")) {
                out = !negate;
            }
        }
        out
    };
    assert!(
        excluded("target"),
        ".dockerignore should keep target/ out of the build context"
    );
    let stages = docker_stages();
    let copied: Vec<String> = stages
        .iter()
        .flat_map(|(_, body)| body.iter())
        .filter(|(kw, args)| kw == "COPY" && !args.contains("--from="))
        .flat_map(|(_, args)| {
            let words: Vec<String> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .map(|w| w.trim_start_matches("./").trim_end_matches('/').to_owned())
                .collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    for path in needed {
        assert!(
            repo().join(path).exists(),
            "{path} is missing from the repository"
        );
        assert!(
            copied.iter().any(|c| c == path),
            "deploy/Dockerfile does not COPY {path}"
        );
        assert!(
            !excluded(path),
            ".dockerignore leaves {path} out of the build context"
        );
    }
    for path in &copied {
        assert!(
            repo().join(path).exists(),
            "deploy/Dockerfile copies {path}, which does not exist"
        );
        assert!(
            !excluded(path),
            ".dockerignore leaves {path} out, yet the Dockerfile copies it"
        );
    }
}

#[test]
fn compose_runs_three_replicas_on_a_healthy_postgres_behind_a_tcp_load_balancer() {
    let compose = compose();
    let services = compose.at("services").unwrap();
    let postgres = services
        .get("postgres")
        .expect("compose: a postgres service");
    assert!(
        postgres
            .str_at("image")
            .is_some_and(|i| i.starts_with("postgres:16"))
    );
    assert!(
        postgres.at("healthcheck.test").is_some(),
        "postgres: a healthcheck"
    );

    let replicas = compose_replicas(&compose);
    assert_eq!(replicas.len(), 3, "three lockstep replicas");
    let mut ids = BTreeSet::new();
    for (name, s) in &replicas {
        assert_eq!(
            s.str_at("depends_on.postgres.condition"),
            Some("service_healthy"),
            "{name}: waits for a healthy postgres"
        );
        let env = env_map(s);
        assert!(
            env.get("LOCKSTEP_DATABASE_URL")
                .is_some_and(|u| u.contains("@postgres:")),
            "{name}: on the postgres service"
        );
        let listen = env.get("LOCKSTEP_LISTEN").map(String::as_str);
        assert_eq!(listen, Some("0.0.0.0:50051"), "{name}: gRPC on the network");
        let plain = env
            .get("LOCKSTEP_INSECURE_PLAINTEXT")
            .is_some_and(|v| v == "true");
        let tls = env.contains_key("LOCKSTEP_TLS_CERT") && env.contains_key("LOCKSTEP_TLS_KEY");
        assert!(
            plain != tls,
            "{name}: off loopback, either TLS or an explicit --insecure-plaintext"
        );
        assert!(
            ids.insert(env.get("LOCKSTEP_REPLICA_ID").cloned()),
            "{name}: a replica id of its own"
        );
        assert!(s.at("healthcheck.test").is_some(), "{name}: a healthcheck");
    }

    // The load balancer: TCP, publishing the gRPC port, each replica a server.
    let (lb_name, lb) = services
        .entries()
        .iter()
        .find(|(_, s)| s.str_at("image").is_some_and(|i| i.starts_with("haproxy")))
        .expect("compose: an haproxy load balancer");
    assert!(
        lb.at("ports")
            .unwrap()
            .strings()
            .iter()
            .any(|p| p.ends_with("50051:50051")),
        "{lb_name}: publishes the gRPC port"
    );
    let mount = lb
        .at("volumes")
        .unwrap()
        .strings()
        .into_iter()
        .find(|v| v.contains("haproxy.cfg"))
        .expect("the haproxy.cfg mount");
    let cfg = read(&format!(
        "deploy/{}",
        mount.split(':').next().unwrap().trim_start_matches("./")
    ));
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert!(
        cfg.lines().any(|l| words(l) == ["mode", "tcp"]),
        "haproxy.cfg: mode tcp (L4)"
    );
    let servers: BTreeSet<String> = cfg
        .lines()
        .map(words)
        .filter(|w| w.first().is_some_and(|k| k == "server") && w.len() >= 3)
        .map(|w| w[2].clone())
        .collect();
    let expected: BTreeSet<String> = replicas.iter().map(|(n, _)| format!("{n}:50051")).collect();
    assert_eq!(
        servers, expected,
        "haproxy.cfg: one server per replica's gRPC port"
    );
}

#[test]
fn kubernetes_runs_migrations_once_then_replicas_probed_by_grpc_health() {
    // Migrations: a Job running `lockstep migrate`, not every pod.
    let job = k8s_one("Job");
    let job_pod = job.at("spec.template.spec").unwrap();
    let migrate = &job_pod.at("containers").unwrap().seq()[0];
    assert_eq!(
        migrate.at("args").unwrap().strings()[..1],
        ["migrate".to_owned()]
    );
    assert!(job_pod.at("initContainers").is_none());

    let deployment = k8s_one("Deployment");
    let replicas: u32 = deployment.str_at("spec.replicas").unwrap().parse().unwrap();
    assert!(replicas >= 3, "at least three replicas");
    let pod_labels = deployment
        .at("spec.template.metadata.labels")
        .unwrap()
        .clone();
    assert_eq!(
        deployment.at("spec.selector.matchLabels"),
        Some(&pod_labels)
    );
    let pod = deployment.at("spec.template.spec").unwrap();
    assert!(
        pod.at("initContainers").is_none(),
        "migrations run in the Job, not in each pod"
    );
    assert_eq!(pod.str_at("securityContext.runAsNonRoot"), Some("true"));
    let c = &pod.at("containers").unwrap().seq()[0];
    assert_eq!(c.at("args").unwrap().strings(), ["serve"]);
    let env: BTreeMap<&str, &Yaml> = c
        .at("env")
        .unwrap()
        .seq()
        .iter()
        .map(|e| (e.str_at("name").unwrap(), e))
        .collect();
    assert_eq!(
        env.get("LOCKSTEP_REPLICA_ID")
            .and_then(|e| e.str_at("valueFrom.fieldRef.fieldPath")),
        Some("metadata.name"),
        "each pod is a replica named after itself"
    );
    assert!(
        env["LOCKSTEP_DATABASE_URL"]
            .at("valueFrom.secretKeyRef")
            .is_some(),
        "the database URL comes from a Secret"
    );
    let ports: BTreeMap<&str, &str> = c
        .at("ports")
        .unwrap()
        .seq()
        .iter()
        .map(|p| {
            (
                p.str_at("name").unwrap(),
                p.str_at("containerPort").unwrap(),
            )
        })
        .collect();
    let grpc_port = ports["grpc"];
    let listen = env["LOCKSTEP_LISTEN"].str_at("value").unwrap();
    assert!(
        listen.ends_with(&format!(":{grpc_port}")),
        "listens on the grpc port"
    );

    // TLS from a mounted Secret; the probes speak TLS too, so they cannot be
    // the native (plain-text) `grpc:` probes.
    let tls = env.contains_key("LOCKSTEP_TLS_CERT");
    if tls {
        let mounts: Vec<(String, String)> = c
            .at("volumeMounts")
            .unwrap()
            .seq()
            .iter()
            .map(|m| {
                (
                    m.str_at("name").unwrap().to_owned(),
                    m.str_at("mountPath").unwrap().to_owned(),
                )
            })
            .collect();
        for var in [
            "LOCKSTEP_TLS_CERT",
            "LOCKSTEP_TLS_KEY",
            "LOCKSTEP_TLS_CLIENT_CA",
        ] {
            let Some(e) = env.get(var) else { continue };
            let path = e.str_at("value").unwrap();
            let (volume, _) = mounts
                .iter()
                .find(|(_, dir)| path.starts_with(&format!("{dir}/")))
                .unwrap_or_else(|| panic!("{var}={path}: no volume mounted there"));
            let v = pod
                .at("volumes")
                .unwrap()
                .seq()
                .iter()
                .find(|v| v.str_at("name") == Some(volume))
                .unwrap();
            assert!(v.at("secret.secretName").is_some(), "{var}: from a Secret");
        }
    } else {
        assert_eq!(
            env.get("LOCKSTEP_INSECURE_PLAINTEXT")
                .and_then(|e| e.str_at("value")),
            Some("true")
        );
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        let p = c.at(probe).unwrap_or_else(|| panic!("{probe} missing"));
        if let Some(native) = p.at("grpc") {
            assert!(!tls, "{probe}: native gRPC probes do not speak TLS");
            assert_eq!(native.str_at("port"), Some(grpc_port));
        } else {
            let cmd = p
                .at("exec.command")
                .unwrap_or_else(|| panic!("{probe}: grpc or exec"))
                .strings();
            assert_eq!(cmd[0], "grpc_health_probe", "{probe}: gRPC health");
            assert!(
                cmd.contains(&format!("-addr=127.0.0.1:{grpc_port}")),
                "{probe}: {cmd:?}"
            );
            assert_eq!(
                cmd.contains(&"-tls".to_owned()),
                tls,
                "{probe}: TLS as the server: {cmd:?}"
            );
        }
    }

    // The Service and the PodDisruptionBudget select these pods.
    let selects_pods = |sel: &Yaml| {
        sel.entries()
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    let pdb = k8s_one("PodDisruptionBudget");
    assert!(selects_pods(pdb.at("spec.selector.matchLabels").unwrap()));
    assert!(
        pdb.at("spec.maxUnavailable")
            .or(pdb.at("spec.minAvailable"))
            .is_some()
    );
    let services: Vec<Yaml> = k8s_objects()
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| o.str_at("kind") == Some("Service"))
        .collect();
    assert!(
        services
            .iter()
            .any(|s| s.str_at("spec.type") == Some("LoadBalancer")
                && s.at("spec.ports")
                    .unwrap()
                    .seq()
                    .iter()
                    .any(|p| p.str_at("targetPort") == Some("grpc"))),
        "a LoadBalancer Service in front of the gRPC port"
    );
    for s in &services {
        assert!(selects_pods(s.at("spec.selector").unwrap()));
        for p in s.at("spec.ports").unwrap().seq() {
            let target = p.str_at("targetPort").unwrap();
            assert!(
                ports.contains_key(target) || ports.values().any(|v| *v == target),
                "Service targets {target}, no such port"
            );
        }
    }
}
