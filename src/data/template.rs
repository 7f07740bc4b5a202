//! Prompt encoding: LM-BFF's template language (docs/reference.md §3) on a Hugging Face `tokenizers`
//! tokenizer, and the plain `finetune` encoding (§3.6).
//!
//! A template such as `*cls**sent_0*_It_was*mask*.*sep+*` is split on `*` into parts, each
//! producing tokens: special tokens, label words, sentences (optionally with a leading space,
//! first letter lower- or upper-cased, last character dropped, cut to a per-sentence limit), and
//! literal text (`_` stands for a space; a one-character literal is looked up in the vocabulary
//! directly). The result is truncated to the maximum length (keeping the head or the tail) and
//! must still contain the mask.

use crate::error::InputError;
use tokenizers::Tokenizer;

/// Ids of the special tokens, found by RoBERTa (`<s>`) or BERT (`[CLS]`) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub cls: i64,
    pub sep: i64,
    pub mask: i64,
    pub pad: i64,
    pub unk: i64,
    pub bos: i64,
    pub eos: i64,
}

impl SpecialTokens {
    pub fn of(tokenizer: &Tokenizer) -> Result<SpecialTokens, InputError> {
        let find =
            |names: &[&str]| -> Result<i64, InputError> {
                names.iter().find_map(|n| tokenizer.token_to_id(n)).map(i64::from).ok_or_else(|| {
                    InputError(format!("the tokenizer has none of the special tokens {names:?}"))
                })
            };
        let cls = find(&["<s>", "[CLS]"])?;
        let sep = find(&["</s>", "[SEP]"])?;
        Ok(SpecialTokens {
            cls,
            sep,
            mask: find(&["<mask>", "[MASK]"])?,
            pad: find(&["<pad>", "[PAD]"])?,
            unk: find(&["<unk>", "[UNK]"])?,
            bos: find(&["<s>", "[CLS]"]).unwrap_or(cls),
            eos: find(&["</s>", "[SEP]"]).unwrap_or(sep),
        })
    }
}

/// Loads `tokenizer.json`.
pub fn load_tokenizer(path: &std::path::Path) -> Result<Tokenizer, InputError> {
    Tokenizer::from_file(path)
        .map_err(|e| InputError(format!("{}: cannot load tokenizer: {e}", path.display())))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Keep,
    LowerFirst,
    UpperFirst,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Cls,
    Mask,
    Sep,
    /// `sep+`: a separator that starts the next segment.
    SepPlus,
    Bos,
    Eos,
    Label(usize),
    /// `labelx_i`: the label word of the i-th demonstration's label (GPT-3 in-context mode).
    LabelX(usize),
    Sentence {
        index: usize,
        space: bool,
        case: Case,
        drop_last: bool,
    },
    /// Literal text, `_` already replaced by spaces.
    Literal(String),
}

/// (prefix, leading space, case, drop last character) of each sentence part, as the reference
/// matches them.
const SENTENCE_PARTS: &[(&str, bool, Case, bool)] = &[
    ("sent_", false, Case::Keep, false),
    ("+sent_", true, Case::Keep, false),
    ("sent-_", false, Case::Keep, true),
    ("sentl_", false, Case::LowerFirst, false),
    ("+sentl_", true, Case::LowerFirst, false),
    ("sentl-_", false, Case::LowerFirst, true),
    ("sentu_", false, Case::UpperFirst, false),
    ("+sentu_", true, Case::UpperFirst, false),
    ("+sentu-_", true, Case::UpperFirst, true),
];

