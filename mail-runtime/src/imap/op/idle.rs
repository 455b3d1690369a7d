//! IDLE (RFC 2177): the session's side; the driver waits for DONE and for changes.

use crate::imap::session::{Session, Step};

impl Session {
    /// Starts IDLE: the continuation and what changed so far.
    pub(in crate::imap) async fn idle(&mut self, tag: &str) -> Step {
        self.send("+ idling\r\n");
        self.refresh(true).await;
        self.idling = Some(tag.to_string());
        Step::Idle
    }

    /// The selected folder changed during IDLE: the client hears of it at once.
    pub async fn idle_changed(&mut self) {
        if let Some(rx) = self.changes.as_mut() {
            rx.mark_changed();
        }
        self.refresh(true).await;
    }

    /// The client's line that ends IDLE: DONE (`true`) or anything else.
    pub async fn idle_end(&mut self, done: bool) -> Step {
        let tag = self.idling.take().unwrap_or_else(|| "*".into());
        if done {
            self.refresh(true).await;
            self.send(format!("{tag} OK IDLE terminated\r\n"));
        } else {
            self.send(format!("{tag} BAD expected DONE\r\n"));
        }
        Step::Next
    }
}
