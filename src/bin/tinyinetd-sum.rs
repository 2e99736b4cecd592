//! `tinyinetd-sum`: adds two signed 64-bit integers per request, in text
//! (default), binary (`--binary`) or the book's host-order (`--host-order`)
//! mode; see tinyinetd-sum(8). A tinyinetd
//! handler: the connection is on fds 0-2, so once serving it never writes to
//! stderr (only a usage error, before serving, goes there).

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::process::ExitCode;

use tinyinetd::handler::{self, sum};

const USAGE: &str = "usage: tinyinetd-sum [--binary | --host-order] [--help | --version]";

const HELP: &str = "\
Adds two signed 64-bit integers per request, reading standard input and
writing standard output until end of file.

  text (default)  one request per line: two integers separated by spaces or
                  tabs; replies: the sum, \"input error\" or \"overflow\"
  --binary        16-byte requests (two big-endian i64); 9-byte replies:
                  status (0 ok, 1 overflow) and the big-endian sum
  --host-order    UNIX Network Programming's Fig. 5.18-5.20 exactly: a
                  struct of two C longs in this machine's byte order, the
                  reply one long, the sum wrapping; not portable between
                  machines (use --binary for that)

Run by tinyinetd with a TCP connection on fds 0-2; see tinyinetd-sum(8).";

enum Mode {
    Text,
    Binary,
    HostOrder,
}

fn main() -> ExitCode {
    let mut mode = Mode::Text;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--binary" => mode = Mode::Binary,
            "--host-order" => mode = Mode::HostOrder,
            "-h" | "--help" => {
                println!("{USAGE}\n\n{HELP}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("tinyinetd-sum {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("tinyinetd-sum: unexpected argument '{other}'\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let peer = handler::peer_text();
    let (mode_name, result) = match mode {
        Mode::Text => ("text", serve(&mut sum::TextDecoder::new())),
        Mode::Binary => ("binary", serve(&mut sum::BinaryDecoder::new())),
        Mode::HostOrder => ("host-order", serve(&mut sum::HostOrderDecoder::new())),
    };
    let (code, outcome) = match result {
        Ok(s) => (
            ExitCode::SUCCESS,
            format!(
                "peer={peer} mode={mode_name} requests={} input_errors={} overflows={}",
                s.requests, s.input_errors, s.overflows
            ),
        ),
        Err(e) if handler::is_disconnect(&e) => (
            ExitCode::SUCCESS,
            format!("peer={peer} mode={mode_name} disconnected"),
        ),
        Err(e) => (
            ExitCode::from(1),
            format!("peer={peer} mode={mode_name} error=\"{e}\""),
        ),
    };
    handler::syslog_line("tinyinetd-sum", &outcome);
    code
}

/// Reads stdin to EOF into the decoder; writes each read's replies with
/// one write (whole lines or records; partial writes handled), then the
/// replies at EOF. Reading always goes on to EOF, also after an error reply,
/// so the client is never reset with unread data.
fn serve(d: &mut impl sum::Decoder) -> std::io::Result<sum::Stats> {
    let mut input = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let n = handler::read_stdin(&mut input)?;
        if n == 0 {
            break;
        }
        d.feed(&input[..n], &mut out);
        if !out.is_empty() {
            handler::write_stdout(&out)?;
            out.clear();
        }
    }
    d.finish(&mut out);
    handler::write_stdout(&out)?;
    Ok(d.stats())
}
