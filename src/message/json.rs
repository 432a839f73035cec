//! Reading an application's JSON message in one pass, without serde and without copying.
//!
//! [`parse`] reads the shape applications send (`{"header":{…},"route":{…},"content":…}`, in any
//! order, with whitespace anywhere JSON allows it), borrowing each string from the text, and
//! checks the content's JSON as it skips over it. It takes only what it can read exactly as
//! serde_json would (`Message::from_json`'s serde reading): strings without escapes, integer
//! timestamps, each known field once, nesting under [`MAX_DEPTH`]. Anything else, valid or not,
//! is left to that reading, which has the final word and gives the error message: so the two
//! agree on every input, which the tests and the `message_json` fuzz target check.

use super::{MessageRef, special_at};

/// Deepest nesting taken here (serde_json refuses past 128 levels; the serde reading decides).
const MAX_DEPTH: usize = 100;

struct Scan<'a> {
    text: &'a str,
    at: usize,
}

/// Why the fast reading gave up: the serde reading decides.
struct Other;

type R<T> = Result<T, Other>;

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace (space, tab, line feed, carriage return), then returns the next byte.
    fn ws(&mut self) -> Option<u8> {
        while let Some(b) = self.peek() {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    fn expect(&mut self, b: u8) -> R<()> {
        if self.ws() == Some(b) {
            self.at += 1;
            Ok(())
        } else {
            Err(Other)
        }
    }

    /// A string without escapes, the opening quote next: its text.
    fn plain_string(&mut self) -> R<&'a str> {
        if self.peek() != Some(b'"') {
            return Err(Other);
        }
        let start = self.at + 1;
        let end = self.string_end(start)?;
        if end.1 {
            return Err(Other);
        }
        self.at = end.0 + 1;
        Ok(&self.text[start..end.0])
    }

    /// From `from` (just after an opening quote): the position of the closing quote and whether
    /// escapes came before it. Gives up on control characters (invalid), on `\u` escapes and on
    /// anything else that is not a simple escape.
    fn string_end(&self, from: usize) -> R<(usize, bool)> {
        let bytes = self.bytes();
        let mut i = from;
        let mut escaped = false;
        loop {
            // Eight bytes at a time to the next quote, backslash or control character (the last
            // few bytes of the text one at a time).
            'scan: {
                while let Some(words) = bytes.get(i..i + 16) {
                    let (a, b) = words.split_at(8);
                    let a = u64::from_le_bytes(a.try_into().expect("8 bytes"));
                    let b = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                    if let Some(at) = special_at(a) {
                        i += at;
                        break 'scan;
                    }
                    if let Some(at) = special_at(b) {
                        i += 8 + at;
                        break 'scan;
                    }
                    i += 16;
                }
                while let Some(word) = bytes.get(i..i + 8) {
                    let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
                    if let Some(at) = special_at(word) {
                        i += at;
                        break 'scan;
                    }
                    i += 8;
                }
            }
            let b = *bytes.get(i).ok_or(Other)?;
            match b {
                b'"' => return Ok((i, escaped)),
                b'\\' => {
                    match bytes.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        _ => return Err(Other),
                    }
                    escaped = true;
                    i += 2;
                }
                0..0x20 => return Err(Other),
                _ => i += 1,
            }
        }
    }

    /// Skips a JSON value (the next byte its first), checking it.
    fn skip_value(&mut self, depth: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Other);
        }
        match self.peek().ok_or(Other)? {
            b'"' => {
                let (end, _) = self.string_end(self.at + 1)?;
                self.at = end + 1;
            }
            b'{' => {
                self.at += 1;
                if self.ws() == Some(b'}') {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(Other);
                    }
                    let (end, _) = self.string_end(self.at + 1)?;
                    self.at = end + 1;
                    self.expect(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    match self.ws() {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(Other),
                    }
                }
            }
            b'[' => {
                self.at += 1;
                if self.ws() == Some(b']') {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    match self.ws() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(Other),
                    }
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return Err(Other),
        }
        Ok(())
    }

    /// `word` next (its length known when compiled, so the comparison needs no call).
    fn literal<const N: usize>(&mut self, word: &[u8; N]) -> R<()> {
        let next: Option<&[u8; N]> = self
            .bytes()
            .get(self.at..self.at + N)
            .and_then(|b| b.try_into().ok());
        if next == Some(word) {
            self.at += N;
            Ok(())
        } else {
            Err(Other)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    /// A JSON number (RFC 8259 section 6).
    fn number(&mut self) -> R<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(Other);
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Other),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(Other);
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(Other);
            }
        }
        Ok(())
    }

    /// An integer timestamp of at most 18 digits (no sign of zero, fraction or exponent, which
    /// serde_json reads as a float and refuses for an `i64`).
    fn timestamp(&mut self) -> R<i64> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let start = self.at;
        let n = self.digits();
        let text = &self.bytes()[start..self.at];
        if n == 0 || n > 18 || (text[0] == b'0' && (n > 1 || negative)) {
            return Err(Other);
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(Other);
        }
        let v = text.iter().fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
        Ok(if negative { -v } else { v })
    }

    fn boolean(&mut self) -> R<bool> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => Err(Other),
        }
    }

    /// An object's members, `member(scan, key)` reading each value (the next byte its first).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> R<()>) -> R<()> {
        if self.ws() != Some(b'{') {
            return Err(Other);
        }
        self.at += 1;
        if self.ws() == Some(b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.plain_string()?;
            self.expect(b':')?;
            self.ws();
            member(self, key)?;
            match self.ws() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Other),
            }
        }
    }
}

