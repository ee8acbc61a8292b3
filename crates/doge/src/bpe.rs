//! A byte-level BPE tokenizer trained from text files (the `tokenizers` crate's trainer), for a
//! corpus that comes without a tokenizer.json.

use crate::{Error, Result};
use std::path::PathBuf;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// The special token added to a trained vocabulary (id 0).
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Trains a byte-level BPE of `vocab_size` tokens (256 byte symbols, the end-of-text token, and
/// merges) on `files`.
pub fn train_bpe(files: &[PathBuf], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    let alphabet = ByteLevel::alphabet();
    if vocab_size < alphabet.len() + 1 {
        return Err(Error::Tokenizer(format!(
            "a byte-level BPE needs vocab_size >= {}, got {vocab_size}",
            alphabet.len() + 1
        )));
    }
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(alphabet.into_iter().collect())
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .build()
        .into();
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default()));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    tokenizer
        .train_from_files(&mut trainer, files)
        .map_err(|e| Error::Tokenizer(format!("training a BPE: {e}")))?;
    Ok(tokenizer)
}
