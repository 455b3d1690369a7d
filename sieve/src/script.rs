//! A parsed tree turned into a typed, checked script: every command and test known, every
//! extension it uses named in `require`, every tag where it belongs. A script that compiles
//! runs without surprises of syntax; what remains for run time is the message.

use std::collections::BTreeSet;

use crate::{
    CompileError,
    parse::{Arg, Node},
};

/// The extensions this interpreter knows, as `require` names them. The list a ManageSieve
/// server announces as SIEVE.
pub const EXTENSIONS: &[&str] = &[
    "body",
    "comparator-i;ascii-numeric",
    "copy",
    "date",
    "envelope",
    "ereject",
    "fileinto",
    "imap4flags",
    "mailbox",
    "regex",
    "reject",
    "relational",
    "vacation",
    "vacation-seconds",
    "variables",
];

/// A compiled script: what `run` executes.
#[derive(Debug, Clone)]
pub struct Script {
    pub(crate) commands: Vec<Cmd>,
    pub(crate) extensions: BTreeSet<String>,
}

impl Script {
    /// Whether `require` named `extension`.
    pub fn uses(&self, extension: &str) -> bool {
        self.extensions.contains(extension)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Cmd {
    If {
        branches: Vec<(Test, Vec<Cmd>)>,
        otherwise: Option<Vec<Cmd>>,
    },
    Stop,
    Keep {
        flags: Option<Vec<String>>,
    },
    Discard,
    FileInto {
        folder: String,
        flags: Option<Vec<String>>,
        copy: bool,
        create: bool,
    },
    Redirect {
        address: String,
        copy: bool,
    },
    Reject {
        reason: String,
    },
    Flags {
        op: FlagOp,
        variable: Option<String>,
        flags: Vec<String>,
    },
    Set {
        name: String,
        value: String,
        modifiers: Vec<Modifier>,
    },
    Vacation(Box<VacationCmd>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagOp {
    Set,
    Add,
    Remove,
}

/// `set`'s modifiers, in the order they apply (RFC 5229 s4.1: highest precedence first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Modifier {
    Lower,
    Upper,
    LowerFirst,
    UpperFirst,
    QuoteWildcard,
    Length,
}

#[derive(Debug, Clone)]
pub(crate) struct VacationCmd {
    pub seconds: Option<u64>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub addresses: Vec<String>,
    pub mime: bool,
    pub handle: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Test {
    True,
    False,
    Not(Box<Test>),
    AllOf(Vec<Test>),
    AnyOf(Vec<Test>),
    Exists(Vec<String>),
    Size {
        over: bool,
        limit: u64,
    },
    Header {
        matcher: Matcher,
        names: Vec<String>,
        keys: Vec<String>,
    },
    Address {
        matcher: Matcher,
        part: AddressPart,
        names: Vec<String>,
        keys: Vec<String>,
    },
    Envelope {
        matcher: Matcher,
        part: AddressPart,
        names: Vec<String>,
        keys: Vec<String>,
    },
    Body {
        matcher: Matcher,
        transform: BodyTransform,
        keys: Vec<String>,
    },
    String {
        matcher: Matcher,
        sources: Vec<String>,
        keys: Vec<String>,
    },
    HasFlag {
        matcher: Matcher,
        variables: Vec<String>,
        keys: Vec<String>,
    },
    MailboxExists(Vec<String>),
    Date {
        matcher: Matcher,
        zone: Zone,
        header: String,
        part: String,
        keys: Vec<String>,
    },
    CurrentDate {
        matcher: Matcher,
        zone: Zone,
        part: String,
        keys: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressPart {
    All,
    LocalPart,
    Domain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyTransform {
    Raw,
    Text,
    Content(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Zone {
    /// The zone of "now" the caller gave.
    Local,
    Fixed(String),
    Original,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Matcher {
    pub kind: MatchKind,
    pub comparator: Comparator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatchKind {
    Is,
    Contains,
    Matches,
    Regex,
    Count(Relation),
    Value(Relation),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relation {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparator {
    Octet,
    AsciiCasemap,
    AsciiNumeric,
}

/// Tags that take the argument after them.
const TAGS_WITH_VALUE: &[&str] = &[
    "comparator",
    "days",
    "seconds",
    "subject",
    "from",
    "addresses",
    "handle",
    "flags",
    "zone",
    "count",
    "value",
    "content",
];

/// A node's arguments, tags split from positionals.
struct Args {
    name: String,
    line: usize,
    tags: Vec<(String, Option<Arg>)>,
    positional: Vec<Arg>,
}

impl Args {
    fn of(node: &Node) -> Result<Self, CompileError> {
        let mut tags = Vec::new();
        let mut positional = Vec::new();
        let mut args = node.args.iter();
        while let Some(arg) = args.next() {
            match arg {
                Arg::Tag(tag) => {
                    if tags.iter().any(|(t, _)| t == tag) {
                        return Err(CompileError::at(
                            node.line,
                            &format!("{}: :{tag} is given twice", node.name),
                        ));
                    }
                    let value = if TAGS_WITH_VALUE.contains(&tag.as_str()) {
                        Some(args.next().cloned().ok_or_else(|| {
                            CompileError::at(
                                node.line,
                                &format!("{}: :{tag} needs a value", node.name),
                            )
                        })?)
                    } else {
                        None
                    };
                    tags.push((tag.clone(), value));
                }
                other => positional.push(other.clone()),
            }
        }
        Ok(Self {
            name: node.name.clone(),
            line: node.line,
            tags,
            positional,
        })
    }

    fn err(&self, message: &str) -> CompileError {
        CompileError::at(self.line, &format!("{}: {message}", self.name))
    }

    fn flag(&mut self, tag: &str) -> bool {
        match self.tags.iter().position(|(t, _)| t == tag) {
            Some(i) => {
                self.tags.remove(i);
                true
            }
            None => false,
        }
    }

    fn value(&mut self, tag: &str) -> Option<Arg> {
        let i = self.tags.iter().position(|(t, _)| t == tag)?;
        self.tags.remove(i).1
    }

    fn string_value(&mut self, tag: &str) -> Result<Option<String>, CompileError> {
        match self.value(tag) {
            None => Ok(None),
            Some(Arg::Strings(mut s)) if s.len() == 1 => Ok(s.pop()),
            Some(_) => Err(self.err(&format!(":{tag} takes one string"))),
        }
    }

    fn list_value(&mut self, tag: &str) -> Result<Option<Vec<String>>, CompileError> {
        match self.value(tag) {
            None => Ok(None),
            Some(Arg::Strings(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(&format!(":{tag} takes a string list"))),
        }
    }

    fn number_value(&mut self, tag: &str) -> Result<Option<u64>, CompileError> {
        match self.value(tag) {
            None => Ok(None),
            Some(Arg::Number(n)) => Ok(Some(n)),
            Some(_) => Err(self.err(&format!(":{tag} takes a number"))),
        }
    }

    /// The positionals, exactly `n` of them, each a string list.
    fn lists(&mut self, n: usize) -> Result<Vec<Vec<String>>, CompileError> {
        if self.positional.len() != n {
            return Err(self.err(&format!(
                "takes {n} positional argument{}, {} given",
                if n == 1 { "" } else { "s" },
                self.positional.len()
            )));
        }
        self.positional
            .drain(..)
            .map(|a| match a {
                Arg::Strings(s) => Ok(s),
                _ => Err(CompileError::at(
                    self.line,
                    &format!("{}: a string or string list was expected", self.name),
                )),
            })
            .collect()
    }

    fn string(&mut self) -> Result<String, CompileError> {
        let mut lists = self.lists(1)?;
        let mut list = lists.pop().unwrap_or_default();
        if list.len() != 1 {
            return Err(self.err("takes one string, not a list"));
        }
        Ok(list.pop().unwrap_or_default())
    }

    fn finish(self) -> Result<(), CompileError> {
        match self.tags.first() {
            Some((tag, _)) => Err(self.err(&format!(":{tag} does not belong here"))),
            None => Ok(()),
        }
    }
}

struct Compiler {
    extensions: BTreeSet<String>,
}

/// Compiles a script; the first problem found is the error, with its line.
pub fn compile(source: &str) -> Result<Script, CompileError> {
    if source.len() > crate::MAX_SCRIPT_BYTES {
        return Err(CompileError::at(
            1,
            &format!(
                "the script is {} bytes, more than the {} allowed",
                source.len(),
                crate::MAX_SCRIPT_BYTES
            ),
        ));
    }
    let nodes = crate::parse::parse(crate::lex::tokenize(source)?)?;
    let mut compiler = Compiler {
        extensions: BTreeSet::new(),
    };
    let mut body = nodes.as_slice();
    while let Some((first, rest)) = body.split_first() {
        if first.name != "require" {
            break;
        }
        let mut args = Args::of(first)?;
        for name in args.lists(1)?.concat() {
            let name = name.to_ascii_lowercase();
            if !EXTENSIONS.contains(&name.as_str()) {
                return Err(args.err(&format!("the extension {name:?} is not supported")));
            }
            compiler.extensions.insert(name);
        }
        args.finish()?;
        body = rest;
    }
    let commands = compiler.block(body)?;
    Ok(Script {
        commands,
        extensions: compiler.extensions,
    })
}

impl Compiler {
    fn need(&self, extension: &str, node: &Node) -> Result<(), CompileError> {
        if self.extensions.contains(extension) {
            Ok(())
        } else {
            Err(CompileError::at(
                node.line,
                &format!("{} needs require \"{extension}\"", node.name),
            ))
        }
    }

    fn block(&self, nodes: &[Node]) -> Result<Vec<Cmd>, CompileError> {
        let mut commands = Vec::new();
        let mut i = 0;
        while i < nodes.len() {
            let node = &nodes[i];
            i += 1;
            if node.name == "if" {
                let mut branches = vec![self.branch(node)?];
                let mut otherwise = None;
                while let Some(next) = nodes.get(i) {
                    match next.name.as_str() {
                        "elsif" => branches.push(self.branch(next)?),
                        "else" => {
                            if !next.args.is_empty() || !next.tests.is_empty() {
                                return Err(CompileError::at(next.line, "else takes no test"));
                            }
                            otherwise = Some(self.block(next.block.as_deref().unwrap_or(&[]))?);
                            if next.block.is_none() {
                                return Err(CompileError::at(next.line, "else needs a block"));
                            }
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                    i += 1;
                }
                commands.push(Cmd::If {
                    branches,
                    otherwise,
                });
                continue;
            }
            if node.block.is_some() {
                return Err(CompileError::at(
                    node.line,
                    &format!("{} takes no block", node.name),
                ));
            }
            if !node.tests.is_empty() {
                return Err(CompileError::at(
                    node.line,
                    &format!("{} takes no test", node.name),
                ));
            }
            commands.push(self.command(node)?);
        }
        Ok(commands)
    }

    fn branch(&self, node: &Node) -> Result<(Test, Vec<Cmd>), CompileError> {
        if node.tests.len() != 1 || !node.args.is_empty() {
            return Err(CompileError::at(
                node.line,
                &format!("{} takes exactly one test", node.name),
            ));
        }
        let Some(block) = &node.block else {
            return Err(CompileError::at(
                node.line,
                &format!("{} needs a block", node.name),
            ));
        };
        Ok((self.test(&node.tests[0])?, self.block(block)?))
    }

    fn flags_tag(&self, args: &mut Args, node: &Node) -> Result<Option<Vec<String>>, CompileError> {
        let flags = args.list_value("flags")?;
        if flags.is_some() {
            self.need("imap4flags", node)?;
        }
        Ok(flags)
    }

    fn command(&self, node: &Node) -> Result<Cmd, CompileError> {
        let mut args = Args::of(node)?;
        let cmd = match node.name.as_str() {
            "require" => return Err(args.err("must come before every other command")),
            "elsif" | "else" => return Err(args.err("must follow if")),
            "stop" => {
                args.lists(0)?;
                Cmd::Stop
            }
            "keep" => {
                let flags = self.flags_tag(&mut args, node)?;
                args.lists(0)?;
                Cmd::Keep { flags }
            }
            "discard" => {
                args.lists(0)?;
                Cmd::Discard
            }
            "fileinto" => {
                self.need("fileinto", node)?;
                let copy = args.flag("copy");
                if copy {
                    self.need("copy", node)?;
                }
                let create = args.flag("create");
                if create {
                    self.need("mailbox", node)?;
                }
                let flags = self.flags_tag(&mut args, node)?;
                let folder = args.string()?;
                Cmd::FileInto {
                    folder,
                    flags,
                    copy,
                    create,
                }
            }
            "redirect" => {
                let copy = args.flag("copy");
                if copy {
                    self.need("copy", node)?;
                }
                let address = args.string()?;
                if !self.has_variables(&address) && !crate::valid_address(&address) {
                    return Err(args.err(&format!("{address:?} is not an address")));
                }
                Cmd::Redirect { address, copy }
            }
            "reject" | "ereject" => {
                self.need(&node.name, node)?;
                Cmd::Reject {
                    reason: args.string()?,
                }
            }
            "setflag" | "addflag" | "removeflag" => {
                self.need("imap4flags", node)?;
                let op = match node.name.as_str() {
                    "setflag" => FlagOp::Set,
                    "addflag" => FlagOp::Add,
                    _ => FlagOp::Remove,
                };
                let (variable, flags) = match args.positional.len() {
                    1 => (None, args.lists(1)?.concat()),
                    2 => {
                        self.need("variables", node)?;
                        let mut lists = args.lists(2)?;
                        let flags = lists.pop().unwrap_or_default();
                        let name = lists.pop().unwrap_or_default();
                        let [name] = <[String; 1]>::try_from(name)
                            .map_err(|_| CompileError::at(node.line, "one variable name"))?;
                        (Some(variable_name(&name, node)?), flags)
                    }
                    _ => return Err(args.err("takes an optional variable and a flag list")),
                };
                Cmd::Flags {
                    op,
                    variable,
                    flags,
                }
            }
            "set" => {
                self.need("variables", node)?;
                let mut modifiers = Vec::new();
                for (tag, modifier) in [
                    ("lower", Modifier::Lower),
                    ("upper", Modifier::Upper),
                    ("lowerfirst", Modifier::LowerFirst),
                    ("upperfirst", Modifier::UpperFirst),
                    ("quotewildcard", Modifier::QuoteWildcard),
                    ("length", Modifier::Length),
                ] {
                    if args.flag(tag) {
                        modifiers.push(modifier);
                    }
                }
                if modifiers.contains(&Modifier::Lower) && modifiers.contains(&Modifier::Upper)
                    || modifiers.contains(&Modifier::LowerFirst)
                        && modifiers.contains(&Modifier::UpperFirst)
                {
                    return Err(args.err("two modifiers of the same precedence"));
                }
                let mut lists = args.lists(2)?;
                let value = single(lists.pop(), node)?;
                let name = single(lists.pop(), node)?;
                Cmd::Set {
                    name: variable_name(&name, node)?,
                    value,
                    modifiers,
                }
            }
            "vacation" => {
                self.need("vacation", node)?;
                let days = args.number_value("days")?;
                let seconds = args.number_value("seconds")?;
                if seconds.is_some() {
                    self.need("vacation-seconds", node)?;
                }
                if days.is_some() && seconds.is_some() {
                    return Err(args.err(":days and :seconds together"));
                }
                let vacation = VacationCmd {
                    seconds: seconds.or(days.map(|d| d.saturating_mul(86_400))),
                    subject: args.string_value("subject")?,
                    from: args.string_value("from")?,
                    addresses: args.list_value("addresses")?.unwrap_or_default(),
                    mime: args.flag("mime"),
                    handle: args.string_value("handle")?,
                    reason: args.string()?,
                };
                Cmd::Vacation(Box::new(vacation))
            }
            other => return Err(args.err(&format!("unknown command {other:?}"))),
        };
        args.finish()?;
        Ok(cmd)
    }

    fn has_variables(&self, s: &str) -> bool {
        self.extensions.contains("variables") && s.contains("${")
    }

    fn matcher(&self, args: &mut Args, node: &Node) -> Result<Matcher, CompileError> {
        let mut kinds = Vec::new();
        for (tag, kind) in [
            ("is", MatchKind::Is),
            ("contains", MatchKind::Contains),
            ("matches", MatchKind::Matches),
            ("regex", MatchKind::Regex),
        ] {
            if args.flag(tag) {
                kinds.push(kind);
            }
        }
        for tag in ["count", "value"] {
            if let Some(value) = args.value(tag) {
                self.need("relational", node)?;
                let Arg::Strings(v) = value else {
                    return Err(args.err(&format!(":{tag} takes a relation")));
                };
                let relation = match v.first().map(|s| s.to_ascii_lowercase()).as_deref() {
                    Some("gt") => Relation::Gt,
                    Some("ge") => Relation::Ge,
                    Some("lt") => Relation::Lt,
                    Some("le") => Relation::Le,
                    Some("eq") => Relation::Eq,
                    Some("ne") => Relation::Ne,
                    _ => return Err(args.err(&format!(":{tag} takes gt, ge, lt, le, eq or ne"))),
                };
                kinds.push(if tag == "count" {
                    MatchKind::Count(relation)
                } else {
                    MatchKind::Value(relation)
                });
            }
        }
        if kinds.len() > 1 {
            return Err(args.err("more than one match type"));
        }
        let kind = kinds.pop().unwrap_or(MatchKind::Is);
        if kind == MatchKind::Regex {
            self.need("regex", node)?;
        }
        let comparator = match args.string_value("comparator")?.as_deref() {
            None | Some("i;ascii-casemap") => Comparator::AsciiCasemap,
            Some("i;octet") => Comparator::Octet,
            Some("i;ascii-numeric") => {
                self.need("comparator-i;ascii-numeric", node)?;
                Comparator::AsciiNumeric
            }
            Some(other) => return Err(args.err(&format!("the comparator {other:?} is unknown"))),
        };
        if comparator == Comparator::AsciiNumeric
            && matches!(
                kind,
                MatchKind::Contains | MatchKind::Matches | MatchKind::Regex
            )
        {
            return Err(args.err("i;ascii-numeric compares whole values only"));
        }
        Ok(Matcher { kind, comparator })
    }

    /// Checks the keys of a `:regex` match now, when they are fixed strings.
    fn check_keys(
        &self,
        matcher: &Matcher,
        keys: &[String],
        args: &Args,
    ) -> Result<(), CompileError> {
        if matcher.kind != MatchKind::Regex {
            return Ok(());
        }
        for key in keys.iter().filter(|k| !self.has_variables(k)) {
            crate::matching::regex(key, matcher.comparator).map_err(|e| args.err(&e))?;
        }
        Ok(())
    }

    fn address_part(&self, args: &mut Args) -> Result<AddressPart, CompileError> {
        let mut parts = Vec::new();
        for (tag, part) in [
            ("all", AddressPart::All),
            ("localpart", AddressPart::LocalPart),
            ("domain", AddressPart::Domain),
        ] {
            if args.flag(tag) {
                parts.push(part);
            }
        }
        if parts.len() > 1 {
            return Err(args.err("more than one address part"));
        }
        Ok(parts.pop().unwrap_or(AddressPart::All))
    }

    fn zone(&self, args: &mut Args, original: bool) -> Result<Zone, CompileError> {
        let fixed = args.string_value("zone")?;
        let orig = original && args.flag("originalzone");
        match (fixed, orig) {
            (Some(_), true) => Err(args.err(":zone and :originalzone together")),
            (Some(z), false) => {
                if crate::eval::parse_zone(&z).is_none() {
                    return Err(args.err(&format!("{z:?} is not a zone like +0100")));
                }
                Ok(Zone::Fixed(z))
            }
            (None, true) => Ok(Zone::Original),
            (None, false) => Ok(Zone::Local),
        }
    }

    fn test(&self, node: &Node) -> Result<Test, CompileError> {
        let mut args = Args::of(node)?;
        let takes_tests = matches!(node.name.as_str(), "not" | "allof" | "anyof");
        if !takes_tests && !node.tests.is_empty() {
            return Err(args.err("takes no nested test"));
        }
        let test = match node.name.as_str() {
            "true" | "false" => {
                args.lists(0)?;
                if node.name == "true" {
                    Test::True
                } else {
                    Test::False
                }
            }
            "not" => {
                args.lists(0)?;
                if node.tests.len() != 1 {
                    return Err(args.err("takes one test"));
                }
                Test::Not(Box::new(self.test(&node.tests[0])?))
            }
            "allof" | "anyof" => {
                args.lists(0)?;
                if node.tests.is_empty() {
                    return Err(args.err("takes a list of tests"));
                }
                let tests = node
                    .tests
                    .iter()
                    .map(|t| self.test(t))
                    .collect::<Result<Vec<_>, _>>()?;
                if node.name == "allof" {
                    Test::AllOf(tests)
                } else {
                    Test::AnyOf(tests)
                }
            }
            "exists" => Test::Exists(args.lists(1)?.concat()),
            "size" => {
                let over = args.flag("over");
                let under = args.flag("under");
                if over == under {
                    return Err(args.err("takes one of :over or :under"));
                }
                let limit = match args.positional.as_slice() {
                    [Arg::Number(n)] => *n,
                    _ => return Err(args.err("takes a number")),
                };
                args.positional.clear();
                Test::Size { over, limit }
            }
            "header" => {
                let matcher = self.matcher(&mut args, node)?;
                let mut lists = args.lists(2)?;
                let keys = lists.pop().unwrap_or_default();
                self.check_keys(&matcher, &keys, &args)?;
                Test::Header {
                    matcher,
                    names: lists.pop().unwrap_or_default(),
                    keys,
                }
            }
            "address" | "envelope" => {
                if node.name == "envelope" {
                    self.need("envelope", node)?;
                }
                let matcher = self.matcher(&mut args, node)?;
                let part = self.address_part(&mut args)?;
                let mut lists = args.lists(2)?;
                let keys = lists.pop().unwrap_or_default();
                self.check_keys(&matcher, &keys, &args)?;
                let names = lists.pop().unwrap_or_default();
                if node.name == "envelope" {
                    for name in &names {
                        if !matches!(name.to_ascii_lowercase().as_str(), "from" | "to") {
                            return Err(args.err(&format!(
                                "the envelope part {name:?} is not one of from and to"
                            )));
                        }
                    }
                    Test::Envelope {
                        matcher,
                        part,
                        names,
                        keys,
                    }
                } else {
                    Test::Address {
                        matcher,
                        part,
                        names,
                        keys,
                    }
                }
            }
            "body" => {
                self.need("body", node)?;
                let matcher = self.matcher(&mut args, node)?;
                let raw = args.flag("raw");
                let text = args.flag("text");
                let content = args.list_value("content")?;
                let transform = match (raw, text, content) {
                    (false, false, None) | (false, true, None) => BodyTransform::Text,
                    (true, false, None) => BodyTransform::Raw,
                    (false, false, Some(types)) => BodyTransform::Content(types),
                    _ => return Err(args.err("one of :raw, :text and :content")),
                };
                let keys = args.lists(1)?.concat();
                self.check_keys(&matcher, &keys, &args)?;
                Test::Body {
                    matcher,
                    transform,
                    keys,
                }
            }
            "string" => {
                self.need("variables", node)?;
                let matcher = self.matcher(&mut args, node)?;
                let mut lists = args.lists(2)?;
                let keys = lists.pop().unwrap_or_default();
                self.check_keys(&matcher, &keys, &args)?;
                Test::String {
                    matcher,
                    sources: lists.pop().unwrap_or_default(),
                    keys,
                }
            }
            "hasflag" => {
                self.need("imap4flags", node)?;
                let matcher = self.matcher(&mut args, node)?;
                let n = args.positional.len();
                let mut lists = args.lists(if n == 2 { 2 } else { 1 })?;
                let keys = lists.pop().unwrap_or_default();
                let variables = match lists.pop() {
                    Some(names) => {
                        self.need("variables", node)?;
                        names
                            .iter()
                            .map(|n| variable_name(n, node))
                            .collect::<Result<_, _>>()?
                    }
                    None => Vec::new(),
                };
                Test::HasFlag {
                    matcher,
                    variables,
                    keys,
                }
            }
            "mailboxexists" => {
                self.need("mailbox", node)?;
                Test::MailboxExists(args.lists(1)?.concat())
            }
            "date" => {
                self.need("date", node)?;
                let zone = self.zone(&mut args, true)?;
                let matcher = self.matcher(&mut args, node)?;
                let mut lists = args.lists(3)?;
                let keys = lists.pop().unwrap_or_default();
                let part = single(lists.pop(), node)?;
                let header = single(lists.pop(), node)?;
                check_date_part(&part, &args)?;
                Test::Date {
                    matcher,
                    zone,
                    header,
                    part: part.to_ascii_lowercase(),
                    keys,
                }
            }
            "currentdate" => {
                self.need("date", node)?;
                let zone = self.zone(&mut args, false)?;
                let matcher = self.matcher(&mut args, node)?;
                let mut lists = args.lists(2)?;
                let keys = lists.pop().unwrap_or_default();
                let part = single(lists.pop(), node)?;
                check_date_part(&part, &args)?;
                Test::CurrentDate {
                    matcher,
                    zone,
                    part: part.to_ascii_lowercase(),
                    keys,
                }
            }
            other => return Err(args.err(&format!("unknown test {other:?}"))),
        };
        args.finish()?;
        Ok(test)
    }
}

/// RFC 5260 s2.4's date parts.
const DATE_PARTS: &[&str] = &[
    "year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601",
    "std11", "zone", "weekday",
];

fn check_date_part(part: &str, args: &Args) -> Result<(), CompileError> {
    if DATE_PARTS.contains(&part.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(args.err(&format!("{part:?} is not a date part")))
    }
}

fn single(list: Option<Vec<String>>, node: &Node) -> Result<String, CompileError> {
    match list.as_deref() {
        Some([one]) => Ok(one.clone()),
        _ => Err(CompileError::at(
            node.line,
            &format!("{}: a single string was expected", node.name),
        )),
    }
}

/// A variable name as `set` and the flag commands take it (RFC 5229 s3), lowercased.
fn variable_name(name: &str, node: &Node) -> Result<String, CompileError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(CompileError::at(
            node.line,
            &format!("{}: {name:?} is not a variable name", node.name),
        ))
    }
}
