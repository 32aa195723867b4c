//! Incremental detokenization for streaming: token ids in, text deltas out.
//!
//! Decoding one token at a time does not work: a byte-level token can hold part of a UTF-8
//! character (an emoji is often spread over several tokens), and some decoders treat the
//! first token of a sequence specially (SentencePiece-style leading-space removal). The
//! [`IncrementalDecoder`] therefore decodes a small window: the tokens of the last text it
//! emitted (the *prefix*, context only) plus the tokens not yet emitted, and hands out what
//! the window's text has beyond the prefix's text.
//!
//! Guarantees, for any id sequence:
//! - a delta never ends inside a character: while the window's text ends in U+FFFD (an
//!   incomplete byte sequence) nothing is emitted;
//! - the concatenation of every delta plus [`IncrementalDecoder::flush`] equals
//!   `tokenizer.decode(all ids, skip_special)` exactly, as long as no run of more than
//!   [`MAX_HELD_TOKENS`] tokens keeps ending in an incomplete byte sequence. Past that the
//!   model is producing bytes that are not UTF-8, and the held text (with its U+FFFD) is
//!   emitted to keep the work per token bounded;
//! - each step decodes a window of O(1) tokens (bounded by the longest emitted chunk plus
//!   the tokens held), so a stream costs O(n) in total, not O(n²).

use std::sync::Arc;

use crate::model::tokenizer::{Tokenizer, TokenizerError};

/// The most tokens held back waiting for a character to complete. A UTF-8 character has at
/// most four bytes and every byte-level token at least one, so a well-formed stream never
/// comes close.
pub const MAX_HELD_TOKENS: usize = 16;

/// Turns a stream of token ids into text deltas. One per generated sequence.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    skip_special: bool,
    /// The window: `ids[..prefix_end]` produced the text emitted last (context),
    /// `ids[prefix_end..]` have not been emitted yet.
    ids: Vec<u32>,
    prefix_end: usize,
    /// `decode(ids[..prefix_end])`.
    prefix_text: String,
}

impl IncrementalDecoder {
    /// A decoder that skips special tokens (`<|im_end|>` produces no text), as an API response
    /// should.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self::with_skip_special(tokenizer, true)
    }

    /// A decoder that keeps (`skip_special = false`) or drops special tokens.
    pub fn with_skip_special(tokenizer: Arc<Tokenizer>, skip_special: bool) -> Self {
        IncrementalDecoder {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix_end: 0,
            prefix_text: String::new(),
        }
    }

    /// Number of tokens whose text has not been emitted yet.
    pub fn held_tokens(&self) -> usize {
        self.ids.len() - self.prefix_end
    }

    /// Feeds one token; returns the text it completes, or `None` when nothing new can be
    /// emitted yet (an incomplete character, or a skipped special token).
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let complete = !text.ends_with(char::REPLACEMENT_CHARACTER);
        let grew = text.len() > self.prefix_text.len() && text.starts_with(&self.prefix_text);
        if complete && grew {
            let delta = text[self.prefix_text.len()..].to_owned();
            self.advance()?;
            return Ok(Some(delta));
        }
        if self.held_tokens() > MAX_HELD_TOKENS {
            // Not UTF-8 for this long: give up waiting (see the module docs).
            let delta = suffix_after(&text, &self.prefix_text).to_owned();
            self.advance()?;
            return Ok((!delta.is_empty()).then_some(delta));
        }
        Ok(None)
    }

    /// Ends the stream: returns whatever text is still held (possibly with U+FFFD for bytes
    /// that never formed a character) and resets the decoder for a new stream.
    pub fn flush(&mut self) -> Result<String, TokenizerError> {
        let delta = if self.held_tokens() == 0 {
            String::new()
        } else {
            let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
            suffix_after(&text, &self.prefix_text).to_owned()
        };
        self.ids.clear();
        self.prefix_end = 0;
        self.prefix_text.clear();
        Ok(delta)
    }

    /// The held tokens were emitted: they become the prefix of the next window.
    fn advance(&mut self) -> Result<(), TokenizerError> {
        self.ids.drain(..self.prefix_end);
        self.prefix_end = self.ids.len();
        self.prefix_text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        Ok(())
    }
}

