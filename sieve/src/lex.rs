//! Sieve's tokens (RFC 5228 s8.1): identifiers, tags, numbers with their K/M/G quantifiers,
//! quoted and multi-line strings, and punctuation. Comments and whitespace are dropped here.

use crate::CompileError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// A command or test name, lowercased (Sieve's identifiers are case-insensitive).
    Ident(String),
    /// `:name`, lowercased, without the colon.
    Tag(String),
    Number(u64),
    Str(String),
    LBracket,
    RBracket,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Semicolon,
}

/// A token and the line it starts on, for error messages.
pub(crate) type Lexed = (Token, usize);

pub(crate) fn tokenize(src: &str) -> Result<Vec<Lexed>, CompileError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let err = |line: usize, message: &str| CompileError::at(line, message);
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let start = line;
                i += 2;
                loop {
                    if i + 1 >= bytes.len() {
                        return Err(err(start, "a /* comment is never closed"));
                    }
                    if bytes[i] == b'*' && bytes[i + 1] == b'/' {
                        i += 2;
                        break;
                    }
                    if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b'[' | b']' | b'(' | b')' | b'{' | b'}' | b',' | b';' => {
                let token = match c {
                    b'[' => Token::LBracket,
                    b']' => Token::RBracket,
                    b'(' => Token::LParen,
                    b')' => Token::RParen,
                    b'{' => Token::LBrace,
                    b'}' => Token::RBrace,
                    b',' => Token::Comma,
                    _ => Token::Semicolon,
                };
                tokens.push((token, line));
                i += 1;
            }
            b'"' => {
                let start = line;
                let mut value = Vec::new();
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(err(start, "a quoted string is never closed")),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        // `\\` and `\"` are the escapes; any other backslash is dropped
                        // (s2.4.2).
                        Some(b'\\') if i + 1 < bytes.len() => {
                            if bytes[i + 1] == b'\n' {
                                line += 1;
                            }
                            value.push(bytes[i + 1]);
                            i += 2;
                        }
                        Some(&b) => {
                            if b == b'\n' {
                                line += 1;
                            }
                            value.push(b);
                            i += 1;
                        }
                    }
                }
                tokens.push((Token::Str(utf8(value, start)?), start));
            }
            b':' => {
                let (name, end) = identifier(bytes, i + 1);
                if name.is_empty() {
                    return Err(err(line, "':' must be followed by a tag name"));
                }
                i = end;
                tokens.push((Token::Tag(name), line));
            }
            b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let digits = &src[start..i];
                let mut n: u64 = digits
                    .parse()
                    .map_err(|_| err(line, "a number is too large"))?;
                let shift = match bytes.get(i).map(u8::to_ascii_uppercase) {
                    Some(b'K') => 10,
                    Some(b'M') => 20,
                    Some(b'G') => 30,
                    _ => 0,
                };
                if shift > 0 {
                    i += 1;
                    n = n
                        .checked_mul(1 << shift)
                        .ok_or_else(|| err(line, "a number is too large"))?;
                }
                tokens.push((Token::Number(n), line));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let (name, end) = identifier(bytes, i);
                i = end;
                // `text:` opens a multi-line string that ends at a line holding only ".".
                if name == "text" && bytes.get(i) == Some(&b':') {
                    let start = line;
                    i += 1;
                    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
                        i += 1;
                    }
                    if bytes.get(i) == Some(&b'#') {
                        while i < bytes.len() && bytes[i] != b'\n' {
                            i += 1;
                        }
                    }
                    if bytes.get(i) == Some(&b'\r') {
                        i += 1;
                    }
                    if bytes.get(i) != Some(&b'\n') {
                        return Err(err(line, "text: must be followed by the end of the line"));
                    }
                    i += 1;
                    line += 1;
                    let mut value = Vec::new();
                    loop {
                        if i >= bytes.len() {
                            return Err(err(start, "a text: string never ends with a '.' line"));
                        }
                        let end = bytes[i..]
                            .iter()
                            .position(|b| *b == b'\n')
                            .map_or(bytes.len(), |p| i + p + 1);
                        let mut text = &bytes[i..end];
                        i = end;
                        line += 1;
                        let bare = text.strip_suffix(b"\n").unwrap_or(text);
                        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
                        if bare == b"." {
                            break;
                        }
                        // Dot-stuffing: a line that starts with ".." stands for one ".".
                        if text.starts_with(b"..") {
                            text = &text[1..];
                        }
                        value.extend_from_slice(text);
                        if !value.ends_with(b"\n") {
                            value.push(b'\n');
                        }
                    }
                    tokens.push((Token::Str(crlf(utf8(value, start)?)), start));
                } else {
                    tokens.push((Token::Ident(name), line));
                }
            }
            _ => {
                return Err(err(
                    line,
                    &format!("unexpected character {:?}", char::from(c)),
                ));
            }
        }
    }
    Ok(tokens)
}

fn identifier(bytes: &[u8], start: usize) -> (String, usize) {
    let mut end = start;
    if end < bytes.len() && (bytes[end].is_ascii_alphabetic() || bytes[end] == b'_') {
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
    }
    let name = String::from_utf8_lossy(&bytes[start..end]).to_ascii_lowercase();
    (name, end)
}

fn utf8(value: Vec<u8>, line: usize) -> Result<String, CompileError> {
    String::from_utf8(value).map_err(|_| CompileError::at(line, "a string is not UTF-8"))
}

/// Multi-line strings keep their lines with CRLF, as mail wants them.
fn crlf(text: String) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Token> {
        tokenize(src)
            .expect("tokens")
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn numbers_take_quantifiers_and_names_are_lowercased() {
        assert_eq!(
            kinds("IF size :OVER 100K"),
            [
                Token::Ident("if".into()),
                Token::Ident("size".into()),
                Token::Tag("over".into()),
                Token::Number(102_400),
            ]
        );
        assert!(tokenize("size :over 99999999999999999999G").is_err());
    }

    #[test]
    fn strings_escape_and_multiline_strings_unstuff_dots() {
        assert_eq!(
            kinds(r#""a \"b\" \\ \c""#),
            [Token::Str(r#"a "b" \ c"#.into())]
        );
        assert_eq!(
            kinds("text: # note\nline one\n..dot\n.\n;"),
            [Token::Str("line one\r\n.dot\r\n".into()), Token::Semicolon]
        );
        assert!(tokenize("\"open").is_err());
        assert!(tokenize("text:\nno end\n").is_err());
        assert!(tokenize("/* open").is_err());
    }

    #[test]
    fn comments_are_dropped_and_lines_counted() {
        let tokens = tokenize("# one\n/* two\nthree */ keep;").expect("tokens");
        assert_eq!(tokens[0], (Token::Ident("keep".into()), 3));
    }
}
