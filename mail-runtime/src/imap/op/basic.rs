//! CAPABILITY, LOGOUT, ID (RFC 2971) and NAMESPACE (RFC 2342): the commands that read or
//! change nothing of the mailbox (NOOP and CHECK are answered by the dispatch).
use crate::imap::session::{Done, Session};

impl Session {
    pub(in crate::imap) fn capability(&mut self) -> Done {
        let caps = self.capabilities();
        self.send(format!("* CAPABILITY {caps}\r\n"));
        Ok("CAPABILITY completed".into())
    }

    pub(in crate::imap) fn logout(&mut self) -> Done {
        self.send("* BYE logging out\r\n");
        self.closed = true;
        Ok("LOGOUT completed".into())
    }

    pub(in crate::imap) fn id(&mut self) -> Done {
        self.send("* ID (\"name\" \"kubemail\" \"vendor\" \"kubemail\")\r\n");
        Ok("ID completed".into())
    }

    pub(in crate::imap) fn namespace(&mut self) -> Done {
        self.send("* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
        Ok("NAMESPACE completed".into())
    }
}
