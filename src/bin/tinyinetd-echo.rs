//! `tinyinetd-echo`: echoes every byte until EOF. A tinyinetd handler: the
//! connection is on fds 0-2, so once serving it never writes to stderr.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::process::ExitCode;

use tinyinetd::handler;

const USAGE: &str = "usage: tinyinetd-echo [--help | --version]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if let Some(arg) = args.next() {
        return match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}\n\nCopies standard input to standard output until end of file.\nRun by tinyinetd with a TCP connection on fds 0-2; see tinyinetd-echo(8).");
                ExitCode::SUCCESS
            }
            "-V" | "--version" => {
                println!("tinyinetd-echo {}", env!("CARGO_PKG_VERSION"));
                ExitCode::SUCCESS
            }
            other => {
                eprintln!("tinyinetd-echo: unexpected argument '{other}'\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    let peer = handler::peer_text();
    let (code, outcome) = match handler::echo::run() {
        Ok(n) => (ExitCode::SUCCESS, format!("peer={peer} bytes={n}")),
        Err(e) if handler::is_disconnect(&e) => {
            (ExitCode::SUCCESS, format!("peer={peer} disconnected"))
        }
        Err(e) => (ExitCode::from(1), format!("peer={peer} error=\"{e}\"")),
    };
    handler::syslog_line("tinyinetd-echo", &outcome);
    code
}
