//! The `chatroom` binary: read the configuration, start the server.
//!
//! Everything else lives in the library (`src/lib.rs` has the tour).

use std::process::ExitCode;

use chatroom::config::{Config, Loaded};
use chatroom::server::Server;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::load(std::env::args().skip(1), std::env::vars()) {
        Ok(Loaded::Run(config)) => *config,
        Ok(Loaded::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chatroom: {e}");
            return ExitCode::from(2);
        }
    };
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("chatroom: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = server.handle_signals().and_then(|()| server.run()) {
        eprintln!("chatroom: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
