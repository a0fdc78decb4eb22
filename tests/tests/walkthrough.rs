//! The README's walkthrough, run word for word: every ```sh block between
//! `<!-- walkthrough:start -->` and `<!-- walkthrough:end -->` runs, in order, in one bash against
//! a fresh stack (ingest and a worker on this test's database and queues), and every answer the
//! README shows after `# →` is checked. The README cannot drift from what the service does.

use std::time::Duration;

use e2e::{ADMIN_TOKEN, TestApp};
use serde_json::Value;

const README: &str = include_str!("../../README.md");
const START: &str = "<!-- walkthrough:start -->";
const END: &str = "<!-- walkthrough:end -->";
/// Printed after each command, so the output can be cut into each command's own.
const MARK: &str = "@@walkthrough-command-done@@";

/// One shell command of the walkthrough (possibly several lines) and the answer the README shows.
#[derive(Debug)]
struct Step {
    text: String,
    expected: Option<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_runs_word_for_word_and_answers_as_shown() {
    for tool in ["bash", "curl", "jq"] {
        let found = std::process::Command::new(tool).arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "the walkthrough test runs the README's commands with {tool}: install it (Debian: apt-get install {tool})"
        );
    }
    let steps = walkthrough(README);
    let checked = steps.iter().filter(|s| s.expected.is_some()).count();
    assert!(
        steps.len() >= 30 && checked >= 15,
        "the README's walkthrough blocks are missing or lost their answers: {} commands, {checked} with `# →`",
        steps.len()
    );

    let app = TestApp::spawn().await;
    let worker = app.start_worker();
    let output = run(&app, &steps).await;
    worker.stop().await;

    let (outputs, finished) = cut(&output.text, steps.len());
    if !finished || !output.success {
        let failed = &steps[outputs.len().saturating_sub(usize::from(finished))];
        panic!(
            "the walkthrough stopped at command {}:\n{}\n--- its output ---\n{}",
            outputs.len() + 1,
            failed.text,
            output.text.rsplit(MARK).next().unwrap_or_default()
        );
    }
    for (step, out) in steps.iter().zip(&outputs) {
        if let Some(expected) = &step.expected {
            assert!(
                answers_as_shown(expected, out),
                "the README shows `# → {expected}` after\n{}\nbut it answered:\n{out}",
                step.text
            );
        }
    }
}

#[test]
fn commands_are_cut_where_the_shell_ends_them() {
    let steps = split_commands(
        "# a comment\nA=$(curl -sS x -d '{\"a\": 1,\n  \"b\": 2}' |\n  jq .id)   # → 1\ncurl y \\\n  -H \"#z\"\n# → {\"a\": \"…\"}\necho '#'; echo b\n",
    );
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert!(steps[0].text.starts_with("# a comment\nA=$(curl"));
    assert_eq!(steps[0].expected.as_deref(), Some("1"));
    assert_eq!(steps[1].expected.as_deref(), Some("{\"a\": \"…\"}"));
    assert_eq!(steps[2].expected, None);
    assert!(answers_as_shown(
        "{\"a\": \"…\", \"n\": [17500]}",
        "{\"a\": 3, \"n\": [17500.0], \"z\": 1}"
    ));
    assert!(!answers_as_shown("{\"n\": 1}", "{\"n\": 2}"));
}

/// The commands of the README's walkthrough blocks, in order.
fn walkthrough(readme: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = readme;
    while let Some(start) = rest.find(START) {
        let region = &rest[start + START.len()..];
        let end = region
            .find(END)
            .unwrap_or_else(|| panic!("README: {START} without {END}"));
        let mut blocks = &region[..end];
        while let Some(open) = blocks.find("```sh\n") {
            let body = &blocks[open + "```sh\n".len()..];
            let close = body.find("\n```").expect("README: a ```sh block is closed");
            steps.extend(split_commands(&body[..=close]));
            blocks = &body[close + "\n```".len()..];
        }
        rest = &region[end + END.len()..];
    }
    steps
}

