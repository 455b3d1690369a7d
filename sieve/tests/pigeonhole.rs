//! Differential test against Dovecot's Pigeonhole, the Sieve implementation most servers run:
//! each script of a corpus runs on a message through Debian's `sieve-test` and through this
//! crate, and both must decide the same (which folders get the message, with which flags,
//! which redirects, whether a vacation reply or a rejection follows, or that the script does
//! not compile).
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, path::Path, process::Command};

use chrono::DateTime;
use kubemail_sieve::{Action, Envelope, Input, compile, run};

const FROM: &str = "coyote@desert.example.org";
const TO: &str = "roadrunner@acme.example.com";

const MESSAGE: &str = "Return-Path: <coyote@desert.example.org>\r\n\
Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r\n\
From: \"Wile E. Coyote\" <coyote@desert.example.org>\r\n\
To: roadrunner@acme.example.com, Friend <friend@Example.COM>\r\n\
Cc: beep@acme.example.com\r\n\
Subject: I have a present for you\r\n\
X-Priority: 2\r\n\
List-Id: Acme Users <acme-users.lists.example.org>\r\n\
Message-ID: <1@desert.example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
Look, I'm sorry about the whole anvil thing. Great birdseed here.\r\n\
--b\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
QU5WSUwgQ0FUQUxPRw==\r\n\
--b--\r\n";

