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
    let options = LoadOptions { num_labels: Some(3), ..LoadOptions::new(Device::Cpu, dtype) };
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
        let logits = e.classifier_logits(&r["input_ids"], &r["attention_mask"]).unwrap();
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

fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn load_error(dir: &Path) -> String {
    let options = LoadOptions { num_labels: Some(3), ..LoadOptions::new(Device::Cpu, Dtype::F32) };
    match model::load(dir, &options) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loading_errors_list_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("m");
    copy_fixture("roberta", &d);
    let tensors = Tensor::read_safetensors(d.join("model.safetensors")).unwrap();
    let kept: Vec<(String, Tensor)> = tensors
        .into_iter()
        .filter(|(n, _)| n != "roberta.encoder.layer.1.output.dense.weight" && n != "lm_head.bias")
        .collect();
    Tensor::write_safetensors(&kept, d.join("model.safetensors")).unwrap();
    let e = load_error(&d);
    assert!(e.contains("missing tensor roberta.encoder.layer.1.output.dense.weight [32, 64]"), "{e}");
    assert!(e.contains("missing tensor lm_head.bias [622]"), "{e}");

    copy_fixture("llama", &d);
    let config = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        config.replace("\"intermediate_size\": 64", "\"intermediate_size\": 48"),
    )
    .unwrap();
    let e = load_error(&d);
    assert!(
        e.contains(
            "tensor model.layers.0.mlp.gate_proj.weight has shape [64, 32], the config implies [48, 32]"
        ),
        "{e}"
    );
    assert!(e.contains("model.layers.1.mlp.down_proj.weight"), "every mismatch is listed: {e}");

    std::fs::write(
        d.join("config.json"),
        config.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt2\""),
    )
    .unwrap();
    let e = load_error(&d);
    assert!(
        e.contains(
            "model_type 'gpt2' is not supported (supported: roberta, bert, opt, llama, mistral, qwen2)"
        ),
        "{e}"
    );

    std::fs::write(
        d.join("config.json"),
        config.replace("\"rope_scaling\": null", "\"rope_scaling\": {\"rope_type\": \"yarn\"}"),
    )
    .unwrap();
    assert!(load_error(&d).contains("rope_scaling"));

    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("config.json"), &config).unwrap();
    assert!(load_error(&d).contains("no model.safetensors or model.safetensors.index.json"));
    std::fs::remove_file(d.join("config.json")).unwrap();
    assert!(load_error(&d).contains("config.json"));
}

#[test]
fn saved_directories_load_back_identically_and_shard() {
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    for (name, shard) in [("roberta", model::MAX_SHARD_BYTES), ("llama", 40_000)] {
        let m = load(name, Dtype::F32);
        let out = dir.path().join(name);
        m.save(&out, shard).unwrap();
        if name == "llama" {
            let index: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
            )
            .unwrap();
            assert!(
                index["weight_map"]["lm_head.weight"].as_str().unwrap().ends_with("-of-00004.safetensors"),
                "{index}"
            );
            assert!(!out.join("model.safetensors").exists());
        }
        assert!(out.join("tokenizer.json").exists());
        let options = LoadOptions { num_labels: Some(3), ..LoadOptions::new(Device::Cpu, Dtype::F32) };
        let back = model::load(&out, &options).unwrap();
        assert_eq!(back.params.len(), m.params.len());
        for (a, b) in m.params.iter().zip(&back.params) {
            assert_eq!(a.name, b.name);
            assert_eq!(max_diff(&a.tensor, &b.tensor), 0.0, "{}", a.name);
        }
    }
}

