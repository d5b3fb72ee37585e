//! Reading and writing TensorFlow's `checkpoint` state file.
//!
//! The file holds a `tensorflow.CheckpointState` message (`checkpoint_state.proto`, proto3) in
//! protobuf's text format:
//!
//! ```text
//! model_checkpoint_path: "ckpt-4"
//! all_model_checkpoint_paths: "ckpt-3"
//! all_model_checkpoint_paths: "ckpt-4"
//! all_model_checkpoint_timestamps: 1784015299.2607172
//! all_model_checkpoint_timestamps: 1784015299.510666
//! last_preserved_timestamp: 1784015297.175224
//! ```
//!
//! The writer reproduces Python's `text_format.MessageToString(ckpt)` byte for byte, as TF's
//! `update_checkpoint_state_internal` calls it. The reader follows Python's
//! `text_format.Merge`, which TF's `get_checkpoint_state` uses, with the few deliberate
//! differences listed on [`CheckpointState::parse`].

use std::fmt;

/// Contents of a `checkpoint` state file. Paths are raw bytes exactly as stored (they may be non-UTF-8).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckpointState {
    pub model_checkpoint_path: Vec<u8>,
    pub all_model_checkpoint_paths: Vec<Vec<u8>>,
    pub all_model_checkpoint_timestamps: Vec<f64>,
    pub last_preserved_timestamp: f64,
}

/// Why a state file could not be parsed. `line` is 1-based.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// How non-ASCII bytes in paths are written.
///
/// `false`: every byte >= 0x80 as an octal escape (`caf\303\251`). This is Python protobuf's
/// output before 5.26 (`as_utf8=False` was the default), and what TF <= 2.17 writes.
/// `true`: valid UTF-8 written raw, only invalid bytes escaped: the output of protobuf >= 5.26,
/// whose default became `as_utf8=True`. Both read back to the same bytes everywhere.
const RAW_UTF8: bool = false;

/// How many bytes of a bad token an error message quotes.
const MAX_SHOWN: usize = 40;

const MODEL_PATH: &str = "model_checkpoint_path";
const ALL_PATHS: &str = "all_model_checkpoint_paths";
const TIMESTAMPS: &str = "all_model_checkpoint_timestamps";
const LAST_PRESERVED: &str = "last_preserved_timestamp";

impl CheckpointState {
    /// Serialises exactly as TF does: fields in number order, one `name: value` line each, each
    /// line ending with "\n"; proto3 defaults omitted (an empty model path, no timestamp lines if
    /// there are none, `last_preserved_timestamp` 0.0).
    ///
    /// `-0.0` is *not* omitted: protobuf's default upb backend (pip wheels since 4.21, so every
    /// current TF) tests presence of a proto3 double by its bits, and writes
    /// `last_preserved_timestamp: -0.0`. (The old pure-Python backend compared `== 0.0` and
    /// omitted it.) NaN is written as `nan`.
    #[must_use]
    pub fn to_text(&self) -> Vec<u8> {
        state_text(
            &self.model_checkpoint_path,
            self.all_model_checkpoint_paths.iter().map(Vec::as_slice),
            self.all_model_checkpoint_timestamps.iter().copied(),
            self.last_preserved_timestamp,
        )
    }

    /// Parses the text format as protobuf's Python `text_format.Merge` does.
    ///
    /// Accepted: fields in any order, repeated fields interleaved, a singular field given twice
    /// (last wins), `#` comments, any whitespace (CRLF, blank lines, no final newline), an
    /// optional `,` or `;` after each field, the list form `name: ["a", "b"]` for repeated
    /// fields, strings in `"` or `'` with adjacent strings joined, C escapes, and doubles in any
    /// float syntax Python's `float()` takes plus `inf`/`infinity`/`nan` (any case) and a
    /// trailing `f`. Empty input gives the default state.
    ///
    /// Deliberate differences from Python: bytes inside quoted strings need not be UTF-8 (raw or
    /// escaped, they are kept as they are, because paths may be non-UTF-8); an unknown escape
    /// such as `\q` is an error (Python keeps it literally with a warning; protobuf's C++ parser
    /// rejects it); `\N{name}` escapes are not supported; a `\u005c` escape is a plain backslash
    /// (Python would unescape a second time).
    ///
    /// # Errors
    ///
    /// A [`ParseError`] naming the line for: syntax errors, unknown fields, a missing `:`, a
    /// value of the wrong type, unterminated strings, unknown escapes, octal escapes above
    /// `\377`, and invalid UTF-8 outside quoted strings.
    pub fn parse(text: &[u8]) -> Result<CheckpointState, ParseError> {
        Parser::new(text)?.parse_message()
    }
}

/// `CheckpointState::to_text` of a state given by its parts, without building one: a manager
/// writes its whole list at every save.
pub fn state_text<'a>(
    model_checkpoint_path: &[u8],
    all_model_checkpoint_paths: impl ExactSizeIterator<Item = &'a [u8]>,
    all_model_checkpoint_timestamps: impl Iterator<Item = f64>,
    last_preserved_timestamp: f64,
) -> Vec<u8> {
    // About 90 bytes per checkpoint: a path line and a timestamp line.
    let mut out = Vec::with_capacity(128 + 96 * all_model_checkpoint_paths.len());
    if !model_checkpoint_path.is_empty() {
        write_string_field(&mut out, MODEL_PATH, model_checkpoint_path);
    }
    for path in all_model_checkpoint_paths {
        write_string_field(&mut out, ALL_PATHS, path);
    }
    for timestamp in all_model_checkpoint_timestamps {
        write_double_field(&mut out, TIMESTAMPS, timestamp);
    }
    if last_preserved_timestamp.to_bits() != 0 {
        write_double_field(&mut out, LAST_PRESERVED, last_preserved_timestamp);
    }
    out
}

/// Python `repr(float)`: shortest round-trip digits; exponent form when exp < -4 or exp >= 16
/// ("1e+16", "1.5e-05"), otherwise positional with at least one fractional digit ("10000.0",
/// "1784015298.994252"); "inf", "-inf", "nan"; "-0.0".
#[must_use]
pub fn format_double(x: f64) -> String {
    let mut out = Vec::with_capacity(24);
    write_double(&mut out, x);
    String::from_utf8(out).expect("a formatted double is ASCII")
}

