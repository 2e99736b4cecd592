//! The sum protocol, as pure functions over bytes: the formatted-message
//! server of *UNIX Network Programming* §5.18, done right.
//!
//! * Text: one request per line, two signed 64-bit decimal integers
//!   separated by spaces or tabs → the sum and `\n`; `input error\n` for a
//!   malformed line or an operand out of range; `overflow\n` when the sum is
//!   out of range. Lines longer than [`MAX_LINE`] bytes are answered with one
//!   `input error` and discarded up to their newline, so memory stays
//!   bounded whatever the client sends.
//! * Binary: 16-byte requests (two big-endian i64) → 9-byte replies (status
//!   0 ok / 1 overflow, then the big-endian sum, 0 on overflow). Network byte
//!   order makes it portable across architectures, unlike the book's raw C
//!   struct.
//! * Host order: the book's own protocol (Fig. 5.18–5.20), so its client
//!   works unchanged: a request is `struct args { long arg1; long arg2; }`
//!   as it lies in this machine's memory, the reply `struct result { long
//!   sum; }`, the sum wrapping as two's complement as the book's server's
//!   does. Not portable between machines of different byte order or `long`
//!   size.
//!
//! Both decoders are streaming: feed them whatever `read` returned, in any
//! split, and they append whole replies to an output buffer.

/// The longest line, in bytes before its `\n`, that is parsed.
pub const MAX_LINE: usize = 4096;

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Sum(i64),
    InputError,
    Overflow,
}

/// Counts of what a decoder answered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub input_errors: u64,
    pub overflows: u64,
}

impl Stats {
    fn count(&mut self, r: Reply) {
        self.requests += 1;
        match r {
            Reply::Sum(_) => {}
            Reply::InputError => self.input_errors += 1,
            Reply::Overflow => self.overflows += 1,
        }
    }
}

/// Answers one text line (without its `\n`).
pub fn answer_line(line: &[u8]) -> Reply {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let mut fields = line.split(blank).filter(|f| !f.is_empty());
    let (Some(a), Some(b), None) = (fields.next(), fields.next(), fields.next()) else {
        return Reply::InputError;
    };
    let (Some(a), Some(b)) = (parse_i64(a), parse_i64(b)) else {
        return Reply::InputError;
    };
    match a.checked_add(b) {
        Some(sum) => Reply::Sum(sum),
        None => Reply::Overflow,
    }
}

/// `[+-]?[0-9]+` as an i64; `None` if malformed or out of range.
fn parse_i64(s: &[u8]) -> Option<i64> {
    let digits = match s.first()? {
        b'+' | b'-' => &s[1..],
        _ => s,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Validated ASCII: from_utf8 cannot fail; i64's parser checks the range
    // and accepts the sign forms above (and nothing more).
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Appends a text reply.
pub fn write_text(r: Reply, out: &mut Vec<u8>) {
    match r {
        Reply::Sum(n) => {
            out.extend_from_slice(n.to_string().as_bytes());
            out.push(b'\n');
        }
        Reply::InputError => out.extend_from_slice(b"input error\n"),
        Reply::Overflow => out.extend_from_slice(b"overflow\n"),
    }
}

/// What both decoders do: consume input in any split, append whole
/// replies, answer what is left at end of input.
pub trait Decoder {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>);
    fn finish(&mut self, out: &mut Vec<u8>);
    fn stats(&self) -> Stats;
}

impl Decoder for TextDecoder {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        TextDecoder::feed(self, input, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        TextDecoder::finish(self, out)
    }
    fn stats(&self) -> Stats {
        self.stats
    }
}

/// The streaming text-mode decoder.
#[derive(Debug, Default)]
pub struct TextDecoder {
    /// The current line so far; never more than [`MAX_LINE`] bytes.
    line: Vec<u8>,
    /// The current line was over-long and already answered: skip to `\n`.
    discarding: bool,
    pub stats: Stats,
}

impl TextDecoder {
    pub fn new() -> TextDecoder {
        TextDecoder::default()
    }

    /// Bytes held for an incomplete line (bounded by [`MAX_LINE`]).
    pub fn buffered(&self) -> usize {
        self.line.len()
    }

    fn reply(&mut self, r: Reply, out: &mut Vec<u8>) {
        self.stats.count(r);
        write_text(r, out);
    }

    /// Consumes `input`, appending a reply for every complete line (and one
    /// `input error` as soon as a line grows past [`MAX_LINE`]).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            let newline = input.iter().position(|&b| b == b'\n');
            let (part, rest, complete) = match newline {
                Some(i) => (&input[..i], &input[i + 1..], true),
                None => (input, &input[input.len()..], false),
            };
            input = rest;
            if self.discarding {
                // Already answered; this is more of the same line.
                if complete {
                    self.discarding = false;
                }
                continue;
            }
            if self.line.len() + part.len() > MAX_LINE {
                self.line.clear();
                self.reply(Reply::InputError, out);
                self.discarding = !complete;
                continue;
            }
            if complete {
                let r = if self.line.is_empty() {
                    answer_line(part)
                } else {
                    self.line.extend_from_slice(part);
                    answer_line(&self.line)
                };
                self.line.clear();
                self.reply(r, out);
            } else {
                self.line.extend_from_slice(part);
            }
        }
    }

    /// At end of input: answers a last line that had no `\n`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.discarding && !self.line.is_empty() {
            let r = answer_line(&self.line);
            self.line.clear();
            self.reply(r, out);
        }
        self.discarding = false;
    }
}

