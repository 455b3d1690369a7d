//! SMTP smuggling (2023): a message whose body hides a second transaction behind a non-standard
//! end-of-data is refused whole over a real connection, and no second message ever appears.
mod common;

use common::{Dev, Raw};

#[test]
fn smuggled_end_of_data_sequences_never_create_a_second_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = Dev::start(tmp.path());
    let tricks: &[&[u8]] = &[
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\n",
        b"\r\n\n.\r\n",
    ];
    for trick in tricks {
        let mut c = Raw::connect(dev.port("smtp"));
        assert!(c.cmd("EHLO sender.example.net").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<bob@example.test>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let mut body = b"Subject: innocent\r\n\r\nhello".to_vec();
        body.extend_from_slice(trick);
        body.extend_from_slice(
            b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n\
              Subject: smuggled\r\n\r\nwire the money\r\n.\r\n",
        );
        c.send_raw(&body);
        let reply = c.reply();
        assert!(reply.starts_with("550 5.5.2"), "{trick:?}: {reply}");
        // The session goes on normally, and no stray replies follow.
        let noop = c.cmd("NOOP");
        assert!(noop.starts_with("250"), "{trick:?}: {noop}");
        assert!(c.cmd("QUIT").starts_with("221"));
    }
    assert!(
        dev.messages("bob@example.test").is_empty(),
        "a smuggled or refused message was stored"
    );
}
