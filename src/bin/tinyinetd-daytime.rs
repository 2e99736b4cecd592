//! `tinyinetd-daytime`: writes the local time of day (RFC 867) and exits;
//! see tinyinetd-daytime(8). A tinyinetd handler: the connection is on fds
//! 0-2, so once serving it never writes to stderr.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::process::ExitCode;

use tinyinetd::handler::{self, daytime};

const USAGE: &str = "usage: tinyinetd-daytime [--help | --version]";

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        return match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}\n\nWrites the local time as \"Tue Dec  1 20:05:11 2026\" and CR LF (RFC 867), then exits.\nRun by tinyinetd with a TCP connection on fds 0-2; see tinyinetd-daytime(8).");
                ExitCode::SUCCESS
            }
            "-V" | "--version" => {
                println!("tinyinetd-daytime {}", env!("CARGO_PKG_VERSION"));
                ExitCode::SUCCESS
            }
            other => {
                eprintln!("tinyinetd-daytime: unexpected argument '{other}'\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    // The time zone is the host's (/etc/localtime), or TZ if a service's
    // `env` sets it.
    let line = daytime::reply(&chrono::Local::now());
    match handler::write_stdout(line.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if handler::is_disconnect(&e) => ExitCode::SUCCESS,
        Err(e) => {
            handler::syslog_line(
                "tinyinetd-daytime",
                &format!("peer={} error=\"{e}\"", handler::peer_text()),
            );
            ExitCode::from(1)
        }
    }
}
