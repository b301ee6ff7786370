//! Identifier grammars shared by the log, federation and the client API.
//!
//! - server name: `host[:port]` — a DNS name, an IPv4 address or a bracketed IPv6 address;
//! - federation id (fid): `<local>@<server name>`, local of `[a-z0-9._-]`, 1..=64;
//! - channel ref: `<id>@<server name>`, id of `[A-Za-z0-9._-]`, 1..=64, the server being the
//!   channel's home;
//! - opaque ids (event ids, message ids): 1..=255 of `[A-Za-z0-9._:-]`.

/// True for `host[:port]` as DESIGN §3 defines server names.
pub fn is_server_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("[v6]", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let host_ok = host == "[v6]"
        || (!host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    host_ok && port_ok
}

/// True for an event id or message id: 1..=255 of `[A-Za-z0-9._:-]`.
pub fn is_opaque_id(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn split_at_server(s: &str) -> Option<(&str, &str)> {
    let (local, server) = s.split_once('@')?;
    is_server_name(server).then_some((local, server))
}

/// Splits a federation id into its local part and server name.
pub fn parse_fid(s: &str) -> Option<(&str, &str)> {
    let (local, server) = split_at_server(s)?;
    let ok = (1..=64).contains(&local.len())
        && local.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    ok.then_some((local, server))
}

/// Splits a channel ref into its id and home server name.
pub fn parse_channel_ref(s: &str) -> Option<(&str, &str)> {
    let (id, server) = split_at_server(s)?;
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some((id, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for ok in [
            "localhost",
            "localhost:8008",
            "chat.example.org",
            "127.0.0.1:9000",
            "[::1]",
            "[::1]:8448",
            "a-b.c",
        ] {
            assert!(is_server_name(ok), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "host:",
            "host:0",
            "host:70000",
            "ho st",
            "a..b",
            "[::1",
            "[::1]x",
            "h/x",
            "h@x",
        ] {
            assert!(!is_server_name(bad), "{bad}");
        }
    }

    #[test]
    fn fids_and_channel_refs() {
        assert_eq!(
            parse_fid("alice@localhost:8008"),
            Some(("alice", "localhost:8008"))
        );
        assert_eq!(parse_fid("Alice@x"), None);
        assert_eq!(parse_fid("@x"), None);
        assert_eq!(parse_fid("alice"), None);
        assert_eq!(
            parse_channel_ref("General-1@chat.example"),
            Some(("General-1", "chat.example"))
        );
        assert_eq!(parse_channel_ref("a b@x"), None);
    }

    #[test]
    fn opaque_ids() {
        assert!(is_opaque_id("abc:x.y-z_1"));
        assert!(!is_opaque_id(""));
        assert!(!is_opaque_id(&"a".repeat(256)));
        assert!(is_opaque_id(&"a".repeat(255)));
        assert!(!is_opaque_id("a/b"));
    }
}
