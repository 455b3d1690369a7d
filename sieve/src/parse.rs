//! Sieve's grammar (RFC 5228 s8.2) into a generic tree: commands with arguments, tests and
//! blocks. What each command means is `compile`'s business. Nesting and size are bounded here:
//! the parser recurses only up to [`MAX_DEPTH`], and a script of more than [`MAX_NODES`]
//! commands and tests is refused before anything runs.

use crate::{
    CompileError,
    lex::{Lexed, Token},
};

/// Blocks and tests nested deeper than this are refused.
pub const MAX_DEPTH: usize = 32;
/// Commands and tests together, in one script.
pub const MAX_NODES: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Tag(String),
    Number(u64),
    Strings(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub name: String,
    pub args: Vec<Arg>,
    pub tests: Vec<Node>,
    /// Commands only: the block after the arguments, if any.
    pub block: Option<Vec<Node>>,
    pub line: usize,
}

struct Parser {
    tokens: Vec<Lexed>,
    at: usize,
    nodes: usize,
}

pub(crate) fn parse(tokens: Vec<Lexed>) -> Result<Vec<Node>, CompileError> {
    let mut parser = Parser {
        tokens,
        at: 0,
        nodes: 0,
    };
    let commands = parser.commands(0)?;
    if let Some((token, line)) = parser.tokens.get(parser.at) {
        return Err(CompileError::at(*line, &format!("unexpected {token:?}")));
    }
    Ok(commands)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn line(&self) -> usize {
        self.tokens
            .get(self.at)
            .or_else(|| self.tokens.last())
            .map_or(1, |(_, l)| *l)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        token
    }

    fn count(&mut self) -> Result<(), CompileError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(CompileError::at(
                self.line(),
                &format!("the script has more than {MAX_NODES} commands and tests"),
            ));
        }
        Ok(())
    }

    fn commands(&mut self, depth: usize) -> Result<Vec<Node>, CompileError> {
        let mut commands = Vec::new();
        while let Some(Token::Ident(_)) = self.peek() {
            commands.push(self.command(depth)?);
        }
        Ok(commands)
    }

    fn command(&mut self, depth: usize) -> Result<Node, CompileError> {
        self.count()?;
        let line = self.line();
        let Some(Token::Ident(name)) = self.next() else {
            return Err(CompileError::at(line, "a command name was expected"));
        };
        let (args, tests) = self.arguments(depth)?;
        let block = match self.next() {
            Some(Token::Semicolon) => None,
            Some(Token::LBrace) => {
                if depth + 1 > MAX_DEPTH {
                    return Err(CompileError::at(
                        line,
                        &format!("blocks are nested more than {MAX_DEPTH} deep"),
                    ));
                }
                let block = self.commands(depth + 1)?;
                if self.next() != Some(Token::RBrace) {
                    return Err(CompileError::at(
                        self.line(),
                        &format!("the block of {name} is not closed with '}}'"),
                    ));
                }
                Some(block)
            }
            _ => {
                return Err(CompileError::at(
                    line,
                    &format!("{name} must end with ';' or a block"),
                ));
            }
        };
        Ok(Node {
            name,
            args,
            tests,
            block,
            line,
        })
    }

    fn arguments(&mut self, depth: usize) -> Result<(Vec<Arg>, Vec<Node>), CompileError> {
        let mut args = Vec::new();
        loop {
            match self.peek() {
                Some(Token::Tag(_)) => {
                    if let Some(Token::Tag(t)) = self.next() {
                        args.push(Arg::Tag(t));
                    }
                }
                Some(Token::Number(_)) => {
                    if let Some(Token::Number(n)) = self.next() {
                        args.push(Arg::Number(n));
                    }
                }
                Some(Token::Str(_)) => {
                    if let Some(Token::Str(s)) = self.next() {
                        args.push(Arg::Strings(vec![s]));
                    }
                }
                Some(Token::LBracket) => {
                    self.at += 1;
                    args.push(Arg::Strings(self.string_list()?));
                }
                _ => break,
            }
        }
        let tests = match self.peek() {
            Some(Token::Ident(_)) => vec![self.test(depth)?],
            Some(Token::LParen) => {
                self.at += 1;
                let mut tests = vec![self.test(depth)?];
                loop {
                    match self.next() {
                        Some(Token::Comma) => tests.push(self.test(depth)?),
                        Some(Token::RParen) => break,
                        _ => {
                            return Err(CompileError::at(
                                self.line(),
                                "a test list must be closed with ')'",
                            ));
                        }
                    }
                }
                tests
            }
            _ => Vec::new(),
        };
        Ok((args, tests))
    }

    fn string_list(&mut self) -> Result<Vec<String>, CompileError> {
        let mut list = Vec::new();
        loop {
            match self.next() {
                Some(Token::Str(s)) => list.push(s),
                _ => return Err(CompileError::at(self.line(), "a string list holds strings")),
            }
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::RBracket) => return Ok(list),
                _ => {
                    return Err(CompileError::at(
                        self.line(),
                        "a string list must be closed with ']'",
                    ));
                }
            }
        }
    }

    fn test(&mut self, depth: usize) -> Result<Node, CompileError> {
        self.count()?;
        if depth + 1 > MAX_DEPTH {
            return Err(CompileError::at(
                self.line(),
                &format!("tests are nested more than {MAX_DEPTH} deep"),
            ));
        }
        let line = self.line();
        let Some(Token::Ident(name)) = self.next() else {
            return Err(CompileError::at(line, "a test name was expected"));
        };
        let (args, tests) = self.arguments(depth + 1)?;
        Ok(Node {
            name,
            args,
            tests,
            block: None,
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lex::tokenize;

    fn tree(src: &str) -> Result<Vec<Node>, CompileError> {
        parse(tokenize(src)?)
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let deep = format!("{}keep;{}", "if true {".repeat(40), "}".repeat(40));
        assert!(
            tree(&deep)
                .expect_err("deep")
                .to_string()
                .contains("nested")
        );
        let deep_tests = format!("if {}true{} {{ keep; }}", "not ".repeat(40), "");
        assert!(tree(&deep_tests).is_err());
        let many = "keep;\n".repeat(MAX_NODES + 1);
        assert!(
            tree(&many)
                .expect_err("many")
                .to_string()
                .contains("more than")
        );
    }

    #[test]
    fn test_lists_and_string_lists_parse() {
        let nodes = tree(r#"if anyof (true, header :is ["a","b"] "x") { stop; }"#).expect("tree");
        assert_eq!(nodes[0].tests[0].name, "anyof");
        assert_eq!(nodes[0].tests[0].tests.len(), 2);
        assert_eq!(
            nodes[0].tests[0].tests[1].args[1],
            Arg::Strings(vec!["a".into(), "b".into()])
        );
        assert!(tree("if true { keep;").is_err());
        assert!(tree("keep").is_err());
        assert!(tree(r#"x ["a" "b"];"#).is_err());
    }
}