/// A protocol of fixed-size binary requests, each with a fixed-size reply.
pub trait Record {
    /// Bytes in a request (at most [`MAX_RECORD`]).
    const REQUEST: usize;
    /// Answers one request (exactly `REQUEST` bytes), appending the reply.
    fn answer(req: &[u8], out: &mut Vec<u8>) -> Reply;
}

/// The largest request any [`Record`] protocol has.
pub const MAX_RECORD: usize = 16;

/// Bytes in a binary request.
pub const REQUEST: usize = 16;
/// Bytes in a binary reply.
pub const REPLY: usize = 9;

/// `--binary`: two big-endian i64 → status byte and big-endian sum.
#[derive(Debug, Default)]
pub struct NetworkOrder;

impl Record for NetworkOrder {
    const REQUEST: usize = REQUEST;
    fn answer(req: &[u8], out: &mut Vec<u8>) -> Reply {
        let mut q = [0u8; REQUEST];
        q.copy_from_slice(req);
        let r = answer_binary(&q);
        write_binary(r, out);
        r
    }
}

/// `--host-order`: the book's `struct args` → `struct result`, in this
/// machine's byte order and `long` size; the sum wraps.
#[derive(Debug, Default)]
pub struct HostOrder;

/// The C `long` of this machine (64 bits on 64-bit Linux).
type CLong = std::ffi::c_long;

/// Bytes in a C `long`.
const LONG: usize = std::mem::size_of::<CLong>();

impl Record for HostOrder {
    const REQUEST: usize = 2 * LONG;
    fn answer(req: &[u8], out: &mut Vec<u8>) -> Reply {
        let long = |b: &[u8]| {
            let mut a = [0u8; LONG];
            a.copy_from_slice(b);
            CLong::from_ne_bytes(a)
        };
        let sum = long(&req[..LONG]).wrapping_add(long(&req[LONG..]));
        out.extend_from_slice(&sum.to_ne_bytes());
        // The same type on 64-bit targets; an i32 on 32-bit ones.
        #[allow(clippy::useless_conversion)]
        Reply::Sum(i64::from(sum))
    }
}

/// Answers one binary request.
pub fn answer_binary(req: &[u8; REQUEST]) -> Reply {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&req[..8]);
    b.copy_from_slice(&req[8..]);
    match i64::from_be_bytes(a).checked_add(i64::from_be_bytes(b)) {
        Some(n) => Reply::Sum(n),
        None => Reply::Overflow,
    }
}

/// Appends a binary reply: status byte, then the big-endian sum.
pub fn write_binary(r: Reply, out: &mut Vec<u8>) {
    let (status, sum) = match r {
        Reply::Sum(n) => (0u8, n),
        // A binary request is always well-formed: only overflow can fail.
        Reply::Overflow | Reply::InputError => (1u8, 0),
    };
    out.push(status);
    out.extend_from_slice(&sum.to_be_bytes());
}

/// The streaming decoder of a [`Record`] protocol.
#[derive(Debug, Default)]
pub struct RecordDecoder<R: Record> {
    /// A request split across reads.
    partial: [u8; MAX_RECORD],
    len: usize,
    pub stats: Stats,
    protocol: std::marker::PhantomData<R>,
}

/// `--binary`'s decoder.
pub type BinaryDecoder = RecordDecoder<NetworkOrder>;

/// `--host-order`'s decoder.
pub type HostOrderDecoder = RecordDecoder<HostOrder>;

