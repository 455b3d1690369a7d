//! The RFCs' own example scripts, each run against a message and checked for the actions the
//! RFC says it takes. The message is RFC 5228 s1.2's, unless a test brings its own.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, FixedOffset};
use kubemail_sieve::{Action, Envelope, Input, Outcome, compile, run};

const COYOTE: &str = "Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r\n\
From: coyote@desert.example.org\r\n\
To: roadrunner@acme.example.com\r\n\
Subject: I have a present for you\r\n\
\r\n\
Look, I'm sorry about the whole anvil thing, and I really\r\n\
didn't mean to try and drop it on you from the top of the\r\n\
cliff.  I want to try to make it up to you.  I've got some\r\n\
great birdseed over here at my place--top of the line\r\n\
stuff--if you come by, I'll have it all wrapped up for you.\r\n\
--\r\n\
Wile E. Coyote   \"Super Genius\"   coyote@desert.example.org\r\n";

fn now() -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2007-07-03T12:00:00+00:00").unwrap()
}

fn outcome_with(script: &str, message: &str, envelope: &Envelope, folders: &[&str]) -> Outcome {
    let script = compile(script).unwrap_or_else(|e| panic!("compiles: {e}"));
    let folders: Vec<String> = folders.iter().map(|f| f.to_string()).collect();
    run(
        &script,
        &Input {
            message: message.as_bytes(),
            envelope,
            now: now(),
            folders: &folders,
        },
    )
}

fn actions(script: &str, message: &str) -> Vec<Action> {
    let envelope = Envelope {
        from: "coyote@desert.example.org".into(),
        to: "roadrunner@acme.example.com".into(),
    };
    let outcome = outcome_with(script, message, &envelope, &[]);
    assert_eq!(outcome.error, None, "no run-time error");
    outcome.actions
}

fn keep() -> Action {
    Action::Keep { flags: vec![] }
}

fn fileinto(folder: &str) -> Action {
    Action::FileInto {
        folder: folder.into(),
        flags: vec![],
        create: false,
    }
}

/// RFC 5228 s9's example filter.
const RFC5228_FILTER: &str = r#"
#
# Example Sieve Filter
# Declare any optional features or extension used by the script
#
require ["fileinto"];

#
# Handle messages from known mailing lists
# Move messages from IETF filter discussion list to filter mailbox
#
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
        fileinto "filter";  # move to "filter" mailbox
        }
#
# Keep all messages to or from people in my company
#
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
        keep;               # keep in "In" mailbox
        }

#
# Try and catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be spam, file it away.
#
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        fileinto "spam";   # move to "spam" mailbox
        }
else
        {
        # Move all other (non-company) mail to "personal"
        # mailbox.
        fileinto "personal";
        }
"#;

#[test]
fn rfc5228_example_filter_sorts_each_kind_of_message() {
    let list = "Sender: owner-ietf-mta-filters@imc.org\r\nTo: me@example.com\r\n\r\nx\r\n";
    assert_eq!(actions(RFC5228_FILTER, list), [fileinto("filter")]);
    let colleague = "From: boss@example.com\r\nTo: me@example.com\r\n\r\nx\r\n";
    assert_eq!(actions(RFC5228_FILTER, colleague), [keep()]);
    let spam = "From: x@spam.test\r\nTo: list@lists.test\r\nCc: me@example.com\r\nSubject: Make Money Fast\r\n\r\nx\r\n";
    assert_eq!(actions(RFC5228_FILTER, spam), [fileinto("spam")]);
    let not_to_me = "From: x@elsewhere.test\r\nTo: you@elsewhere.test\r\n\r\nx\r\n";
    assert_eq!(actions(RFC5228_FILTER, not_to_me), [fileinto("spam")]);
    let personal = "From: mum@home.test\r\nCc: me@example.com\r\nSubject: Sunday\r\n\r\nx\r\n";
    assert_eq!(actions(RFC5228_FILTER, personal), [fileinto("personal")]);
}

