//! Every flag that picks one of a few values, as one convention: a clap `ValueEnum` here, named
//! after the library type it becomes (`DtypeArg` -> [`Dtype`]) and converted with `From`. The
//! spellings users type live in the command line only (library types know none of them), and
//! `--help` lists each flag's values with their meaning.
//!
//! `--device` is the one exception: `cuda:N` carries a number, so it parses as a value
//! ([`crate::dist::device::DeviceRequest`]), not as a choice.

use crate::data::dataset::FewShotType;
use crate::data::kshot::Mode;
use crate::data::large::prompt::OptBos;
use crate::data::tasks::Preset;
use crate::kernel::Formula;
use crate::model::Dtype;
use crate::optim::zo::Rng;
use crate::optim::WeightDecay;
use crate::solve::SolverKind;
use crate::train::{LrSchedule, Objective, Parallel, Stash};

/// `--script`: which of MeZO's large-model run scripts gives the defaults (a preset of flags,
/// resolved by the command line, so it converts into no library type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScriptArg {
    /// mezo.sh, MODE=ft: the full model.
    Mezo,
    /// mezo.sh, MODE=prefix: 5 prefix tokens, initialised from real activations.
    MezoPrefix,
    /// mezo.sh, MODE=lora: LoRA r 8, α 16 on q_proj and v_proj.
    MezoLora,
}

/// A choice flag: the enum clap parses, and its conversion into the library type.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident => $target:ty {
        $($(#[$variant_meta:meta])* $variant:ident => $value:expr),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
        pub enum $name {
            $($(#[$variant_meta])* $variant),*
        }

        impl From<$name> for $target {
            fn from(choice: $name) -> $target {
                match choice {
                    $($name::$variant => $value),*
                }
            }
        }
    };
}

choice! {
    /// `--dtype`: the parameter and activation type.
    DtypeArg => Dtype {
        F32 => Dtype::F32,
        Bf16 => Dtype::Bf16,
        F16 => Dtype::F16,
    }
}

choice! {
    /// `--few-shot-type`.
    FewShotTypeArg => FewShotType {
        /// A template with a mask, label words scored at the mask.
        Prompt => FewShotType::Prompt,
        /// The template with demonstrations of each label appended.
        PromptDemo => FewShotType::PromptDemo,
        /// No template: a classifier on the first token.
        Finetune => FewShotType::Finetune,
    }
}

choice! {
    /// `--opt-bos`: the first token of an OPT prompt.
    OptBosArg => OptBos {
        /// Id 0 (`<s>`), as MeZO's large-model code sets it for every OPT model.
        Reference => OptBos::Reference,
        /// The tokenizer's own BOS (`</s>`, id 2), as transformers encodes and OPT was trained.
        Tokenizer => OptBos::Tokenizer,
    }
}

choice! {
    /// `--preset`: whose run scripts' length settings.
    PresetArg => Preset {
        LmBff => Preset::LmBff,
        KernelFt => Preset::KernelFt,
        /// MeZO's medium-model run scripts (the default).
        Mezo => Preset::Mezo,
    }
}

choice! {
    /// `kshot --mode`.
    ModeArg => Mode {
        /// LM-BFF: dev is the next k per label, test the original eval file.
        KShot => Mode::KShot,
        /// dev is the next 10k per label.
        #[value(name = "k-shot-10x")]
        KShot10x => Mode::KShot10x,
        /// LM-Kernel-FT and MeZO: test files of more than 1000 items cut to a seed-42 random 1000.
        #[value(name = "k-shot-1k-test")]
        KShot1kTest => Mode::KShot1kTest,
    }
}

choice! {
    /// `train --lr-schedule`.
    ScheduleArg => LrSchedule {
        Constant => LrSchedule::Constant,
        /// η (T − t) / T.
        Linear => LrSchedule::Linear,
    }
}

choice! {
    /// `train --weight-decay-rule`.
    DecayRuleArg => WeightDecay {
        /// Every trained tensor (MeZO medium, RoBERTa).
        All => WeightDecay::AllTensors,
        /// Not biases and LayerNorms (MeZO large, OPT).
        NoBiasNorm => WeightDecay::ExcludeBiasAndNorm,
    }
}

choice! {
    /// `train --parallel`.
    ParallelArg => Parallel {
        /// Ranks split each batch and evaluate every direction.
        Data => Parallel::Data,
        /// Each rank evaluates its own direction on the whole batch (n-SPSA with n = ranks).
        Directions => Parallel::Directions,
    }
}

choice! {
    /// `train --rng`.
    RngArg => Rng {
        /// Counter-based Philox normals, perturbed weights formed just in time: exact restore in
        /// every dtype, no z in memory, one pass per update.
        Fast => Rng::Fast,
        /// MeZO's PyTorch stream (libtorch's generator, in-place perturbations): the trajectory of
        /// the reference implementation with the same libtorch.
        Reference => Rng::Reference,
    }
}

choice! {
    /// `train --best-weights`.
    StashArg => Stash {
        Memory => Stash::Memory,
        /// In the run directory, for models whose extra copy would not fit in memory.
        Disk => Stash::Disk,
        /// Disk above 1 GiB of trained values.
        Auto => Stash::Auto,
    }
}

choice! {
    /// `train --objective`.
    ObjectiveArg => Objective {
        Loss => Objective::Loss,
        /// −accuracy of the batch.
        Accuracy => Objective::Accuracy,
        /// −binary F1 of the batch.
        F1 => Objective::F1,
    }
}

choice! {
    /// `kernel --formula`.
    FormulaArg => Formula {
        /// ⟨g(a), g(b)⟩.
        Sgd => Formula::Sgd,
        /// ⟨sign g(a), sign g(b)⟩ (exact integers).
        Signgd => Formula::SignGd,
        /// ⟨sign g(a), g(b)⟩ and ⟨g(a), sign g(b)⟩ (needs --binary).
        #[value(name = "asymmetric_signgd", alias = "asymmetric-signgd")]
        AsymmetricSigngd => Formula::AsymmetricSignGd,
    }
}

choice! {
    /// `solve --solver`.
    SolverArg => SolverKind {
        Lstsq => SolverKind::Lstsq,
        Logistic => SolverKind::Logistic,
        Svr => SolverKind::Svr,
        Svc => SolverKind::Svc,
        Asym => SolverKind::Asym,
    }
}

/// `train --optimizer`: which trainer runs, not a library value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    /// Zeroth-order SGD (MeZO); --rng picks the perturbation stream.
    Mezo,
    /// Backpropagation with AdamW: the papers' fine-tuning baseline.
    Adam,
    /// Backpropagation with plain SGD.
    Sgd,
}

/// `train --zo-optimizer`; momentum takes its β from `--momentum`
/// ([`ZoOptimizerArg::with_momentum`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ZoOptimizerArg {
    /// ZO-SGD, the reference update.
    Sgd,
    /// ZO-SGD with heavy-ball momentum (--momentum).
    Momentum,
    /// ZO-Adam.
    Adam,
}

