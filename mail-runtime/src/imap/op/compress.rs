//! COMPRESS=DEFLATE (RFC 4978): the tagged OK goes out as it is, everything after it both ways
//! is DEFLATE (the driver switches). A client must wait for the OK before it sends compressed
//! bytes.
use crate::imap::session::{Session, Step};

impl Session {
    pub(in crate::imap) fn compress(&mut self, tag: &str) -> Step {
        if self.deflate.is_some() {
            self.send(format!(
                "{tag} NO [COMPRESSIONACTIVE] DEFLATE is already on\r\n"
            ));
            return Step::Next;
        }
        let Ok(permit) = self.runtime.deflate_sessions().clone().try_acquire_owned() else {
            self.send(format!(
                "{tag} NO [LIMIT] too many compressed sessions, go on without\r\n"
            ));
            return Step::Next;
        };
        self.send(format!("{tag} OK DEFLATE active\r\n"));
        self.deflate = Some(permit);
        Step::Compress
    }
}