#[test]
fn rfc5228_tests_on_the_coyote_message() {
    // s5.1: address :all.
    let discard = r#"if address :is :all "from" "coyote@desert.example.org" { discard; }"#;
    assert_eq!(actions(discard, COYOTE), []);
    // s5.4: envelope, on the envelope, not the header.
    let envelope = r#"require "envelope";
        if envelope :all :is "from" "tim@example.com" { discard; }"#;
    assert_eq!(actions(envelope, COYOTE), [keep()]);
    // s5.5: exists.
    let exists = r#"if not exists ["From","Date"] { discard; }"#;
    assert_eq!(actions(exists, COYOTE), [keep()]);
    let missing = r#"if exists ["From","X-Caffeine"] { discard; }"#;
    assert_eq!(actions(missing, COYOTE), [keep()]);
    // s5.6: false is false.
    assert_eq!(actions("if false { discard; }", COYOTE), [keep()]);
    // s5.9: size.
    assert_eq!(actions("if size :over 100K { discard; }", COYOTE), [keep()]);
    assert_eq!(actions("if size :under 1K { discard; }", COYOTE), []);
    // s2.7.1: :contains is case-insensitive by default, :matches anchors.
    assert_eq!(
        actions(
            r#"if header :contains "subject" "PRESENT" { discard; }"#,
            COYOTE
        ),
        []
    );
    assert_eq!(
        actions(
            r#"if header :matches "subject" "present" { discard; }"#,
            COYOTE
        ),
        [keep()]
    );
    assert_eq!(
        actions(
            r#"if header :contains :comparator "i;octet" "subject" "PRESENT" { discard; }"#,
            COYOTE
        ),
        [keep()]
    );
    // s4.2: redirect cancels the implicit keep.
    assert_eq!(
        actions(r#"redirect "bart@example.com";"#, COYOTE),
        [Action::Redirect {
            address: "bart@example.com".into()
        }]
    );
    // s3.3: stop ends the script, the implicit keep remains.
    assert_eq!(actions("stop; discard;", COYOTE), [keep()]);
}

#[test]
fn rfc5228_compile_errors_name_their_line() {
    let err = compile("require \"fileinto\";\nfileinto;").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(compile("require \"x-unknown\";").is_err());
    assert!(
        compile("fileinto \"x\";")
            .unwrap_err()
            .message
            .contains("require")
    );
    assert!(compile("keep; require \"fileinto\";").is_err());
    assert!(compile("if true keep;").is_err());
    assert!(
        compile("frobnicate;")
            .unwrap_err()
            .message
            .contains("unknown")
    );
    assert!(compile(r#"if header :is :contains "a" "b" { keep; }"#).is_err());
    assert!(compile(r#"redirect "not an address";"#).is_err());
}

#[test]
fn rfc5230_vacation_examples() {
    let cyrus = r#"require "vacation";
if header :contains "subject" "cyrus" {
    vacation "I'm out -- send mail to cyrus-bugs";
} else {
    vacation "I'm out -- call me at +1 304 555 0123";
}"#;
    let got = actions(cyrus, COYOTE);
    let [Action::Vacation(v), keep_action] = got.as_slice() else {
        panic!("vacation and keep: {got:?}");
    };
    assert_eq!(*keep_action, keep());
    assert_eq!(v.reason, "I'm out -- call me at +1 304 555 0123");
    assert_eq!(v.seconds, 7 * 86_400);

    let subject = r#"require ["vacation", "variables"];
if header :matches "subject" "*" {
    vacation :subject "Automatic response to: ${1}"
             "I'm away -- send mail to foo in my absence";
}"#;
    let got = actions(subject, COYOTE);
    let Action::Vacation(v) = &got[0] else {
        panic!("vacation: {got:?}");
    };
    assert_eq!(
        v.subject.as_deref(),
        Some("Automatic response to: I have a present for you")
    );

    let days = r#"require "vacation";
vacation :days 23 :addresses ["tjs@example.edu",
                              "ts4z@landru.example.edu"]
   "I'm away until October 19.
   If it's an emergency, call 911, I guess." ;"#;
    let got = actions(days, COYOTE);
    let Action::Vacation(v) = &got[0] else {
        panic!("vacation: {got:?}");
    };
    assert_eq!(v.seconds, 23 * 86_400);
    assert_eq!(v.addresses, ["tjs@example.edu", "ts4z@landru.example.edu"]);

    let boss = r#"require "vacation";
if header :contains "from" "boss@example.edu" {
    redirect "pleeb@isp.example.org";
} else {
    vacation "Sorry, I'm away, I'll read your message later.";
}"#;
    let from_boss = "From: boss@example.edu\r\n\r\nx\r\n";
    assert_eq!(
        actions(boss, from_boss),
        [Action::Redirect {
            address: "pleeb@isp.example.org".into()
        }]
    );
    // Two vacation actions in one run are an error: the implicit keep alone.
    let twice = r#"require "vacation"; vacation "a"; vacation "b";"#;
    let envelope = Envelope::default();
    let outcome = outcome_with(twice, COYOTE, &envelope, &[]);
    assert!(outcome.error.is_some());
    assert_eq!(outcome.actions, [keep()]);
    // The same reason gives the same handle; another reason another one.
    let a = actions(r#"require "vacation"; vacation "a";"#, COYOTE);
    let b = actions(r#"require "vacation"; vacation "a";"#, COYOTE);
    let c = actions(r#"require "vacation"; vacation "c";"#, COYOTE);
    let handle = |x: &[Action]| match &x[0] {
        Action::Vacation(v) => v.handle.clone(),
        _ => String::new(),
    };
    assert_eq!(handle(&a), handle(&b));
    assert_ne!(handle(&a), handle(&c));
}

#[test]
fn rfc5232_imap4flags_example() {
    let script = r#"require ["fileinto", "imap4flags", "variables"];
if size :over 500K {
    setflag "\\Deleted";
}
if header :contains "from" "boss@frobnitzm.example.edu" {
    setflag "flagvar" "\\Flagged";
    fileinto :flags "${flagvar}" "INBOX.From Boss";
}
if header :contains "subject" "Make money" {
    setflag "\\Deleted";
    fileinto "INBOX.spam";
}
if header :contains "To" "sales@frobnitzm.example.edu" {
    addflag "$Sales";
}
"#;
    let boss = "From: boss@frobnitzm.example.edu\r\nTo: sales@frobnitzm.example.edu\r\n\r\nx\r\n";
    // fileinto cancels the implicit keep.
    assert_eq!(
        actions(script, boss),
        [Action::FileInto {
            folder: "INBOX.From Boss".into(),
            flags: vec!["\\Flagged".into()],
            create: false
        }]
    );
    // The implicit keep takes the internal variable's flags.
    let sales = "From: buyer@example.org\r\nTo: sales@frobnitzm.example.edu\r\n\r\nx\r\n";
    assert_eq!(
        actions(script, sales),
        [Action::Keep {
            flags: vec!["$Sales".into()]
        }]
    );
    let hasflag = r#"require ["imap4flags"];
addflag ["\\Seen", "$Work \\Seen"]; removeflag "\\seen";
if hasflag :is "$work" { keep; }"#;
    assert_eq!(
        actions(hasflag, COYOTE),
        [Action::Keep {
            flags: vec!["$Work".into()]
        }]
    );
}

#[test]
fn rfc5229_variables_examples() {
    let script = r#"require ["variables", "fileinto", "vacation"];
set "honorific"  "Mr";
set "first_name" "Wile";
set "last_name"  "Coyote";
set "vacation" text:
Dear ${HONORIFIC} ${last_name},
I'm out, please leave a message after the meep.
.
;
vacation "${vacation}";"#;
    let got = actions(script, COYOTE);
    let Action::Vacation(v) = &got[0] else {
        panic!("vacation: {got:?}");
    };
    assert_eq!(
        v.reason,
        "Dear Mr Coyote,\r\nI'm out, please leave a message after the meep.\r\n"
    );
    let modifiers = r#"require ["variables", "fileinto"];
set "a" "juMBlEd lETteRS";
set :length "b" "${a}";
set :lower "c" "${a}";
set :upperfirst "d" "${a}";
set :upperfirst :lower "e" "${a}";
set :quotewildcard "f" "Rock*";
fileinto "${b}|${c}|${d}|${e}|${f}|${unknown}|${bad-name}";"#;
    assert_eq!(
        actions(modifiers, COYOTE),
        [fileinto(
            "15|jumbled letters|JuMBlEd lETteRS|Jumbled letters|Rock\\*||${bad-name}"
        )]
    );
    let lists = r#"require ["variables", "fileinto"];
if header :matches "List-ID" "*<*@*" {
    fileinto "lists/${2}"; stop;
}"#;
    let list = "List-ID: Acme users <acme-users@lists.example.org>\r\n\r\nx\r\n";
    assert_eq!(actions(lists, list), [fileinto("lists/acme-users")]);
    let string = r#"require ["variables"];
set "x" "";
if string :is "${x}" "" { discard; }"#;
    assert_eq!(actions(string, COYOTE), []);
}

#[test]
fn rfc5173_body_examples() {
    let mime = "From: a@example.org\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
VGhlIHByb2plY3Qgc2NoZWR1bGUgaXMgbGF0ZS4=\r\n\
--b\r\n\
Content-Type: application/octet-stream\r\n\
\r\n\
MAKE MONEY FAST\r\n\
--b--\r\n";
    let text = r#"require ["body", "fileinto"];
if body :text :contains "project schedule" {
    fileinto "project/schedule";
}"#;
    // The base64 text part is decoded before it is searched.
    assert_eq!(actions(text, mime), [fileinto("project/schedule")]);
    let raw = r#"require "body"; if body :raw :contains "MAKE MONEY FAST" { discard; }"#;
    assert_eq!(actions(raw, mime), []);
    let text_only = r#"require "body"; if body :text :contains "MAKE MONEY FAST" { discard; }"#;
    assert_eq!(actions(text_only, mime), [keep()]);
    let content = r#"require "body";
if body :content "application" :contains "MAKE MONEY" { discard; }"#;
    assert_eq!(actions(content, mime), []);
}

#[test]
fn rfc5231_relational_example() {
    let script = r#"require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :value "lt" :comparator "i;ascii-numeric" ["x-priority"] ["3"] {
    fileinto "Priority";
}
elsif address :count "gt" :comparator "i;ascii-numeric" ["to"] ["5"] {
    fileinto "Bulk";
}
elsif address :value "gt" :all :comparator "i;ascii-casemap" ["from"] ["M"] {
    fileinto "From N-Z";
} else {
    fileinto "From A-M";
}
if allof ( address :count "eq" :comparator "i;ascii-numeric" ["to", "cc"] ["1"] ,
           address :all :comparator "i;ascii-casemap" ["to", "cc"] ["me@foo.example.com"] )
{
    fileinto "Only me";
}"#;
    let urgent = "X-Priority: 1\r\nFrom: zed@example.org\r\nTo: me@foo.example.com\r\n\r\nx\r\n";
    assert_eq!(
        actions(script, urgent),
        [fileinto("Priority"), fileinto("Only me")]
    );
    let bulk = "From: a@example.org\r\nTo: a@x.test, b@x.test, c@x.test, d@x.test, e@x.test, f@x.test\r\n\r\nx\r\n";
    assert_eq!(actions(script, bulk), [fileinto("Bulk")]);
    let zed = "From: zed@example.org\r\nTo: other@x.test\r\n\r\nx\r\n";
    assert_eq!(actions(script, zed), [fileinto("From N-Z")]);
    let abe = "From: abe@example.org\r\nTo: other@x.test\r\n\r\nx\r\n";
    assert_eq!(actions(script, abe), [fileinto("From A-M")]);
}

#[test]
fn rfc5260_date_examples() {
    let script = r#"require ["date", "relational", "fileinto"];
if allof(header :is "from" "boss@example.com",
         date :value "ge" :originalzone "date" "hour" "09",
         date :value "lt" :originalzone "date" "hour" "17")
{
    fileinto "urgent";
}"#;
    let in_hours = "From: boss@example.com\r\nDate: Tue, 3 Jul 2007 10:30:00 -0700\r\n\r\nx\r\n";
    assert_eq!(actions(script, in_hours), [fileinto("urgent")]);
    let late = "From: boss@example.com\r\nDate: Tue, 3 Jul 2007 19:30:00 -0700\r\n\r\nx\r\n";
    assert_eq!(actions(script, late), [keep()]);
    // Without :originalzone, the date is shown in the zone of "now" (UTC here).
    let utc = r#"require ["date"]; if date :is "date" "hour" "02" { discard; }"#;
    assert_eq!(actions(utc, late), []);
    let away = r#"require ["date", "relational", "vacation"];
if allof(currentdate :value "ge" "date" "2007-06-30",
         currentdate :value "le" "date" "2007-07-07")
{
    vacation :days 7  "I'm away during the first week in July.";
}"#;
    assert!(matches!(actions(away, COYOTE)[0], Action::Vacation(_)));
    let parts = r#"require ["date", "variables", "fileinto"];
if currentdate :matches "iso8601" "*" { set "iso" "${0}"; }
if currentdate :zone "+0200" :matches "time" "*" { set "time" "${0}"; }
if currentdate :matches "weekday" "*" { set "wd" "${0}"; }
if currentdate :matches "julian" "*" { set "mjd" "${0}"; }
fileinto "${iso} ${time} ${wd} ${mjd}";"#;
    // 2007-07-03 was a Tuesday, Modified Julian Day 54284.
    assert_eq!(
        actions(parts, COYOTE),
        [fileinto("2007-07-03T12:00:00+00:00 14:00:00 2 54284")]
    );
}

#[test]
fn rfc3894_copy_and_rfc5490_mailbox_examples() {
    let copy = r#"require ["copy"]; redirect :copy "sysadmin@example.com";"#;
    assert_eq!(
        actions(copy, COYOTE),
        [
            Action::Redirect {
                address: "sysadmin@example.com".into()
            },
            keep()
        ]
    );
    let exists = r#"require ["fileinto", "mailbox", "reject"];
if mailboxexists "Partners" { fileinto "Partners"; }
else { reject "No partners here"; }"#;
    let envelope = Envelope::default();
    let with = outcome_with(exists, COYOTE, &envelope, &["Partners"]);
    assert_eq!(with.actions, [fileinto("Partners")]);
    let without = outcome_with(exists, COYOTE, &envelope, &[]);
    assert_eq!(
        without.actions,
        [Action::Reject {
            reason: "No partners here".into()
        }]
    );
    let create = r#"require ["fileinto", "mailbox"]; fileinto :create "Receipts/2026";"#;
    assert_eq!(
        actions(create, COYOTE),
        [Action::FileInto {
            folder: "Receipts/2026".into(),
            flags: vec![],
            create: true
        }]
    );
}

#[test]
fn rfc5429_reject_examples() {
    let big = r#"require ["reject"];
if size :over 100K {
    reject text:
Your message is too big.  If you want to send me a big attachment,
put it on a public web site and send me a URL.
.
;
}"#;
    assert_eq!(actions(big, COYOTE), [keep()]);
    let domain = r#"require ["ereject"];
if address :domain :is "from" "desert.example.org" {
    ereject "I no longer accept mail from this domain";
}"#;
    assert_eq!(
        actions(domain, COYOTE),
        [Action::Reject {
            reason: "I no longer accept mail from this domain".into()
        }]
    );
    // Reject beside keep is an error: the message is kept, nothing refused.
    let both = r#"require ["reject"]; keep; reject "no";"#;
    let envelope = Envelope::default();
    let outcome = outcome_with(both, COYOTE, &envelope, &[]);
    assert!(outcome.error.is_some());
    assert_eq!(outcome.actions, [keep()]);
}

#[test]
fn regex_match_type_sets_match_variables() {
    let script = r#"require ["regex", "variables", "fileinto"];
if header :regex "subject" "^I have a (\\w+) for" { fileinto "gifts/${1}"; }"#;
    assert_eq!(actions(script, COYOTE), [fileinto("gifts/present")]);
    assert!(compile(r#"require "regex"; if header :regex "subject" "(" { keep; }"#).is_err());
}

#[test]
fn hostile_scripts_are_bounded() {
    // 10,000 rules: refused at compile time, with a reason.
    let many: String = (0..10_000)
        .map(|i| format!("if header :contains \"subject\" \"word{i}\" {{ discard; }}\n"))
        .collect();
    let err = compile(&many).unwrap_err();
    assert!(err.message.contains("more than"), "{err}");
    // A redirect chain inside one script is cut at the limit, and the message kept.
    let redirects: String = (0..10)
        .map(|i| format!("redirect :copy \"r{i}@example.com\";\n"))
        .collect();
    let outcome = outcome_with(
        &format!("require \"copy\";\n{redirects}"),
        COYOTE,
        &Envelope::default(),
        &[],
    );
    assert!(outcome.error.unwrap().contains("redirects"));
    assert_eq!(outcome.actions, [keep()]);
    // Variables cannot grow without bound.
    let grow = r#"require "variables";
set "a" "0123456789abcdef";
set "a" "${a}${a}${a}${a}${a}${a}${a}${a}"; set "a" "${a}${a}${a}${a}${a}${a}${a}${a}";
set "a" "${a}${a}${a}${a}${a}${a}${a}${a}"; set "a" "${a}${a}${a}${a}${a}${a}${a}${a}";
set :length "n" "${a}";
if string :is "${n}" "4096" { discard; }"#;
    assert_eq!(actions(grow, COYOTE), []);
    // A wildcard pattern made to backtrack runs in linear time.
    let long = format!("Subject: {}\r\n\r\nx\r\n", "a".repeat(100_000));
    let backtrack = r#"if header :matches "subject" "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b" { discard; }"#;
    assert_eq!(actions(backtrack, &long), [keep()]);
    // An outside tester's script: a 900 KB header searched with 200 long wildcard patterns.
    // The budget counts a pattern search by the bytes it may step through, so the run ends
    // early and the message is kept.
    let k = "a".repeat(800);
    let keys: Vec<String> = (0..200).map(|i| format!("\"*${{k}}*b{i}\"")).collect();
    let heavy = format!(
        "require \"variables\"; set \"k\" \"{k}\";\nif header :matches \"X-Big\" [{}] {{ discard; }}",
        keys.join(",")
    );
    let big = format!("X-Big: {}\r\n\r\nx\r\n", "a".repeat(900_000));
    let started = std::time::Instant::now();
    let outcome = outcome_with(&heavy, &big, &Envelope::default(), &[]);
    assert!(outcome.error.unwrap().contains("share of work"));
    assert_eq!(outcome.actions, [keep()]);
    eprintln!("the heavy script ended after {:?}", started.elapsed());
    // A script bigger than the limit is refused.
    assert!(compile(&"#".repeat(kubemail_sieve::MAX_SCRIPT_BYTES + 1)).is_err());
}