impl<R: Record + Default> RecordDecoder<R> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held for an incomplete request (< `R::REQUEST`).
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Consumes `input`, appending a reply for every complete request.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            let take = (R::REQUEST - self.len).min(input.len());
            self.partial[self.len..self.len + take].copy_from_slice(&input[..take]);
            self.len += take;
            input = &input[take..];
            if self.len == R::REQUEST {
                self.len = 0;
                let r = R::answer(&self.partial[..R::REQUEST], out);
                self.stats.count(r);
            }
        }
    }

    /// At end of input: a trailing partial request is ignored.
    pub fn finish(&mut self, _out: &mut Vec<u8>) {
        self.len = 0;
    }
}

impl<R: Record + Default> Decoder for RecordDecoder<R> {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        RecordDecoder::feed(self, input, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        RecordDecoder::finish(self, out)
    }
    fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(input: &[u8]) -> String {
        let mut d = TextDecoder::new();
        let mut out = Vec::new();
        d.feed(input, &mut out);
        d.finish(&mut out);
        String::from_utf8(out).expect("replies are ASCII")
    }

    #[test]
    fn sums() {
        assert_eq!(text(b"3 4\n"), "7\n");
        assert_eq!(text(b"  -5\t10  \r\n"), "5\n");
        assert_eq!(text(b"+1 -1\n"), "0\n");
        assert_eq!(text(b"-9223372036854775808 9223372036854775807\n"), "-1\n");
        assert_eq!(text(b"007 1\n"), "8\n");
    }

    #[test]
    fn malformed_lines() {
        for line in [
            "a b", "1", "1 2 3", "", " ", "+-1 2", "1 2x", "1,2", "- 1 2", "+ 1", "1\x002",
            "1 \r2", "0x10 1", "1 2\r\r", "١ ٢",
        ] {
            assert_eq!(
                text(format!("{line}\n").as_bytes()),
                "input error\n",
                "{line:?}"
            );
        }
    }

    #[test]
    fn out_of_range() {
        assert_eq!(text(b"9223372036854775807 1\n"), "overflow\n");
        assert_eq!(text(b"-9223372036854775808 -1\n"), "overflow\n");
        // An operand beyond i64 is an input error, not an overflow.
        assert_eq!(text(b"9223372036854775808 0\n"), "input error\n");
        assert_eq!(text(b"-9223372036854775809 0\n"), "input error\n");
    }

    #[test]
    fn pipelined_lines_in_order_and_last_line_at_eof() {
        assert_eq!(text(b"1 1\nx\n2 2\n3 3"), "2\ninput error\n4\n6\n");
    }

    #[test]
    fn a_100_kb_line_is_one_error_and_the_next_line_is_answered() {
        let mut input = vec![b'7'; 100_000];
        input.extend_from_slice(b"\n5 6\n");
        assert_eq!(text(&input), "input error\n11\n");
        // Exactly MAX_LINE bytes is still a line; one more is not.
        let mut ok = vec![b' '; MAX_LINE - 3];
        ok.extend_from_slice(b"1 2\n");
        assert_eq!(ok.len(), MAX_LINE + 1);
        assert_eq!(text(&ok), "3\n");
        let mut long = vec![b' '; MAX_LINE - 2];
        long.extend_from_slice(b"1 2\n");
        assert_eq!(text(&long), "input error\n");
        // Over-long and unterminated at EOF: answered once.
        assert_eq!(text(&vec![b'1'; MAX_LINE + 1]), "input error\n");
    }

