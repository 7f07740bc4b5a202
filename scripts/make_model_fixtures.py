#!/usr/bin/env python3
"""Writes tests/fixtures/models/<name>/: tiny random Hugging Face checkpoints of every model family
mezo supports (config.json, model.safetensors, tokenizer.json) and reference.safetensors with the
outputs `transformers` computes for fixed inputs. `cargo test` compares mezo's forward passes
against them; rerun after changing this script:

    .venv/bin/python scripts/make_model_fixtures.py

Families and variants:
  roberta        prompt model as LM-Kernel-FT/MeZO build it: RoBERTa with pooler, lm_head whose
                 decoder is NOT tied to the word embeddings, and a Linear classifier on <s>
  roberta-tied   RoBERTa masked LM whose checkpoint omits lm_head.decoder.weight (tied, deduplicated)
  bert           BERT masked LM without pooler, with a classifier
  opt            OPT causal LM, lm_head tied to embed_tokens (the checkpoint has no lm_head.weight)
  opt-untied     OPT with its own lm_head.weight
  llama          Llama with grouped-query attention (4 heads, 2 key/value heads), untied
  llama-tied     Llama with tied embeddings
  qwen2          Qwen2 (q/k/v biases)
Reference tensors: input_ids, attention_mask (right padding), and per family
  encoders: mask_pos, label_word_ids, label_scores [B, L] (MLM scores of the label words at the
            mask), cls_logits [B, num_labels] (classifier on the final <s> state, no pooler),
            label_scores_bf16 (the same forward in bfloat16)
  decoders: logits [B, T, V], logits_bf16, generate_prompt [1, P], generate_output [1, P + 8]
            (greedy, with KV cache)
and named_parameters.json: the parameter names in `named_parameters()` order of the equivalent
transformers model (for the prompt encoders: encoder with pooler if any, then the MLM head, then
the classifier, as LM-Kernel-FT's and MeZO's ModelForPromptFinetuning registers them).
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import (BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, RobertaConfig, RobertaForMaskedLM, RobertaModel)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "models")
TOKENIZER = os.path.join(HERE, "..", "tests", "fixtures", "tokenizer", "tokenizer.json")
VOCAB = 622  # the fixture tokenizer's size
LABEL_WORDS = [5, 17, 230, 400, 615]
NUM_LABELS = 3


def inputs(pad_id, lengths=(12, 9, 5), first=0, mask_id=None):
    g = torch.Generator().manual_seed(7)
    t = max(lengths)
    ids = torch.full((len(lengths), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), t), dtype=torch.long)
    mask_pos = []
    for i, n in enumerate(lengths):
        row = torch.randint(4, VOCAB - 1, (n,), generator=g)
        if first is not None:
            row[0] = first
        if mask_id is not None:
            p = 1 + i % (n - 2)
            row[p] = mask_id
            mask_pos.append([p])
        ids[i, :n] = row
        mask[i, :n] = 1
    return ids, mask, torch.tensor(mask_pos, dtype=torch.long) if mask_id is not None else None


def save_dir(name, state, config):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(d)
    shutil.copy(TOKENIZER, os.path.join(d, "tokenizer.json"))
    return d


def encoder_fixture(name, kind, pooler, tied):
    torch.manual_seed(sum(name.encode()))
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "roberta":
        config = RobertaConfig(max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                               eos_token_id=2, layer_norm_eps=1e-5, **common)
        mlm = RobertaForMaskedLM(config).eval()
        base = "roberta"
        pad, cls, mask_id = 1, 0, VOCAB - 1
    else:
        config = BertConfig(max_position_embeddings=64, type_vocab_size=2, pad_token_id=1, **common)
        mlm = BertForMaskedLM(config).eval()
        base = "bert"
        pad, cls, mask_id = 1, 0, VOCAB - 1
    config.architectures = [type(mlm).__name__]
    for p in mlm.parameters():  # larger than the 0.02 init, so that scores differ visibly
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else torch.nn.init.normal_(p, std=0.1)
    state = dict(mlm.state_dict())
    encoder = getattr(mlm, base)
    pooler_mod = None
    if pooler:
        pooler_mod = torch.nn.Linear(32, 32)
        state[f"{base}.pooler.dense.weight"] = pooler_mod.weight.detach()
        state[f"{base}.pooler.dense.bias"] = pooler_mod.bias.detach()
    classifier = torch.nn.Linear(32, NUM_LABELS)
    torch.nn.init.normal_(classifier.weight, std=0.2)
    state["classifier.weight"] = classifier.weight.detach()
    state["classifier.bias"] = classifier.bias.detach()
    if kind == "roberta":
        decoder = "lm_head.decoder.weight"
        if tied:
            mlm.lm_head.decoder.weight = encoder.embeddings.word_embeddings.weight
            state.pop(decoder)
            state.pop("lm_head.decoder.bias", None)
        else:
            # Untied, as LM-Kernel-FT's prompt model: its own decoder values.
            mlm.lm_head.decoder.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.2)
            state[decoder] = mlm.lm_head.decoder.weight.detach()
            state.pop("lm_head.decoder.bias", None)
    else:
        state.pop("cls.predictions.decoder.bias", None)
        state.pop("cls.predictions.decoder.weight", None)  # tied to the word embeddings
    state = {k: v for k, v in state.items() if "position_ids" not in k and "token_type_ids" not in k}
    d = save_dir(name, state, config)
    if kind == "roberta":
        body = RobertaModel(config, add_pooling_layer=pooler)
        # Listed on its own the head includes decoder.weight even when tied: mezo keeps an untied
        # copy there.
        head = [f"lm_head.{n}" for n, _ in mlm.lm_head.named_parameters()]
    else:
        from transformers import BertModel
        body = BertModel(config, add_pooling_layer=pooler)
        # The decoder is the word embedding matrix: listed once, under the embeddings.
        head = [f"cls.{n}" for n, _ in mlm.cls.named_parameters() if n != "predictions.decoder.weight"]
    names = [f"{base}.{n}" for n, _ in body.named_parameters()] + head + ["classifier.weight", "classifier.bias"]
    with open(os.path.join(d, "named_parameters.json"), "w") as f:
        json.dump(names, f, indent=0)

    ids, mask, mask_pos = inputs(pad, first=cls, mask_id=mask_id)
    words = torch.tensor(LABEL_WORDS)
    with torch.no_grad():
        def forward(model, dtype):
            model = model.to(dtype)
            kwargs = {"token_type_ids": torch.zeros_like(ids)} if kind == "bert" else {}
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kwargs)
            rows = torch.arange(ids.shape[0])
            scores = out.logits[rows, mask_pos[:, 0]][:, words]
            return scores.float(), out.hidden_states[-1].float()
        scores, hidden = forward(mlm, torch.float32)
        cls_logits = classifier(hidden[:, 0])
        scores_bf16, _ = forward(mlm, torch.bfloat16)
    save_file({"input_ids": ids, "attention_mask": mask, "mask_pos": mask_pos, "label_word_ids": words,
               "label_scores": scores.contiguous(), "cls_logits": cls_logits.contiguous(),
               "label_scores_bf16": scores_bf16.contiguous()}, os.path.join(d, "reference.safetensors"))


def decoder_fixture(name, model_cls, config):
    torch.manual_seed(sum(name.encode()))
    model = model_cls(config).eval()
    for n, p in model.named_parameters():
        if "norm" in n and n.endswith("weight"):
            torch.nn.init.normal_(p, mean=1.0, std=0.1)
        else:
            torch.nn.init.normal_(p, std=0.2)
    config.architectures = [model_cls.__name__]
    state = {k: v for k, v in model.state_dict().items() if "rotary" not in k}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")
    d = save_dir(name, state, config)
    with open(os.path.join(d, "named_parameters.json"), "w") as f:
        json.dump([n for n, _ in model.named_parameters()], f, indent=0)
    ids, mask, _ = inputs(1, first=None)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        prompt = ids[:1, :6].clone()
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                                   pad_token_id=1, eos_token_id=None)
        # As a user loads it: model.to(bfloat16) would also round the rotary inverse frequencies,
        # which from_pretrained keeps in float32.
        bf16 = model_cls.from_pretrained(d, dtype=torch.bfloat16).eval()
        logits_bf16 = bf16(input_ids=ids, attention_mask=mask).logits.float()
    save_file({"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous(),
               "logits_bf16": logits_bf16.contiguous(), "generate_prompt": prompt.contiguous(),
               "generate_output": generated.contiguous()}, os.path.join(d, "reference.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    encoder_fixture("roberta", "roberta", pooler=True, tied=False)
    encoder_fixture("roberta-tied", "roberta", pooler=False, tied=True)
    encoder_fixture("bert", "bert", pooler=False, tied=True)
    opt = dict(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2, eos_token_id=2,
               dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    decoder_fixture("opt", OPTForCausalLM, OPTConfig(**opt))
    decoder_fixture("opt-untied", OPTForCausalLM, OPTConfig(tie_word_embeddings=False, **opt))
    llama = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, pad_token_id=1, bos_token_id=0,
                 eos_token_id=2)
    decoder_fixture("llama", LlamaForCausalLM, LlamaConfig(tie_word_embeddings=False, **llama))
    decoder_fixture("llama-tied", LlamaForCausalLM, LlamaConfig(tie_word_embeddings=True, **llama))
    decoder_fixture("qwen2", Qwen2ForCausalLM, Qwen2Config(tie_word_embeddings=False, use_sliding_window=False, **llama))
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