fn parse(template: &str) -> Result<Vec<Part>, InputError> {
    let bad = |part: &str, why: &str| InputError(format!("template '{template}': part '*{part}*' {why}"));
    let index = |part: &str, digits: &str| -> Result<usize, InputError> {
        digits.parse().map_err(|_| bad(part, "needs a number after '_'"))
    };
    let mut parts = Vec::new();
    for part in template.split('*').filter(|p| !p.is_empty()) {
        let parsed = match part {
            "cls" => Part::Cls,
            "mask" => Part::Mask,
            "sep" => Part::Sep,
            "sep+" => Part::SepPlus,
            "bos" => Part::Bos,
            "eos" => Part::Eos,
            _ => {
                if let Some(i) = part.strip_prefix("label_") {
                    Part::Label(index(part, i)?)
                } else if let Some(i) = part.strip_prefix("labelx_") {
                    Part::LabelX(index(part, i)?)
                } else if let Some(&(prefix, space, case, drop_last)) =
                    SENTENCE_PARTS.iter().find(|(prefix, ..)| part.starts_with(prefix))
                {
                    Part::Sentence { index: index(part, &part[prefix.len()..])?, space, case, drop_last }
                } else if looks_like_sentence(part) {
                    // The reference crashes on these (e.g. `+sentl-_0`); a clear error instead.
                    return Err(bad(part, "is not a sentence part the template language has"));
                } else {
                    Part::Literal(part.replace('_', " "))
                }
            }
        };
        parts.push(parsed);
    }
    if !parts.contains(&Part::Mask) {
        return Err(InputError(format!("template '{template}' has no *mask*")));
    }
    Ok(parts)
}

/// `sent…_N` or `+sent…_N` forms that are not in [`SENTENCE_PARTS`].
fn looks_like_sentence(part: &str) -> bool {
    let body = part.strip_prefix('+').unwrap_or(part);
    body.starts_with("sent") && body.split_once('_').is_some_and(|(_, n)| n.parse::<usize>().is_ok())
}

fn change_first(s: &str, case: Case) -> String {
    let mut chars = s.chars();
    match (case, chars.next()) {
        (Case::Keep, _) | (_, None) => s.to_string(),
        (Case::LowerFirst, Some(c)) => c.to_lowercase().chain(chars).collect(),
        (Case::UpperFirst, Some(c)) => c.to_uppercase().chain(chars).collect(),
    }
}

fn drop_last_char(s: &str) -> &str {
    s.char_indices().last().map_or(s, |(i, _)| &s[..i])
}

/// Everything that shapes an encoded example besides the template and the texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeConfig {
    pub max_length: usize,
    /// Token limit of sentence 0 (prompt mode only).
    pub first_sent_limit: Option<usize>,
    /// Token limit of every other sentence (prompt mode only).
    pub other_sent_limit: Option<usize>,
    /// Keep the last `max_length` tokens instead of the first.
    pub truncate_head: bool,
}

/// One encoded example; the attention mask is all ones over `input_ids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub input_ids: Vec<i64>,
    /// Position of the first mask token (prompt mode).
    pub mask_pos: Option<usize>,
}

enum Mode {
    Prompt { template: String, parts: Vec<Part>, label_word_ids: Vec<i64>, last_token: bool },
    Finetune,
}

/// Turns an example's sentences into token ids.
pub struct Encoder {
    tokenizer: Tokenizer,
    special: SpecialTokens,
    mode: Mode,
    config: EncodeConfig,
}

impl Encoder {
    /// Prompt mode: `label_words` in class-id order, each one token with a leading space (or a
    /// vocabulary token itself when it starts with `<`, `[`, `.` or `,`).
    pub fn prompt(
        tokenizer: Tokenizer,
        template: &str,
        label_words: &[String],
        config: EncodeConfig,
    ) -> Result<Encoder, InputError> {
        let special = SpecialTokens::of(&tokenizer)?;
        let parts = parse(template)?;
        let label_word_ids =
            label_words.iter().map(|w| label_word_id(&tokenizer, w)).collect::<Result<_, _>>()?;
        let mode = Mode::Prompt { template: template.to_string(), parts, label_word_ids, last_token: false };
        Ok(Encoder { tokenizer, special, mode, config })
    }

