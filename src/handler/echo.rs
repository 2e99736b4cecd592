//! The echo copy loop: every byte read from stdin is written to stdout,
//! until EOF.

use std::io;

/// Copies stdin to stdout until EOF. Returns the number of bytes echoed.
pub fn run() -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = super::read_stdin(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        super::write_stdout(&buf[..n])?;
        total += n as u64;
    }
}