/// `format_double`, appended to `out` without allocating in the common case: a state file
/// holds one double per checkpoint.
fn write_double(out: &mut Vec<u8>, x: f64) {
    if x.is_nan() {
        // Python prints every NaN, whatever its sign bit, as "nan".
        out.extend_from_slice(b"nan");
        return;
    }
    if x.is_infinite() {
        out.extend_from_slice(if x > 0.0 { b"inf" } else { b"-inf" });
        return;
    }
    if x == 0.0 {
        out.extend_from_slice(if x.is_sign_negative() {
            b"-0.0"
        } else {
            b"0.0"
        });
        return;
    }
    let (digits, exp) = shortest_digits(x.abs());
    let digits = digits.as_bytes();
    if x < 0.0 {
        out.push(b'-');
    }
    if !(-4..16).contains(&exp) {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let magnitude = exp.unsigned_abs();
        if magnitude < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(magnitude.to_string().as_bytes());
    } else if exp < 0 {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + exp.unsigned_abs() as usize - 1, b'0');
        out.extend_from_slice(digits);
    } else {
        let int_len = exp.unsigned_abs() as usize + 1;
        if digits.len() <= int_len {
            out.extend_from_slice(digits);
            out.resize(out.len() + int_len - digits.len(), b'0');
            out.extend_from_slice(b".0");
        } else {
            out.extend_from_slice(&digits[..int_len]);
            out.push(b'.');
            out.extend_from_slice(&digits[int_len..]);
        }
    }
}

/// The significant digits of a shortest f64 (at most 17), as ASCII.
#[derive(Clone, Copy, PartialEq)]
struct Digits {
    bytes: [u8; 17],
    len: usize,
}

impl Digits {
    fn from_ascii(ascii: impl IntoIterator<Item = u8>) -> Self {
        let mut digits = Digits {
            bytes: [0; 17],
            len: 0,
        };
        for digit in ascii.into_iter().take(17) {
            digits.bytes[digits.len] = digit;
            digits.len += 1;
        }
        digits
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The shortest decimal digits that read back as `x` (positive, finite), and the decimal
/// exponent of the first digit, chosen as Python's repr chooses them.
///
/// `ryu` and `{:e}` give the shortest length, but when two candidates of that length are
/// equally near `x` they may take the upper one, where Python (David Gay's dtoa) rounds half to even:
/// 1113178120592002.25 is "...002.2" in Python and "...002.3" from `{:e}`. So round the exact
/// expansion of `x` to that length, half to even, and use it if it reads back as `x`.
fn shortest_digits(x: f64) -> (Digits, i32) {
    // `ryu` finds the shortest digits several times faster than `{:e}`; both take the nearest
    // candidate, so they differ only on ties, which are settled below.
    let mut buffer = ryu::Buffer::new();
    let (digits, exp) = decimal_digits(buffer.format_finite(x).as_bytes());
    if cannot_tie(x) {
        return (digits, exp);
    }
    // 800 digits hold the exact expansion of any f64 (at most 767 significant digits).
    let exact_text = format!("{x:.800e}");
    let (exact, exact_exp) = split_sci(exact_text.as_bytes());
    let exact: Vec<u8> = exact.collect();
    let n = digits.len;
    if exact_exp != exp || exact.len() <= n {
        return (digits, exp);
    }
    let mut rounded = Digits::from_ascii(exact[..n].iter().copied());
    let rest = &exact[n..];
    let tie = rest[0] == b'5' && rest[1..].iter().all(|&d| d == b'0');
    let round_up = rest[0] > b'5'
        || (rest[0] == b'5' && !tie)
        || (tie && (rounded.bytes[n - 1] - b'0') % 2 == 1);
    if round_up {
        // Carry; a carry out of the first digit changes the exponent, so keep the first answer.
        let mut i = n;
        loop {
            if i == 0 {
                return (digits, exp);
            }
            i -= 1;
            if rounded.bytes[i] == b'9' {
                rounded.bytes[i] = b'0';
            } else {
                rounded.bytes[i] += 1;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(rounded.as_bytes()).into_owned();
    if rounded != digits && format!("{}.{}e{exp}", &text[..1], &text[1..]).parse() == Ok(x) {
        return (rounded, exp);
    }
    (digits, exp)
}

/// Whether no two shortest candidates can be equally near `x`, by arithmetic alone: a tie
/// needs `x`'s exact decimal expansion to have at most 18 significant digits (17 at most in
/// the shortest form, then a 5). Most doubles are ruled out here and skip the 800-digit
/// expansion, which would otherwise dominate writing a large state file.
fn cannot_tie(x: f64) -> bool {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    let (mantissa, exponent) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    // Trailing zero bits of the mantissa do not lengthen the expansion.
    let exponent = exponent + mantissa.trailing_zeros() as i32;
    if exponent >= 0 {
        // An integer below 2^53 is printed exactly: no rounding, no tie.
        return x < 9_007_199_254_740_992.0;
    }
    // x = mantissa * 5^k / 10^k with k = -exponent: the expansion ends k digits after the
    // point, in a 5. One digit of margin for the floor of the logarithm.
    let significant = x.log10().floor() as i64 - i64::from(exponent) + 1;
    significant > 19
}

/// The significant digits of a decimal such as "1784015298.9", "0.00012", "1.5e-7" or
/// "1e16", without leading or trailing zeros (a shortest form has none to keep), and the
/// decimal exponent of the first.
fn decimal_digits(text: &[u8]) -> (Digits, i32) {
    let (mantissa, exp) = split_sci(text);
    let point = text
        .iter()
        .take_while(|&&b| b != b'e' && b != b'E')
        .position(|&b| b == b'.')
        .unwrap_or_else(|| text.iter().take_while(|&&b| b.is_ascii_digit()).count());
    // Up to 17 significant digits, plus the zeros of "0.0000…" or "…000.0".
    let (mut all, mut len) = ([0u8; 48], 0);
    for digit in mantissa.take(all.len()) {
        all[len] = digit;
        len += 1;
    }
    let all = &all[..len];
    let first = all.iter().position(|&d| d != b'0').unwrap_or(0);
    let significant = all[first..]
        .iter()
        .rposition(|&d| d != b'0')
        .map_or(1, |last| last + 1);
    let digits = Digits::from_ascii(all[first..first + significant].iter().copied());
    (digits, exp + point as i32 - 1 - first as i32)
}

/// Splits Rust's `{:e}` output "d.dddeN" into the digits without the point, and N.
fn split_sci(sci: &[u8]) -> (impl Iterator<Item = u8> + '_, i32) {
    let e = sci
        .iter()
        .position(|&b| b == b'e' || b == b'E')
        .unwrap_or(sci.len());
    let exp = std::str::from_utf8(sci.get(e + 1..).unwrap_or_default())
        .ok()
        .and_then(|exp| exp.parse().ok())
        .unwrap_or(0);
    (sci[..e].iter().copied().filter(u8::is_ascii_digit), exp)
}

// ---------------------------------------------------------------------------------------------
// Writer

fn write_string_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": \"");
    escape_into(out, value, RAW_UTF8);
    out.extend_from_slice(b"\"\n");
}

fn write_double_field(out: &mut Vec<u8>, name: &str, value: f64) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    write_double(out, value);
    out.push(b'\n');
}

/// Protobuf's `CEscape`: `\n \r \t \" \' \\` as two-character escapes, other control bytes,
/// DEL and (unless `raw_utf8`) every byte >= 0x80 as three-digit octal.
fn escape_into(out: &mut Vec<u8>, value: &[u8], raw_utf8: bool) {
    if !raw_utf8 {
        for &b in value {
            escape_byte(out, b);
        }
        return;
    }
    // With as_utf8=True, protobuf leaves valid non-ASCII characters alone and octal-escapes
    // only the bytes that are not valid UTF-8.
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                escape_byte(out, c as u8);
            } else {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        for &b in chunk.invalid() {
            escape_byte(out, b);
        }
    }
}

fn escape_byte(out: &mut Vec<u8>, b: u8) {
    match b {
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        b'"' => out.extend_from_slice(b"\\\""),
        b'\'' => out.extend_from_slice(b"\\'"),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x20..=0x7e => out.push(b),
        _ => out.extend_from_slice(&[
            b'\\',
            b'0' + (b >> 6),
            b'0' + ((b >> 3) & 7),
            b'0' + (b & 7),
        ]),
    }
}

// ---------------------------------------------------------------------------------------------
// Reader

#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    ModelPath,
    AllPaths,
    Timestamps,
    LastPreserved,
}