/// Sets `slot` once (a field given twice is serde's error to report).
fn once<T>(slot: &mut Option<T>, value: T) -> R<()> {
    if slot.replace(value).is_some() {
        return Err(Other);
    }
    Ok(())
}

/// Reads `text` as [`MessageRef::from_json`] does, or `None` where the serde reading must decide.
pub(super) fn parse(text: &str) -> Option<MessageRef<'_>> {
    canonical(text).or_else(|| any_order(text))
}

/// Reads the layout the hub writes (`Message::to_json`, which its client sends too): the fields
/// in that order, without whitespace. `None` for any other text.
fn canonical(text: &str) -> Option<MessageRef<'_>> {
    let mut s = Scan { text, at: 0 };
    s.literal(br#"{"header":{"msg_id":"#).ok()?;
    let id = s.plain_string().ok()?;
    s.literal(br#","parent_msg_id":"#).ok()?;
    let parent_id = s.plain_string().ok()?;
    s.literal(br#","timestamp":"#).ok()?;
    let timestamp = s.timestamp().ok()?;
    s.literal(br#","sync":"#).ok()?;
    let sync = s.boolean().ok()?;
    let urgent = s.literal(br#","urgent":"#).is_ok() && s.boolean().ok()?;
    s.literal(br#"},"route":{"source":"#).ok()?;
    let source = s.plain_string().ok()?;
    s.literal(br#","group":"#).ok()?;
    let group = s.plain_string().ok()?;
    s.literal(br#","operation":"#).ok()?;
    let operation = s.plain_string().ok()?;
    s.literal(br#","resource":"#).ok()?;
    let resource = s.plain_string().ok()?;
    s.literal(br#"},"content":"#).ok()?;
    let start = s.at;
    s.skip_value(1).ok()?;
    let content = &text[start..s.at];
    s.literal(b"}").ok()?;
    if s.ws().is_some() {
        return None;
    }
    use std::borrow::Cow::Borrowed;
    Some(MessageRef {
        id: Borrowed(id),
        parent_id: Borrowed(parent_id),
        timestamp,
        sync,
        urgent,
        source: Borrowed(source),
        group: Borrowed(group),
        operation: Borrowed(operation),
        resource: Borrowed(resource),
        // `"content": null` is no content, which is `null` too.
        content,
    })
}

/// Reads the fields in any order, with whitespace anywhere JSON allows it.
fn any_order(text: &str) -> Option<MessageRef<'_>> {
    let mut s = Scan { text, at: 0 };
    let mut id = None;
    let mut parent_id = None;
    let mut timestamp = None;
    let mut sync = None;
    let mut urgent = None;
    let mut source = None;
    let mut group = None;
    let mut operation = None;
    let mut resource = None;
    let mut content = None;
    let (mut header, mut route) = (false, false);
    s.object(|s, key| match key {
        "header" => {
            if std::mem::replace(&mut header, true) {
                return Err(Other);
            }
            s.object(|s, key| match key {
                "msg_id" => once(&mut id, s.plain_string()?),
                "parent_msg_id" => once(&mut parent_id, s.plain_string()?),
                "timestamp" => once(&mut timestamp, s.timestamp()?),
                "sync" => once(&mut sync, s.boolean()?),
                "urgent" => once(&mut urgent, s.boolean()?),
                _ => s.skip_value(2),
            })
        }
        "route" => {
            if std::mem::replace(&mut route, true) {
                return Err(Other);
            }
            s.object(|s, key| match key {
                "source" => once(&mut source, s.plain_string()?),
                "group" => once(&mut group, s.plain_string()?),
                "operation" => once(&mut operation, s.plain_string()?),
                "resource" => once(&mut resource, s.plain_string()?),
                _ => s.skip_value(2),
            })
        }
        "content" => {
            let start = s.at;
            s.skip_value(1)?;
            once(&mut content, &text[start..s.at])
        }
        _ => s.skip_value(1),
    })
    .ok()?;
    if s.ws().is_some() {
        return None;
    }
    fn given(v: Option<&str>) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(v.unwrap_or(""))
    }
    Some(MessageRef {
        id: given(id),
        parent_id: given(parent_id),
        timestamp: timestamp.unwrap_or(0),
        sync: sync.unwrap_or(false),
        urgent: urgent.unwrap_or(false),
        source: given(source),
        group: given(group),
        operation: given(operation),
        resource: given(resource),
        // `"content": null` is no content, which is `null` too.
        content: content.unwrap_or("null"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass reading takes `text` only as serde_json's would.
    fn agrees(text: &str) -> bool {
        let fast = parse(text);
        if let (Some(a), Some(b)) = (canonical(text), any_order(text)) {
            assert_eq!(a, b, "{text}");
        }
        if let Some(m) = &fast {
            assert_eq!(
                Ok(m),
                MessageRef::from_json_serde(text).as_ref(),
                "read differently: {text}"
            );
        }
        fast.is_some()
    }

    const SEEDS: &[&str] = &[
        r#"{"header":{"msg_id":"a-1","parent_msg_id":"","timestamp":1764081600000,"sync":false},"route":{"source":"app","group":"bench","operation":"update","resource":"node/gw-1/up"},"content":"7 xxxx"}"#,
        r#" { "route" : { "resource" : "a/b" } , "content" : { "t" : [ 1 , -2.5e+3 , true , null , { } , [ ] ] } , "header" : { "urgent" : true , "timestamp" : -12 } } "#,
        r#"{"content":null}"#,
        r#"{}"#,
        r#"{"header":{"sync":true,"x":[{"y":"z\n"}]},"extra":{"a":0.5E-7},"content":"esc \" \\ \/ \b \f \n \r \t"}"#,
        "{\"header\":{\"msg_id\":\"é☃\"},\"content\":[\"\u{1f600}\"]}",
    ];

    #[test]
    fn the_common_shapes_are_read_in_one_pass_as_serde_reads_them() {
        for seed in SEEDS {
            assert!(agrees(seed), "left to serde: {seed}");
        }
        let m = parse(SEEDS[0]).unwrap();
        assert_eq!(
            (&*m.id, &*m.resource, m.timestamp, m.content),
            ("a-1", "node/gw-1/up", 1_764_081_600_000, r#""7 xxxx""#)
        );
        assert!(matches!(m.id, std::borrow::Cow::Borrowed(_)), "no copy");
        // What the hub writes (and its client sends) is read in its own order.
        assert!(canonical(SEEDS[0]).is_some());
        let urgent = crate::message::Message {
            urgent: true,
            content: b"[1]".to_vec(),
            ..crate::message::Message::default()
        };
        let urgent = urgent.to_json();
        assert!(canonical(&urgent).is_some_and(|m| m.urgent), "{urgent}");
        assert!(agrees(&urgent));
        assert_eq!(parse(r#"{"content":null}"#).unwrap().content, "null");
    }

    #[test]
    fn whatever_serde_would_read_otherwise_or_refuse_is_left_to_it() {
        for text in [
            r#"{"header":{"msg_id":"a\"b"}}"#,   // an escape in a field
            r#"{"header":{"msg_id":"\u0041"}}"#, // a \u escape
            r#"{"header":{"timestamp":1.0}}"#,   // a float
            r#"{"header":{"timestamp":-0}}"#,    // negative zero: a float to serde
            r#"{"header":{"timestamp":1234567890123456789}}"#, // 19 digits
            r#"{"header":{"timestamp":01}}"#,
            r#"{"header":{"sync":"yes"}}"#,
            r#"{"header":null}"#,
            r#"{"header":[]}"#,
            r#"{"header":{},"header":{}}"#,
            r#"{"content":1,"content":2}"#,
            r#"{"route":{"resource":"a","resource":"b"}}"#,
            r#"{"route":{"resource":null}}"#,
            r#"{"content":01}"#,
            r#"{"content":1.}"#,
            r#"{"content":-}"#,
            r#"{"content":[1,]}"#,
            r#"{"content":"a
b"}"#,
            r#"{"content":tru}"#,
            r#"{"content":1} x"#,
            r#"{"content":1"#,
            r#"[1,2]"#,
            "",
        ] {
            assert!(!agrees(text), "read in one pass: {text}");
        }
        let deep = format!("{{\"content\":{}{}}}", "[".repeat(120), "]".repeat(120));
        assert!(!agrees(&deep));
    }

    #[test]
    fn mutated_messages_are_read_as_serde_reads_them() {
        // Small edits of each seed at random places: whatever the one-pass reading takes, it
        // takes as serde_json does.
        let alphabet = b"{}[]:,\"\\ 0123456789-+.eEtrufalsn\nxu\x01";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut taken = 0;
        for _ in 0..20_000 {
            let mut text = SEEDS[next(SEEDS.len())].as_bytes().to_vec();
            for _ in 0..1 + next(3) {
                let at = next(text.len() + 1);
                let b = alphabet[next(alphabet.len())];
                match next(3) {
                    0 => text.insert(at, b),
                    1 if at < text.len() => text[at] = b,
                    _ if at < text.len() => {
                        text.remove(at);
                    }
                    _ => {}
                }
            }
            let Ok(text) = String::from_utf8(text) else {
                continue;
            };
            taken += usize::from(agrees(&text));
        }
        assert!(taken > 1000, "only {taken} mutants read in one pass");
    }
}
