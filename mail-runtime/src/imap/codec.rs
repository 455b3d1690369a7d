//! What a client sends, cut into commands without I/O: bytes in, [`Input`]s out.
//!
//! imap-codec's fragmentizer splits lines from literals, so literal data is never read as a
//! command; this layer adds the bounds (line length, literal size, what a stranger may make the
//! server hold before login), the continuation requests, and the commands imap-codec does not
//! parse itself (extended LIST, SEARCH's RETURN options: see [`list_extended`] and
//! [`esearch`]). The driver (`server.rs`) feeds it what it reads; the transcript tests feed it
//! strings.
use imap_codec::{
    AuthenticateDataCodec, CommandCodec, IdleDoneCodec,
    decode::Decoder,
    fragmentizer::{DecodeMessageError, FragmentInfo, Fragmentizer, LiteralAnnouncement},
    imap_types::{IntoStatic, auth::AuthenticateData, command::Command, core::LiteralMode},
};

use super::{
    esearch::{self, Lifted, ReturnOptions},
    list_extended::{self, ExtendedList},
};

/// Longest command line (without literals) a client may send.
pub const LINE_LIMIT: usize = 64 * 1024;
/// Largest literal before login.
const PRE_AUTH_LITERAL_LIMIT: u32 = 8 * 1024;
/// Most bytes one command may hold before login, its literals included: what a stranger can
/// make the server keep per connection.
const PRE_AUTH_COMMAND_LIMIT: usize = LINE_LIMIT + PRE_AUTH_LITERAL_LIMIT as usize;
/// Longest SASL response line (PLAIN's is a few hundred bytes).
const AUTHENTICATE_LINE_LIMIT: usize = 8 * 1024;

/// What the client's bytes amount to.
#[derive(Debug)]
pub enum Input {
    /// A command to run (with SEARCH's RETURN options, when it had some).
    Command(Box<Command<'static>>, Option<ReturnOptions>),
    /// An extended LIST (RFC 5258).
    ExtendedList(ExtendedList),
    /// Send this line (a continuation request or a tagged refusal) and read on.
    Reply(String),
    /// Send this line and end the connection.
    Fatal(String),
}

/// The client's bytes not yet made into commands.
#[derive(Debug)]
pub struct Reader {
    frag: Fragmentizer,
    max_literal: u32,
    /// Bytes read since the last complete fragment.
    pending: usize,
    awaiting_literal: bool,
}

impl Reader {
    /// A reader that takes literals of up to `max_literal` bytes after login.
    pub fn new(max_literal: u32) -> Self {
        Self {
            frag: Fragmentizer::new(max_literal.saturating_add(LINE_LIMIT as u32)),
            max_literal,
            pending: 0,
            awaiting_literal: false,
        }
    }

    /// Forgets everything buffered: what a client sent in the clear after STARTTLS is dropped
    /// (RFC 3501 s6.2.1), so a man in the middle cannot add commands to the TLS session.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_literal);
    }

    /// Whether part of a command is buffered (an APPEND's literal on its way, say): a draining
    /// server reads it to its end before saying BYE.
    pub fn mid_command(&self) -> bool {
        self.pending > 0 || !self.frag.message_bytes().is_empty()
    }

    /// Adds bytes the client sent.
    pub fn enqueue(&mut self, bytes: &[u8]) {
        self.frag.enqueue_bytes(bytes);
        self.pending += bytes.len();
    }

    /// The next thing to do with what was sent, or `None` until more arrives.
    pub fn next(&mut self, logged_in: bool) -> Option<Input> {
        loop {
            let fragment = self.frag.progress();
            if !logged_in && self.frag.message_bytes().len() > PRE_AUTH_COMMAND_LIMIT {
                return Some(Input::Fatal(
                    "* BYE [TOOBIG] command over the limit before login".into(),
                ));
            }
            let Some(fragment) = fragment else {
                if !self.awaiting_literal && self.pending > LINE_LIMIT {
                    return Some(Input::Fatal("* BYE [TOOBIG] command line too long".into()));
                }
                return None;
            };
            self.pending = 0;
            self.awaiting_literal = false;
            if let FragmentInfo::Line {
                announcement: Some(LiteralAnnouncement { mode, length }),
                ..
            } = fragment
            {
                let limit = if logged_in {
                    self.max_literal
                } else {
                    PRE_AUTH_LITERAL_LIMIT
                };
                if length > limit {
                    if mode == LiteralMode::Sync {
                        let Some(tag) = self.tag() else {
                            return Some(Input::Fatal(
                                "* BYE [TOOBIG] literal over the limit".into(),
                            ));
                        };
                        self.frag.skip_message();
                        return Some(Input::Reply(format!(
                            "{tag} NO [TOOBIG] literal of {length} bytes is over the limit of {limit}"
                        )));
                    }
                    // A non-synchronizing literal is already on its way. Before login the
                    // connection ends: reading it only to drop it is what a stranger wants.
                    if !logged_in {
                        return Some(Input::Fatal(
                            "* BYE [TOOBIG] literal over the limit before login".into(),
                        ));
                    }
                    // After login it is read and dropped (the fragmentizer keeps at most its
                    // limit), then refused.
                    self.frag.poison_message();
                }
                self.awaiting_literal = true;
                if mode == LiteralMode::Sync && length <= limit {
                    return Some(Input::Reply("+ go ahead".into()));
                }
                continue;
            }
            if !self.frag.is_message_complete() {
                continue;
            }
            return Some(self.decode(logged_in));
        }
    }

