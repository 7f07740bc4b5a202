//! Prompts to token ids as the reference's `encode_prompt` makes them (docs/reference.md §9.3):
//! demonstrations joined by a blank line, one sequence per candidate, the option length of each
//! from whole-string token counts, the BOS token first, and over-long prompts cut on the left
//! (demonstrations matter least) with BOS kept.
//!
//! The tokenizer is the model directory's `tokenizer.json`, or its GPT-2 style `vocab.json` and
//! `merges.txt` (OPT's Hub directories ship only those). Texts are tokenised without special
//! tokens and the BOS token is added here, so the same rule holds whatever post-processor the
//! tokenizer file carries.

use super::templates::{self, Form};
use super::{Sample, Task, TaskKind};
use crate::error::InputError;
use std::path::Path;
use tokenizers::Tokenizer;

/// Which BOS token an OPT prompt starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum OptBos {
    /// Id 0 (`<s>`): the reference sets `bos_token_id = 0` for every model whose name contains
    /// "opt", so its OPT prompts start with 0.
    #[default]
    Reference,
    /// The tokenizer's own BOS (`</s>`, id 2, for OPT), as `transformers` encodes by default and
    /// as OPT was pre-trained.
    Tokenizer,
}

/// A causal LM's tokenizer with the ids prompting needs.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    /// Prepended to every encoding, if the model family uses one.
    pub bos: Option<i64>,
    pub eos: i64,
    /// The token ending a generated answer: the last token of "\n".
    pub newline: i64,
    pub pad: i64,
}

fn read_config(dir: &Path) -> Result<serde_json::Value, InputError> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(serde_json::Value::Null);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| InputError(format!("{}: not JSON: {e}", path.display())))
}

/// A token named in `tokenizer_config.json` (a string or an `AddedToken` object).
fn configured_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match &config[key] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

/// `tokenizer.json`, or a byte-level BPE from `vocab.json` + `merges.txt`.
fn load_tokenizer(dir: &Path) -> Result<Tokenizer, InputError> {
    let file = dir.join("tokenizer.json");
    if file.is_file() {
        return super::super::template::load_tokenizer(&file);
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if !vocab.is_file() || !merges.is_file() {
        return Err(InputError(format!(
            "{}: no tokenizer: expected tokenizer.json, or vocab.json and merges.txt",
            dir.display()
        )));
    }
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| InputError(format!("{}: cannot build the BPE: {e}", dir.display())))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<tokenizers::AddedToken> = ["<s>", "</s>", "<pad>", "<unk>"]
        .iter()
        .filter(|t| tokenizer.token_to_id(t).is_some())
        .map(|t| tokenizers::AddedToken::from(t.to_string(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| InputError(format!("{}: cannot add the special tokens: {e}", dir.display())))?;
    Ok(tokenizer)
}

impl PromptTokenizer {
    /// The tokenizer of the model directory `dir` of family `model_type`.
    pub fn load(dir: &Path, model_type: &str, opt_bos: OptBos) -> Result<PromptTokenizer, InputError> {
        let tokenizer = load_tokenizer(dir)?;
        let config = read_config(dir)?;
        let id = |token: &str| tokenizer.token_to_id(token).map(i64::from);
        let named = |key: &str, fallback: &[&str]| -> Option<i64> {
            configured_token(&config, key)
                .and_then(|t| id(&t))
                .or_else(|| fallback.iter().find_map(|t| id(t)))
        };
        let adds_bos =
            config["add_bos_token"].as_bool().unwrap_or(matches!(model_type, "opt" | "llama" | "mistral"));
        let bos = match (model_type, opt_bos) {
            ("opt", OptBos::Reference) => Some(0),
            _ => named("bos_token", &["<s>", "</s>", "<|endoftext|>"]),
        };
        let bos = if adds_bos { bos } else { None };
        if adds_bos && bos.is_none() {
            return Err(InputError(format!(
                "{}: the tokenizer adds a BOS token but has none",
                dir.display()
            )));
        }
        let eos = named("eos_token", &["</s>", "<|endoftext|>", "<|im_end|>"])
            .ok_or_else(|| InputError(format!("{}: the tokenizer has no EOS token", dir.display())))?;
        let pad = named("pad_token", &["<pad>"]).unwrap_or(eos);
        let newline = tokenizer
            .encode("\n", false)
            .map_err(|e| InputError(format!("{}: cannot encode a newline: {e}", dir.display())))?
            .get_ids()
            .last()
            .map(|&t| i64::from(t))
            .ok_or_else(|| InputError(format!("{}: a newline encodes to no token", dir.display())))?;
        Ok(PromptTokenizer { tokenizer, bos, eos, newline, pad })
    }

    /// `tokenizer.encode(text)`: BOS, then the text's tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, InputError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| InputError(format!("cannot tokenise {text:?}: {e}")))?;
        Ok(self.bos.into_iter().chain(encoding.get_ids().iter().map(|&t| i64::from(t))).collect())
    }

    /// A generated answer as the reference reads it: decoded without special tokens, with
    /// `transformers`' clean-up of spaces before punctuation and contractions, stripped.
    pub fn decode_answer(&self, ids: &[i64]) -> Result<String, InputError> {
        let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
        let text = self
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| InputError(format!("cannot decode {ids:?}: {e}")))?;
        Ok(clean_up_tokenization(&text).trim_matches(is_python_space).to_string())
    }
}

