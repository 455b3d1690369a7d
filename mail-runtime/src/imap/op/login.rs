//! LOGIN and AUTHENTICATE PLAIN, with the failed-login limit.

use imap_codec::imap_types::auth::AuthMechanism;

use crate::imap::session::{Done, Session, Step, User, bad, no, tagged};
use crate::{auth, config::LoginProtocol};

impl Session {
    pub(in crate::imap) async fn login(&mut self, username: &str, password: &str) -> Done {
        if self.user.is_some() {
            return bad("already logged in");
        }
        if !self.tls && !self.allow_plaintext {
            return no("[PRIVACYREQUIRED] use STARTTLS or port 993 before logging in");
        }
        let config = self.runtime.config().get();
        let limiter = self.runtime.auth_limiter();
        let login = match auth::limited_login(
            limiter,
            &config,
            self.peer,
            username,
            password,
            LoginProtocol::Imap,
            "imap",
        )
        .await
        {
            Ok(login) => login,
            Err(auth::Refused::TooManyFailures) => {
                return no("[UNAVAILABLE] too many failed logins, try again later");
            }
            Err(auth::Refused::Invalid(_)) => {
                return no("[AUTHENTICATIONFAILED] invalid credentials");
            }
        };
        self.user = Some(User {
            quota: config.mailbox(login.index).quota_bytes,
            address: login.address,
            password_hash: login.credential,
        });
        if let Err(err) = self.blocking(|s, m| s.ensure_default_folders(&m)).await {
            tracing::warn!(error = %err, "creating the default folders failed");
        }
        Ok(format!("[CAPABILITY {}] logged in", self.capabilities()))
    }

    /// AUTHENTICATE PLAIN: `None` when the response is still to come (a continuation request
    /// is buffered; the driver reads the line and calls [`Session::authenticate_data`]).
    pub(in crate::imap) async fn authenticate(
        &mut self,
        tag: &str,
        mechanism: AuthMechanism<'_>,
        initial: Option<Vec<u8>>,
    ) -> Option<Done> {
        if !matches!(mechanism, AuthMechanism::Plain) {
            return Some(no("unsupported mechanism; use PLAIN"));
        }
        if !self.tls && !self.allow_plaintext {
            return Some(no(
                "[PRIVACYREQUIRED] use STARTTLS or port 993 before logging in",
            ));
        }
        match initial {
            Some(response) => Some(self.plain(&response).await),
            None => {
                self.send("+ \r\n");
                self.sasl = Some(tag.to_string());
                None
            }
        }
    }

    /// AUTHENTICATE's response line (`None`: the client cancelled).
    pub async fn authenticate_data(&mut self, response: Option<Vec<u8>>) -> Step {
        let tag = self.sasl.take().unwrap_or_else(|| "*".into());
        let done = match response {
            Some(response) => self.plain(&response).await,
            None => bad("authentication cancelled"),
        };
        self.send(tagged(&tag, done));
        Step::Next
    }

    /// A PLAIN response (RFC 4616): authorization identity, user, password.
    async fn plain(&mut self, response: &[u8]) -> Done {
        let mut fields = response.split(|b| *b == 0);
        let (authz, user, pass) = (fields.next(), fields.next(), fields.next());
        match (user, pass, fields.next()) {
            // Acting as another user is not offered (RFC 4616 s2: the server refuses an
            // authorization identity it does not allow).
            (Some(user), Some(_), None)
                if authz.is_some_and(|a| !a.is_empty() && !a.eq_ignore_ascii_case(user)) =>
            {
                no("[AUTHORIZATIONFAILED] logging in as another user is not allowed")
            }
            (Some(user), Some(pass), None) => {
                let user = String::from_utf8_lossy(user).into_owned();
                let pass = String::from_utf8_lossy(pass).into_owned();
                self.login(&user, &pass).await
            }
            _ => bad("malformed PLAIN response"),
        }
    }
}
