//! MeZO's large-model tasks: SST2, the eight SuperGLUE tasks, SQuAD and DROP, as MeZO's
//! `large_models` reads, samples, prompts and scores them for causal LMs (docs/reference.md §9).
//!
//! ```text
//! read       a dataset's Hugging Face splits as users get them: JSONL (`to_json`) or Parquet
//! sampling   the reference's train/dev/test sampling on numpy's legacy MT19937
//! templates  the reference's prompt strings, exactly
//! prompt     prompts to token ids: demonstrations, option lengths, BOS, left truncation
//! ```
//!
//! A task's samples keep the reference's shape: the fields its template reads, the candidates (class
//! ids for classification, strings for multiple choice, none for generation) and the gold answer.
//! Every malformed row (missing field, wrong type, unknown label, a gold answer that is not a
//! candidate) is an error naming the file and row: the reference would crash on it or, worse,
//! score it silently.

pub mod prompt;
pub mod read;
pub mod sampling;
pub mod templates;

use crate::error::InputError;
use read::Row;
use serde::Serialize;
use std::path::Path;

/// The eleven tasks of MeZO's main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Task {
    Sst2,
    Rte,
    Cb,
    BoolQ,
    Wsc,
    Wic,
    MultiRc,
    Copa,
    Record,
    Squad,
    Drop,
}

/// How a task's answers are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Label words scored after the prompt.
    Classification,
    /// Answer strings scored after the prompt (Copa's choices, ReCoRD's entities).
    MultipleChoice,
    /// Greedy generation scored by F1 against the gold answers.
    Generation,
}

impl Task {
    pub const ALL: [Task; 11] = [
        Task::Sst2,
        Task::Rte,
        Task::Cb,
        Task::BoolQ,
        Task::Wsc,
        Task::Wic,
        Task::MultiRc,
        Task::Copa,
        Task::Record,
        Task::Squad,
        Task::Drop,
    ];

    /// The reference's name (`--task_name`).
    pub fn name(self) -> &'static str {
        match self {
            Task::Sst2 => "SST2",
            Task::Rte => "RTE",
            Task::Cb => "CB",
            Task::BoolQ => "BoolQ",
            Task::Wsc => "WSC",
            Task::Wic => "WIC",
            Task::MultiRc => "MultiRC",
            Task::Copa => "Copa",
            Task::Record => "ReCoRD",
            Task::Squad => "SQuAD",
            Task::Drop => "DROP",
        }
    }

    /// A task by its reference name, case-insensitively.
    pub fn parse(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    pub fn kind(self) -> TaskKind {
        match self {
            Task::Copa | Task::Record => TaskKind::MultipleChoice,
            Task::Squad | Task::Drop => TaskKind::Generation,
            _ => TaskKind::Classification,
        }
    }

    /// The metric the reference reports: `accuracy`, or `f1` for the generation tasks.
    pub fn metric(self) -> &'static str {
        if self.kind() == TaskKind::Generation {
            "f1"
        } else {
            "accuracy"
        }
    }

    /// The Hugging Face dataset (and configuration) the reference loads.
    pub fn hf_dataset(self) -> &'static str {
        match self {
            Task::Sst2 => "glue/sst2",
            Task::Rte => "super_glue/rte",
            Task::Cb => "super_glue/cb",
            Task::BoolQ => "boolq",
            Task::Wsc => "super_glue/wsc.fixed",
            Task::Wic => "super_glue/wic",
            Task::MultiRc => "super_glue/multirc",
            Task::Copa => "super_glue/copa",
            Task::Record => "super_glue/record",
            Task::Squad => "squad",
            Task::Drop => "drop",
        }
    }

    /// Number of classes of a classification task.
    fn classes(self) -> usize {
        match self {
            Task::Cb => 3,
            _ => 2,
        }
    }
}

/// A candidate answer as the reference holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Candidate {
    /// A class id, verbalised by the template (`0` -> "terrible").
    Class(usize),
    /// An answer string scored as it is (after the template's own changes).
    Text(String),
}

/// The gold answer of a sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Gold {
    /// The index of the correct candidate.
    Index(usize),
    /// Several correct candidates (ReCoRD): any of them counts.
    Indices(Vec<usize>),
    /// The answer strings of a generation task; F1 takes the best of them.
    Answers(Vec<String>),
}

/// One example of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its row in its split (0-based): the reference's `idx` where the dataset has one.
    pub id: usize,
    /// The text fields the templates read, by their Hugging Face names (DROP's `passage` as
    /// `context`, as the reference renames it).
    pub fields: Vec<(&'static str, String)>,
    /// Empty for generation tasks.
    pub candidates: Vec<Candidate>,
    pub gold: Gold,
}

impl Sample {
    /// A text field the task's rows all have.
    pub fn field(&self, name: &str) -> &str {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()).unwrap_or_else(|| {
            panic!("samples of this task have no field {name}: the reader and the template disagree")
        })
    }

    /// The gold answer strings of a generation task (empty for the others).
    pub fn answers(&self) -> &[String] {
        match &self.gold {
            Gold::Answers(a) => a,
            _ => &[],
        }
    }

    /// The candidate a training example and a demonstration use: the correct one, or for
    /// ReCoRD the first gold answer. `None` for generation tasks, whose templates take the first
    /// gold answer themselves.
    pub fn correct_index(&self) -> Option<usize> {
        match &self.gold {
            Gold::Index(i) => Some(*i),
            Gold::Indices(list) => list.first().copied(),
            Gold::Answers(_) => None,
        }
    }
}

