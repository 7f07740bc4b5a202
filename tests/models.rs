//! Forward passes against `transformers` on the tiny checkpoints of tests/fixtures/models (made
//! by scripts/make_model_fixtures.py, with the reference outputs).

use mezo::model::cache::greedy_generate;
use mezo::model::{self, Dtype, LoadOptions, Model};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("reference.safetensors")).unwrap().into_iter().collect()
}

fn load(name: &str, dtype: Dtype) -> Model {
    let options = LoadOptions { device: Device::Cpu, dtype, num_labels: 3, init_seed: 0 };
    model::load(&fixture(name), &options).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn names_in_order(name: &str, m: &Model) {
    let text = std::fs::read_to_string(fixture(name).join("named_parameters.json")).unwrap();
    let expected: Vec<String> = serde_json::from_str(&text).unwrap();
    let ours: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(ours, expected, "{name}: parameter order differs from named_parameters()");
}

#[test]
fn encoders_match_transformers() {
    let _guard = tch::no_grad_guard();
    for name in ["roberta", "roberta-tied", "bert"] {
        let r = reference(name);
        let m = load(name, Dtype::F32);
        names_in_order(name, &m);
        let e = m.encoder().unwrap();
        assert_eq!(
            e.has_pooler(),
            name == "roberta",
            "{name}: the pooler exists only when the checkpoint has one"
        );
        let scores =
            e.label_scores(&r["input_ids"], &r["attention_mask"], &r["mask_pos"], &r["label_word_ids"]);
        let d = max_diff(&scores, &r["label_scores"]);
        eprintln!("{name}: label-word scores max diff {d:.2e}");
        assert!(d <= 1e-5, "{name}: label-word scores differ by {d}");
        let logits = e.classifier_logits(&r["input_ids"], &r["attention_mask"]);
        let d = max_diff(&logits, &r["cls_logits"]);
        assert!(d <= 1e-5, "{name}: classifier logits differ by {d}");

        let m = load(name, Dtype::Bf16);
        let e = m.encoder().unwrap();
        let scores =
            e.label_scores(&r["input_ids"], &r["attention_mask"], &r["mask_pos"], &r["label_word_ids"]);
        let d = max_diff(&scores, &r["label_scores_bf16"]);
        let scale = r["label_scores"].abs().max().double_value(&[]);
        eprintln!("{name}: bf16 scores max diff {d:.2e} (scale {scale:.1})");
        assert!(d <= BF16_TOLERANCE * scale.max(1.0), "{name}: bf16 scores differ by {d} (scale {scale})");
    }
}

/// bf16 against transformers' bf16, relative to the largest output: both round each op's result
/// to 8 bits of mantissa, in possibly different orders.
const BF16_TOLERANCE: f64 = 0.05;

#[test]
fn the_untied_decoder_is_its_own_tensor() {
    let m = load("roberta-tied", Dtype::F32);
    let word =
        &m.params.iter().find(|p| p.name == "roberta.embeddings.word_embeddings.weight").unwrap().tensor;
    let decoder = &m.params.iter().find(|p| p.name == "lm_head.decoder.weight").unwrap().tensor;
    assert_eq!(max_diff(word, decoder), 0.0, "initialised from the word embeddings");
    assert_ne!(word.data_ptr(), decoder.data_ptr(), "but not sharing storage");
}

#[test]
fn decoders_match_transformers() {
    let _guard = tch::no_grad_guard();
    for name in ["opt", "opt-untied", "llama", "llama-tied", "qwen2"] {
        let r = reference(name);
        let m = load(name, Dtype::F32);
        names_in_order(name, &m);
        let lm = m.causal_lm().unwrap();
        let logits = lm.forward(&r["input_ids"], &r["attention_mask"], None);
        // Compare where the reference has real tokens.
        let valid = r["attention_mask"].to_kind(Kind::Bool).unsqueeze(-1).expand_as(&logits);
        let d = max_diff(&logits.masked_select(&valid), &r["logits"].masked_select(&valid));
        eprintln!("{name}: logits max diff {d:.2e}");
        assert!(d <= 1e-5, "{name}: logits differ by {d}");
        let generated = greedy_generate(lm, &r["generate_prompt"], 8, None);
        assert_eq!(
            Vec::<i64>::try_from(generated.view([-1])).unwrap(),
            Vec::<i64>::try_from(r["generate_output"].view([-1])).unwrap(),
            "{name}: greedy generation"
        );

        let m = load(name, Dtype::Bf16);
        let logits = m.causal_lm().unwrap().forward(&r["input_ids"], &r["attention_mask"], None);
        let d = max_diff(&logits.masked_select(&valid), &r["logits_bf16"].masked_select(&valid));
        let scale = r["logits"].abs().max().double_value(&[]);
        eprintln!("{name}: bf16 logits max diff {d:.2e} (scale {scale:.1})");
        assert!(d <= BF16_TOLERANCE * scale.max(1.0), "{name}: bf16 logits differ by {d} (scale {scale})");
    }
}
