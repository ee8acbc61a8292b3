//! Text to token ids and back: the model directory's tokenizer.json through the `tokenizers`
//! crate, or, when there is none, raw UTF-8 bytes as ids (a byte-level model).

use crate::{Error, Result};
use std::path::Path;

/// The file name of a Hugging Face tokenizer in a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

pub enum Tokenizer {
    /// A Hugging Face tokenizer.json.
    HuggingFace(Box<tokenizers::Tokenizer>),
    /// Each byte of the UTF-8 text is one id (needs vocab_size >= 256).
    Bytes,
}

impl Tokenizer {
    /// `dir/tokenizer.json` if it exists, otherwise the byte-level fallback.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.exists() {
            return Ok(Tokenizer::Bytes);
        }
        tokenizers::Tokenizer::from_file(&path)
            .map(|t| Tokenizer::HuggingFace(Box::new(t)))
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", path.display())))
    }

    pub fn is_bytes(&self) -> bool {
        matches!(self, Tokenizer::Bytes)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::HuggingFace(t) => t
                .encode(text, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::Tokenizer(e.to_string())),
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
        }
    }

    /// A decoder that turns ids, one at a time, into the text they add.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tokenizer: self,
            ids: Vec::new(),
            printed: 0,
        }
    }
}

/// Incremental decoding: each step decodes every id so far and returns the text not yet
/// returned, holding back an incomplete UTF-8 sequence until it completes.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream<'_> {
    pub fn step(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = match self.tokenizer {
            Tokenizer::HuggingFace(t) => t
                .decode(&self.ids, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?,
            Tokenizer::Bytes => {
                let bytes: Vec<u8> = self.ids.iter().map(|&i| i.min(255) as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        // A trailing replacement character may be half a character: wait for the rest.
        let complete = text.trim_end_matches('\u{FFFD}');
        if complete.len() <= self.printed || !complete.is_char_boundary(self.printed) {
            return Ok(String::new());
        }
        let new = complete[self.printed..].to_string();
        self.printed = complete.len();
        Ok(new)
    }
}
