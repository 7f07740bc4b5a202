//! The reference's prompt strings (MeZO `large_models/templates.py`), character for character
//! (docs/reference.md §9.3).
//!
//! `encode` is a sample's prompt without an answer, `verbalize` the prompt followed by a candidate;
//! the `sfc` pair is the calibration prompt (surface form competition) without the sample's input.
//! Each task uses the template the reference selects by default (BoolQ's third version, ReCoRD's
//! GPT-3 one). SQuAD and DROP verbalise their first gold answer whatever the candidate, and have no
//! calibration prompt.

use super::{Candidate, Sample, Task};
use crate::error::InputError;

/// Which pair of template functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Plain,
    /// The calibration prompts of `--sfc` / `--icl-sfc`.
    Calibration,
}

fn verbalizer(task: Task, class: usize) -> &'static str {
    match task {
        Task::Sst2 => ["terrible", "great"][class],
        Task::Rte => ["Yes", "No"][class],
        Task::Cb => ["Yes", "No", "Maybe"][class],
        _ => ["No", "Yes"][class],
    }
}

/// The candidate's text as the template inserts it.
fn word(task: Task, candidate: &Candidate) -> String {
    match candidate {
        Candidate::Class(c) => verbalizer(task, *c).to_string(),
        Candidate::Text(t) => t.clone(),
    }
}

/// Copa's choice with its first word lower-cased, unless that word is exactly "I".
fn copa_choice(c: &str) -> String {
    let mut words: Vec<String> = c.split(' ').map(str::to_string).collect();
    if words[0] != "I" {
        words[0] = words[0].to_lowercase();
    }
    words.join(" ")
}

fn copa_conjunction(sample: &Sample) -> &'static str {
    // The reader only admits "cause" and "effect".
    if sample.field("question") == "effect" {
        " so "
    } else {
        " because "
    }
}

/// Copa's premise without trailing whitespace and one final full stop, then the conjunction.
fn copa_prompt(sample: &Sample) -> String {
    let premise = sample.field("premise").trim_end();
    let premise = premise.strip_suffix('.').unwrap_or(premise);
    format!("{premise}{}", copa_conjunction(sample))
}

/// BoolQ's question with a question mark and its first letter capitalised.
fn boolq_question(sample: &Sample) -> String {
    let q = sample.field("question");
    let q = if q.ends_with('?') { q.to_string() } else { format!("{q}?") };
    let mut chars = q.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => q,
    }
}

fn record_passage(sample: &Sample) -> String {
    sample.field("passage").replace("@highlight\n", "- ")
}

fn record_query(sample: &Sample, candidate: &str) -> String {
    sample.field("query").replace("@placeholder", candidate)
}

/// The prompt without an answer.
pub fn encode(task: Task, sample: &Sample, form: Form) -> Result<String, InputError> {
    let f = |name| sample.field(name);
    if form == Form::Calibration {
        return Ok(match task {
            Task::Sst2 => " It was".into(),
            Task::Copa => copa_conjunction(sample).trim().into(),
            Task::Record => "-".into(),
            Task::Squad | Task::Drop => return Err(no_calibration(task)),
            _ => String::new(),
        });
    }
    Ok(match task {
        Task::Sst2 => format!("{} It was", f("sentence").trim()),
        Task::Rte => {
            format!("{}\nDoes this mean that \"{}\" is true? Yes or No?\n", f("premise"), f("hypothesis"))
        }
        Task::Cb => format!(
            "Suppose {} Can we infer that \"{}\"? Yes, No, or Maybe?\n",
            f("premise"),
            f("hypothesis")
        ),
        Task::BoolQ => format!("{} {}\n", f("passage"), boolq_question(sample)),
        Task::Wsc => format!(
            "{}\nIn the previous sentence, does the pronoun \"{}\" refer to {}? Yes or No?\n",
            f("text"),
            f("span2_text").to_lowercase(),
            f("span1_text")
        ),
        Task::Wic => format!(
            "Does the word \"{}\" have the same meaning in these two sentences? Yes, No?\n{}\n{}\n",
            f("word"),
            f("sentence1"),
            f("sentence2")
        ),
        Task::MultiRc => format!(
            "{}\nQuestion: {}\nI found this answer \"{}\". Is that correct? Yes or No?\n",
            f("paragraph"),
            f("question"),
            f("answer")
        ),
        Task::Copa => copa_prompt(sample),
        Task::Record => format!("{}\n-", record_passage(sample)),
        Task::Squad => format!(
            "Title: {}\nContext: {}\nQuestion: {}\nAnswer:",
            f("title"),
            f("context"),
            f("question").trim()
        ),
        Task::Drop => format!("Passage: {}\nQuestion: {}\nAnswer:", f("context"), f("question").trim()),
    })
}