    #[test]
    fn any_split_gives_the_same_replies() {
        let input = b"3 4\n  -5\t10  \r\n1 2 3\n9223372036854775807 1\n42 0";
        let whole = text(input);
        for cut in 0..=input.len() {
            let mut d = TextDecoder::new();
            let mut out = Vec::new();
            d.feed(&input[..cut], &mut out);
            d.feed(&input[cut..], &mut out);
            d.finish(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), whole, "cut at {cut}");
        }
        // One byte at a time.
        let mut d = TextDecoder::new();
        let mut out = Vec::new();
        for b in input.chunks(1) {
            d.feed(b, &mut out);
        }
        d.finish(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), whole);
        assert_eq!(
            d.stats,
            Stats {
                requests: 5,
                input_errors: 1,
                overflows: 1
            }
        );
    }

    fn req(a: i64, b: i64) -> Vec<u8> {
        [a.to_be_bytes(), b.to_be_bytes()].concat()
    }

    fn rep(status: u8, sum: i64) -> Vec<u8> {
        let mut v = vec![status];
        v.extend_from_slice(&sum.to_be_bytes());
        v
    }

    #[test]
    fn host_order_is_the_books_struct_and_wraps() {
        let req = |a: i64, b: i64| [a.to_ne_bytes(), b.to_ne_bytes()].concat();
        let mut d = HostOrderDecoder::new();
        let mut out = Vec::new();
        let mut input = req(3, 4);
        input.extend(req(i64::MAX, 1));
        input.extend(&req(-5, 10)[..7]);
        d.feed(&input, &mut out);
        assert_eq!(d.buffered(), 7);
        d.feed(&req(-5, 10)[7..], &mut out);
        d.finish(&mut out);
        let sums: Vec<i64> = out
            .chunks_exact(8)
            .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect();
        assert_eq!(sums, [7, i64::MIN, 5]);
        assert_eq!(out.len(), 24, "an 8-byte struct result per request");
        assert_eq!(d.stats.requests, 3);
    }

    #[test]
    fn binary_requests_split_merged_and_partial() {
        let mut input = req(3, 4);
        input.extend(req(i64::MAX, 1));
        input.extend(req(-5, 10));
        input.extend(&[1, 2, 3]); // trailing partial: ignored
        let want = [rep(0, 7), rep(1, 0), rep(0, 5)].concat();
        for cut in 0..=input.len() {
            let mut d = BinaryDecoder::new();
            let mut out = Vec::new();
            d.feed(&input[..cut], &mut out);
            d.feed(&input[cut..], &mut out);
            d.finish(&mut out);
            assert_eq!(out, want, "cut at {cut}");
            assert_eq!(
                d.stats,
                Stats {
                    requests: 3,
                    input_errors: 0,
                    overflows: 1
                }
            );
        }
        assert_eq!(
            answer_binary(&req(i64::MIN, -1).try_into().unwrap()),
            Reply::Overflow
        );
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        /// Feeds `input` cut at `cuts` (positions, any order).
        fn chunks(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut out = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([input.len()]) {
                out.push(input[at..c].to_vec());
                at = c;
            }
            out
        }

        fn lineish() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..12_000),
                proptest::collection::vec(
                    prop_oneof![
                        Just(b"1".to_vec()),
                        Just(b" ".to_vec()),
                        Just(b"\t".to_vec()),
                        Just(b"-".to_vec()),
                        Just(b"\n".to_vec()),
                        Just(b"\r\n".to_vec()),
                        Just(b"9223372036854775807".to_vec()),
                        Just(vec![b'9'; 3000]),
                    ],
                    0..60
                )
                .prop_map(|v| v.concat()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn text_one_reply_per_line_bounded_memory_any_split(
                input in lineish(),
                cuts in proptest::collection::vec(any::<usize>(), 0..8),
            ) {
                let mut d = TextDecoder::new();
                let mut out = Vec::new();
                for c in chunks(&input, &cuts) {
                    d.feed(&c, &mut out);
                    prop_assert!(d.buffered() <= MAX_LINE);
                }
                d.finish(&mut out);
                let lines = input.iter().filter(|&&b| b == b'\n').count();
                let trailing = usize::from(input.last().is_some_and(|&b| b != b'\n'));
                prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), lines + trailing);
                prop_assert_eq!(d.stats.requests as usize, lines + trailing);
                // The same replies as feeding it whole.
                let mut whole = TextDecoder::new();
                let mut out2 = Vec::new();
                whole.feed(&input, &mut out2);
                whole.finish(&mut out2);
                prop_assert_eq!(out, out2);
            }

            #[test]
            fn binary_one_reply_per_request_any_split(
                input in proptest::collection::vec(any::<u8>(), 0..2000),
                cuts in proptest::collection::vec(any::<usize>(), 0..8),
            ) {
                let mut d = BinaryDecoder::new();
                let mut out = Vec::new();
                for c in chunks(&input, &cuts) {
                    d.feed(&c, &mut out);
                    prop_assert!(d.buffered() < REQUEST);
                }
                d.finish(&mut out);
                prop_assert_eq!(out.len(), input.len() / REQUEST * REPLY);
                for (q, r) in input.chunks_exact(REQUEST).zip(out.chunks_exact(REPLY)) {
                    let a = i64::from_be_bytes(q[..8].try_into().unwrap());
                    let b = i64::from_be_bytes(q[8..].try_into().unwrap());
                    let sum = i64::from_be_bytes(r[1..].try_into().unwrap());
                    match a.checked_add(b) {
                        Some(s) => prop_assert_eq!((r[0], sum), (0, s)),
                        None => prop_assert_eq!((r[0], sum), (1, 0)),
                    }
                }
            }
        }
    }
}
