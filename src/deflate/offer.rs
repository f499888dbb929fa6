//! Negotiating permessage-deflate at the handshake (RFC 7692 §5, §7.1).
//!
//! The client lists what it can do in `Sec-WebSocket-Extensions`, one or
//! more offers separated by commas, most wanted first:
//!
//! ```text
//! Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits,
//!                           permessage-deflate; server_max_window_bits=10
//! ```
//!
//! The server takes at most one offer and answers with the parameters it
//! accepted. An offer it cannot take (an unknown or repeated parameter, a
//! value out of range) is skipped, and the next one tried; with none left
//! the upgrade goes ahead without the extension (never a 4xx: §5 leaves
//! declining to the server). Pure code: the header values in, an
//! [`Agreed`] and the answer's header value out.

use super::{Mode, Settings};

/// What one connection and the server agreed (RFC 7692 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The server compresses every message on its own (§7.1.1.1): one
    /// compressed copy can then serve every member of a room.
    pub server_no_context_takeover: bool,
    /// The client compresses every message on its own (§7.1.1.2): the
    /// server keeps no inflate window between its messages.
    pub client_no_context_takeover: bool,
    /// The largest window the server's back-references may reach,
    /// as a power of two (§7.1.2.1), 8 to 15.
    pub server_max_window_bits: u8,
    /// The window the client's compressor uses at most (§7.1.2.2), 8 to 15.
    pub client_max_window_bits: u8,
}

/// One offer's parameters, as the client sent them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// `server_max_window_bits=N`: the client's decompressor window.
    server_max_window_bits: Option<u8>,
    /// `client_max_window_bits` alone: the client can be told a size.
    /// With a value: it will not use more than that.
    client_max_window_bits: Option<Option<u8>>,
}

/// Picks the first acceptable permessage-deflate offer in the
/// `Sec-WebSocket-Extensions` header `values` (each line of it), under
/// `settings`. Returns what was agreed and the value of the answer's
/// `Sec-WebSocket-Extensions` header; `None` to go on without the extension.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>, settings: &Settings) -> Option<(Agreed, String)> {
    if settings.mode == Mode::Off {
        return None;
    }
    values.into_iter().flat_map(split_outside_quotes(',')).find_map(|offer| accept(parse(offer)?, settings))
}

/// Splits `text` on `sep`, except inside a quoted string (RFC 7230 §3.2.6),
/// so that `a; x="1,2", b` is two offers.
fn split_outside_quotes(sep: char) -> impl Fn(&str) -> Vec<&str> {
    move |text| {
        let mut parts = Vec::new();
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    parts.push(text.get(start..i).unwrap_or_default());
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(text.get(start..).unwrap_or_default());
        parts
    }
}

/// One offer, `permessage-deflate; param[=value]; ...`, or `None` if it is
/// another extension or has a parameter we do not know, twice, or with a
/// bad value (§7: "the server MUST decline an offer" with those).
fn parse(offer: &str) -> Option<Offer> {
    let mut items = split_outside_quotes(';')(offer).into_iter();
    if !items.next()?.trim().eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut o = Offer::default();
    for item in items {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (item.trim(), None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) if !o.server_no_context_takeover => {
                o.server_no_context_takeover = true;
            }
            ("client_no_context_takeover", None) if !o.client_no_context_takeover => {
                o.client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(v)) if o.server_max_window_bits.is_none() => {
                o.server_max_window_bits = Some(window_bits(v)?);
            }
            ("client_max_window_bits", v) if o.client_max_window_bits.is_none() => {
                o.client_max_window_bits = Some(v.map(window_bits).map_or(Some(None), |b| b.map(Some))?);
            }
            _ => return None,
        }
    }
    Some(o)
}

/// A quoted value without its quotes (RFC 6455 §9.1 allows either form).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"'),
        None => Some(v),
    }
}

