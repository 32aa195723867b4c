//! Stop strings on streamed text.
//!
//! A stop string may arrive split over several tokens ("<|" + "end" + "|>"), so text that
//! could be the start of one is held back until it either completes the stop string (the
//! generation ends; the stop string and anything after it are never emitted) or turns out
//! not to (it is released). Everything else is emitted as soon as it arrives.
//!
//! **Cost.** This runs on the engine thread for every token, so the work per token is
//! bounded by the stop strings' length, not the text's: a new match must end in the new
//! text, and only a suffix shorter than the longest stop string can be held back. Requests
//! are limited to [`MAX_STOP_STRINGS`] strings of at most [`MAX_STOP_BYTES`] bytes,
//! [`MAX_STOP_TOTAL_BYTES`] in all ([`check`]).

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string, in UTF-8 bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most bytes of all of a request's stop strings together.
pub const MAX_STOP_TOTAL_BYTES: usize = 512;

/// Stop strings over the limits; the message says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    #[error("at most {MAX_STOP_STRINGS} stop sequences are allowed, got {0}")]
    TooMany(usize),
    #[error("stop sequences must not be empty")]
    Empty,
    #[error("a stop sequence may have at most {MAX_STOP_BYTES} bytes, one has {0}")]
    TooLong(usize),
    #[error("stop sequences may have at most {MAX_STOP_TOTAL_BYTES} bytes in all, these have {0}")]
    TooLongInAll(usize),
}

/// Checks a request's stop strings against the limits.
pub fn check(stops: &[String]) -> Result<(), StopError> {
    if stops.len() > MAX_STOP_STRINGS {
        return Err(StopError::TooMany(stops.len()));
    }
    if stops.iter().any(String::is_empty) {
        return Err(StopError::Empty);
    }
    if let Some(long) = stops.iter().map(String::len).find(|&n| n > MAX_STOP_BYTES) {
        return Err(StopError::TooLong(long));
    }
    let total: usize = stops.iter().map(String::len).sum();
    if total > MAX_STOP_TOTAL_BYTES {
        return Err(StopError::TooLongInAll(total));
    }
    Ok(())
}

/// What to do after a piece of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Emit this text (possibly empty: everything new is held back) and go on.
    Continue(String),
    /// A stop string completed: emit this text (what preceded the stop string) and end the
    /// generation with finish reason `stop`.
    Stop(String),
}

/// Matches a request's stop strings against its streamed text.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Bytes of the longest stop string.
    longest: usize,
    /// Text received but not emitted yet: a suffix that could start a stop string (so
    /// shorter than `longest`).
    held: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher {
            longest: stops.iter().map(String::len).max().unwrap_or(0),
            stops,
            held: String::new(),
        }
    }

    /// Bytes currently held back.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Feeds the next piece of text.
    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(delta.to_owned());
        }
        let old = self.held.len();
        self.held.push_str(delta);
        // The earliest complete stop string ends the generation. The held text had none,
        // so a match ends in `delta` and starts at most `longest - 1` bytes before it.
        let from = char_floor(&self.held, old.saturating_sub(self.longest - 1));
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|stop| self.held[from..].find(stop.as_str()))
            .min()
        {
            let before = self.held[..from + at].to_owned();
            self.held.clear();
            return StopOutcome::Stop(before);
        }
        // Keep the longest suffix that is a prefix of some stop string (shorter than the
        // longest one).
        let shortest_start = char_floor(
            &self.held,
            self.held.len() - (self.longest - 1).min(self.held.len()),
        );
        let keep_from = self.held[shortest_start..]
            .char_indices()
            .map(|(i, _)| shortest_start + i)
            .find(|&i| {
                let suffix = &self.held[i..];
                self.stops.iter().any(|stop| stop.starts_with(suffix))
            })
            .unwrap_or(self.held.len());
        let emit = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        StopOutcome::Continue(emit)
    }

    /// The generation ended for another reason: release whatever is held.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The largest char boundary of `text` at or before `at`.
fn char_floor(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`; returns the emitted text and whether a stop string ended it.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for piece in pieces {
            match matcher.push(piece) {
                StopOutcome::Continue(text) => out.push_str(&text),
                StopOutcome::Stop(text) => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&matcher.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_tokens_is_caught_and_not_emitted() {
        assert_eq!(
            run(&["<|end|>"], &["Hello", " <|", "en", "d|>", " more"]),
            ("Hello ".to_owned(), true)
        );
        // Text after the stop string in the same piece is dropped too.
        assert_eq!(run(&["STOP"], &["abcSTOPdef"]), ("abc".to_owned(), true));
        // A stop string at the very start.
        assert_eq!(run(&["\n\n"], &["\n", "\nx"]), (String::new(), true));
    }

    #[test]
    fn held_text_is_released_when_it_is_not_a_stop() {
        let mut matcher = StopMatcher::new(["<|end|>".to_owned()]);
        assert_eq!(
            matcher.push("a <|e"),
            StopOutcome::Continue("a ".to_owned())
        );
        assert_eq!(matcher.held_len(), 3);
        assert_eq!(
            matcher.push("xtra"),
            StopOutcome::Continue("<|extra".to_owned())
        );
        assert_eq!(matcher.held_len(), 0);
        assert_eq!(run(&["<|end|>"], &["a <|e"]), ("a <|e".to_owned(), false));
    }

    #[test]
    fn limits_are_checked() {
        let long = "x".repeat(MAX_STOP_BYTES + 1);
        assert_eq!(check(&[long]), Err(StopError::TooLong(MAX_STOP_BYTES + 1)));
        let full = vec!["y".repeat(MAX_STOP_BYTES); 3];
        assert_eq!(
            check(&full),
            Err(StopError::TooLongInAll(3 * MAX_STOP_BYTES))
        );
        assert_eq!(check(&vec!["a".to_owned(); 5]), Err(StopError::TooMany(5)));
        assert_eq!(check(&[String::new()]), Err(StopError::Empty));
        assert!(check(&vec!["z".repeat(MAX_STOP_BYTES); 2]).is_ok());
    }

    /// The windowed search finds exactly what a search of all the text finds, whatever
    /// the split into pieces.
    #[test]
    fn windowed_matching_equals_a_whole_text_search() {
        let text = "aab aaab ab bab ba é éé ab";
        let stops = ["aaab", "b b", "é é", "ab "];
        for stop in stops {
            for piece in 1..5 {
                let chars: Vec<char> = text.chars().collect();
                let pieces: Vec<String> = chars.chunks(piece).map(|c| c.iter().collect()).collect();
                let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
                let cut = text.find(stop).unwrap();
                assert_eq!(
                    run(&[stop], &pieces),
                    (text[..cut].to_owned(), true),
                    "{stop:?} in pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_safe() {
        assert_eq!(
            run(&["world", "lo w"], &["hel", "lo wor", "ld"]),
            ("hel".to_owned(), true)
        );
        // Multi-byte characters around and inside stop strings.
        assert_eq!(
            run(&["🤖!"], &["héllo ", "🤖", "?", " 🤖", "!"]),
            ("héllo 🤖? ".to_owned(), true)
        );
        assert_eq!(run(&[], &["no ", "stops"]), ("no stops".to_owned(), false));
        assert_eq!(
            run(&[""], &["empty ", "ignored"]),
            ("empty ignored".to_owned(), false)
        );
    }
}
