//! Fuzz target: a client's `Sec-WebSocket-Extensions` header, through
//! `deflate::negotiate` in each mode.
//!
//! It must never panic, and what it agrees must be something we can keep:
//! windows from 8 to 15 bits, shared mode always without context takeover
//! (one compressed copy per room depends on it), and an answer that names
//! permessage-deflate with only the four parameters RFC 7692 defines.
#![no_main]

use chatroom::deflate::{Mode, Settings, negotiate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else { return };
    let lines: Vec<&str> = header.split('\n').collect();
    for mode in [Mode::Off, Mode::Shared, Mode::Dedicated] {
        let settings = Settings { mode, ..Settings::default() };
        let Some((agreed, answer)) = negotiate(lines.iter().copied(), &settings) else { continue };
        assert_ne!(mode, Mode::Off, "off agreed to something");
        assert!((8..=15).contains(&agreed.server_max_window_bits), "{agreed:?}");
        assert!((8..=15).contains(&agreed.client_max_window_bits), "{agreed:?}");
        if mode == Mode::Shared {
            assert!(agreed.server_no_context_takeover && agreed.client_no_context_takeover);
        }
        let mut params = answer.split("; ");
        assert_eq!(params.next(), Some("permessage-deflate"));
        for p in params {
            let name = p.split('=').next().unwrap_or_default();
            assert!(
                matches!(
                    name,
                    "server_no_context_takeover"
                        | "client_no_context_takeover"
                        | "server_max_window_bits"
                        | "client_max_window_bits"
                ),
                "{answer}"
            );
        }
    }
});
