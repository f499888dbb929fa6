//! # loadgen: many WebSocket clients on one core, and a check of every delivery
//!
//! `loadgen` drives a chat server that runs on this machine (chatroom itself, or one of the
//! reference peers in `shared/peers/`) and reports how fast it delivers and whether it
//! delivered correctly. It is one thread around one `mio::Poll`, the same shape as the
//! server it measures, so pin it to a core of its own (`taskset -c 1 loadgen ...`) and the
//! server to another: then "deliveries/s" is what one server core achieved, as long as the
//! load generator's core is not the one that is full (watch `top`).
//!
//! ## Modes
//!
//! - `room` (default): N clients spread over R rooms; S of them post M messages each. Every
//!   receiver checks every delivery: per sender, sequence numbers must arrive exactly as
//!   0, 1, 2, ... (anything else is a loss, a duplicate or a reorder); all receivers of a room
//!   must see the same interleaving of senders (each folds what it sees into an order hash);
//!   and when frames carry an `id`, ids must climb by one. Closed loop by default (a sender
//!   posts its next message when its previous one came back to it), open loop with `--rate`
//!   (a fixed schedule, whatever the server does; latency is then measured from the
//!   *scheduled* time, so a stalled server cannot hide its stall: no coordinated omission).
//! - `echo`: N clients on `/ws/echo`, closed loop, each echo compared with what was sent.
//! - `idle`: N connections that only listen; with `--server-pid`, the server's RSS before and
//!   after gives the memory one idle connection costs.
//! - `churn`: N concurrent cycles of connect, (welcome,) post, await own message, close.
//! - `soak`: a mixed load for a long time (chat, joins and leaves, resumes, slow readers,
//!   resets, a flood, scroll-back), the server sampled every few seconds; it fails on a
//!   lost or duplicated message, descriptors that do not come back, or (runs of 10 min and
//!   more) an RSS that keeps growing. `scripts/soak.sh` runs it.
//!
//! ## Reading the output
//!
//! - `deliveries/s` counts frames delivered to receivers (one post to a room of 1,000 is
//!   1,000 deliveries), over the window from the first post to the last delivery.
//! - Latencies are receive time minus send time, both read from one monotonic clock in this
//!   process; the send time travels inside the message text. Percentiles come from a
//!   log-linear histogram with under 1% error; `max` is exact.
//! - `server cpu` is the server process's user+system time over the measurement window, from
//!   `/proc/PID/stat`; per delivery it is the figure to compare between servers, since it
//!   does not depend on how busy the rest of the machine was.
//! - `lost` = expected deliveries that never arrived before `--timeout`; `order_mismatch` =
//!   receivers that got every delivery, but whose order hash differs from that of most
//!   complete receivers of their room (they saw the senders interleaved differently).
//!
//! The exit status is 0 only when every check passed, 1 otherwise, 2 for a usage error, so a
//! script can gate on it.
//!
//! ## Layout
//!
//! Read it in the order a run goes:
//!
//! | file | what it does |
//! |---|---|
//! | `main.rs` | parse the command line, raise the descriptor limit, run a mode, print |
//! | `cli.rs` | the options, `--help`, and the loopback-only check of `--url` |
//! | `net.rs` | the connection engine: connect, upgrade, frames, close, on one `mio::Poll` |
//! | `upgrade.rs` | the client's HTTP upgrade request and the check of the `101` answer |
//! | `tls.rs` | `wss://`: rustls between a connection's socket and the rest |
//! | `drive.rs` | the loop a mode runs, the flavour probe, settling, closing everything |
//! | `wire.rs` | the message text we post, the post frame, the parser for server frames |
//! | `room.rs`, `echo.rs`, `idle.rs`, `churn.rs`, `soak.rs` | one mode each |
//! | `scrollback.rs`, `sampler.rs` | soak's HTTP history reader thread and its samples |
//! | `http.rs`, `rng.rs` | a blocking local GET; a small seeded random generator |
//! | `measure.rs` | the clock, the latency histogram, /proc sampling of the server |
//! | `report.rs` | the figures, as a text block or one JSON line |
//!
//! It uses only `mio`, `tungstenite`, `serde_json` and `libc`, not the chatroom library, so
//! the tool that measures the server shares no code with it.

// Bytes from the network must never panic this process (STYLE.md, "Errors"): no unwrap,
// expect or indexing outside tests, the same rule the chatroom crate keeps.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

mod churn;
mod cli;
mod deflate;
mod drive;
mod echo;
mod http;
mod idle;
mod measure;
mod net;
mod report;
mod rng;
mod room;
mod sampler;
mod scrollback;
mod soak;
mod tls;
mod upgrade;
mod wire;

use std::process::ExitCode;

use crate::churn::run_churn;
use crate::cli::{Command, Mode, USAGE, parse_args};
use crate::echo::run_echo;
use crate::idle::run_idle;
use crate::measure::ServerProbe;
use crate::room::run_room;
use crate::soak::run_soak;

/// Lets this process hold as many sockets as the hard limit allows: the soft limit is often
/// 1024, which 10,000 idle connections would hit. Returns the resulting soft limit.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read or write only the struct we pass them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(options)) => options,
        Err(why) => {
            eprintln!("loadgen: {why}\n(loadgen --help shows the options)");
            return ExitCode::from(2);
        }
    };
    let probe = match options.server_pid.map(ServerProbe::new).transpose() {
        Ok(probe) => probe,
        Err(why) => {
            eprintln!("loadgen: {why}");
            return ExitCode::from(2);
        }
    };
    let fd_limit = raise_fd_limit();
    let needed = options.clients as u64 + 64;
    if fd_limit < needed {
        eprintln!(
            "loadgen: warning: the open-file limit is {fd_limit}, below the {needed} this run \
             needs; connections past it will fail"
        );
    }
    let result = match options.mode {
        Mode::Room => run_room(&options, probe.as_ref()),
        Mode::Echo => run_echo(&options, probe.as_ref()),
        Mode::Idle => run_idle(&options, probe.as_ref()),
        Mode::Churn => run_churn(&options, probe.as_ref()),
        Mode::Soak => run_soak(&options, probe.as_ref()),
    };
    match result {
        Ok(mut report) => {
            report.text("deflate", "permessage-deflate offered", if options.target.deflate { "yes" } else { "no" });
            let wire = net::WIRE_BYTES_IN.load(std::sync::atomic::Ordering::Relaxed);
            report.int("wire_bytes_in", "bytes read off the sockets, whole run", wire);
            report.print(options.json);
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(why) => {
            eprintln!("loadgen: {why}");
            if options.json {
                // Scripts reading stdout still get one parseable line.
                let line = serde_json::json!({
                    "mode": options.mode.name(),
                    "ok": false,
                    "error": why,
                });
                println!("{line}");
            }
            ExitCode::from(1)
        }
    }
}