/// The eval path's batched, sharded scores equal the model's scores of each feature alone.
#[test]
fn eval_scores_are_the_models_scores() {
    use mezo::data::dataset::{DataConfig, FewShotType, TaskData};
    use mezo::data::tasks::{task, Preset};
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mezo"))
        .args(["-q", "kshot", "--task", "SST-2", "--k", "4", "--seed", "1", "--mode", "k-shot"])
        .arg("--data-dir")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/demo/original"))
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
    let sst2 = task("sst-2").unwrap();
    let m = load("roberta", Dtype::F32);
    let config = DataConfig {
        task: sst2,
        data_dir: out.join("k-shot/SST-2/4-1"),
        tokenizer: fixture("roberta").join("tokenizer.json"),
        few_shot_type: FewShotType::Prompt,
        template: sst2.template.into(),
        mapping: sst2.mapping.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        lengths: sst2.lengths(Preset::Mezo),
        truncate_head: false,
        seed: 1,
        causal: false,
    };
    let data = TaskData::load(config).unwrap();
    let dist = mezo::dist::Dist::single();
    let batched = mezo::eval::feature_scores(&m, &data, &data.dev, &dist, 5).unwrap();
    let words = Tensor::from_slice(data.encoder.label_word_ids());
    for (i, f) in data.dev.features.iter().enumerate() {
        let ids = Tensor::from_slice(&f.encoded.input_ids).view([1, -1]);
        let mask = ids.ones_like();
        let pos = Tensor::from_slice(&[f.encoded.mask_pos.unwrap() as i64]).view([1, 1]);
        let alone = m.encoder().unwrap().label_scores(&ids, &mask, &pos, &words).to_kind(Kind::Double);
        let d = max_diff(&alone.view([-1]), &batched.get(i as i64));
        assert!(d < 1e-5, "feature {i}: padded batch differs from the unpadded forward by {d}");
    }
}

#[test]
fn freezing_rules_select_by_name_in_order() {
    use mezo::model::{FreezeRules, Scope};
    let m = load("roberta", Dtype::F32);
    let names =
        |rules: FreezeRules| -> Vec<String> { m.trainable(&rules).iter().map(|p| p.name.clone()).collect() };
    assert_eq!(names(FreezeRules::default()).len(), m.params.len());
    let no_embed = names(FreezeRules { exclude_embeddings: true, ..Default::default() });
    assert!(no_embed.iter().all(|n| !n.contains("embed")));
    assert!(no_embed.contains(&"lm_head.decoder.weight".to_string()), "the decoder is not an embedding");
    let no_head = names(FreezeRules { exclude_head: true, ..Default::default() });
    assert!(no_head.iter().all(|n| !n.starts_with("lm_head")));
    assert!(no_head.contains(&"classifier.weight".to_string()), "as in the reference, classifier stays");
    let biases = names(FreezeRules { only_biases: true, ..Default::default() });
    assert!(biases.contains(&"lm_head.bias".to_string()) && biases.iter().all(|n| n.contains("bias")));
    let head = names(FreezeRules { scope: Scope::Head, ..Default::default() });
    assert_eq!(
        head,
        [
            "lm_head.bias",
            "lm_head.dense.weight",
            "lm_head.dense.bias",
            "lm_head.layer_norm.weight",
            "lm_head.layer_norm.bias",
            "lm_head.decoder.weight"
        ]
    );
    // grad_dim of the fixture: every parameter counted.
    let numel: i64 = m.params.iter().map(|p| p.tensor.numel() as i64).sum();
    assert_eq!(
        numel,
        622 * 32
            + 66 * 32
            + 32
            + 64
            + 2 * (4 * (32 * 32 + 32) + 4 * 32 + 2 * 32 * 64 + 64 + 32)
            + 32 * 32
            + 32
            + 622
            + 32 * 32
            + 32
            + 64
            + 622 * 32
            + 3 * 32
            + 3
    );
}