impl Field {
    fn from_name(name: &[u8]) -> Option<Field> {
        match name {
            n if n == MODEL_PATH.as_bytes() => Some(Field::ModelPath),
            n if n == ALL_PATHS.as_bytes() => Some(Field::AllPaths),
            n if n == TIMESTAMPS.as_bytes() => Some(Field::Timestamps),
            n if n == LAST_PRESERVED.as_bytes() => Some(Field::LastPreserved),
            _ => None,
        }
    }

    fn is_repeated(self) -> bool {
        matches!(self, Field::AllPaths | Field::Timestamps)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// An identifier (`[a-zA-Z_][0-9a-zA-Z_+-]*`) or a number-like word
    /// (`([0-9+-]|\.[0-9])[0-9a-zA-Z_.+-]*`), as protobuf's Python tokenizer splits them.
    Word,
    /// A terminated quoted string, quotes included.
    Quoted,
    /// Any other single character (possibly multi-byte UTF-8).
    Symbol,
    End,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
    line: usize,
}

/// A one-token-lookahead parser over the raw bytes. Tokens never span lines except through
/// whitespace, exactly like the Python tokenizer, which works line by line.
struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
    tok: Token,
}

impl<'a> Parser<'a> {
    fn new(src: &'a [u8]) -> Result<Self, ParseError> {
        let mut p = Parser {
            src,
            pos: 0,
            line: 1,
            tok: Token {
                kind: Kind::End,
                start: 0,
                end: 0,
                line: 1,
            },
        };
        p.advance()?;
        Ok(p)
    }

    fn parse_message(mut self) -> Result<CheckpointState, ParseError> {
        let mut state = CheckpointState::default();
        while self.tok.kind != Kind::End {
            self.parse_field(&mut state)?;
        }
        Ok(state)
    }

    fn parse_field(&mut self, state: &mut CheckpointState) -> Result<(), ParseError> {
        if self.tok.kind != Kind::Word {
            return Err(self.error(format!("expected a field name, found {}", self.describe())));
        }
        let Some(field) = Field::from_name(self.text()) else {
            return Err(self.error(format!(
                "CheckpointState has no field named {}",
                self.describe()
            )));
        };
        self.advance()?;
        // The colon is optional only for message fields; all of ours are scalars.
        if !self.is_symbol(b':') {
            return Err(self.error(format!("expected \":\", found {}", self.describe())));
        }
        self.advance()?;

        if field.is_repeated() && self.is_symbol(b'[') {
            // List form: `name: [v1, v2]`, possibly empty.
            self.advance()?;
            if self.is_symbol(b']') {
                self.advance()?;
            } else {
                loop {
                    self.parse_value(field, state)?;
                    if self.is_symbol(b']') {
                        self.advance()?;
                        break;
                    }
                    if !self.is_symbol(b',') {
                        return Err(self.error(format!(
                            "expected \",\" or \"]\", found {}",
                            self.describe()
                        )));
                    }
                    self.advance()?;
                }
            }
        } else {
            self.parse_value(field, state)?;
        }

        // For historical reasons a field may be followed by one `,` or `;`.
        if self.is_symbol(b',') || self.is_symbol(b';') {
            self.advance()?;
        }
        Ok(())
    }

    fn parse_value(&mut self, field: Field, state: &mut CheckpointState) -> Result<(), ParseError> {
        match field {
            Field::ModelPath => state.model_checkpoint_path = self.parse_string()?,
            Field::AllPaths => {
                let path = self.parse_string()?;
                state.all_model_checkpoint_paths.push(path);
            }
            Field::Timestamps => {
                let ts = self.parse_double()?;
                state.all_model_checkpoint_timestamps.push(ts);
            }
            Field::LastPreserved => state.last_preserved_timestamp = self.parse_double()?,
        }
        Ok(())
    }