    /// Prompt mode for a causal LM (MeZO's GPT-style models): the template is cut before its
    /// `*mask*`, and the label words are scored as the next token after the last one.
    pub fn causal_prompt(
        tokenizer: Tokenizer,
        template: &str,
        label_words: &[String],
        config: EncodeConfig,
    ) -> Result<Encoder, InputError> {
        let cut = template
            .find("*mask*")
            .ok_or_else(|| InputError(format!("template '{template}' has no *mask*")))?;
        let special = SpecialTokens::of(&tokenizer)?;
        let mut parts = parse(&format!("{}*mask*", &template[..cut]))?;
        parts.pop();
        let label_word_ids =
            label_words.iter().map(|w| label_word_id(&tokenizer, w)).collect::<Result<_, _>>()?;
        let mode =
            Mode::Prompt { template: template[..cut].to_string(), parts, label_word_ids, last_token: true };
        Ok(Encoder { tokenizer, special, mode, config })
    }

    /// `finetune` mode: `<s> a </s> [b </s>]`, no template, no label words, no limits.
    pub fn finetune(tokenizer: Tokenizer, config: EncodeConfig) -> Result<Encoder, InputError> {
        let special = SpecialTokens::of(&tokenizer)?;
        Ok(Encoder { tokenizer, special, mode: Mode::Finetune, config })
    }

    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// Label-word ids in class-id order (empty in finetune mode).
    pub fn label_word_ids(&self) -> &[i64] {
        match &self.mode {
            Mode::Prompt { label_word_ids, .. } => label_word_ids,
            Mode::Finetune => &[],
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` without special tokens.
    pub fn enc(&self, text: &str) -> Result<Vec<i64>, InputError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| InputError(format!("tokenizing {text:?}: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// Encodes sentences `S[0..]` (query, then demonstrations). `support_labels[i]` is the class
    /// of the i-th demonstration, used by `labelx_i` parts.
    pub fn encode(&self, sentences: &[&str], support_labels: &[usize]) -> Result<Encoded, InputError> {
        let (template, parts, label_word_ids, last_token) = match &self.mode {
            Mode::Finetune => return self.encode_finetune(sentences),
            Mode::Prompt { template, parts, label_word_ids, last_token } => {
                (template, parts, label_word_ids, *last_token)
            }
        };
        let sentence = |i: usize| {
            sentences.get(i).copied().ok_or_else(|| {
                InputError(format!(
                    "template '{template}' uses sentence {i}, the example has {}",
                    sentences.len()
                ))
            })
        };
        let label_word = |i: usize| {
            label_word_ids.get(i).copied().ok_or_else(|| {
                InputError(format!("template '{template}' uses label {i} of {}", label_word_ids.len()))
            })
        };
        let s = &self.special;
        let mut ids = Vec::new();
        for part in parts {
            let tokens = match part {
                Part::Cls => vec![s.cls],
                Part::Mask => vec![s.mask],
                Part::Sep | Part::SepPlus => vec![s.sep],
                Part::Bos => vec![s.bos],
                Part::Eos => vec![s.eos],
                Part::Label(i) => vec![label_word(*i)?],
                Part::LabelX(i) => {
                    let class = support_labels.get(*i).copied().ok_or_else(|| {
                        InputError(format!(
                            "template '{template}' uses labelx_{i} without a demonstration {i}"
                        ))
                    })?;
                    vec![label_word(class)?]
                }
                Part::Sentence { index, space, case, drop_last } => {
                    let changed = change_first(sentence(*index)?, *case);
                    let mut text = if *drop_last { drop_last_char(&changed).to_string() } else { changed };
                    if *space {
                        text.insert(0, ' ');
                    }
                    let mut tokens = self.enc(&text)?;
                    let limit =
                        if *index == 0 { self.config.first_sent_limit } else { self.config.other_sent_limit };
                    if let Some(limit) = limit {
                        tokens.truncate(limit);
                    }
                    tokens
                }
                Part::Literal(text) if text.chars().count() == 1 => {
                    vec![self.tokenizer.token_to_id(text).map_or(s.unk, i64::from)]
                }
                Part::Literal(text) => self.enc(text)?,
            };
            ids.extend(tokens);
        }
        let ids = self.truncate(ids);
        if last_token {
            let last = ids
                .len()
                .checked_sub(1)
                .ok_or_else(|| InputError(format!("template '{template}' made no tokens")))?;
            return Ok(Encoded { input_ids: ids, mask_pos: Some(last) });
        }
        let mask_pos = ids.iter().position(|&t| t == s.mask).ok_or_else(|| {
            InputError(format!(
                "the mask was truncated away (max length {}): shorten the input or raise the limits",
                self.config.max_length
            ))
        })?;
        Ok(Encoded { input_ids: ids, mask_pos: Some(mask_pos) })
    }

    fn encode_finetune(&self, sentences: &[&str]) -> Result<Encoded, InputError> {
        let mut ids = vec![self.special.cls];
        for text in sentences {
            ids.extend(self.enc(text)?);
            ids.push(self.special.sep);
        }
        Ok(Encoded { input_ids: self.truncate(ids), mask_pos: None })
    }

    fn truncate(&self, mut ids: Vec<i64>) -> Vec<i64> {
        let max = self.config.max_length;
        if ids.len() > max {
            if self.config.truncate_head {
                ids.drain(..ids.len() - max);
            } else {
                ids.truncate(max);
            }
        }
        ids
    }
}

/// The id of one label word (docs/reference.md §3.3).
fn label_word_id(tokenizer: &Tokenizer, word: &str) -> Result<i64, InputError> {
    if word.starts_with(['<', '[', '.', ',']) {
        return tokenizer
            .token_to_id(word)
            .map(i64::from)
            .ok_or_else(|| InputError(format!("label word '{word}' is not a token of the vocabulary")));
    }
    let encoding = tokenizer
        .encode(format!(" {word}"), false)
        .map_err(|e| InputError(format!("label word '{word}': {e}")))?;
    match encoding.get_ids() {
        [id] => Ok(i64::from(*id)),
        ids => Err(InputError(format!(
            "label word '{word}' must be one token with a leading space, it is {} ({:?})",
            ids.len(),
            encoding.get_tokens()
        ))),
    }
}

/// Parses a label-word mapping: the Python dict literal of the reference scripts
/// (`{'0':'terrible','1':'great'}`, integer keys too) or `0:terrible,1:great`.
pub fn parse_mapping(text: &str) -> Result<Vec<(String, String)>, InputError> {
    let bad = |why: String| InputError(format!("mapping '{text}': {why}"));
    let body = text.trim();
    let body = match (body.strip_prefix('{'), body.ends_with('}')) {
        (Some(inner), true) => &inner[..inner.len() - 1],
        (Some(_), false) => return Err(bad("a dict that is not closed (no final '}')".into())),
        (None, true) => return Err(bad("a dict that is not opened (no first '{')".into())),
        (None, false) => body,
    };
    if let Some(c) = split_quote_state(body) {
        return Err(bad(format!("a quote ({c}) that is not closed")));
    }
    let unquote = |s: &str| -> String {
        let s = s.trim();
        for q in ['\'', '"'] {
            if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
                return inner.to_string();
            }
        }
        s.to_string()
    };
    let mut pairs = Vec::new();
    for item in split_outside_quotes(body, ',') {
        if item.trim().is_empty() {
            continue;
        }
        let fields = split_outside_quotes(&item, ':');
        let [key, value] = fields.as_slice() else {
            return Err(bad(format!("'{}' is not label:word", item.trim())));
        };
        let (key, value) = (unquote(key), unquote(value));
        if key.is_empty() || value.is_empty() {
            return Err(bad(format!("'{}' has an empty label or word", item.trim())));
        }
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(bad(format!("label '{key}' appears twice")));
        }
        pairs.push((key, value));
    }
    if pairs.is_empty() {
        return Err(bad("no label:word pairs".into()));
    }
    Ok(pairs)
}

/// The quote left open at the end of `s`, if any.
fn split_quote_state(s: &str) -> Option<char> {
    let mut quote = None;
    for c in s.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    quote
}

fn split_outside_quotes(s: &str, separator: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quote = None;
    for c in s.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c == separator => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        out.last_mut().expect("never empty").push(c);
    }
    out
}

/// Orders a mapping by `labels` (class-id order): the label words the encoder takes.
pub fn label_words(mapping: &[(String, String)], labels: &[&str]) -> Result<Vec<String>, InputError> {
    if let Some((k, _)) = mapping.iter().find(|(k, _)| !labels.contains(&k.as_str())) {
        return Err(InputError(format!("mapping has label '{k}', which is not one of {labels:?}")));
    }
    labels
        .iter()
        .map(|l| {
            mapping
                .iter()
                .find(|(k, _)| k == l)
                .map(|(_, w)| w.clone())
                .ok_or_else(|| InputError(format!("mapping has no word for label '{l}'")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tests/fixtures/tokenizer/tokenizer.json, made by scripts/make_tokenizer_fixture.py so that
    /// the spec's worked examples tokenize as with roberta-base.
    fn tokenizer() -> Tokenizer {
        load_tokenizer(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tokenizer.json"),
        )
        .unwrap()
    }

    fn config(max_length: usize, first_sent_limit: Option<usize>) -> EncodeConfig {
        EncodeConfig { max_length, first_sent_limit, other_sent_limit: None, truncate_head: false }
    }

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    fn tokens(encoder: &Encoder, ids: &[i64]) -> Vec<String> {
        ids.iter().map(|&i| encoder.tokenizer().id_to_token(i as u32).unwrap()).collect()
    }

    #[test]
    fn e1_sst2() {
        let e = Encoder::prompt(
            tokenizer(),
            "*cls**sent_0*_It_was*mask*.*sep+*",
            &words(&["terrible", "great"]),
            config(128, None),
        )
        .unwrap();
        let out = e.encode(&["it 's a charming and often affecting journey . "], &[]).unwrap();
        assert_eq!(
            tokens(&e, &out.input_ids),
            [
                "<s>",
                "it",
                "Ġ'",
                "s",
                "Ġa",
                "Ġcharming",
                "Ġand",
                "Ġoften",
                "Ġaffecting",
                "Ġjourney",
                "Ġ.",
                "Ġ",
                "ĠIt",
                "Ġwas",
                "<mask>",
                ".",
                "</s>"
            ]
        );
        assert_eq!(out.mask_pos, Some(14));
        assert_eq!(tokens(&e, e.label_word_ids()), ["Ġterrible", "Ġgreat"]);
        assert_eq!(out.input_ids[0], 0);
        assert_eq!(*out.input_ids.last().unwrap(), 2);
    }

    #[test]
    fn e2_mnli_prompt_and_finetune() {
        let t = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*";
        let e =
            Encoder::prompt(tokenizer(), t, &words(&["No", "Yes", "Maybe"]), config(256, Some(240))).unwrap();
        let out = e.encode(&["The cat sat on the mat.", "A cat is sitting."], &[]).unwrap();
        assert_eq!(
            tokens(&e, &out.input_ids),
            [
                "<s>",
                "The",
                "Ġcat",
                "Ġsat",
                "Ġon",
                "Ġthe",
                "Ġmat",
                "?",
                "<mask>",
                ",",
                "Ġa",
                "Ġcat",
                "Ġis",
                "Ġsitting",
                ".",
                "</s>"
            ]
        );
        assert_eq!(out.mask_pos, Some(8));
        assert_eq!(tokens(&e, e.label_word_ids()), ["ĠNo", "ĠYes", "ĠMaybe"]);
        let f = Encoder::finetune(tokenizer(), config(256, None)).unwrap();
        let out = f.encode(&["The cat sat on the mat.", "A cat is sitting."], &[]).unwrap();
        assert_eq!(
            tokens(&f, &out.input_ids),
            [
                "<s>",
                "The",
                "Ġcat",
                "Ġsat",
                "Ġon",
                "Ġthe",
                "Ġmat",
                ".",
                "</s>",
                "A",
                "Ġcat",
                "Ġis",
                "Ġsitting",
                ".",
                "</s>"
            ]
        );
        assert_eq!(out.mask_pos, None);
    }

    #[test]
    fn e3_trec() {
        let labels = words(&["Description", "Entity", "Expression", "Human", "Location", "Number"]);
        let e = Encoder::prompt(tokenizer(), "*cls**mask*:*+sent_0**sep+*", &labels, config(128, Some(110)))
            .unwrap();
        let out = e.encode(&["How far is it from Denver to Aspen ?"], &[]).unwrap();
        assert_eq!(
            tokens(&e, &out.input_ids),
            [
                "<s>", "<mask>", ":", "ĠHow", "Ġfar", "Ġis", "Ġit", "Ġfrom", "ĠDenver", "Ġto", "ĠAs", "pen",
                "Ġ?", "</s>"
            ]
        );
        assert_eq!(out.mask_pos, Some(1));
        assert_eq!(tokens(&e, &e.label_word_ids()[5..]), ["ĠNumber"]);
    }

    #[test]
    fn ag_news_literals_and_sentence_limits() {
        let labels = words(&["world", "sports", "business", "tech"]);
        let t = "*cls**sent_0*_This_article_is_about*mask*_news.*sep+*";
        let e = Encoder::prompt(tokenizer(), t, &labels, config(256, Some(110))).unwrap();
        let long = vec!["good"; 300].join(" ");
        let out = e.encode(&[&long], &[]).unwrap();
        let toks = tokens(&e, &out.input_ids);
        assert_eq!(toks.len(), 1 + 110 + 4 + 1 + 2 + 1);
        assert_eq!(&toks[111..], ["ĠThis", "Ġarticle", "Ġis", "Ġabout", "<mask>", "Ġnews", ".", "</s>"]);
        // Head truncation keeps the tail; the mask survives.
        let head = EncodeConfig {
            max_length: 20,
            first_sent_limit: None,
            other_sent_limit: None,
            truncate_head: true,
        };
        let e = Encoder::prompt(tokenizer(), t, &labels, head).unwrap();
        let out = e.encode(&[&long], &[]).unwrap();
        assert_eq!(out.input_ids.len(), 20);
        assert_eq!(out.mask_pos, Some(16));
    }

    #[test]
    fn sentence_variants_and_one_character_literals() {
        let labels = words(&["No", "Yes"]);
        let e = Encoder::prompt(
            tokenizer(),
            "*sentu_0**+sentu-_1**sentl-_0*_*€*.*mask*",
            &labels,
            config(64, None),
        )
        .unwrap();
        let out = e.encode(&["the cat", "units "], &[]).unwrap();
        let toks = tokens(&e, &out.input_ids);
        // sentu: "The cat"; +sentu-: " Units" (only the trailing space dropped); sentl-: "the ca";
        // "_" is a lone space and "€" is not a vocabulary token (byte-level vocabularies hold
        // Latin-1 letters such as "é" as byte tokens, so those are found): both <unk>; "." is found.
        assert_eq!(toks[..3], ["The", "Ġcat", "Ġ"]);
        assert!(toks.contains(&"<unk>".to_string()));
        assert_eq!(toks.iter().filter(|t| *t == "<unk>").count(), 2);
        assert_eq!(toks[toks.len() - 2..], [".", "<mask>"]);
        let plain = e.enc(" Units").unwrap();
        assert!(out.input_ids.windows(plain.len()).any(|w| w == plain.as_slice()));
        assert_eq!(drop_last_char("The cat sat."), "The cat sat");
        assert_eq!(drop_last_char("units "), "units");
        assert_eq!(change_first("Énorme", Case::LowerFirst), "énorme");
    }

    #[test]
    fn causal_prompts_score_the_next_token() {
        let e = Encoder::causal_prompt(
            tokenizer(),
            "*cls**sent_0*_It_was*mask*.*sep+*",
            &words(&["terrible", "great"]),
            config(64, None),
        )
        .unwrap();
        let out = e.encode(&["it 's a charming and often affecting journey . "], &[]).unwrap();
        let toks = tokens(&e, &out.input_ids);
        assert_eq!(&toks[toks.len() - 3..], ["Ġ", "ĠIt", "Ġwas"]);
        assert_eq!(out.mask_pos, Some(toks.len() - 1));
    }

    #[test]
    fn demonstration_label_parts() {
        let labels = words(&["terrible", "great"]);
        let e = Encoder::prompt(tokenizer(), "*cls**mask**label_1**labelx_0*", &labels, config(16, None))
            .unwrap();
        let out = e.encode(&["x"], &[0]).unwrap();
        assert_eq!(tokens(&e, &out.input_ids), ["<s>", "<mask>", "Ġgreat", "Ġterrible"]);
        let err = e.encode(&["x"], &[]).unwrap_err().to_string();
        assert!(err.contains("labelx_0"), "{err}");
    }

    #[test]
    fn errors_name_the_problem() {
        let labels = words(&["terrible", "great"]);
        let err = |t: &str, w: &[String]| {
            Encoder::prompt(tokenizer(), t, w, config(128, None)).err().unwrap().to_string()
        };
        assert!(err("*cls**sent_0*_It_was.*sep+*", &labels).contains("has no *mask*"));
        assert!(err("*cls**+sentl-_0**mask*", &labels).contains("'*+sentl-_0*' is not a sentence part"));
        assert!(err("*cls**sent_x**mask*", &labels).contains("needs a number"));
        let e = err("*cls**sent_0**mask*", &words(&["terrible", "Denverish"]));
        assert!(e.contains("label word 'Denverish' must be one token") && e.contains("it is 3"), "{e}");
        assert!(err("*cls**sent_0**mask*", &words(&["<nothing>"])).contains("not a token"));
        let e = Encoder::prompt(tokenizer(), "*cls**sent_0**mask*", &labels, config(8, None)).unwrap();
        let long = vec!["good"; 20].join(" ");
        assert!(e.encode(&[&long], &[]).unwrap_err().to_string().contains("mask was truncated away"));
        assert!(e.encode(&[], &[]).unwrap_err().to_string().contains("uses sentence 0"));
    }

    #[test]
    fn mappings() {
        let python = parse_mapping("{'0':'terrible','1':'great'}").unwrap();
        assert_eq!(python, [("0".to_string(), "terrible".to_string()), ("1".into(), "great".into())]);
        assert_eq!(parse_mapping("{0: 'terrible', 1: \"great\"}").unwrap(), python);
        assert_eq!(parse_mapping("0:terrible,1:great").unwrap(), python);
        let nli = parse_mapping("{'contradiction':'No','entailment':'Yes','neutral':'Maybe'}").unwrap();
        assert_eq!(
            label_words(&nli, &["contradiction", "entailment", "neutral"]).unwrap(),
            ["No", "Yes", "Maybe"]
        );
        assert_eq!(label_words(&python, &["1", "0"]).unwrap(), ["great", "terrible"]);
        assert!(label_words(&python, &["0", "1", "2"])
            .unwrap_err()
            .to_string()
            .contains("no word for label '2'"));
        assert!(label_words(&python, &["0"]).unwrap_err().to_string().contains("not one of"));
        assert!(parse_mapping("{'0' 'bad'}").unwrap_err().to_string().contains("is not label:word"));
        assert!(parse_mapping("0:a,0:b").unwrap_err().to_string().contains("twice"));
        assert!(parse_mapping("{}").is_err());
    }
}
