//! ENABLE (RFC 5161): CONDSTORE, QRESYNC and IMAP4rev2 switched on for the session.

use imap_codec::imap_types::{core::Vec1, extensions::enable::CapabilityEnable};

use crate::imap::session::Session;

impl Session {
    pub(in crate::imap) fn enable(&mut self, capabilities: Vec1<CapabilityEnable<'_>>) -> String {
        let mut enabled = Vec::new();
        for c in capabilities.as_ref() {
            match c {
                CapabilityEnable::CondStore => {
                    self.enable_condstore();
                    if !enabled.contains(&"CONDSTORE") {
                        enabled.push("CONDSTORE");
                    }
                }
                // QRESYNC implies CONDSTORE (RFC 7162 s3.2.3).
                CapabilityEnable::Other(_) if c.to_string().eq_ignore_ascii_case("QRESYNC") => {
                    self.enable_condstore();
                    self.reporting.vanished = true;
                    if !enabled.contains(&"QRESYNC") {
                        enabled.push("QRESYNC");
                    }
                }
                CapabilityEnable::Other(_) if c.to_string().eq_ignore_ascii_case("IMAP4rev2") => {
                    self.rev2 = true;
                    self.reporting.recent = false;
                    if !enabled.contains(&"IMAP4rev2") {
                        enabled.push("IMAP4rev2");
                    }
                }
                _ => {}
            }
        }
        if !enabled.is_empty() {
            self.send(format!("* ENABLED {}\r\n", enabled.join(" ")));
        }
        "ENABLE completed".into()
    }

    /// CONDSTORE on, by ENABLE or by the first command that uses it (RFC 7162 s3.1). With a
    /// folder selected, the client learns its HIGHESTMODSEQ now (s3.1.2.1).
    pub(in crate::imap) fn enable_condstore(&mut self) {
        if self.reporting.modseq {
            return;
        }
        self.reporting.modseq = true;
        if let Some(selected) = &self.selected {
            let line = format!(
                "* OK [HIGHESTMODSEQ {}] mod-sequences on\r\n",
                selected.highest_modseq
            );
            self.send(line);
        }
    }
}
