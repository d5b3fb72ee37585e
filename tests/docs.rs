//! The documentation shows the examples the tests build and run, and its
//! relative links lead somewhere.

use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bodies of the fenced blocks of `language` in `markdown`.
fn fenced_blocks(markdown: &str, language: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line == format!("```{language}") => current = Some(String::new()),
            None => {}
            Some(_) if line == "```" => blocks.push(current.take().unwrap()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// A line that stands for left-out code in an excerpt.
fn is_elision(line: &str) -> bool {
    let line = line.trim();
    line.starts_with("/* ...") || line.starts_with("// ...")
}

#[test]
fn the_cpp_guide_shows_the_tested_example() {
    let guide = read(&repo().join("docs/cpp.md"));
    let example = read(&repo().join("bindings/cpp/examples/quickstart.cpp"));
    assert!(
        guide.contains(&format!("```cpp\n{example}```")),
        "docs/cpp.md's ```cpp block must be bindings/cpp/examples/quickstart.cpp verbatim"
    );
}

/// The README's quick starts are excerpts: each line shown, other than an
/// elision, is a line of the example the tests build, in the same order.
#[test]
fn readme_excerpts_are_lines_of_the_tested_examples() {
    let readme = read(&repo().join("README.md"));
    for (language, example) in [
        ("c", "examples/tiny_trainer.c"),
        ("cpp", "bindings/cpp/examples/quickstart.cpp"),
        ("rust", "examples/quickstart.rs"),
    ] {
        let source = read(&repo().join(example));
        let blocks = fenced_blocks(&readme, language);
        assert!(!blocks.is_empty(), "README.md has no ```{language} block");
        for block in blocks {
            let mut remaining = source.lines();
            for line in block.lines() {
                if line.trim().is_empty() || is_elision(line) {
                    continue;
                }
                assert!(
                    remaining.any(|source_line| source_line == line),
                    "README.md's ```{language} line {line:?} is not a line of {example} \
                     (or is out of order)"
                );
            }
        }
    }
}

/// GitHub's anchor for a heading: lowercase, spaces to hyphens,
/// punctuation other than hyphens and underscores dropped.
fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The text outside fenced blocks and inline code.
fn prose(markdown: &str) -> String {
    let mut text = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            let unquoted: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
            text.push_str(&unquoted);
            text.push('\n');
        }
    }
    text
}

/// The anchors of the headings outside fenced blocks.
fn anchors(markdown: &str) -> Vec<String> {
    let mut fenced = false;
    let mut anchors = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            anchors.push(anchor(line.trim_start_matches('#').trim()));
        }
    }
    anchors
}

/// Every `](target)` in the prose of `markdown`.
fn link_targets(markdown: &str) -> Vec<String> {
    prose(markdown)
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_string()))
        .collect()
}

#[test]
fn relative_links_resolve() {
    let mut documents: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md"]
        .iter()
        .map(|name| repo().join(name))
        .collect();
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        documents.push(entry.unwrap().path());
    }
    let mut broken = Vec::new();
    for document in &documents {
        let text = read(document);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                document.clone()
            } else {
                document.parent().unwrap().join(path)
            };
            let found = file.exists()
                && (fragment.is_empty() || anchors(&read(&file)).iter().any(|a| a == fragment));
            if !found {
                broken.push(format!("{}: {target}", document.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links that lead nowhere: {broken:#?}");
}