#[test]
fn lora_adapters_attach_train_save_and_load() {
    use mezo::model::{FreezeRules, LoraConfig, Scope};
    let _guard = tch::no_grad_guard();
    let r = reference("opt");
    let lora = LoraConfig { rank: 4, alpha: 16.0, targets: vec!["q_proj".into(), "v_proj".into()], seed: 5 };
    let options = LoadOptions { lora: Some(lora.clone()), ..LoadOptions::new(Device::Cpu, Dtype::F32) };
    let m = model::load(&fixture("opt"), &options).unwrap();
    let trainable: Vec<&str> = m
        .trainable(&FreezeRules { scope: Scope::Lora, ..Default::default() })
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    // v before q, as the reference's replaced modules keep their slots; A then B.
    assert_eq!(
        &trainable[..4],
        [
            "model.decoder.layers.0.self_attn.v_proj.lora_A",
            "model.decoder.layers.0.self_attn.v_proj.lora_B",
            "model.decoder.layers.0.self_attn.q_proj.lora_A",
            "model.decoder.layers.0.self_attn.q_proj.lora_B",
        ]
    );
    assert_eq!(trainable.len(), 8);
    let a = &m.params.iter().find(|p| p.name.ends_with("q_proj.lora_A")).unwrap().tensor;
    assert_eq!(a.size(), [4, 32]);
    assert!(a.abs().max().double_value(&[]) <= 1.0 / 32f64.sqrt());
    // B = 0: the adapted model computes the base model's logits.
    let lm = m.causal_lm().unwrap();
    let valid = r["attention_mask"].to_kind(Kind::Bool).unsqueeze(-1).expand_as(&r["logits"]);
    let base = lm.forward(&r["input_ids"], &r["attention_mask"], None);
    assert!(max_diff(&base.masked_select(&valid), &r["logits"].masked_select(&valid)) <= 1e-5);
    // Train B a little: the output moves; saved and reloaded adapters reproduce it.
    for p in m.params.iter().filter(|p| p.name.ends_with("lora_B")) {
        let _ = p.tensor.shallow_clone().fill_(0.01);
    }
    let adapted = lm.forward(&r["input_ids"], &r["attention_mask"], None);
    assert!(max_diff(&adapted, &base) > 1e-3);
    let dir = tempfile::tempdir().unwrap();
    m.save_adapter(&dir.path().join("adapter")).unwrap();
    let options = LoadOptions {
        adapter: Some(dir.path().join("adapter")),
        ..LoadOptions::new(Device::Cpu, Dtype::F32)
    };
    let back = model::load(&fixture("opt"), &options).unwrap();
    assert_eq!(back.params.len(), m.params.len());
    let again = back.causal_lm().unwrap().forward(&r["input_ids"], &r["attention_mask"], None);
    assert_eq!(max_diff(&again, &adapted), 0.0);
    // A target that matches nothing is an error, not a silent no-op.
    let bad = LoraConfig { targets: vec!["query".into()], ..lora };
    let options = LoadOptions { lora: Some(bad), ..LoadOptions::new(Device::Cpu, Dtype::F32) };
    assert!(model::load(&fixture("opt"), &options)
        .err()
        .unwrap()
        .to_string()
        .contains("match no linear layer"));
}