/// The prompt followed by `candidate` (SQuAD and DROP: by the first gold answer and a newline).
pub fn verbalize(
    task: Task,
    sample: &Sample,
    candidate: Option<&Candidate>,
    form: Form,
) -> Result<String, InputError> {
    let answer = || -> String {
        match candidate {
            Some(c) => word(task, c),
            None => unreachable!("only generation tasks verbalise without a candidate"),
        }
    };
    if form == Form::Calibration {
        return Ok(match task {
            Task::Sst2 => format!(" It was {}", answer()),
            Task::Copa => format!("{} {}", copa_conjunction(sample).trim(), copa_choice(&answer())),
            Task::Record => format!("- {}", record_query(sample, &answer())),
            Task::Squad | Task::Drop => return Err(no_calibration(task)),
            _ => answer(),
        });
    }
    Ok(match task {
        Task::Copa => format!("{}{}", copa_prompt(sample), copa_choice(&answer())),
        Task::Record => format!("{}\n- {}", record_passage(sample), record_query(sample, &answer())),
        Task::Sst2 => format!("{} It was {}", sample.field("sentence").trim(), answer()),
        Task::Squad | Task::Drop => format!("{} {}\n", encode(task, sample, form)?, sample.answers()[0]),
        _ => format!("{}{}", encode(task, sample, form)?, answer()),
    })
}

fn no_calibration(task: Task) -> InputError {
    InputError(format!(
        "{} is a generation task: it has no calibration prompt (--sfc, --icl-sfc)",
        task.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::large::Gold;

    fn sample(fields: &[(&'static str, &str)], candidates: Vec<Candidate>) -> Sample {
        Sample {
            id: 0,
            fields: fields.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            candidates,
            gold: Gold::Index(0),
        }
    }

    #[test]
    fn copa_lowers_the_first_word_unless_it_is_i() {
        let s = sample(&[("premise", "The man fell. "), ("question", "effect")], vec![]);
        let c = |t: &str| Candidate::Text(t.into());
        assert_eq!(encode(Task::Copa, &s, Form::Plain).unwrap(), "The man fell so ");
        assert_eq!(
            verbalize(Task::Copa, &s, Some(&c("He cried.")), Form::Plain).unwrap(),
            "The man fell so he cried."
        );
        assert_eq!(
            verbalize(Task::Copa, &s, Some(&c("I'm here")), Form::Plain).unwrap(),
            "The man fell so i'm here"
        );
        assert_eq!(
            verbalize(Task::Copa, &s, Some(&c("I left")), Form::Plain).unwrap(),
            "The man fell so I left"
        );
        assert_eq!(
            verbalize(Task::Copa, &s, Some(&c("He cried.")), Form::Calibration).unwrap(),
            "so he cried."
        );
    }

    #[test]
    fn boolq_capitalises_and_asks() {
        let s = sample(&[("passage", "P."), ("question", "is it")], vec![]);
        assert_eq!(encode(Task::BoolQ, &s, Form::Plain).unwrap(), "P. Is it?\n");
        let yes = Candidate::Text("Yes".into());
        assert_eq!(verbalize(Task::BoolQ, &s, Some(&yes), Form::Plain).unwrap(), "P. Is it?\nYes");
    }

    #[test]
    fn record_scores_the_filled_query() {
        let s =
            sample(&[("passage", "A story.\n@highlight\nBob won"), ("query", "@placeholder lost")], vec![]);
        let c = Candidate::Text("Ann".into());
        assert_eq!(
            verbalize(Task::Record, &s, Some(&c), Form::Plain).unwrap(),
            "A story.\n- Bob won\n- Ann lost"
        );
        assert_eq!(encode(Task::Record, &s, Form::Plain).unwrap(), "A story.\n- Bob won\n-");
    }
}