/// Scripts, each run on MESSAGE by both interpreters.
const CORPUS: &[&str] = &[
    "keep;",
    "discard;",
    "stop; discard;",
    "if size :over 1K { discard; }",
    "if size :under 1K { discard; }",
    r#"if header :contains "subject" "PRESENT" { discard; }"#,
    r#"if header :is "subject" "present" { discard; }"#,
    r#"if header :contains :comparator "i;octet" "subject" "PRESENT" { discard; }"#,
    r#"if header :matches "subject" "I have a * for ?ou" { discard; }"#,
    r#"if header :matches "subject" "*present" { discard; }"#,
    r#"if address :domain :is "to" "example.com" { discard; }"#,
    r#"if address :localpart :is "from" "coyote" { discard; }"#,
    r#"if address :all :contains ["to", "cc"] "beep" { discard; }"#,
    r#"if exists ["X-Priority", "X-Missing"] { discard; }"#,
    r#"if not exists "X-Missing" { discard; }"#,
    r#"if anyof (false, header :contains "x-priority" "2") { discard; }"#,
    r#"if allof (true, header :contains "x-priority" "3") { discard; }"#,
    r#"require "envelope"; if envelope :all :is "from" "coyote@desert.example.org" { discard; }"#,
    r#"require "envelope"; if envelope :domain :is "to" "acme.example.com" { discard; }"#,
    r#"require "fileinto"; fileinto "Work"; fileinto "Work"; keep;"#,
    r#"require ["fileinto", "copy"]; fileinto :copy "Archive";"#,
    r#"require ["fileinto", "mailbox"]; fileinto :create "New/Folder";"#,
    r#"redirect "bart@example.com";"#,
    r#"require "copy"; redirect :copy "bart@example.com"; redirect "lisa@example.com";"#,
    r#"require ["fileinto", "imap4flags"]; setflag "\\Seen"; addflag ["$Work", "\\Flagged"]; removeflag "\\Seen"; fileinto "Flagged";"#,
    r#"require ["imap4flags"]; addflag "$Label1"; if hasflag :is "$label1" { addflag "\\Answered"; }"#,
    r#"require ["fileinto", "imap4flags"]; fileinto :flags "\\Deleted" "Trash"; keep :flags "\\Seen";"#,
    r#"require ["fileinto", "variables"]; if header :matches "List-Id" "*<*.*>*" { fileinto "lists/${2}"; }"#,
    r#"require ["fileinto", "variables"]; set "a" "juMBlEd"; set :upperfirst :lower "b" "${a}"; set :length "c" "${a}"; fileinto "${b}-${c}";"#,
    r#"require ["fileinto", "variables"]; if header :matches "from" "*\"*\"*" { fileinto "x${2}x"; }"#,
    r#"require ["variables"]; set "x" ""; if string :is "${x}" "" { discard; }"#,
    r#"require ["fileinto", "regex", "variables"]; if header :regex "subject" "^I have a ([a-z]+) for" { fileinto "gifts/${1}"; }"#,
    r#"require ["relational", "comparator-i;ascii-numeric"]; if header :value "lt" :comparator "i;ascii-numeric" "x-priority" "3" { discard; }"#,
    r#"require ["relational", "comparator-i;ascii-numeric", "fileinto"]; if address :count "eq" :comparator "i;ascii-numeric" ["to", "cc"] "3" { fileinto "three"; }"#,
    r#"require ["body"]; if body :text :contains "birdseed" { discard; }"#,
    r#"require ["body"]; if body :text :contains "ANVIL CATALOG" { discard; }"#,
    r#"require ["body"]; if body :raw :contains "QU5WSUwgQ0FUQUxPRw" { discard; }"#,
    r#"require ["body", "fileinto"]; if body :content "application" :contains "ANVIL" { fileinto "binary"; }"#,
    r#"require ["date", "relational", "fileinto"]; if date :value "ge" :originalzone "date" "hour" "09" { fileinto "morning"; }"#,
    r#"require ["date", "fileinto"]; if date :is :originalzone "date" "year" "1997" { fileinto "old"; }"#,
    r#"require ["date", "fileinto"]; if date :is :zone "+0000" "date" "hour" "17" { fileinto "utc"; }"#,
    r#"require "vacation"; vacation :days 3 :subject "Away" "I am away.";"#,
    r#"require "reject"; reject "not wanted";"#,
    // (ereject is left out: Debian's Pigeonhole does not implement it.)
    r#"if header :contains "subject" "" { discard; }"#,
    r#"if header :is "x-missing" "" { discard; }"#,
    r#"if address :is "from" "COYOTE@desert.example.org" { discard; }"#,
    r#"if address :domain :is "to" "EXAMPLE.com" { discard; }"#,
    r#"require "envelope"; if envelope :localpart :matches "from" "coy*" { discard; }"#,
    r#"require "fileinto"; if true { fileinto "a"; stop; } fileinto "b";"#,
    "discard; keep;",
    r#"redirect "a@example.org"; redirect "a@example.org";"#,
    r#"require "imap4flags"; setflag "a b c"; removeflag "b";"#,
    r#"require ["variables"]; set :quotewildcard "q" "I have*"; if header :matches "subject" "${q}" { discard; }"#,
    r#"require ["variables"]; set :quotewildcard "q" "I have"; if header :matches "subject" "${q}*" { discard; }"#,
    r#"require ["fileinto", "variables"]; if header :matches "subject" "*" { set :lower "s" "${0}"; fileinto "${s}"; }"#,
    r#"require ["fileinto", "variables"]; if address :matches "to" "*@**.com" { fileinto "d-${2}-${3}"; }"#,
    r#"require "body"; if body :contains "sorry" { discard; }"#,
    r#"require "date"; if date :is "date" "weekday" "2" { discard; }"#,
    r#"require ["date", "fileinto"]; if date :is :originalzone "date" "zone" "-0800" { fileinto "pacific"; }"#,
    r#"require ["relational", "comparator-i;ascii-numeric"]; if header :count "ge" :comparator "i;ascii-numeric" "to" "1" { discard; }"#,
    r#"require ["relational", "comparator-i;ascii-numeric"]; if address :count "eq" :comparator "i;ascii-numeric" "to" "2" { discard; }"#,
    r#"require "vacation"; vacation :subject "x" :handle "h" "r";"#,
    r#"require "vacation"; vacation :days 1 "r";"#,
    r#"require "vacation"; vacation :days 40 "r";"#,
    r#"require ["fileinto", "variables"]; set "a" "${b}x${1}"; fileinto "v${a}v";"#,
    r#"require "fileinto"; fileinto "INBOX";"#,
    r#"require ["copy"]; redirect :copy "a@example.org"; discard;"#,
    r#"if header :contains ["subject", "from"] ["nothing", "coyote"] { discard; }"#,
    // Scripts that must not compile.
    "fileinto \"x\";",
    "require \"nonsense\";",
    "if true keep;",
    r#"if header :is :contains "subject" "x" { keep; }"#,
    r#"redirect :copy "x@example.com";"#,
    "keep",
];