#[test]
fn prefix_tuning_initialises_from_activations_and_caches_consistently() {
    use mezo::model::cache::KvCache;
    use mezo::model::{FreezeRules, Scope};
    let _guard = tch::no_grad_guard();
    for name in ["opt", "llama"] {
        let options = |seed| LoadOptions {
            num_prefix: Some(5),
            init_seed: seed,
            ..LoadOptions::new(Device::Cpu, Dtype::F32)
        };
        let m = model::load(&fixture(name), &options(3)).unwrap();
        let prefix: Vec<&str> = m
            .trainable(&FreezeRules { scope: Scope::Prefix, ..Default::default() })
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(prefix.len(), 4, "{name}: keys and values of 2 layers");
        assert!(
            prefix[0].ends_with("layers.0.self_attn.prefix_keys")
                && prefix[1].ends_with("layers.0.self_attn.prefix_values")
        );
        let keys = &m.params.iter().find(|p| p.name == prefix[0]).unwrap().tensor;
        let width = if name == "llama" { 16 } else { 32 }; // Llama: 2 key/value heads of 8
        assert_eq!(keys.size(), [5, width]);
        assert!(keys.abs().sum(Kind::Double).double_value(&[]) > 0.0, "{name}: initialised from activations");
        let same = model::load(&fixture(name), &options(3)).unwrap();
        let other = model::load(&fixture(name), &options(4)).unwrap();
        let find = |m: &Model| m.params.iter().find(|p| p.name == prefix[0]).unwrap().tensor.shallow_clone();
        assert_eq!(max_diff(&find(&same), keys), 0.0, "{name}: seeded");
        assert!(max_diff(&find(&other), keys) > 0.0, "{name}: another seed, other tokens");

        // The prefix changes the output, and cached incremental decoding agrees with full forwards.
        let lm = m.causal_lm().unwrap();
        let base = load(name, Dtype::F32);
        let ids = Tensor::from_slice(&[7i64, 90, 33, 400, 12, 5]).view([1, 6]);
        let full = lm.forward(&ids, &ids.ones_like(), None);
        assert!(max_diff(&full, &base.causal_lm().unwrap().forward(&ids, &ids.ones_like(), None)) > 1e-3);
        let mut cache = KvCache::new(lm.num_layers());
        let mut last = lm.forward(&ids.narrow(1, 0, 3), &ids.narrow(1, 0, 3).ones_like(), Some(&mut cache));
        for t in 3..6 {
            last = lm.forward(&ids.narrow(1, t, 1), &ids.narrow(1, 0, t + 1).ones_like(), Some(&mut cache));
        }
        let d = max_diff(&last.select(1, -1), &full.select(1, 5));
        assert!(d < 1e-5, "{name}: cached decoding with a prefix differs by {d}");

        // Saved on its own, loaded back on the base model: the same outputs.
        let dir = tempfile::tempdir().unwrap();
        m.save_adapter(&dir.path().join("prefix")).unwrap();
        let adapted = LoadOptions {
            adapter: Some(dir.path().join("prefix")),
            ..LoadOptions::new(Device::Cpu, Dtype::F32)
        };
        let back = model::load(&fixture(name), &adapted).unwrap();
        assert_eq!(max_diff(&back.causal_lm().unwrap().forward(&ids, &ids.ones_like(), None), &full), 0.0);
    }

    // Encoders (MeZO medium prefix): the same slots in every self-attention.
    let r = reference("roberta");
    let options =
        LoadOptions { num_prefix: Some(4), init_seed: 9, ..LoadOptions::new(Device::Cpu, Dtype::F32) };
    let m = model::load(&fixture("roberta"), &options).unwrap();
    let prefix: Vec<&str> = m
        .trainable(&FreezeRules { scope: Scope::Prefix, ..Default::default() })
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(prefix[0], "roberta.encoder.layer.0.attention.self.prefix_keys");
    assert_eq!(prefix.len(), 4);
    let keys = &m.params.iter().find(|p| p.name == prefix[0]).unwrap().tensor;
    assert_eq!(keys.size(), [4, 32]);
    assert!(keys.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    let scores = |m: &Model| {
        m.encoder().unwrap().label_scores(
            &r["input_ids"],
            &r["attention_mask"],
            &r["mask_pos"],
            &r["label_word_ids"],
        )
    };
    let with_prefix = scores(&m);
    assert!(max_diff(&with_prefix, &r["label_scores"]) > 1e-4, "the prefix changes the scores");
    let dir = tempfile::tempdir().unwrap();
    m.save_adapter(&dir.path().join("prefix")).unwrap();
    let adapted =
        LoadOptions { adapter: Some(dir.path().join("prefix")), ..LoadOptions::new(Device::Cpu, Dtype::F32) };
    assert_eq!(max_diff(&scores(&model::load(&fixture("roberta"), &adapted).unwrap()), &with_prefix), 0.0);
}

/// The chunked LM loss equals cross-entropy over the full logits, ignoring padding and the last
/// position, and is differentiable.
#[test]
fn chunked_lm_loss_equals_the_full_loss() {
    use mezo::model::cache::{lm_loss, next_token_targets, IGNORE};
    let r = reference("llama");
    let m = load("llama", Dtype::F32);
    let lm = m.causal_lm().unwrap();
    let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
    let targets = next_token_targets(ids, mask);
    let row: Vec<i64> = Vec::try_from(targets.get(2)).unwrap();
    assert_eq!(&row[..4], Vec::<i64>::try_from(ids.get(2).narrow(0, 1, 4)).unwrap().as_slice());
    assert!(row[4..].iter().all(|&t| t == IGNORE), "row 2 has 5 tokens: {row:?}");
    let loss = lm_loss(lm, ids, mask, &targets);
    let logits = lm.forward(ids, mask, None);
    let v = logits.size()[2];
    let full = logits.view([-1, v]).cross_entropy_loss::<Tensor>(
        &targets.view([-1]),
        None,
        tch::Reduction::Mean,
        IGNORE,
        0.0,
    );
    assert!((loss.double_value(&[]) - full.double_value(&[])).abs() < 1e-5);
    let p = &m.params[0].tensor;
    let _ = p.shallow_clone().set_requires_grad(true);
    let loss = lm_loss(lm, ids, mask, &targets);
    loss.backward();
    assert!(p.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0);
}

/// MeZO's fast stream scores ℓ+ and ℓ− in one forward pass over the doubled batch: every
/// family, adapter and scoring path must give each side what a forward pass of its own gives.
#[test]
fn a_paired_pass_scores_each_side_as_a_pass_of_its_own() {
    use mezo::data::dataset::FewShotType;
    use mezo::model::cache::{lm_loss_by_side, next_token_targets};
    use mezo::model::{nn, FreezeRules, LoraConfig, Scope};
    use mezo::optim::{fast::FastStream, Trainable};
    let _guard = tch::no_grad_guard();
    let lora = LoraConfig { rank: 4, alpha: 16.0, targets: vec!["q_proj".into(), "v_proj".into()], seed: 5 };
    let encoder_lora = LoraConfig { targets: vec!["query".into(), "value".into()], ..lora.clone() };
    let plain = LoadOptions { num_labels: Some(3), ..LoadOptions::new(Device::Cpu, Dtype::F32) };
    let cases = [
        ("roberta", plain.clone(), Scope::Full),
        ("roberta-tied", plain.clone(), Scope::Full),
        ("bert", plain.clone(), Scope::Full),
        ("roberta", LoadOptions { lora: Some(encoder_lora), ..plain.clone() }, Scope::LoraAndHeads),
        ("roberta", LoadOptions { num_prefix: Some(3), ..plain.clone() }, Scope::Prefix),
        ("opt", plain.clone(), Scope::Full),
        ("opt-untied", plain.clone(), Scope::Full),
        ("llama", plain.clone(), Scope::Full),
        ("qwen2", plain.clone(), Scope::Full),
        ("opt", LoadOptions { lora: Some(lora), ..plain.clone() }, Scope::Lora),
        ("llama", LoadOptions { num_prefix: Some(3), ..plain.clone() }, Scope::Prefix),
        ("roberta", LoadOptions { dtype: Dtype::Bf16, ..plain.clone() }, Scope::Full),
        ("opt", LoadOptions { dtype: Dtype::Bf16, ..plain }, Scope::Full),
    ];
    for (name, options, scope) in cases {
        let what = format!("{name} ({scope:?}, {:?})", options.dtype);
        let m = model::load(&fixture(name), &options).unwrap_or_else(|e| panic!("{what}: {e}"));
        let r = reference(name.trim_end_matches("-tied").trim_end_matches("-untied"));
        let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
        let causal = m.causal_lm().is_some();
        let (words, pos) = if causal {
            (
                Tensor::from_slice(&[5i64, 17, 3]),
                (mask.sum_dim_intlist([1i64].as_slice(), true, Kind::Int64) - 1),
            )
        } else {
            (r["label_word_ids"].shallow_clone(), r["mask_pos"].shallow_clone())
        };
        let trainable: Vec<Trainable> = m
            .trainable(&FreezeRules { scope, ..Default::default() })
            .into_iter()
            .map(|p| Trainable { name: p.name.clone(), tensor: p.tensor.shallow_clone() })
            .collect();
        let stream = FastStream::new(&trainable).unwrap();
        let (seed, eps) = (77, 1e-2);
        let modes: &[FewShotType] =
            if causal { &[FewShotType::Prompt] } else { &[FewShotType::Prompt, FewShotType::Finetune] };
        let twice = |t: &Tensor| t.repeat([2, 1]);
        for &mode in modes {
            let scores = |ids: &Tensor, mask: &Tensor, pos: &Tensor| {
                mezo::eval::class_scores(&m, mode, &words, ids, mask, Some(pos)).unwrap()
            };
            let plus = nn::with_view(stream.view(seed, eps), || scores(ids, mask, &pos));
            let minus = nn::with_view(stream.view(seed, -eps), || scores(ids, mask, &pos));
            let both = nn::with_view(stream.paired_view(seed, eps), || {
                scores(&twice(ids), &twice(mask), &twice(&pos))
            });
            assert!(max_diff(&plus, &minus) > 0.0, "{what} {mode:?}: the sides differ");
            let b = ids.size()[0];
            for (side, alone) in [(0, &plus), (1, &minus)] {
                let d = max_diff(&both.narrow(0, side * b, b), alone);
                assert!(
                    d <= 1e-6 * alone.abs().max().double_value(&[]).max(1.0),
                    "{what} {mode:?} side {side}: {d}"
                );
            }
        }
        if let Some(lm) = m.causal_lm() {
            let targets = next_token_targets(ids, mask);
            let loss =
                |ids: &Tensor, mask: &Tensor, targets: &Tensor| lm_loss_by_side(lm, ids, mask, targets);
            let plus = nn::with_view(stream.view(seed, eps), || loss(ids, mask, &targets));
            let minus = nn::with_view(stream.view(seed, -eps), || loss(ids, mask, &targets));
            let both = nn::with_view(stream.paired_view(seed, eps), || {
                loss(&twice(ids), &twice(mask), &twice(&targets))
            });
            assert_eq!(both.size(), [2]);
            for (side, alone) in [(0, &plus), (1, &minus)] {
                let d = max_diff(&both.narrow(0, side, 1), alone);
                assert!(d <= 1e-6, "{what} lm_loss side {side}: {d}");
            }
        }
    }
}
