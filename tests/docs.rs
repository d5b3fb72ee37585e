//! The documentation shows the examples the tests build and run, and its
//! relative links lead somewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The Rust quick start (`examples/quickstart.rs`), built as `cargo test`
/// builds examples (or here, when only this test was built).
fn rust_quick_start() -> PathBuf {
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let program = profile_dir.join("examples/quickstart");
    if !program.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "quickstart"])
            .current_dir(repo())
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example quickstart failed");
    }
    program
}

fn run_quick_start(directory: &Path, args: &[&str]) -> String {
    let output = Command::new(rust_quick_start())
        .arg(directory)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Stopped at step 34 and run again, the Rust quick start resumes from its
/// checkpoint of step 30 and keeps the newest 3.
#[test]
fn the_rust_quick_start_resumes_where_it_stopped() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("run");
    let first = run_quick_start(&directory, &["50", "34"]);
    assert!(first.starts_with("no checkpoint in"), "{first}");
    assert!(first.contains("at step 34:"), "{first}");
    let second = run_quick_start(&directory, &["50"]);
    let resumed = format!(
        "resumed from {} at step 30",
        directory.join("ckpt-3").display()
    );
    assert_eq!(second.lines().next(), Some(resumed.as_str()), "{second}");
    assert!(second.contains("at step 50:"), "{second}");
    let mut files: Vec<String> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut expected = vec!["checkpoint".to_string(), "checkpoint.lock".to_string()];
    for number in 3..=5 {
        expected.push(format!("ckpt-{number}.ckpt-manifest.json"));
        expected.push(format!("ckpt-{number}.model"));
    }
    assert_eq!(files, expected);
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
