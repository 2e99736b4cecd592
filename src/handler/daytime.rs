//! The daytime protocol (RFC 867): on connect, the local time as one line
//! of text, then close. The format is the one every Unix daytime server has
//! sent since 4.2BSD, `ctime(3)`'s: `Tue Dec  1 20:05:11 2026`, ended by
//! CR LF.

use chrono::{DateTime, TimeZone};

/// The reply for the moment `t`: `Www Mmm dd hh:mm:ss yyyy\r\n`, the day of
/// the month padded with a space.
pub fn reply<Tz: TimeZone>(t: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    format!("{}\r\n", t.format("%a %b %e %H:%M:%S %Y"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn the_reply_is_ctime_with_crlf() {
        let t = Utc
            .with_ymd_and_hms(2026, 12, 1, 20, 5, 11)
            .single()
            .expect("valid");
        assert_eq!(reply(&t), "Tue Dec  1 20:05:11 2026\r\n");
        let t = Utc
            .with_ymd_and_hms(2027, 1, 31, 9, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(reply(&t), "Sun Jan 31 09:00:00 2027\r\n");
    }
}
