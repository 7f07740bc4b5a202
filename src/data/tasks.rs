//! The registry of few-shot tasks: where their files are, how to read them, their labels,
//! templates, label words, length settings and metrics (docs/reference.md §1), exactly as the LM-BFF,
//! LM-Kernel-FT and MeZO run scripts set them.

use crate::error::InputError;

/// How a task's raw files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// GLUE-style `.tsv`: header row (unless CoLA), tab-separated fields.
    Glue { header: bool, text_a: usize, text_b: Option<usize>, label: Column },
    /// Headerless CSV with the integer label in column 0.
    Csv { text_a: usize, columns: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Index(usize),
    /// The last field of the row.
    Last,
}

impl Column {
    pub fn get<'a>(self, fields: &[&'a str]) -> Option<&'a str> {
        match self {
            Column::Index(i) => fields.get(i).copied(),
            Column::Last => fields.last().copied(),
        }
    }
}

/// Which published run scripts' length settings to use (docs/reference.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    LmBff,
    KernelFt,
    /// MeZO's `medium_models/run_fewshot.sh`: the default.
    #[default]
    Mezo,
}

/// Length settings of one task under one preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lengths {
    pub max_seq_length: usize,
    pub first_sent_limit: Option<usize>,
    pub other_sent_limit: Option<usize>,
    /// Doubles `max_seq_length` when demonstrations are used.
    pub double_demo: bool,
    /// Demonstration samples per eval example.
    pub num_sample: Option<usize>,
}

const fn len(max: usize) -> Lengths {
    Lengths {
        max_seq_length: max,
        first_sent_limit: None,
        other_sent_limit: None,
        double_demo: false,
        num_sample: None,
    }
}
const fn fsl(max: usize, first: usize, other: Option<usize>, double_demo: bool) -> Lengths {
    Lengths {
        max_seq_length: max,
        first_sent_limit: Some(first),
        other_sent_limit: other,
        double_demo,
        num_sample: None,
    }
}
const fn ns(max: usize, num_sample: usize) -> Lengths {
    Lengths {
        max_seq_length: max,
        first_sent_limit: None,
        other_sent_limit: None,
        double_demo: false,
        num_sample: Some(num_sample),
    }
}

/// One task of the registry.
#[derive(Debug, Clone, Copy)]
pub struct Task {
    /// Lower-case registry name (`sst-2`, `mnli-mm`): the metric key prefix.
    pub name: &'static str,
    /// Directory under `original/` and `k-shot*/` (`SST-2`).
    pub dir: &'static str,
    pub layout: Layout,
    /// Class-id order.
    pub labels: &'static [&'static str],
    /// Regression task (STS-B): the label is a score, label words are for '0' (low) and '1' (high).
    pub regression: bool,
    pub template: &'static str,
    /// Label -> word, in class-id order.
    pub mapping: &'static [(&'static str, &'static str)],
    /// Lengths for [LM-BFF, Kernel-FT, MeZO]; `None` where that script does not run the task.
    lengths: [Option<Lengths>; 3],
    /// Metric names (reported with an `eval_` prefix).
    pub metrics: &'static [&'static str],
    /// Evaluation split of the k-shot directory (file stem), e.g. `test` or `test_mismatched`.
    pub test_split: &'static str,
    pub dev_split: &'static str,
}

impl Task {
    /// Length settings of `preset`; a task a preset's scripts never run gets the plain 128.
    pub fn lengths(&self, preset: Preset) -> Lengths {
        self.lengths[preset as usize].unwrap_or(len(128))
    }

    /// The model-selection metric: the first of mnli/acc, mnli-mm/acc, f1, mcc, pearson, acc.
    pub fn selection_metric(&self) -> &'static str {
        ["mnli/acc", "mnli-mm/acc", "f1", "mcc", "pearson", "acc"]
            .into_iter()
            .find(|m| self.metrics.contains(m))
            .expect("every task has one of the selection metrics")
    }

    pub fn is_glue(&self) -> bool {
        matches!(self.layout, Layout::Glue { .. })
    }

    /// File extension of the task's files.
    pub fn extension(&self) -> &'static str {
        if self.is_glue() {
            "tsv"
        } else {
            "csv"
        }
    }
}

const SENTIMENT: &str = "*cls**sent_0*_It_was*mask*.*sep+*";
const NLI: &str = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*";
const PARAPHRASE: &str = "*cls**sent_0**mask*,*+sentl_1**sep+*";
const NLI_LABELS: &[&str] = &["contradiction", "entailment", "neutral"];
const NLI_WORDS: &[(&str, &str)] = &[("contradiction", "No"), ("entailment", "Yes"), ("neutral", "Maybe")];
const ENTAIL_LABELS: &[&str] = &["entailment", "not_entailment"];
const ENTAIL_WORDS: &[(&str, &str)] = &[("entailment", "Yes"), ("not_entailment", "No")];
const BINARY: &[&str] = &["0", "1"];
const TERRIBLE_GREAT: &[(&str, &str)] = &[("0", "terrible"), ("1", "great")];
const NO_YES: &[(&str, &str)] = &[("0", "No"), ("1", "Yes")];
const MNLI_LAYOUT: Layout = Layout::Glue { header: true, text_a: 8, text_b: Some(9), label: Column::Last };
const M128: Option<Lengths> = Some(len(128));
const M256_240: Option<Lengths> = Some(fsl(256, 240, None, false));