/// What a run decided, in words both outputs can be read into.
fn ours(script: &str) -> BTreeSet<String> {
    let Ok(script) = compile(script) else {
        return BTreeSet::from(["compile error".to_string()]);
    };
    let envelope = Envelope {
        from: FROM.into(),
        to: TO.into(),
    };
    let outcome = run(
        &script,
        &Input {
            message: MESSAGE.as_bytes(),
            envelope: &envelope,
            now: DateTime::parse_from_rfc3339("2026-12-07T12:00:00+00:00").unwrap(),
            folders: &[],
        },
    );
    assert_eq!(outcome.error, None);
    let flags = |f: &[String]| {
        let mut f: Vec<String> = f.iter().map(|x| x.to_ascii_lowercase()).collect();
        f.sort();
        f.join(" ")
    };
    outcome
        .actions
        .iter()
        .map(|a| match a {
            Action::Keep { flags: f } => format!("store INBOX [{}]", flags(f)),
            Action::FileInto {
                folder, flags: f, ..
            } => format!("store {folder} [{}]", flags(f)),
            Action::Redirect { address } => format!("redirect {address}"),
            Action::Reject { .. } => "reject".into(),
            Action::Vacation(v) => format!("vacation {}", v.seconds),
        })
        .collect()
}

fn pigeonhole(dir: &Path, n: usize, script: &str) -> BTreeSet<String> {
    let file = dir.join(format!("s{n}.sieve"));
    std::fs::write(&file, script).unwrap();
    // sieve-test refuses to run as root; nobody needs to write the compiled script beside it.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sieve-test",
        ])
        .args(["-f", FROM, "-a", TO, "-r", TO])
        .arg(&file)
        .arg(dir.join("message.eml"))
        .env("HOME", dir)
        .output()
        .expect("sieve-test (Debian's dovecot-sieve package) and setpriv");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("failed to compile") {
        return BTreeSet::from(["compile error".to_string()]);
    }
    assert!(
        text.contains("Performed actions:"),
        "sieve-test said:\n{text}"
    );
    let mut decided = BTreeSet::new();
    let mut store: Option<(String, Vec<String>)> = None;
    let flush = |store: &mut Option<(String, Vec<String>)>, decided: &mut BTreeSet<String>| {
        if let Some((folder, mut flags)) = store.take() {
            flags.sort();
            decided.insert(format!("store {folder} [{}]", flags.join(" ")));
        }
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(action) = line.strip_prefix("* ") {
            flush(&mut store, &mut decided);
            if let Some(folder) = action.strip_prefix("store message in folder: ") {
                store = Some((folder.to_string(), Vec::new()));
            } else if let Some(to) = action.strip_prefix("redirect message to: ") {
                decided.insert(format!("redirect {}", to.trim_matches(['<', '>'])));
            } else if action.starts_with("reject message") {
                decided.insert("reject".into());
            } else if action.starts_with("send vacation message") {
                decided.insert("vacation".into());
            }
        } else if let Some(flags) = line.strip_prefix("+ add IMAP flags: ") {
            if let Some((_, list)) = store.as_mut() {
                list.extend(flags.split_whitespace().map(|f| f.to_ascii_lowercase()));
            }
        } else if let Some(seconds) = line.strip_prefix("=> seconds : ") {
            decided.remove("vacation");
            decided.insert(format!("vacation {}", seconds.trim()));
        }
    }
    flush(&mut store, &mut decided);
    decided
}

#[test]
fn every_script_decides_as_pigeonhole_decides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("message.eml"), MESSAGE).unwrap();
    // The directory is nobody's to write compiled scripts into.
    Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(dir.path())
        .status()
        .unwrap();
    let mut differ = Vec::new();
    for (n, script) in CORPUS.iter().enumerate() {
        let (a, b) = (ours(script), pigeonhole(dir.path(), n, script));
        if a != b {
            differ.push(format!(
                "{script}\n  kubemail:   {a:?}\n  pigeonhole: {b:?}"
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} scripts decided differently:\n{}",
        differ.len(),
        CORPUS.len(),
        differ.join("\n")
    );
}
