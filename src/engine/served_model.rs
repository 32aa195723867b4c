//! What the async side knows about the loaded model: its identity, and turning requests
//! into token ids and token ids into text. No MLX inside; shared, read-only.
//!
//! Preparing a prompt is the one expensive thing a request does before the engine sees it
//! (rendering the chat template, tokenizing), so it comes in two parts: a cheap size check
//! that refuses a prompt that cannot fit the context from its byte count and message count
//! alone, and the preparation itself (run off the async threads, with bounded
//! concurrency, by the API).

use std::sync::Arc;

use crate::model::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
use crate::model::identity::ModelIdentity;
use crate::model::tokenizer::{Tokenizer, TokenizerError};

/// Why a prompt could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// More messages than the context has tokens (every message takes at least one).
    #[error(
        "the conversation has {messages} messages, but this model's context holds {context} \
         tokens and every message takes at least one"
    )]
    TooManyMessages { messages: usize, context: usize },
    /// More text than the context can hold, whatever the tokenization.
    #[error(
        "the prompt has {bytes} bytes of text, at least {min_tokens} tokens, but this model's \
         context holds {context} tokens"
    )]
    TooLong {
        bytes: usize,
        min_tokens: usize,
        context: usize,
    },
    /// The chat template refused or could not render the messages.
    #[error(transparent)]
    Template(#[from] ChatTemplateError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The served model, for the HTTP side.
#[derive(Debug)]
pub struct ServedModel {
    pub identity: ModelIdentity,
    tokenizer: Arc<Tokenizer>,
    chat_template: Arc<ChatTemplate>,
    /// Ids the model accepts (its embedding rows; may exceed the tokenizer's).
    vocab_size: usize,
    /// See [`Tokenizer::max_text_bytes_per_token`]; `None` turns the byte check off.
    max_bytes_per_token: Option<usize>,
}

impl ServedModel {
    pub fn new(
        identity: ModelIdentity,
        tokenizer: Arc<Tokenizer>,
        chat_template: Arc<ChatTemplate>,
        vocab_size: usize,
    ) -> ServedModel {
        let max_bytes_per_token = tokenizer.max_text_bytes_per_token();
        ServedModel {
            identity,
            tokenizer,
            chat_template,
            vocab_size,
            max_bytes_per_token,
        }
    }

    /// Token ids the model accepts are below this.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Refuses, without rendering or tokenizing, a conversation that cannot fit the
    /// context: more messages than context tokens, or more text than the longest tokens
    /// could pack into it.
    pub fn check_chat_size(&self, messages: &[ChatMessage]) -> Result<(), PromptError> {
        let context = self.identity.context_length;
        if messages.len() >= context {
            return Err(PromptError::TooManyMessages {
                messages: messages.len(),
                context,
            });
        }
        self.check_bytes(messages.iter().map(|m| m.content.len()).sum())
    }

    /// Refuses, without tokenizing, a text that cannot fit the context.
    pub fn check_text_size(&self, text: &str) -> Result<(), PromptError> {
        self.check_bytes(text.len())
    }

    fn check_bytes(&self, bytes: usize) -> Result<(), PromptError> {
        let Some(per_token) = self.max_bytes_per_token else {
            return Ok(());
        };
        let context = self.identity.context_length;
        let min_tokens = bytes.div_ceil(per_token);
        // The prompt plus one generated token must fit.
        if min_tokens >= context {
            return Err(PromptError::TooLong {
                bytes,
                min_tokens,
                context,
            });
        }
        Ok(())
    }

    /// Renders `messages` with the model's chat template (adding the assistant's turn) and
    /// tokenizes the result. Expensive: call it off the async threads, after
    /// [`ServedModel::check_chat_size`].
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, PromptError> {
        let text = self.chat_template.render(messages, true, None)?;
        self.check_bytes(text.len())?;
        // The template writes its own BOS.
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// Tokenizes a completion prompt with the model's BOS rule. Expensive: call it off the
    /// async threads, after [`ServedModel::check_text_size`].
    pub fn text_prompt(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        Ok(self.tokenizer.encode(text, true)?)
    }

    /// A token's text on its own (special tokens spelled out), for log-probabilities.
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::testing::tiny_tokenizer;

    fn served(context: usize) -> ServedModel {
        let tokenizer = Arc::new(tiny_tokenizer());
        let template = Arc::new(ChatTemplate::for_tokenizer(&tokenizer).unwrap());
        let vocab = tokenizer.vocab_size();
        let identity = ModelIdentity {
            served_name: "tiny".into(),
            aliases: Vec::new(),
            context_length: context,
            fingerprint: "sha256:00".into(),
        };
        ServedModel::new(identity, tokenizer, template, vocab)
    }

    #[test]
    fn size_checks_refuse_only_what_cannot_fit() {
        let model = served(64);
        let per_token = model.max_bytes_per_token.expect("byte-level tokenizer");
        // Any text that the check lets through may still be too long; none it refuses fits.
        let fits = "a".repeat(63 * per_token);
        assert!(model.check_text_size(&fits).is_ok());
        let over = "a".repeat(63 * per_token + 1);
        assert!(matches!(
            model.check_text_size(&over),
            Err(PromptError::TooLong { context: 64, .. })
        ));
        let tokens = model.text_prompt(&over).unwrap();
        assert!(tokens.len() >= 64, "{} tokens", tokens.len());
        let many = vec![ChatMessage::new("user", ""); 64];
        assert!(matches!(
            model.check_chat_size(&many),
            Err(PromptError::TooManyMessages {
                messages: 64,
                context: 64
            })
        ));
        assert!(model.check_chat_size(&many[..3]).is_ok());
        let prompt = model.chat_prompt(&many[..3]).unwrap();
        assert!(!prompt.is_empty());
        assert_eq!(model.token_text(prompt[0]), "<|im_start|>");
    }
}