const fn csv(text_a: usize) -> Layout {
    Layout::Csv { text_a, columns: 2 }
}

/// Every registered task.
pub const TASKS: &[Task] = &[
    Task {
        name: "sst-2",
        dir: "SST-2",
        layout: Layout::Glue { header: true, text_a: 0, text_b: None, label: Column::Index(1) },
        labels: BINARY,
        regression: false,
        template: SENTIMENT,
        mapping: TERRIBLE_GREAT,
        lengths: [M128, M128, M128],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "sst-5",
        dir: "sst-5",
        layout: csv(1),
        labels: &["0", "1", "2", "3", "4"],
        regression: false,
        template: SENTIMENT,
        mapping: &[("0", "terrible"), ("1", "bad"), ("2", "okay"), ("3", "good"), ("4", "great")],
        lengths: [Some(fsl(128, 110, Some(20), true)), M128, Some(fsl(128, 110, Some(20), true))],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "mr",
        dir: "mr",
        layout: csv(1),
        labels: BINARY,
        regression: false,
        template: SENTIMENT,
        mapping: TERRIBLE_GREAT,
        lengths: [
            Some(fsl(128, 110, Some(50), true)),
            Some(fsl(128, 110, Some(50), false)),
            Some(fsl(128, 110, Some(50), false)),
        ],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "cr",
        dir: "cr",
        layout: csv(1),
        labels: BINARY,
        regression: false,
        template: SENTIMENT,
        mapping: TERRIBLE_GREAT,
        lengths: [
            Some(fsl(128, 110, Some(50), true)),
            Some(fsl(128, 110, Some(50), false)),
            Some(fsl(128, 110, Some(50), false)),
        ],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "mpqa",
        dir: "mpqa",
        layout: csv(1),
        labels: BINARY,
        regression: false,
        template: SENTIMENT,
        mapping: TERRIBLE_GREAT,
        lengths: [
            Some(fsl(128, 110, None, true)),
            Some(fsl(128, 110, None, false)),
            Some(fsl(128, 110, None, false)),
        ],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "subj",
        dir: "subj",
        layout: csv(1),
        labels: BINARY,
        regression: false,
        template: "*cls**sent_0*_This_is*mask*.*sep+*",
        mapping: &[("0", "subjective"), ("1", "objective")],
        lengths: [
            Some(fsl(128, 110, Some(50), true)),
            Some(fsl(128, 110, Some(50), false)),
            Some(fsl(128, 110, Some(50), false)),
        ],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "trec",
        dir: "trec",
        layout: csv(1),
        labels: &["0", "1", "2", "3", "4", "5"],
        regression: false,
        template: "*cls**mask*:*+sent_0**sep+*",
        mapping: &[
            ("0", "Description"),
            ("1", "Entity"),
            ("2", "Expression"),
            ("3", "Human"),
            ("4", "Location"),
            ("5", "Number"),
        ],
        lengths: [
            Some(fsl(128, 110, None, true)),
            Some(fsl(128, 110, None, false)),
            Some(fsl(128, 110, None, false)),
        ],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "cola",
        dir: "CoLA",
        layout: Layout::Glue { header: false, text_a: 3, text_b: None, label: Column::Index(1) },
        labels: BINARY,
        regression: false,
        template: "*cls**sent_0*_This_is*mask*.*sep+*",
        mapping: &[("0", "incorrect"), ("1", "correct")],
        lengths: [M128, M128, M128],
        metrics: &["mcc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "mnli",
        dir: "MNLI",
        layout: MNLI_LAYOUT,
        labels: NLI_LABELS,
        regression: false,
        template: NLI,
        mapping: NLI_WORDS,
        lengths: [Some(ns(256, 4)), M256_240, M256_240],
        metrics: &["mnli/acc"],
        test_split: "test_matched",
        dev_split: "dev_matched",
    },
    Task {
        name: "mnli-mm",
        dir: "MNLI",
        layout: MNLI_LAYOUT,
        labels: NLI_LABELS,
        regression: false,
        template: NLI,
        mapping: NLI_WORDS,
        lengths: [Some(ns(256, 4)), M256_240, M256_240],
        metrics: &["mnli-mm/acc"],
        test_split: "test_mismatched",
        dev_split: "dev_matched",
    },
    Task {
        name: "snli",
        dir: "SNLI",
        layout: Layout::Glue { header: true, text_a: 7, text_b: Some(8), label: Column::Last },
        labels: NLI_LABELS,
        regression: false,
        template: NLI,
        mapping: NLI_WORDS,
        lengths: [Some(ns(256, 4)), Some(ns(256, 4)), Some(ns(256, 4))],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "qnli",
        dir: "QNLI",
        layout: Layout::Glue { header: true, text_a: 1, text_b: Some(2), label: Column::Last },
        labels: ENTAIL_LABELS,
        regression: false,
        template: NLI,
        mapping: ENTAIL_WORDS,
        lengths: [M128, M128, M128],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "rte",
        dir: "RTE",
        layout: Layout::Glue { header: true, text_a: 1, text_b: Some(2), label: Column::Last },
        labels: ENTAIL_LABELS,
        regression: false,
        template: NLI,
        mapping: ENTAIL_WORDS,
        lengths: [M256_240, M256_240, M256_240],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "mrpc",
        dir: "MRPC",
        layout: Layout::Glue { header: true, text_a: 3, text_b: Some(4), label: Column::Index(0) },
        labels: BINARY,
        regression: false,
        template: PARAPHRASE,
        mapping: NO_YES,
        lengths: [M128, M128, M128],
        metrics: &["acc", "f1", "acc_and_f1"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "qqp",
        dir: "QQP",
        layout: Layout::Glue { header: true, text_a: 3, text_b: Some(4), label: Column::Index(5) },
        labels: BINARY,
        regression: false,
        template: PARAPHRASE,
        mapping: NO_YES,
        lengths: [Some(ns(128, 4)), M128, M128],
        metrics: &["acc", "f1", "acc_and_f1"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "sts-b",
        dir: "STS-B",
        layout: Layout::Glue { header: true, text_a: 7, text_b: Some(8), label: Column::Last },
        labels: BINARY,
        regression: true,
        template: PARAPHRASE,
        mapping: NO_YES,
        lengths: [M128, None, None],
        metrics: &["pearson", "spearmanr", "corr"],
        test_split: "test",
        dev_split: "dev",
    },
    Task {
        name: "ag_news",
        dir: "ag_news",
        layout: Layout::Csv { text_a: 2, columns: 3 },
        labels: &["1", "2", "3", "4"],
        regression: false,
        template: "*cls**sent_0*_This_article_is_about*mask*_news.*sep+*",
        mapping: &[("1", "world"), ("2", "sports"), ("3", "business"), ("4", "tech")],
        lengths: [None, M256_240, None],
        metrics: &["acc"],
        test_split: "test",
        dev_split: "dev",
    },
];

/// The task registered under `name`, case-insensitive (`SST-2`, `sst-2`, `CoLA`).
pub fn task(name: &str) -> Result<&'static Task, InputError> {
    let key = name.to_lowercase();
    TASKS.iter().find(|t| t.name == key).ok_or_else(|| {
        let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
        InputError(format!("unknown task '{name}': known tasks are {}", names.join(", ")))
    })
}

/// The task whose raw directory is `dir` (the k-shot generator's task names), if registered.
pub fn task_by_dir(dir: &str) -> Option<&'static Task> {
    TASKS.iter().find(|t| t.dir == dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_errors_list_tasks() {
        assert_eq!(task("SST-2").unwrap().dir, "SST-2");
        assert_eq!(task("CoLA").unwrap().name, "cola");
        let e = task("sst2").unwrap_err().to_string();
        assert!(e.contains("unknown task 'sst2'") && e.contains("ag_news"), "{e}");
    }

    #[test]
    fn mappings_follow_label_order() {
        for t in TASKS {
            assert_eq!(t.mapping.len(), t.labels.len(), "{}", t.name);
            for (label, (key, _)) in t.labels.iter().zip(t.mapping) {
                assert_eq!(label, key, "{}", t.name);
            }
            assert!(t.template.contains("*mask*"), "{}", t.name);
        }
    }

    #[test]
    fn presets_and_selection() {
        let mnli = task("mnli").unwrap();
        assert_eq!(mnli.lengths(Preset::Mezo), fsl(256, 240, None, false));
        assert_eq!(mnli.lengths(Preset::LmBff).num_sample, Some(4));
        assert_eq!(task("sst-5").unwrap().lengths(Preset::KernelFt), len(128));
        assert!(task("sst-5").unwrap().lengths(Preset::Mezo).double_demo);
        assert_eq!(task("sts-b").unwrap().lengths(Preset::Mezo), len(128));
        assert_eq!(task("mrpc").unwrap().selection_metric(), "f1");
        assert_eq!(task("cola").unwrap().selection_metric(), "mcc");
        assert_eq!(task("sts-b").unwrap().selection_metric(), "pearson");
        assert_eq!(task("mnli-mm").unwrap().selection_metric(), "mnli-mm/acc");
        assert_eq!(task("trec").unwrap().selection_metric(), "acc");
    }
}
