//! Few-shot task data, compatible with LM-BFF and the repositories built on it (LM-Kernel-FT,
//! MeZO), so that splits, token sequences and label ids equal the reference's and published
//! numbers stay comparable.
//!
//! ```text
//! tasks      the registry: files, columns, labels, templates, label words, lengths, metrics
//! kshot      the byte-identical k-shot split generator (`mezo kshot`)
//! mt19937    numpy's legacy RandomState: seeding, bounded integers, shuffle, permutation
//! csv, tsv   the reference's three readers (pandas CSV, TSV lines, TSV fields)
//! examples   a k-shot directory's splits as examples (the processors)
//! template   the template language and prompt / finetune encoding with HF `tokenizers`
//! demo       demonstrations: template expansion, sampling, sentence order
//! dataset    all of the above for one task: encoded dev/test, training features on access
//! batch      seeded batch sampler, padding, data-parallel shards
//! large      MeZO's large-model tasks (SuperGLUE, SQuAD, DROP): HF splits, sampling, prompts
//! ```
//!
//! Random streams, each from an explicit seed:
//! - k-shot splits: MT19937 seeded with each `--seed` shuffles the train pool; a fresh MT19937
//!   seeded 42 caps test sets in `k-shot-1k-test` mode (CoLA's lists accumulate, as in the
//!   reference).
//! - demonstrations: one MT19937 seeded with the run seed, drawn in the reference's order (dev,
//!   test, then each training access).
//! - batches: one MT19937 seeded with the run seed; epoch e takes its e-th permutation.
//!
//! Deliberate deviations from the reference, each where it would crash or silently mislead:
//! unsupported sentence parts (`+sentl-_0`) and literals the reference mistakes for sentences are
//! errors or literal text instead of a Python exception; unknown labels and malformed rows are
//! errors naming the file and line; raw data is validated before any split is written.

pub mod batch;
pub mod csv;
pub mod dataset;
pub mod demo;
pub mod examples;
pub mod kshot;
pub mod large;
pub mod mt19937;
pub mod tasks;
pub mod template;
pub mod tsv;