/// Cuts shell text into complete commands as bash reads them: a line ends a command unless a quote
/// or `$(` is open, or it ends with `\`, `|`, `&&` or `||`. A `# → answer` comment on a command's
/// last line, or on the line after it, is the answer the README shows.
fn split_commands(text: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut current = String::new();
    let mut has_code = false;
    let (mut single, mut double, mut depth) = (false, false, 0i32);
    for line in text.lines() {
        let mut code_end = line.len();
        let mut comment = None;
        let mut chars = line.char_indices().peekable();
        let mut previous = ' ';
        while let Some((i, c)) = chars.next() {
            if single {
                single = c != '\'';
            } else if double {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => double = false,
                    _ => {}
                }
            } else {
                match c {
                    '\'' => single = true,
                    '"' => double = true,
                    '\\' => {
                        chars.next();
                    }
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    '#' if previous.is_whitespace() || previous == ';' => {
                        code_end = i;
                        comment = Some(line[i + 1..].trim());
                        break;
                    }
                    _ => {}
                }
            }
            previous = c;
        }
        let code = line[..code_end].trim_end();
        let answer = comment
            .and_then(|c| c.strip_prefix('→'))
            .map(|a| a.trim().to_owned());
        if !has_code && code.trim().is_empty() {
            // A comment line between commands: an answer for the previous one, or the next one's
            // explanation.
            match (answer, steps.last_mut()) {
                (Some(answer), Some(last)) if last.expected.is_none() => {
                    last.expected = Some(answer);
                }
                _ => {
                    current.push_str(line);
                    current.push('\n');
                }
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
        has_code = true;
        let continues = single
            || double
            || depth > 0
            || code.ends_with('\\')
            || code.ends_with('|')
            || code.ends_with("&&");
        if !continues {
            has_code = false;
            steps.push(Step {
                text: std::mem::take(&mut current),
                expected: answer,
            });
        }
    }
    assert!(
        !has_code,
        "README walkthrough: an unfinished command at the end of a block:\n{current}"
    );
    steps
}

struct Output {
    text: String,
    success: bool,
}

/// Runs the commands in one bash, from the repository's root, with `BASE` and `ADMIN_TOKEN`
/// naming this test's stack, as the README sets them for the stack it starts.
async fn run(app: &TestApp, steps: &[Step]) -> Output {
    let mut script = String::from("set -euo pipefail\nexec 2>&1\n");
    for step in steps {
        script.push_str(&step.text);
        script.push_str(&format!("printf '\\n%s\\n' '{MARK}'\n"));
    }
    let child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("BASE", &app.base)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bash starts");
    let done = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the walkthrough finishes within 3 minutes")
        .expect("bash runs");
    Output {
        text: String::from_utf8_lossy(&done.stdout).into_owned(),
        success: done.status.success(),
    }
}

/// Each finished command's output, and whether all `expected` commands finished.
fn cut(text: &str, expected: usize) -> (Vec<String>, bool) {
    let mut parts: Vec<String> = text.split(MARK).map(|p| p.trim().to_owned()).collect();
    // The text after the last mark belongs to no finished command.
    parts.pop();
    let finished = parts.len() == expected;
    (parts, finished)
}

/// Whether `output` is the answer the README shows: the same text, or, when the README shows
/// JSON, JSON with at least the fields shown and the same values (numbers by value, `"…"` any).
fn answers_as_shown(expected: &str, output: &str) -> bool {
    match (
        serde_json::from_str::<Value>(expected),
        serde_json::from_str::<Value>(output),
    ) {
        (Ok(expected), Ok(actual)) => contains(&expected, &actual),
        (Ok(_), Err(_)) => false,
        (Err(_), _) => expected.trim() == output.trim(),
    }
}

fn contains(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == "…" => true,
        (Value::Number(x), Value::Number(y)) => {
            x.to_string().parse::<rust_decimal::Decimal>().ok()
                == y.to_string().parse::<rust_decimal::Decimal>().ok()
        }
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .all(|(k, v)| y.get(k).is_some_and(|w| contains(v, w))),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| contains(v, w))
        }
        _ => expected == actual,
    }
}

/// "Run without Docker": a database that does not exist is named, with the fix, at once; a server
/// that does not answer yet is waited for.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_does_not_exist_stops_every_service_naming_it_and_the_fix() {
    let db = e2e::TestDb::new().await;
    let mut missing = url::Url::parse(&db.url).expect("a URL");
    let name = format!("loyalty_missing_{}", e2e::uuid_like());
    missing.set_path(&format!("/{name}"));
    for service in ["ingest", "workers", "notifier"] {
        let mut command = service_command(service, missing.as_str());
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .unwrap_or_else(|_| panic!("{service} kept waiting for a database that does not exist"))
            .expect("the service runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{service} started: {stderr}");
        assert!(
            stderr.contains(&format!("no database \"{name}\""))
                && stderr.contains(&format!("`createdb {name}`"))
                && stderr.contains("DATABASE_URL"),
            "{service} did not name the database and the fix: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{service} took {:?} to refuse",
            started.elapsed()
        );
    }

    // Nothing listens on port 1: the server may be starting, so the service waits.
    let mut waiting = service_command("workers", "postgres://postgres@127.0.0.1:1/loyalty")
        .spawn()
        .expect("workers start");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        waiting.try_wait().expect("status").is_none(),
        "workers gave up on a server that does not answer yet"
    );
    waiting.kill().await.expect("killed");
}

/// One of the real binaries, on this database URL, its own queue names and metrics port.
fn service_command(service: &str, database_url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(e2e::binary(service));
    command
        .env("DATABASE_URL", database_url)
        .env("QUEUE_PREFIX", format!("test.{}.", e2e::uuid_like()))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOKEN_KEYS", e2e::TOKEN_KEYS)
        .env("INGEST_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}
