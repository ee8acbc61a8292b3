//! Passkey retrieval examples (Mohtashami & Jaggi 2023), character by character: filler text
//! (five sentences repeated and cut to length) with the needle
//! `The pass key is 71432. Remember it. 71432 is the pass key. ` put at a sentence boundary at a
//! relative depth, ending with the question `What is the pass key? The pass key is 71432`. Only
//! the five answer digits carry labels: the label at a position is the next token, so the labels
//! sit on the five positions before the digits (the space after `is`, then the first four
//! digits), and their values are the digits.
//!
//! The vocabulary is [`ALPHABET`]: token id = the character's index there (68 tokens: space,
//! `.,?!'`, digits, upper- and lower-case letters), so no tokenizer is needed.
//!
//! Its tests are in tests/needle.rs, which compiles this file on its own.

use crate::mqar::data::{Example, IGNORE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt;

/// The characters of the vocabulary; a token's id is its index here.
pub const ALPHABET: &str = " .,?!'0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The filler sentences, repeated in this order.
pub const FILLER: [&str; 5] = [
    "The grass is green. ",
    "The sky is blue. ",
    "The sun is yellow. ",
    "Here we go. ",
    "There and back again. ",
];

/// Digits of a pass key.
pub const KEY_DIGITS: usize = 5;

/// The needle for `key` (five digits).
pub fn needle(key: &str) -> String {
    format!("The pass key is {key}. Remember it. {key} is the pass key. ")
}

/// The question the example ends with, the answer `key` included.
pub fn question(key: &str) -> String {
    format!("What is the pass key? The pass key is {key}")
}

/// The shortest example: the needle and the question with no filler.
pub fn min_len() -> usize {
    let key = "0".repeat(KEY_DIGITS);
    needle(&key).len() + question(&key).len()
}

/// The longest filler sentence: the needle is within this of its requested place.
pub fn max_sentence() -> usize {
    FILLER.iter().map(|s| s.len()).max().unwrap_or(0)
}

/// Vocabulary size.
pub fn vocab() -> usize {
    ALPHABET.len()
}

/// The token ids of `text` (every character must be in [`ALPHABET`]).
pub fn encode(text: &str) -> Vec<u32> {
    text.chars()
        .map(|c| match ALPHABET.find(c) {
            Some(i) => i as u32,
            None => panic!("{c:?} is not in the needle alphabet"),
        })
        .collect()
}

/// The text of token ids (`#` for an id outside the vocabulary).
#[allow(dead_code)] // tests/needle.rs reads examples with it
pub fn decode(ids: &[u32]) -> String {
    ids.iter()
        .map(|&i| {
            ALPHABET
                .as_bytes()
                .get(i as usize)
                .map_or('#', |&b| b as char)
        })
        .collect()
}

/// Where the needles go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Depth {
    /// Each example draws its depth uniformly from [0, 1].
    Uniform,
    /// Every example at this depth.
    At(f64),
}

/// Why an example cannot be built.
#[derive(Debug, Clone, PartialEq)]
pub enum NeedleError {
    TooShort { len: usize, min: usize },
    Depth(f64),
}

impl fmt::Display for NeedleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NeedleError::TooShort { len, min } => write!(
                f,
                "length {len} is too short: the needle and the question alone take {min} tokens"
            ),
            NeedleError::Depth(d) => write!(f, "a depth must be in [0, 1], got {d}"),
        }
    }
}

impl std::error::Error for NeedleError {}

/// One example and how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Haystack {
    pub example: Example,
    /// The five digits.
    pub key: String,
    /// The requested relative depth.
    pub depth: f64,
    /// The position of the needle's first character.
    pub needle_at: usize,
    /// Characters of filler (before and after the needle together).
    pub filler_len: usize,
}

/// The example of `len` tokens with pass key `key` (0..100000, written with five digits) at the
/// sentence boundary of the filler nearest to `depth` * filler length (the lower one on a tie).
pub fn haystack(len: usize, depth: f64, key: u32) -> Result<Haystack, NeedleError> {
    let min = min_len();
    if len < min {
        return Err(NeedleError::TooShort { len, min });
    }
    if !(0.0..=1.0).contains(&depth) {
        return Err(NeedleError::Depth(depth));
    }
    let key = format!(
        "{:0width$}",
        key % 10u32.pow(KEY_DIGITS as u32),
        width = KEY_DIGITS
    );
    let filler_len = len - min;
    let mut filler = String::with_capacity(filler_len + max_sentence());
    // Sentence boundaries: the start, the end of every whole sentence, and the end.
    let mut bounds = vec![0];
    for s in FILLER.iter().cycle() {
        if filler.len() >= filler_len {
            break;
        }
        filler.push_str(s);
        if filler.len() <= filler_len {
            bounds.push(filler.len());
        }
    }
    filler.truncate(filler_len);
    if bounds.last() != Some(&filler_len) {
        bounds.push(filler_len);
    }
    let target = depth * filler_len as f64;
    let mut at = 0;
    for &b in &bounds {
        if (b as f64 - target).abs() < (at as f64 - target).abs() {
            at = b;
        }
    }
    let text = format!(
        "{}{}{}{}",
        &filler[..at],
        needle(&key),
        &filler[at..],
        question(&key)
    );
    let inputs = encode(&text);
    debug_assert_eq!(inputs.len(), len);
    let mut labels = vec![IGNORE; len];
    for p in len - KEY_DIGITS..len {
        labels[p - 1] = i64::from(inputs[p]);
    }
    Ok(Haystack {
        example: Example { inputs, labels },
        key,
        depth,
        needle_at: at,
        filler_len,
    })
}

/// `count` examples of `len` tokens from `seed` (the same seed gives the same examples): random
/// five-digit keys (10000..=99999), depths as `depth` says.
pub fn generate(
    len: usize,
    depth: Depth,
    count: usize,
    seed: u64,
) -> Result<Vec<Haystack>, NeedleError> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let key = rng.random_range(10_000..100_000);
            let d = match depth {
                Depth::Uniform => rng.random::<f64>(),
                Depth::At(d) => d,
            };
            haystack(len, d, key)
        })
        .collect()
}
