//! The Penn Treebank corpus: a word vocabulary and token streams cut into training batches.

use std::collections::HashMap;
use std::path::Path;

/// End-of-sentence token appended to every line, as in the usual PTB language-model setup.
pub const EOS: &str = "<eos>";

/// The three splits as token ids over one vocabulary built from the training split.
pub struct Corpus {
    pub words: Vec<String>,
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
    pub test: Vec<u32>,
}

impl Corpus {
    /// Reads `train.txt`, `valid.txt` and `test.txt` from `folder`.
    ///
    /// The vocabulary is every word of the training split (10000 with `<eos>` for PTB, whose
    /// rare words are already replaced by `<unk>`), numbered in order of first appearance. A
    /// word of valid or test that the training split lacks is an error, since PTB has none.
    pub fn load(folder: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            let path = folder.join(name);
            std::fs::read_to_string(&path).map_err(|error| {
                format!(
                    "failed to read {}: {error}; run scripts/fetch-ptb.sh first",
                    path.display()
                )
            })
        };
        let (train_text, valid_text, test_text) =
            (read("train.txt")?, read("valid.txt")?, read("test.txt")?);

        let mut ids = HashMap::new();
        let mut words = Vec::new();
        for word in tokens(&train_text) {
            ids.entry(word).or_insert_with(|| {
                words.push(word.to_string());
                (words.len() - 1) as u32
            });
        }
        let encode = |split: &str, text: &str| -> Result<Vec<u32>, String> {
            tokens(text)
                .map(|word| {
                    ids.get(word).copied().ok_or_else(|| {
                        format!("{split}.txt contains `{word}`, which train.txt lacks")
                    })
                })
                .collect()
        };
        Ok(Self {
            train: encode("train", &train_text)?,
            valid: encode("valid", &valid_text)?,
            test: encode("test", &test_text)?,
            words,
        })
    }
}

/// The words of each line followed by [`EOS`].
fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .flat_map(|line| line.split_whitespace().chain(std::iter::once(EOS)))
}

/// A token stream cut into `batch_size` parallel streams, read `bptt` steps at a time
/// (truncated backpropagation through time): step `k` of stream `b` is token
/// `b * stream_len + k`, so the hidden state carries from one window to the next.
pub struct Batches {
    streams: Vec<u32>,
    batch_size: usize,
    stream_len: usize,
    bptt: usize,
}

impl Batches {
    pub fn new(tokens: &[u32], batch_size: usize, bptt: usize) -> Self {
        let stream_len = tokens.len() / batch_size;
        Self {
            streams: tokens[..stream_len * batch_size].to_vec(),
            batch_size,
            stream_len,
            bptt,
        }
    }

    /// Number of windows; the last one may be shorter than `bptt`.
    pub fn len(&self) -> usize {
        (self.stream_len - 1).div_ceil(self.bptt)
    }

    /// Window `index` as (inputs, targets), each `batch_size x steps` in row-major order.
    pub fn window(&self, index: usize) -> (Vec<u32>, Vec<u32>, usize) {
        let start = index * self.bptt;
        let steps = self.bptt.min(self.stream_len - 1 - start);
        let mut inputs = Vec::with_capacity(self.batch_size * steps);
        let mut targets = Vec::with_capacity(self.batch_size * steps);
        for stream in self.streams.chunks_exact(self.stream_len) {
            inputs.extend_from_slice(&stream[start..start + steps]);
            targets.extend_from_slice(&stream[start + 1..start + 1 + steps]);
        }
        (inputs, targets, steps)
    }
}