/// A task's two splits, in file order.
pub struct TaskSplits {
    pub task: Task,
    pub train: Vec<Sample>,
    pub valid: Vec<Sample>,
}

/// Reads `dir`'s `train` and `validation` splits of `task`.
pub fn load(task: Task, dir: &Path) -> Result<TaskSplits, InputError> {
    let build = |split: &str| -> Result<Vec<Sample>, InputError> {
        read::read_split(dir, split)?.iter().enumerate().map(|(i, row)| build_sample(task, i, row)).collect()
    };
    Ok(TaskSplits { task, train: build("train")?, valid: build("validation")? })
}

/// Whether `dir` holds Hugging Face splits (rather than an LM-BFF k-shot directory).
pub fn has_hf_splits(dir: &Path) -> bool {
    read::split_files(dir, "validation").map(|files| !files.is_empty()).unwrap_or(false)
}

/// One row as the reference's `build_sample` makes it.
fn build_sample(task: Task, id: usize, row: &Row) -> Result<Sample, InputError> {
    let text =
        |name: &'static str| -> Result<(&'static str, String), InputError> { Ok((name, row.string(name)?)) };
    let class = |name: &str| -> Result<usize, InputError> {
        let value = row.get(name)?;
        let n = value
            .as_i64()
            .ok_or_else(|| row.error(&format!("field {name} is {value}, not an integer label")))?;
        usize::try_from(n).ok().filter(|&c| c < task.classes()).ok_or_else(|| {
            row.error(&format!("label {n} is not one of the {} classes of {}", task.classes(), task.name()))
        })
    };
    let classes = |n: usize| (0..n).map(Candidate::Class).collect::<Vec<_>>();
    let (fields, candidates, gold) = match task {
        Task::Sst2 => (vec![text("sentence")?], classes(2), Gold::Index(class("label")?)),
        Task::Rte | Task::Cb => (
            vec![text("premise")?, text("hypothesis")?],
            classes(task.classes()),
            Gold::Index(class("label")?),
        ),
        Task::BoolQ => {
            let answer = row.get("answer")?;
            let yes = answer
                .as_bool()
                .ok_or_else(|| row.error(&format!("field answer is {answer}, not true/false")))?;
            let candidates = vec![Candidate::Text("Yes".into()), Candidate::Text("No".into())];
            (vec![text("passage")?, text("question")?], candidates, Gold::Index(if yes { 0 } else { 1 }))
        }
        Task::Wsc => (
            vec![text("text")?, text("span1_text")?, text("span2_text")?],
            classes(2),
            Gold::Index(class("label")?),
        ),
        Task::Wic => (
            vec![text("word")?, text("sentence1")?, text("sentence2")?],
            classes(2),
            Gold::Index(class("label")?),
        ),
        Task::MultiRc => (
            vec![text("paragraph")?, text("question")?, text("answer")?],
            classes(2),
            Gold::Index(class("label")?),
        ),
        Task::Copa => {
            let question = row.string("question")?;
            if question != "cause" && question != "effect" {
                return Err(
                    row.error(&format!("field question is {question:?}, not \"cause\" or \"effect\""))
                );
            }
            let choices = [row.string("choice1")?, row.string("choice2")?];
            // The reference keeps the correct string and finds it among the choices again: the
            // first of two equal choices wins.
            let correct = &choices[class("label")?];
            let gold = choices.iter().position(|c| c == correct).expect("the correct choice is a choice");
            (
                vec![text("premise")?, ("question", question)],
                choices.iter().cloned().map(Candidate::Text).collect(),
                Gold::Index(gold),
            )
        }
        Task::Record => {
            let entities = row.strings("entities")?;
            let answers = row.strings("answers")?;
            if answers.is_empty() {
                return Err(row.error("field answers is empty"));
            }
            let indices = answers
                .iter()
                .map(|a| {
                    entities
                        .iter()
                        .position(|e| e == a)
                        .ok_or_else(|| row.error(&format!("answer {a:?} is not one of the entities")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (
                vec![text("passage")?, text("query")?],
                entities.into_iter().map(Candidate::Text).collect(),
                Gold::Indices(indices),
            )
        }
        Task::Squad => {
            let answers = row.nested_strings("answers", "text")?;
            if answers.is_empty() {
                return Err(row.error("field answers.text is empty"));
            }
            (vec![text("title")?, text("context")?, text("question")?], Vec::new(), Gold::Answers(answers))
        }
        Task::Drop => {
            let answers = row.nested_strings("answers_spans", "spans")?;
            if answers.is_empty() {
                return Err(row.error("field answers_spans.spans is empty"));
            }
            (vec![("context", row.string("passage")?), text("question")?], Vec::new(), Gold::Answers(answers))
        }
    };
    Ok(Sample { id, fields, candidates, gold })
}
