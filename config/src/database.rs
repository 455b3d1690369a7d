//! The database connection URI the runtime's PostgreSQL store takes from a Secret (a libpq
//! URI or key=value string, as CloudNativePG and managed databases write it), read the same way
//! by the runtime (to connect) and the operator (to let the runtime's pods reach it).

/// PostgreSQL's port when the URI names none.
pub const DEFAULT_PORT: u16 = 5432;

/// Parses a libpq connection URI or key=value string. `sslmode=verify-ca` and `verify-full`
/// (what managed databases recommend) are `require` here: the runtime's TLS always verifies
/// the certificate and the host name. The error never repeats the URI (it holds a password).
pub fn parse_uri(uri: &str) -> Result<tokio_postgres::Config, String> {
    let uri = uri
        .trim()
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    // Only the top-level error: its source can repeat part of the string (an unknown
    // option's name runs up to the first `=`, password included in a quoted URI).
    uri.parse().map_err(|e: tokio_postgres::Error| {
        format!("the database URI: {e} (a postgresql:// URI or a key=value string)")
    })
}

/// The TCP ports a URI connects to (each host's; [`DEFAULT_PORT`] where it names none).
pub fn ports(uri: &str) -> Result<Vec<u16>, String> {
    let mut ports = parse_uri(uri)?.get_ports().to_vec();
    if ports.is_empty() {
        ports.push(DEFAULT_PORT);
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_the_uris_users_write() {
        for (uri, expected) in [
            // CloudNativePG's application Secret.
            ("postgresql://app:pw@mail-db-rw.mail:5432/app", vec![5432]),
            (
                "postgres://app:pw@db.example/app?sslmode=verify-full",
                vec![5432],
            ),
            (
                "postgresql://app:pw@db-a:5433,db-b:6432/app?target_session_attrs=read-write",
                vec![5433, 6432],
            ),
            ("host=db port=7000 user=app dbname=app", vec![7000]),
            ("host=db user=app", vec![5432]),
            // A host without its own port is on the default one (libpq reads it so too).
            ("postgresql://app:pw@db-a,db-b:6000/app", vec![5432, 6000]),
        ] {
            assert_eq!(ports(uri), Ok(expected), "{uri}");
        }
        for wrong in [
            "postgresql://app:hunter2@db:notaport/app",
            "\"postgresql://app:hunter2@db/app?sslmode=require\"",
            "postgresql+psycopg://app:hunter2@db/app?x=y",
        ] {
            let said = ports(wrong).expect_err("not a URI");
            assert!(!said.contains("hunter2"), "{said}");
        }
    }
}
