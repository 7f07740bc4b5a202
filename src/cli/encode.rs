use super::data::DataArgs;
use super::Context;
use crate::data::dataset::{Feature, TaskData};
use crate::data::examples::{Label, Split};
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct EncodeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Which split to show: train, dev or test.
    #[arg(long, default_value = "dev", value_parser = ["train", "dev", "test"])]
    split: String,
    /// Show at most N features.
    #[arg(long, default_value_t = 10, value_name = "N")]
    limit: usize,
    /// Print JSON lines (ids, tokens, mask position, label) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: &EncodeArgs) -> Result<()> {
    let config = args.data.config()?;
    ctx.dist.on_root(|| {
        let mut data = TaskData::load(config)?;
        let split = match args.split.as_str() {
            "train" => Split::Train,
            "dev" => Split::Dev,
            _ => Split::Test,
        };
        let features: Vec<Feature> = match split {
            Split::Train => (0..data.train.len().min(args.limit))
                .map(|i| data.train_feature(i))
                .collect::<Result<_, _>>()?,
            Split::Dev => data.dev.features.iter().take(args.limit).cloned().collect(),
            Split::Test => data.test.features.iter().take(args.limit).cloned().collect(),
        };
        let tokenizer = data.encoder.tokenizer();
        let words: Vec<String> = data
            .encoder
            .label_word_ids()
            .iter()
            .map(|&i| tokenizer.id_to_token(i as u32).unwrap_or_default())
            .collect();
        if !args.json {
            println!("task {} {} split, label words {words:?}", data.config.task.name, split.name());
        }
        for f in &features {
            let tokens: Vec<String> = f
                .encoded
                .input_ids
                .iter()
                .map(|&i| tokenizer.id_to_token(i as u32).unwrap_or_default())
                .collect();
            let label = match f.label {
                Label::Class(c) => serde_json::json!(c),
                Label::Score(s) => serde_json::json!(s),
            };
            if args.json {
                let line = serde_json::json!({
                    "example": f.query, "label": label, "mask_pos": f.encoded.mask_pos,
                    "input_ids": f.encoded.input_ids, "tokens": tokens,
                });
                println!("{line}");
            } else {
                let mask = f.encoded.mask_pos.map_or(String::new(), |p| format!(" mask {p}"));
                println!("#{} label {label}{mask} len {}: {}", f.query, tokens.len(), tokens.join(" "));
            }
        }
        Ok(())
    })?;
    Ok(())
}
