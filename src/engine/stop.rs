//! Stop strings on streamed text.
//!
//! A stop string may arrive split over several tokens ("<|" + "end" + "|>"), so text that
//! could be the start of one is held back until it either completes the stop string (the
//! generation ends; the stop string and anything after it are never emitted) or turns out
//! not to (it is released). Everything else is emitted as soon as it arrives.

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
    /// Text received but not emitted yet: a suffix that could start a stop string.
    held: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
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
        self.held.push_str(delta);
        // The earliest complete stop string ends the generation.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min()
        {
            let before = self.held[..at].to_owned();
            self.held.clear();
            return StopOutcome::Stop(before);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
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