/// A window size: "a decimal integer value without leading zeros between
/// 8 to 15, inclusive" (§7.1.2.1).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// Our answer to an offer we can parse.
///
/// - `shared`: both sides without context takeover. Every server message is
///   compressed alone, so a broadcast is compressed once for the room, and
///   no connection keeps a window between messages. The server's window is
///   whatever the client asked for (the copy for that size is made once).
/// - `dedicated`: context takeover both ways unless the client declines it,
///   with windows capped at `--compression-window-bits`: the client is told
///   its cap when it said it can take one (`client_max_window_bits`), and
///   the server simply uses no more than its own cap (a smaller window than
///   announced is always valid for the decompressor).
fn accept(offer: Offer, settings: &Settings) -> Option<(Agreed, String)> {
    let mut answer = String::from("permessage-deflate");
    let server_bits = offer.server_max_window_bits.unwrap_or(15);
    let agreed = match settings.mode {
        Mode::Off => return None,
        Mode::Shared => {
            answer.push_str("; server_no_context_takeover; client_no_context_takeover");
            Agreed {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: server_bits,
                client_max_window_bits: 15,
            }
        }
        Mode::Dedicated => {
            let cap = settings.window_bits;
            if offer.server_no_context_takeover {
                answer.push_str("; server_no_context_takeover");
            }
            if offer.client_no_context_takeover {
                answer.push_str("; client_no_context_takeover");
            }
            let client_bits = match offer.client_max_window_bits {
                // The client may be told a window: ours, or its own if smaller.
                Some(limit) => {
                    let bits = limit.unwrap_or(15).min(cap);
                    answer.push_str(&format!("; client_max_window_bits={bits}"));
                    bits
                }
                // It did not say it could take one: it may use 32 KiB.
                None => 15,
            };
            Agreed {
                server_no_context_takeover: offer.server_no_context_takeover,
                client_no_context_takeover: offer.client_no_context_takeover,
                server_max_window_bits: server_bits.min(cap),
                client_max_window_bits: client_bits,
            }
        }
    };
    if let Some(bits) = offer.server_max_window_bits {
        // §7.1.2.1: accepting the parameter means answering with it, at the same or a smaller value.
        answer.push_str(&format!("; server_max_window_bits={}", bits.min(agreed.server_max_window_bits)));
    }
    Some((agreed, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: Mode) -> Settings {
        Settings { mode, ..Settings::default() }
    }

    fn answer(mode: Mode, header: &str) -> Option<String> {
        negotiate([header], &settings(mode)).map(|(_, a)| a)
    }

    #[test]
    fn browsers_offer_is_taken_without_context_takeover() {
        // What Chromium and Firefox send.
        let (agreed, answer) =
            negotiate(["permessage-deflate; client_max_window_bits"], &settings(Mode::Shared)).unwrap();
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        assert!(agreed.server_no_context_takeover && agreed.client_no_context_takeover);
        assert_eq!(agreed.server_max_window_bits, 15);
    }

    #[test]
    fn off_declines_everything() {
        assert_eq!(answer(Mode::Off, "permessage-deflate"), None);
    }

    #[test]
    fn parameters_in_any_order_and_case_and_quoted() {
        let a = answer(Mode::Shared, "Permessage-Deflate; SERVER_MAX_WINDOW_BITS=\"10\"; client_no_context_takeover");
        assert_eq!(
            a.as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
            )
        );
    }

    #[test]
    fn a_bad_offer_is_skipped_for_the_next() {
        for bad in [
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=9; server_max_window_bits=9",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(answer(Mode::Shared, bad), None, "{bad}");
            let (agreed, _) = negotiate(
                [&format!("{bad}, permessage-deflate; server_max_window_bits=12")[..]],
                &settings(Mode::Shared),
            )
            .unwrap_or_else(|| panic!("the second offer after {bad}"));
            assert_eq!(agreed.server_max_window_bits, 12, "{bad}");
        }
    }

    #[test]
    fn offers_over_several_header_lines_and_commas_in_quotes() {
        let (agreed, _) =
            negotiate(["foo; x=\"a,b\"", "permessage-deflate; server_max_window_bits=9"], &settings(Mode::Shared))
                .unwrap();
        assert_eq!(agreed.server_max_window_bits, 9);
    }

    #[test]
    fn client_max_window_bits_with_and_without_a_value() {
        let dedicated = Settings { mode: Mode::Dedicated, window_bits: 12, ..Settings::default() };
        let (agreed, a) = negotiate(["permessage-deflate; client_max_window_bits"], &dedicated).unwrap();
        assert_eq!(a, "permessage-deflate; client_max_window_bits=12");
        assert_eq!((agreed.client_max_window_bits, agreed.server_max_window_bits), (12, 12));
        assert!(!agreed.server_no_context_takeover && !agreed.client_no_context_takeover);
        let (agreed, a) = negotiate(["permessage-deflate; client_max_window_bits=9"], &dedicated).unwrap();
        assert_eq!(a, "permessage-deflate; client_max_window_bits=9");
        assert_eq!(agreed.client_max_window_bits, 9);
        // Not offered: the client may use the full window, and must not be told one.
        let (agreed, a) = negotiate(["permessage-deflate"], &dedicated).unwrap();
        assert_eq!(a, "permessage-deflate");
        assert_eq!(agreed.client_max_window_bits, 15);
    }

    #[test]
    fn dedicated_keeps_what_the_client_declines() {
        let dedicated = Settings { mode: Mode::Dedicated, window_bits: 12, ..Settings::default() };
        let (agreed, a) = negotiate(
            ["permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8"],
            &dedicated,
        )
        .unwrap();
        assert_eq!(
            a,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8"
        );
        assert_eq!(agreed.server_max_window_bits, 8);
        assert!(agreed.server_no_context_takeover && agreed.client_no_context_takeover);
    }
}