/// What `text` has beyond `prefix`. When `text` does not start with `prefix` (a decoder that
/// rewrote earlier text), what follows their longest common prefix.
fn suffix_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    if let Some(rest) = text.strip_prefix(prefix) {
        return rest;
    }
    let common = text
        .char_indices()
        .zip(prefix.chars())
        .find(|((_, a), b)| a != b)
        .map(|((at, _), _)| at)
        .unwrap_or_else(|| text.len().min(prefix.len()));
    // `common` is a char boundary of `text`: either where a char differs or the end of the
    // shorter string, which is a shared char boundary.
    text.get(common..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::testing::tiny_tokenizer;

    fn stream(decoder: &mut IncrementalDecoder, ids: &[u32]) -> Vec<String> {
        let mut deltas = Vec::new();
        for &id in ids {
            if let Some(delta) = decoder.push(id).expect("push") {
                deltas.push(delta);
            }
        }
        let rest = decoder.flush().expect("flush");
        if !rest.is_empty() {
            deltas.push(rest);
        }
        deltas
    }

    #[test]
    fn deltas_concatenate_to_the_full_decode() {
        let tokenizer = Arc::new(tiny_tokenizer());
        for text in [
            "Hello world",
            "<|im_start|>user\nHello world 😀!<|im_end|>",
            "日本語のテキスト",
            "a😀b🎉c",
            "",
        ] {
            let ids = tokenizer.encode(text, false).expect("encode");
            for skip in [true, false] {
                let mut decoder = IncrementalDecoder::with_skip_special(tokenizer.clone(), skip);
                let deltas = stream(&mut decoder, &ids);
                let full = tokenizer.decode(&ids, skip).expect("decode");
                assert_eq!(deltas.concat(), full, "{text:?} skip={skip}");
                for delta in &deltas {
                    assert!(
                        !delta.contains(char::REPLACEMENT_CHARACTER),
                        "{text:?}: broken delta {delta:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn emoji_split_over_byte_tokens_is_held_back() {
        let tokenizer = Arc::new(tiny_tokenizer());
        let ids = tokenizer.encode("😀", false).expect("encode");
        assert_eq!(ids.len(), 4, "the tiny vocabulary has no merges for emoji");
        let mut decoder = IncrementalDecoder::new(tokenizer);
        for &id in &ids[..3] {
            assert_eq!(decoder.push(id).expect("push"), None);
        }
        assert_eq!(decoder.held_tokens(), 3);
        assert_eq!(decoder.push(ids[3]).expect("push").as_deref(), Some("😀"));
        assert_eq!(decoder.flush().expect("flush"), "");
    }

    #[test]
    fn special_tokens_are_skipped_by_default() {
        let tokenizer = Arc::new(tiny_tokenizer());
        let ids = tokenizer.encode("Hello<|im_end|>", false).expect("encode");
        let mut decoder = IncrementalDecoder::new(tokenizer.clone());
        assert_eq!(stream(&mut decoder, &ids).concat(), "Hello");
        let mut decoder = IncrementalDecoder::with_skip_special(tokenizer, false);
        assert_eq!(stream(&mut decoder, &ids).concat(), "Hello<|im_end|>");
    }

    #[test]
    fn invalid_bytes_are_flushed_as_replacement_characters() {
        let tokenizer = Arc::new(tiny_tokenizer());
        // The first three bytes of 😀 and then the end of the stream.
        let ids = tokenizer.encode("😀", false).expect("encode");
        let mut decoder = IncrementalDecoder::new(tokenizer.clone());
        let deltas = stream(&mut decoder, &ids[..3]);
        assert_eq!(
            deltas.concat(),
            tokenizer.decode(&ids[..3], true).expect("decode")
        );
        assert!(deltas.concat().contains(char::REPLACEMENT_CHARACTER));
    }

    #[test]
    fn garbage_streams_stay_bounded() {
        let tokenizer = Arc::new(tiny_tokenizer());
        // A lone lead byte, repeated: never valid UTF-8.
        let lead = tokenizer.encode("😀", false).expect("encode")[0];
        let ids = vec![lead; 100];
        let mut decoder = IncrementalDecoder::new(tokenizer.clone());
        let mut emitted = String::new();
        for &id in &ids {
            if let Some(delta) = decoder.push(id).expect("push") {
                emitted.push_str(&delta);
            }
            assert!(decoder.held_tokens() <= MAX_HELD_TOKENS);
        }
        emitted.push_str(&decoder.flush().expect("flush"));
        // Each lone lead byte is one U+FFFD, however it is cut.
        assert_eq!(emitted, tokenizer.decode(&ids, true).expect("decode"));
    }

    #[test]
    fn suffix_after_handles_rewritten_prefixes() {
        assert_eq!(suffix_after("hello world", "hello"), " world");
        assert_eq!(suffix_after("héllo", "hallo"), "éllo");
        assert_eq!(suffix_after("ab", "abc"), "");
    }
}