    /// One complete message as a command.
    fn decode(&mut self, logged_in: bool) -> Input {
        if logged_in {
            match list_extended::parse(self.frag.message_bytes()) {
                list_extended::Parsed::Basic => {}
                list_extended::Parsed::Extended(list) => {
                    self.frag.skip_message();
                    return Input::ExtendedList(list);
                }
                list_extended::Parsed::Bad(tag, why) => {
                    self.frag.skip_message();
                    return Input::Reply(format!("{tag} BAD {why}"));
                }
            }
        }
        let lifted = if logged_in {
            esearch::lift(self.frag.message_bytes())
        } else {
            Lifted::No
        };
        match lifted {
            Lifted::Yes(command, options) => {
                self.frag.skip_message();
                match CommandCodec::default().decode(&command) {
                    Ok((_, command)) => {
                        Input::Command(Box::new(command.into_static()), Some(options))
                    }
                    Err(_) => {
                        let tag = command.split(|b| *b == b' ').next().unwrap_or_default();
                        Input::Reply(format!(
                            "{} BAD malformed command",
                            String::from_utf8_lossy(tag)
                        ))
                    }
                }
            }
            Lifted::Unsupported(why) => {
                let tag = self.tag().unwrap_or_else(|| "*".into());
                self.frag.skip_message();
                Input::Reply(format!("{tag} BAD {why}"))
            }
            Lifted::No => match self.frag.decode_message(&CommandCodec::default()) {
                Ok(command) => Input::Command(Box::new(command.into_static()), None),
                Err(
                    DecodeMessageError::MessagePoisoned { .. }
                    | DecodeMessageError::MessageTooLong { .. },
                ) => self.refuse("NO [TOOBIG] command or literal over the limit"),
                Err(err) => {
                    tracing::debug!(error = ?err, "malformed IMAP command");
                    self.refuse("BAD malformed command")
                }
            },
        }
    }

    fn tag(&self) -> Option<String> {
        self.frag.decode_tag().map(|t| t.inner().to_string())
    }

    fn refuse(&self, text: &str) -> Input {
        let tag = self.tag().unwrap_or_else(|| "*".into());
        Input::Reply(format!("{tag} {text}"))
    }

    /// AUTHENTICATE's response line: `Some(Ok(Some(data)))`, `Some(Ok(None))` when the client
    /// cancels (`*`) or sends no base64, `Some(Err(bye))` when the line is over the limit,
    /// `None` until the line is complete.
    pub fn sasl_line(&mut self) -> Option<Result<Option<Vec<u8>>, String>> {
        if let Some(FragmentInfo::Line { .. }) = self.frag.progress() {
            self.pending = 0;
            return Some(Ok(
                match self.frag.decode_message(&AuthenticateDataCodec::default()) {
                    Ok(AuthenticateData::Continue(d)) => Some(d.declassify().to_vec()),
                    _ => None,
                },
            ));
        }
        // The fragmentizer holds the line read so far in its message bytes.
        if self.frag.message_bytes().len() > AUTHENTICATE_LINE_LIMIT {
            return Some(Err(
                "* BYE [TOOBIG] authentication data over the limit".into()
            ));
        }
        None
    }

    /// What ends an IDLE: `Some(true)` for DONE, `Some(false)` for any other line, `None`
    /// until a line is complete.
    pub fn idle_done(&mut self) -> Option<bool> {
        if let Some(FragmentInfo::Line { .. }) = self.frag.progress() {
            self.pending = 0;
            return Some(self.frag.decode_message(&IdleDoneCodec::default()).is_ok());
        }
        None
    }
}