/// `transformers`' `clean_up_tokenization`.
pub fn clean_up_tokenization(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

/// Python's `str.isspace`: Unicode white space and the four ASCII separators.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// How a prompt is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptConfig {
    /// Tokens a prompt may have (2048).
    pub max_length: usize,
    /// Tokens generated at most (50): generation prompts are cut to leave room for them.
    pub max_new_tokens: usize,
}

/// What to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The prompts scored or generated from.
    Plain,
    /// `--sfc`: calibration prompts without demonstrations.
    Sfc,
    /// `--icl-sfc`: calibration prompts after the demonstrations.
    IclSfc,
    /// A training example: a generation task's prompt with its gold answer (its newline
    /// included), cut to leave room for generation as the prompts are.
    WithGold,
}

/// One encoded sample: a sequence per candidate (one for generation) and the number of final
/// tokens of each that are the answer (0 for a generation prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub sequences: Vec<Vec<i64>>,
    pub option_lens: Vec<usize>,
}

/// The reference's `encode_prompt`.
pub fn encode_prompt(
    task: Task,
    tokenizer: &PromptTokenizer,
    demos: &[&Sample],
    sample: &Sample,
    mode: Mode,
    config: PromptConfig,
) -> Result<Encoded, InputError> {
    let generation = task.kind() == TaskKind::Generation;
    let demonstrations = demos
        .iter()
        .map(|d| {
            let correct = d.correct_index().map(|i| &d.candidates[i]);
            Ok(templates::verbalize(task, d, correct, Form::Plain)?.trim_matches(is_python_space).to_string())
        })
        .collect::<Result<Vec<_>, InputError>>()?
        .join("\n\n");
    let demonstrations = demonstrations.trim_matches(is_python_space);
    let form = if matches!(mode, Mode::Sfc | Mode::IclSfc) { Form::Calibration } else { Form::Plain };
    let with_demos = |prompt: &str| {
        format!("{demonstrations}\n\n{prompt}")
            .trim_start_matches(is_python_space)
            .trim_matches(' ')
            .to_string()
    };
    let unverbalized = templates::encode(task, sample, form)?.trim_matches(' ').to_string();
    let (prompts, option_lens) = if !generation {
        let verbalized = sample
            .candidates
            .iter()
            .map(|c| Ok(templates::verbalize(task, sample, Some(c), form)?.trim_matches(' ').to_string()))
            .collect::<Result<Vec<_>, InputError>>()?;
        let base = tokenizer.encode(&unverbalized)?.len();
        let option_lens = verbalized
            .iter()
            .map(|v| Ok(tokenizer.encode(v)?.len().saturating_sub(base)))
            .collect::<Result<Vec<_>, InputError>>()?;
        let prompts =
            if mode == Mode::Sfc { verbalized } else { verbalized.iter().map(|v| with_demos(v)).collect() };
        (prompts, option_lens)
    } else {
        if form == Form::Calibration {
            return Err(templates::encode(task, sample, form).unwrap_err());
        }
        if mode == Mode::WithGold {
            // Unstripped: the answer's final newline is part of the target.
            let verbalized = templates::verbalize(task, sample, None, form)?;
            let option_len =
                tokenizer.encode(&verbalized)?.len().saturating_sub(tokenizer.encode(&unverbalized)?.len());
            (vec![with_demos(&verbalized)], vec![option_len])
        } else {
            (vec![with_demos(&unverbalized)], vec![0])
        }
    };
    // Training examples too: the reference passes `max_new_tokens` when it converts them.
    let limit =
        if generation { config.max_length.saturating_sub(config.max_new_tokens) } else { config.max_length };
    let sequences = prompts
        .iter()
        .map(|p| Ok(truncate_left(tokenizer.encode(p)?, limit, tokenizer.bos.is_some())))
        .collect::<Result<Vec<_>, InputError>>()?;
    if sequences.iter().zip(&prompts).any(|(s, _)| s.len() == limit) {
        log::debug!(
            "a prompt of sample {} reached {limit} tokens and may have been cut on the left",
            sample.id
        );
    }
    Ok(Encoded { sequences, option_lens })
}

/// The last `limit` tokens, BOS kept in front when the tokenizer adds one.
fn truncate_left(mut ids: Vec<i64>, limit: usize, keeps_bos: bool) -> Vec<i64> {
    if ids.len() <= limit {
        return ids;
    }
    if keeps_bos && limit >= 1 {
        let cut = ids.len() - (limit - 1);
        ids.drain(1..cut);
        ids
    } else {
        ids.split_off(ids.len() - limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_bos_and_the_tail() {
        assert_eq!(truncate_left(vec![0, 5, 6, 7, 8], 3, true), [0, 7, 8]);
        assert_eq!(truncate_left(vec![5, 6, 7, 8], 3, false), [6, 7, 8]);
        assert_eq!(truncate_left(vec![0, 5], 3, true), [0, 5]);
    }

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(clean_up_tokenization("It is n't , he 's here ."), "It isn't, he's here.");
        assert_eq!(clean_up_tokenization("a ' b"), "a'b");
    }
}
