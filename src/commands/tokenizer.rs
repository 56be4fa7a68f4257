//! `generate --tokenizer`: Hugging Face `tokenizer.json` files through the `tokenizers` crate.

use super::Failure;
use std::path::{Path, PathBuf};

/// A loaded tokenizer and the file it came from (for messages).
pub struct Tok {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tok {
    /// Loads `path`; a file that cannot be read or parsed is a user error naming it.
    pub fn open(path: &Path) -> Result<Tok, Failure> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            Failure::user(format!(
                "tokenizer {}: cannot be read as a tokenizer.json: {e}",
                path.display()
            ))
        })?;
        Ok(Tok {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u64>, Failure> {
        let enc = self.inner.encode(text, false).map_err(|e| {
            Failure::user(format!(
                "tokenizer {}: cannot encode the prompt: {e}",
                self.path.display()
            ))
        })?;
        Ok(enc.get_ids().iter().map(|&i| u64::from(i)).collect())
    }

    /// The text of `ids` (special tokens skipped); an id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u64]) -> Result<String, Failure> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        self.inner.decode(&ids, true).map_err(|e| {
            Failure::user(format!(
                "tokenizer {}: cannot decode the generated tokens: {e}",
                self.path.display()
            ))
        })
    }
}