    /// One or more adjacent quoted strings, concatenated.
    fn parse_string(&mut self) -> Result<Vec<u8>, ParseError> {
        if self.tok.kind != Kind::Quoted {
            return Err(self.error(format!("expected a string, found {}", self.describe())));
        }
        let mut value = Vec::new();
        while self.tok.kind == Kind::Quoted {
            let content = &self.src[self.tok.start + 1..self.tok.end - 1];
            unescape_into(content, &mut value).map_err(|m| self.error(m))?;
            self.advance()?;
        }
        Ok(value)
    }

    fn parse_double(&mut self) -> Result<f64, ParseError> {
        let value = match self.tok.kind {
            Kind::Word => parse_float(self.text()),
            _ => None,
        };
        let Some(value) = value else {
            return Err(self.error(format!("expected a number, found {}", self.describe())));
        };
        self.advance()?;
        Ok(value)
    }

    fn text(&self) -> &'a [u8] {
        &self.src[self.tok.start..self.tok.end]
    }

    fn is_symbol(&self, c: u8) -> bool {
        self.tok.kind == Kind::Symbol && self.text() == [c]
    }

    /// The current token for an error message, shortened so hostile input cannot make the
    /// message huge.
    fn describe(&self) -> String {
        if self.tok.kind == Kind::End {
            return "end of input".to_string();
        }
        let text = self.text();
        let shown = String::from_utf8_lossy(&text[..text.len().min(MAX_SHOWN)]);
        let ellipsis = if text.len() > MAX_SHOWN { "..." } else { "" };
        format!("{shown:?}{ellipsis}")
    }

    fn error(&self, message: String) -> ParseError {
        ParseError {
            line: self.tok.line,
            message,
        }
    }

    fn error_here(&self, message: &str) -> ParseError {
        ParseError {
            line: self.line,
            message: message.to_string(),
        }
    }

    /// Moves to the next token, skipping whitespace and comments.
    fn advance(&mut self) -> Result<(), ParseError> {
        self.skip_space()?;
        let start = self.pos;
        let line = self.line;
        let (kind, end) = match self.src.get(start) {
            None => (Kind::End, start),
            Some(&b) if b.is_ascii_alphabetic() || b == b'_' => {
                (Kind::Word, self.scan_while(start + 1, is_ident_char))
            }
            Some(&b)
                if b.is_ascii_digit()
                    || b == b'+'
                    || b == b'-'
                    || (b == b'.' && self.src.get(start + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                (Kind::Word, self.scan_while(start + 1, is_number_char))
            }
            Some(&q) if q == b'"' || q == b'\'' => match self.scan_quoted(start) {
                Some(end) => (Kind::Quoted, end),
                None => return Err(self.error_here("unterminated string")),
            },
            Some(&b) if b.is_ascii() => (Kind::Symbol, start + 1),
            Some(_) => match char_at(self.src, start) {
                Some((_, len)) => (Kind::Symbol, start + len),
                None => return Err(self.error_here("invalid UTF-8 outside a string")),
            },
        };
        self.pos = end;
        self.tok = Token {
            kind,
            start,
            end,
            line,
        };
        Ok(())
    }

    fn scan_while(&self, mut i: usize, pred: fn(u8) -> bool) -> usize {
        while self.src.get(i).is_some_and(|&b| pred(b)) {
            i += 1;
        }
        i
    }

    /// The end (past the closing quote) of the string starting at `start`, or None if the line
    /// ends first. A backslash always takes the next byte with it, so `\"` does not close.
    fn scan_quoted(&self, start: usize) -> Option<usize> {
        let quote = self.src[start];
        let mut i = start + 1;
        loop {
            match *self.src.get(i)? {
                b'\n' => return None,
                b'\\' => match self.src.get(i + 1) {
                    None | Some(b'\n') => return None,
                    Some(_) => i += 2,
                },
                b if b == quote => return Some(i + 1),
                _ => i += 1,
            }
        }
    }

    /// Skips what Python's `\s` matches (Unicode whitespace, including \x1c-\x1f) and `#`
    /// comments up to the end of the line.
    fn skip_space(&mut self) -> Result<(), ParseError> {
        while let Some(&b) = self.src.get(self.pos) {
            match b {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b' ' | b'\t' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f => self.pos += 1,
                b'#' => {
                    let end = self.src[self.pos..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(self.src.len(), |n| self.pos + n);
                    if std::str::from_utf8(&self.src[self.pos..end]).is_err() {
                        return Err(self.error_here("invalid UTF-8 in a comment"));
                    }
                    self.pos = end;
                }
                0x80.. => match char_at(self.src, self.pos) {
                    Some((c, len)) if c.is_whitespace() => self.pos += len,
                    Some(_) => return Ok(()),
                    None => return Err(self.error_here("invalid UTF-8 outside a string")),
                },
                _ => return Ok(()),
            }
        }
        Ok(())
    }
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-')
}

fn is_number_char(b: u8) -> bool {
    is_ident_char(b) || b == b'.'
}

/// The UTF-8 character starting at `pos`, with its length; None if the bytes there are invalid.
fn char_at(src: &[u8], pos: usize) -> Option<(char, usize)> {
    let len = match *src.get(pos)? {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return None,
    };
    let s = std::str::from_utf8(src.get(pos..pos + len)?).ok()?;
    s.chars().next().map(|c| (c, len))
}

/// Decodes the C escapes of a string's content (between the quotes) and appends the bytes.
fn unescape_into(content: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut i = 0;
    while let Some(&b) = content.get(i) {
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&e) = content.get(i) else {
            return Err("string ends with a lone backslash".to_string());
        };
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'0'..=b'7' => {
                // One to three octal digits. Python rejects values above \377 (C++ would
                // silently wrap them); so do we.
                let mut value = u32::from(e - b'0');
                for _ in 0..2 {
                    match content.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                let byte = u8::try_from(value)
                    .map_err(|_| format!("octal escape \\{value:o} is above \\377"))?;
                out.push(byte);
            }
            b'x' => {
                // One or two hex digits.
                let n = content[i..]
                    .iter()
                    .take(2)
                    .take_while(|d| d.is_ascii_hexdigit())
                    .count();
                let hex = std::str::from_utf8(&content[i..i + n]).unwrap_or("");
                let byte = u8::from_str_radix(hex, 16)
                    .map_err(|_| "\\x escape without hex digits".to_string())?;
                i += n;
                out.push(byte);
            }
            b'u' | b'U' => {
                // Exactly 4 (\u) or 8 (\U) hex digits naming a Unicode scalar value, stored as
                // UTF-8. Surrogates and values above U+10FFFF are errors, as in Python.
                let n = if e == b'u' { 4 } else { 8 };
                let hex = content
                    .get(i..i + n)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .ok_or_else(|| format!("\\{} escape needs {n} hex digits", e as char))?;
                i += n;
                let code = hex.iter().fold(0u32, |acc, &d| {
                    acc * 16 + (d as char).to_digit(16).unwrap_or(0)
                });
                let c = char::from_u32(code).ok_or_else(|| {
                    format!("\\{} escape {code:X} is not a Unicode character", e as char)
                })?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => {
                let shown = if e.is_ascii_graphic() {
                    format!("\\{}", e as char)
                } else {
                    format!("\\ followed by byte 0x{e:02x}")
                };
                return Err(format!("invalid escape {shown} in string"));
            }
        }
    }
    Ok(())
}

/// Protobuf Python's `ParseFloat` on one token: Python `float()` syntax, then the spellings
/// `inf`, `infinity`, `nan` with an optional trailing `f`, then the token minus trailing `f`s.
fn parse_float(token: &[u8]) -> Option<f64> {
    // Leading zeros ("01.5", "-007") are rejected as "invalid octal float".
    let unsigned = token.strip_prefix(b"-").unwrap_or(token);
    if unsigned.len() >= 2 && unsigned[0] == b'0' && unsigned[1].is_ascii_digit() {
        return None;
    }
    if let Some(v) = python_float(token) {
        return Some(v);
    }
    let lower = token.to_ascii_lowercase();
    let unsigned = lower.strip_prefix(b"-").unwrap_or(&lower);
    if matches!(unsigned, b"inf" | b"inff" | b"infinity" | b"infinityf") {
        return Some(if unsigned.len() < lower.len() {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if matches!(lower.as_slice(), b"nan" | b"nanf") {
        return Some(f64::NAN);
    }
    let end = token
        .iter()
        .rposition(|&b| b != b'f' && b != b'F')
        .map_or(0, |p| p + 1);
    python_float(&token[..end])
}

/// Python's `float(str)` for ASCII input: `[sign] (digits [. [digits]] | . digits) [e [sign]
/// digits]`, where digits may have single underscores between them, or `[sign]` `inf`,
/// `infinity`, `nan` in any case.
fn python_float(s: &[u8]) -> Option<f64> {
    let (negative, body) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let special = if body.eq_ignore_ascii_case(b"inf") || body.eq_ignore_ascii_case(b"infinity") {
        Some(f64::INFINITY)
    } else if body.eq_ignore_ascii_case(b"nan") {
        Some(f64::NAN)
    } else {
        None
    };
    if let Some(v) = special {
        return Some(if negative { -v } else { v });
    }

    let mut i = 0;
    let int_digits = digit_part(body, &mut i);
    let mut frac_digits = false;
    if body.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = digit_part(body, &mut i);
    }
    if !int_digits && !frac_digits {
        return None;
    }
    if matches!(body.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(body.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digit_part(body, &mut i) {
            return None;
        }
    }
    if i != body.len() {
        return None;
    }
    // The syntax is checked; Rust's parser (correctly rounded, like Python's) does the rest.
    let cleaned: String = s
        .iter()
        .filter(|&&b| b != b'_')
        .map(|&b| b as char)
        .collect();
    cleaned.parse::<f64>().ok()
}

/// Consumes `digit (["_"] digit)*` at `*i`; false (consuming nothing) if there is no digit.
fn digit_part(s: &[u8], i: &mut usize) -> bool {
    if !s.get(*i).is_some_and(u8::is_ascii_digit) {
        return false;
    }
    *i += 1;
    loop {
        match s.get(*i) {
            Some(b) if b.is_ascii_digit() => *i += 1,
            Some(b'_') if s.get(*i + 1).is_some_and(u8::is_ascii_digit) => *i += 2,
            _ => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &[u8]) -> CheckpointState {
        match CheckpointState::parse(text) {
            Ok(s) => s,
            Err(e) => panic!("{:?} failed to parse: {e}", String::from_utf8_lossy(text)),
        }
    }

    fn parse_err(text: &[u8]) -> ParseError {
        match CheckpointState::parse(text) {
            Ok(s) => panic!("{:?} parsed to {s:?}", String::from_utf8_lossy(text)),
            Err(e) => e,
        }
    }

    fn state(model: &str, paths: &[&str], ts: &[f64], last: f64) -> CheckpointState {
        CheckpointState {
            model_checkpoint_path: model.as_bytes().to_vec(),
            all_model_checkpoint_paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
            all_model_checkpoint_timestamps: ts.to_vec(),
            last_preserved_timestamp: last,
        }
    }

    const REFERENCE: &[u8] = b"model_checkpoint_path: \"ckpt-4\"\n\
all_model_checkpoint_paths: \"ckpt-3\"\n\
all_model_checkpoint_paths: \"ckpt-4\"\n\
all_model_checkpoint_timestamps: 1784015299.2607172\n\
all_model_checkpoint_timestamps: 1784015299.510666\n\
last_preserved_timestamp: 1784015297.175224\n";

    #[test]
    fn reference_example_round_trips_byte_for_byte() {
        let s = parse_ok(REFERENCE);
        assert_eq!(
            s,
            state(
                "ckpt-4",
                &["ckpt-3", "ckpt-4"],
                &[1784015299.2607172, 1784015299.510666],
                1784015297.175224
            )
        );
        assert_eq!(s.to_text(), REFERENCE);
    }

    #[test]
    fn writer_literal_output() {
        let s = state("ckpt-2", &["ckpt-1", "ckpt-2"], &[10000.0, 13610.0], 3.0);
        assert_eq!(
            s.to_text(),
            b"model_checkpoint_path: \"ckpt-2\"\n\
all_model_checkpoint_paths: \"ckpt-1\"\n\
all_model_checkpoint_paths: \"ckpt-2\"\n\
all_model_checkpoint_timestamps: 10000.0\n\
all_model_checkpoint_timestamps: 13610.0\n\
last_preserved_timestamp: 3.0\n"
        );
    }

    #[test]
    fn writer_omits_defaults() {
        assert_eq!(CheckpointState::default().to_text(), b"");
        // No timestamps, last_preserved 0.0: neither written.
        assert_eq!(
            state("/abs/ckpt-1", &["/abs/ckpt-1"], &[], 0.0).to_text(),
            b"model_checkpoint_path: \"/abs/ckpt-1\"\nall_model_checkpoint_paths: \"/abs/ckpt-1\"\n"
        );
        // An empty model path is omitted, but an empty entry of a repeated field is not.
        assert_eq!(
            state("", &[""], &[], 0.0).to_text(),
            b"all_model_checkpoint_paths: \"\"\n"
        );
        // Zero timestamps inside the repeated field are written.
        assert_eq!(
            state("", &[], &[0.0, -0.0], 0.0).to_text(),
            b"all_model_checkpoint_timestamps: 0.0\nall_model_checkpoint_timestamps: -0.0\n"
        );
        // -0.0 and NaN are not the proto3 default (upb tests the bits).
        assert_eq!(
            state("", &[], &[], -0.0).to_text(),
            b"last_preserved_timestamp: -0.0\n"
        );
        assert_eq!(
            state("", &[], &[], f64::NAN).to_text(),
            b"last_preserved_timestamp: nan\n"
        );
        assert_eq!(
            state("", &[], &[f64::INFINITY, f64::NEG_INFINITY], 0.0).to_text(),
            b"all_model_checkpoint_timestamps: inf\nall_model_checkpoint_timestamps: -inf\n"
        );
    }

    #[test]
    fn writer_escapes() {
        let s = state("dir/café-1", &["a\"b'c\\d\ne\rf\tg\x01h\x7fi"], &[], 0.0);
        assert_eq!(
            s.to_text(),
            b"model_checkpoint_path: \"dir/caf\\303\\251-1\"\n\
all_model_checkpoint_paths: \"a\\\"b\\'c\\\\d\\ne\\rf\\tg\\001h\\177i\"\n"
                .as_slice()
        );
        // Non-UTF-8 bytes are escaped the same way.
        let raw = CheckpointState {
            model_checkpoint_path: b"x\xff\x80\x00".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            raw.to_text(),
            b"model_checkpoint_path: \"x\\377\\200\\000\"\n"
        );
        // Printable ASCII other than quotes and backslash is written as is.
        let printable: Vec<u8> = (0x20u8..0x7f)
            .filter(|b| !matches!(b, b'"' | b'\'' | b'\\'))
            .collect();
        let mut out = Vec::new();
        escape_into(&mut out, &printable, false);
        assert_eq!(out, printable);
    }

    #[test]
    fn raw_utf8_escaping_matches_newer_protobuf() {
        let mut out = Vec::new();
        escape_into(&mut out, "café\u{1}\"".as_bytes(), true);
        assert_eq!(out, "café\\001\\\"".as_bytes());
        let mut out = Vec::new();
        escape_into(&mut out, b"a\xffb\xc3", true);
        assert_eq!(out, b"a\\377b\\303");
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        for raw_utf8 in [false, true] {
            let mut text = b"model_checkpoint_path: \"".to_vec();
            escape_into(&mut text, &all, raw_utf8);
            text.extend_from_slice(b"\"\n");
            assert_eq!(parse_ok(&text).model_checkpoint_path, all);
        }
        let s = state("dir/café-1", &["x\"y", "\\"], &[1.5, 2.0], 0.25);
        assert_eq!(parse_ok(&s.to_text()), s);
    }

    #[test]
    fn format_double_matches_python_repr() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (3.0, "3.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (10000.0, "10000.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1234567890123456.0, "1234567890123456.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (1e-4, "0.0001"),
            (0.00012345, "0.00012345"),
            (0.00012345678901234567, "0.00012345678901234567"),
            (1.2345678901234567e-7, "1.2345678901234566e-07"),
            (100.0, "100.0"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (1784015299.2607172, "1784015299.2607172"),
            (1784015298.994252, "1784015298.994252"),
            (1784015297.175224, "1784015297.175224"),
            (1e22, "1e+22"),
            (1e100, "1e+100"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (2.2250738585072014e-308, "2.2250738585072014e-308"),
            // Exact ties between two shortest candidates: Python rounds half to even.
            (1113178120592002.0 + 0.25, "1113178120592002.2"),
            (-233891771783429.0 - 0.625, "-233891771783429.62"),
            (111659285584252.0 + 0.125, "111659285584252.12"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (-f64::NAN, "nan"),
        ];
        for &(x, want) in cases {
            assert_eq!(format_double(x), want, "format_double({x:e})");
        }
    }

    #[test]
    fn format_double_round_trips() {
        let mut bits = 0x0123_4567_89ab_cdefu64;
        for _ in 0..20000 {
            // xorshift: a spread of exponents and mantissas.
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            let x = f64::from_bits(bits);
            if x.is_finite() {
                let text = format_double(x);
                assert_eq!(parse_float(text.as_bytes()), Some(x), "{text}");
            }
        }
    }

    #[test]
    fn parses_tf_written_variants() {
        // Absolute paths, no timestamps (older TF / tf.compat.v1 Saver).
        let s = parse_ok(
            b"model_checkpoint_path: \"/tmp/model/model.ckpt-200\"\n\
all_model_checkpoint_paths: \"/tmp/model/model.ckpt-100\"\n\
all_model_checkpoint_paths: \"/tmp/model/model.ckpt-200\"\n",
        );
        assert_eq!(
            s,
            state(
                "/tmp/model/model.ckpt-200",
                &["/tmp/model/model.ckpt-100", "/tmp/model/model.ckpt-200"],
                &[],
                0.0
            )
        );
        // `./` prefixes are kept verbatim.
        let s = parse_ok(
            b"model_checkpoint_path: \"./ckpt-1\"\nall_model_checkpoint_paths: \"./ckpt-1\"\n",
        );
        assert_eq!(s.model_checkpoint_path, b"./ckpt-1");
        // C++-style %.17g doubles, integers and exponents.
        let s = parse_ok(
            b"model_checkpoint_path: \"a\"\n\
all_model_checkpoint_timestamps: 1784015299.2607172\n\
all_model_checkpoint_timestamps: 10000\n\
all_model_checkpoint_timestamps: 1.5e+16\n\
all_model_checkpoint_timestamps: 1E-5\n\
last_preserved_timestamp: 3\n",
        );
        assert_eq!(
            s.all_model_checkpoint_timestamps,
            [1784015299.2607172, 10000.0, 1.5e16, 1e-5]
        );
        assert_eq!(s.last_preserved_timestamp, 3.0);
    }

    #[test]
    fn last_singular_value_wins_and_fields_interleave() {
        let s = parse_ok(
            b"all_model_checkpoint_timestamps: 2\n\
model_checkpoint_path: \"ckpt-1\"\n\
all_model_checkpoint_paths: \"ckpt-1\"\n\
last_preserved_timestamp: 5\n\
all_model_checkpoint_timestamps: 3\n\
model_checkpoint_path: \"ckpt-2\"\n\
all_model_checkpoint_paths: \"ckpt-2\"\n\
last_preserved_timestamp: 0\n",
        );
        assert_eq!(s, state("ckpt-2", &["ckpt-1", "ckpt-2"], &[2.0, 3.0], 0.0));
    }

    #[test]
    fn whitespace_comments_and_separators() {
        let want = state("ckpt-1", &["ckpt-0", "ckpt-1"], &[1.0, 2.0], 0.0);
        // CRLF, blank lines, comments, trailing whitespace, no final newline.
        let text = b"# written by hand\r\n\r\n  model_checkpoint_path :\t\"ckpt-1\"   # latest\r\n\
all_model_checkpoint_paths: \"ckpt-0\" \r\n\n\
all_model_checkpoint_paths:'ckpt-1'\r\n\
all_model_checkpoint_timestamps: 1.0\r\n\
all_model_checkpoint_timestamps: 2";
        assert_eq!(parse_ok(text), want);
        // Several fields on one line, separated by spaces, `,` or `;`.
        let text = b"model_checkpoint_path: \"ckpt-1\", all_model_checkpoint_paths: \"ckpt-0\"; \
all_model_checkpoint_paths: \"ckpt-1\" all_model_checkpoint_timestamps: 1.0,\
all_model_checkpoint_timestamps: 2.0;";
        assert_eq!(parse_ok(text), want);
        // The list form of repeated fields.
        let text = b"model_checkpoint_path: \"ckpt-1\"\n\
all_model_checkpoint_paths: [\"ckpt-0\", 'ckpt-1']\n\
all_model_checkpoint_timestamps: [1.0, 2]\n\
all_model_checkpoint_timestamps: []\n";
        assert_eq!(parse_ok(text), want);
        // Unicode whitespace, as Python's \s.
        assert_eq!(
            parse_ok("\u{a0}model_checkpoint_path:\u{3000}\"x\"\u{2028}".as_bytes())
                .model_checkpoint_path,
            b"x"
        );
        assert_eq!(parse_ok(b""), CheckpointState::default());
        assert_eq!(
            parse_ok(b"  \n# only a comment\n\n"),
            CheckpointState::default()
        );
    }

    #[test]
    fn string_syntax() {
        let path = |text: &[u8]| {
            let mut t = b"model_checkpoint_path: ".to_vec();
            t.extend_from_slice(text);
            parse_ok(&t).model_checkpoint_path
        };
        assert_eq!(path(b"'it\\'s' \"a\\\"b\""), b"it'sa\"b");
        assert_eq!(path(b"\"a\"\n  'b'  # comment\n \"c\""), b"abc");
        assert_eq!(path(b"\"it's\" 'say \"hi\"'"), b"it'ssay \"hi\"");
        assert_eq!(
            path(b"\"\\n\\t\\r\\a\\b\\f\\v\\\\\""),
            b"\n\t\r\x07\x08\x0c\x0b\\"
        );
        assert_eq!(path(b"\"caf\\303\\251\""), "café".as_bytes());
        assert_eq!(path(b"\"\\0\\08\\101\\1012\""), b"\0\08AA2");
        assert_eq!(path(b"\"\\x41\\x4g\\xff\\x414\""), b"A\x04g\xffA4");
        assert_eq!(path(b"\"\\u00e9\\U0001F600\""), "é😀".as_bytes());
        // Raw bytes are kept, UTF-8 or not.
        assert_eq!(path("\"café\"".as_bytes()), "café".as_bytes());
        assert_eq!(path(b"\"\xff\xfe\x01\t\""), b"\xff\xfe\x01\t");
        assert_eq!(path(b"\"\\377\""), b"\xff");
        assert_eq!(path(b"\"\""), b"");
        assert_eq!(path(b"\"a#b\" # c"), b"a#b");
    }

    #[test]
    fn double_syntax() {
        let ts = |text: &str| {
            let t = format!("last_preserved_timestamp: {text}");
            parse_ok(t.as_bytes()).last_preserved_timestamp
        };
        assert_eq!(ts("1784015299.2607172"), 1784015299.2607172);
        assert_eq!(ts("5"), 5.0);
        assert_eq!(ts("-5"), -5.0);
        assert_eq!(ts("+5"), 5.0);
        assert_eq!(ts("5."), 5.0);
        assert_eq!(ts(".5"), 0.5);
        assert_eq!(ts("0.5"), 0.5);
        assert_eq!(ts("0"), 0.0);
        assert_eq!(ts("1e3"), 1000.0);
        assert_eq!(ts("1E+3"), 1000.0);
        assert_eq!(ts("1.5e-05"), 1.5e-5);
        assert_eq!(ts("1_000.5"), 1000.5);
        assert_eq!(ts("1.0f"), 1.0);
        assert_eq!(ts("2F"), 2.0);
        assert_eq!(ts("1e999"), f64::INFINITY);
        assert_eq!(ts("inf"), f64::INFINITY);
        assert_eq!(ts("-inf"), f64::NEG_INFINITY);
        assert_eq!(ts("Infinity"), f64::INFINITY);
        assert_eq!(ts("-INFINITYf"), f64::NEG_INFINITY);
        assert_eq!(ts("inff"), f64::INFINITY);
        assert!(ts("nan").is_nan());
        assert!(ts("NaN").is_nan());
        assert!(ts("nanf").is_nan());
        assert!(ts("-nan").is_nan());
        assert_eq!(ts("1.7976931348623157e+308"), 1.7976931348623157e308);
        assert_eq!(ts("5e-324"), 5e-324);
    }

    #[test]
    fn rejects_bad_input() {
        let cases: &[&[u8]] = &[
            // Unknown fields, at top level or misspelt.
            b"model_checkpoint_path: \"a\"\nfoo: \"b\"\n",
            b"model_checkpoint_paths: \"a\"\n",
            b"Model_checkpoint_path: \"a\"\n",
            b"1: \"a\"\n",
            // Missing colon, missing value, empty value.
            b"model_checkpoint_path \"a\"\n",
            b"model_checkpoint_path\n",
            b"model_checkpoint_path:\n",
            b"model_checkpoint_path: \nall_model_checkpoint_paths: \"a\"\n",
            b"last_preserved_timestamp:",
            b"last_preserved_timestamp: \n",
            b"model_checkpoint_path = \"a\"\n",
            // Unterminated strings, including across lines and a trailing backslash.
            b"model_checkpoint_path: \"abc\n",
            b"model_checkpoint_path: \"abc",
            b"model_checkpoint_path: 'abc\"\n",
            b"model_checkpoint_path: \"a\nb\"\n",
            b"model_checkpoint_path: \"abc\\\"\n",
            b"model_checkpoint_path: \"abc\\",
            // Invalid escapes.
            b"model_checkpoint_path: \"\\q\"\n",
            b"model_checkpoint_path: \"\\x\"\n",
            b"model_checkpoint_path: \"\\xg0\"\n",
            b"model_checkpoint_path: \"\\777\"\n",
            b"model_checkpoint_path: \"\\400\"\n",
            b"model_checkpoint_path: \"\\u12\"\n",
            b"model_checkpoint_path: \"\\ud800\"\n",
            b"model_checkpoint_path: \"\\U00110000\"\n",
            b"model_checkpoint_path: \"\\N{DIGIT ONE}\"\n",
            b"model_checkpoint_path: \"\\\xc3\xa9\"\n",
            // Wrong value types.
            b"model_checkpoint_path: ckpt-1\n",
            b"model_checkpoint_path: 1\n",
            b"last_preserved_timestamp: \"1.0\"\n",
            b"last_preserved_timestamp: true\n",
            b"last_preserved_timestamp: 1.0.0\n",
            b"last_preserved_timestamp: 0x10\n",
            b"last_preserved_timestamp: 01.5\n",
            b"last_preserved_timestamp: -007\n",
            b"last_preserved_timestamp: 1__0\n",
            b"last_preserved_timestamp: 1_\n",
            b"last_preserved_timestamp: 1e\n",
            b"last_preserved_timestamp: .\n",
            b"last_preserved_timestamp: - 1\n",
            b"last_preserved_timestamp: [1.0]\n",
            b"model_checkpoint_path: [\"a\"]\n",
            b"all_model_checkpoint_timestamps: [1.0 2.0]\n",
            b"all_model_checkpoint_timestamps: [1.0,]\n",
            b"all_model_checkpoint_timestamps: [1.0\n",
            // Messages and stray punctuation.
            b"model_checkpoint_path { }\n",
            b"model_checkpoint_path: \"a\",,\n",
            b"model_checkpoint_path: \"a\";;\n",
            b", model_checkpoint_path: \"a\"\n",
            b"[tensorflow.x]: 1\n",
            b"}",
            // Binary garbage and invalid UTF-8 outside strings.
            b"\x00\x01\x02\x03",
            b"\x89PNG\r\n\x1a\n",
            b"model_checkpoint_path: \"a\"\n\xff\n",
            b"model_checkpoint_path: \"a\" # bad \xff comment\n",
            "model_checkpoint_path: «a»\n".as_bytes(),
            "\u{feff}model_checkpoint_path: \"a\"\n".as_bytes(),
        ];
        for &case in cases {
            let err = parse_err(case);
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn error_lines_and_display() {
        let err = parse_err(b"model_checkpoint_path: \"a\"\n\n# c\nbogus: 1\n");
        assert_eq!(err.line, 4);
        assert!(err.message.contains("bogus"), "{}", err.message);
        assert_eq!(err.to_string(), format!("line 4: {}", err.message));
        assert_eq!(parse_err(b"model_checkpoint_path:\n\n").line, 3);
        assert_eq!(parse_err(b"\n\nmodel_checkpoint_path: \"x").line, 3);
        // Long tokens are shortened in messages.
        let mut long = b"x".repeat(10_000);
        long.extend_from_slice(b": 1");
        assert!(parse_err(&long).message.len() < 200);
        let e: &dyn std::error::Error = &err;
        assert!(e.to_string().starts_with("line 4: "));
    }

    #[test]
    fn hostile_input_never_panics() {
        // Every prefix of a valid file, and every single-byte corruption of it.
        let text = state(
            "dir/café-1",
            &["a'b", "c\\d"],
            &[1784015299.2607172, 1e-7],
            -0.0,
        )
        .to_text();
        for end in 0..=text.len() {
            let _ = CheckpointState::parse(&text[..end]);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let interesting = b"\"'\\:[],;#\n\r \t.-+e0f7xuU\x80\xc3\xff";
        for _ in 0..20000 {
            let mut t = text.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % t.len();
                t[i] = if next() % 2 == 0 {
                    interesting[(next() as usize) % interesting.len()]
                } else {
                    next() as u8
                };
            }
            let _ = CheckpointState::parse(&t);
        }
        // Long runs of the same special byte.
        for &b in interesting {
            let _ = CheckpointState::parse(&vec![b; 100_000]);
        }
    }
}