impl ZoOptimizerArg {
    pub fn with_momentum(self, beta: f64) -> crate::optim::zo::ZoOptimizer {
        use crate::optim::zo::ZoOptimizer;
        match self {
            ZoOptimizerArg::Sgd => ZoOptimizer::Sgd,
            ZoOptimizerArg::Momentum => ZoOptimizer::Momentum { beta },
            ZoOptimizerArg::Adam => ZoOptimizer::Adam,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The spellings of the reference's scripts and of earlier mezo versions still parse.
    #[test]
    fn flag_spellings() {
        let parse = |text: &str| PresetArg::from_str(text, false).map(Preset::from);
        assert_eq!(parse("kernel-ft"), Ok(Preset::KernelFt));
        assert_eq!(parse("lm-bff"), Ok(Preset::LmBff));
        let mode = |text: &str| ModeArg::from_str(text, false).map(Mode::from);
        assert_eq!(mode("k-shot-1k-test"), Ok(Mode::KShot1kTest));
        assert_eq!(mode("k-shot-10x"), Ok(Mode::KShot10x));
        assert_eq!(mode("k-shot"), Ok(Mode::KShot));
        assert_eq!(DtypeArg::from_str("bf16", false).map(Dtype::from), Ok(Dtype::Bf16));
        assert_eq!(
            FewShotTypeArg::from_str("prompt-demo", false).map(FewShotType::from),
            Ok(FewShotType::PromptDemo)
        );
        for text in ["asymmetric_signgd", "asymmetric-signgd"] {
            assert_eq!(FormulaArg::from_str(text, false).map(Formula::from), Ok(Formula::AsymmetricSignGd));
        }
        assert_eq!(
            DecayRuleArg::from_str("no-bias-norm", false).map(WeightDecay::from),
            Ok(WeightDecay::ExcludeBiasAndNorm)
        );
    }
}

choice! {
    /// `--select-by`: which dev value picks the best weights of a large-model task.
    SelectByArg => crate::train::large::SelectBy {
        /// The dev loss, lowest.
        Loss => crate::train::large::SelectBy::Loss,
        /// The task's dev metric (accuracy or F1), highest.
        Metric => crate::train::large::SelectBy::Metric,
    }
}
