#!/usr/bin/env python3
"""Writes tests/fixtures/large/: small synthetic datasets of MeZO's eleven large-model tasks in the
Hugging Face layouts (train.jsonl + validation.jsonl as `datasets`' to_json writes them, and the
same rows as Parquet shards), two tiny causal LMs, and the predictions a Python implementation of
the reference (MeZO large_models: templates.py, utils.encode_prompt, run.Framework.forward /
one_step_pred, metrics.py, tasks.sample_subset / sample_train_sets) makes on them. `cargo test`
compares `mezo eval` against these; rerun after changing this script:

    .venv/bin/python scripts/make_large_fixtures.py

Models:
  opt    OPT, 2 layers, hidden 32, 512 positions; like the Hub's OPT directories it has no
         tokenizer.json, only vocab.json + merges.txt + tokenizer_config.json (add_bos_token,
         bos </s>), read by the reference's slow GPT2Tokenizer with bos_token_id = 0 (its OPT quirk)
  llama  Llama, grouped-query attention, untied head, the same byte-level BPE as tokenizer.json
Both use the repository's fixture tokenizer (tests/fixtures/tokenizer, 622 tokens).

expected.json: one entry per case: the mezo eval flags, the reference's predictions (id, scores,
prediction, gold) in test order, and the metric.
"""
import json
import os
import random
import shutil
import copy
import warnings
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import re
import string
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegressionCV
from transformers import GPT2Tokenizer, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "large")
TOKENIZER = os.path.join(HERE, "..", "tests", "fixtures", "tokenizer", "tokenizer.json")
VOCAB = 622

WORDS = ("the a an man woman dog cat city river house car tree book water fire king queen good bad happy sad "
         "red blue green old new small big went saw took gave made found ran said it was is are were not and "
         "but because so then when where who what which Paris London John Mary Bob Ann film movie story game "
         "I I'm he she they we you").split()


def sentence(rng, n=None, cap=True, end="."):
    n = n or rng.randint(3, 9)
    words = [rng.choice(WORDS) for _ in range(n)]
    s = " ".join(words)
    if cap:
        s = s[0].upper() + s[1:]
    return s + end


def make_rows(task, rng, n):
    rows = []
    for i in range(n):
        if task == "SST2":
            rows.append({"sentence": " " + sentence(rng, end="") + " ", "label": rng.randint(0, 1), "idx": i})
        elif task == "RTE":
            rows.append({"premise": sentence(rng), "hypothesis": sentence(rng), "idx": i, "label": rng.randint(0, 1)})
        elif task == "CB":
            rows.append({"premise": sentence(rng), "hypothesis": sentence(rng), "idx": i, "label": rng.randint(0, 2)})
        elif task == "BoolQ":
            q = sentence(rng, cap=False, end=rng.choice(["", "?"]))
            rows.append({"question": q, "answer": bool(rng.randint(0, 1)), "passage": sentence(rng, 12)})
        elif task == "WSC":
            rows.append({"text": sentence(rng), "span1_index": 0, "span2_index": 3, "span1_text": rng.choice(WORDS),
                         "span2_text": rng.choice(["He", "She", "It"]), "idx": i, "label": rng.randint(0, 1)})
        elif task == "WIC":
            rows.append({"word": rng.choice(WORDS), "sentence1": sentence(rng), "sentence2": sentence(rng),
                         "start1": 0, "start2": 0, "end1": 1, "end2": 1, "idx": i, "label": rng.randint(0, 1)})
        elif task == "MultiRC":
            rows.append({"paragraph": sentence(rng, 10), "question": sentence(rng, end="?"), "answer": sentence(rng, 3),
                         "idx": {"paragraph": 0, "question": i, "answer": 0}, "label": rng.randint(0, 1)})
        elif task == "Copa":
            choice = lambda: rng.choice(["I", "He", "She", "I'm", "The"]) + " " + sentence(rng, 3, cap=False)
            rows.append({"premise": sentence(rng) + rng.choice(["", " "]), "choice1": choice(), "choice2": choice(),
                         "question": rng.choice(["cause", "effect"]), "idx": i, "label": rng.randint(0, 1)})
        elif task == "ReCoRD":
            entities = sorted(set(rng.sample(["Paris", "London", "John", "Mary", "Bob", "Ann", "Rome"], rng.randint(2, 4))))
            answers = sorted(set(rng.sample(entities, rng.randint(1, 2))))
            passage = sentence(rng, 8) + "\n@highlight\n" + sentence(rng, 4, end="") + "\n@highlight\n" + sentence(rng, 3, end="")
            rows.append({"passage": passage, "query": "@placeholder " + sentence(rng, 4, cap=False),
                         "entities": entities, "entity_spans": {"text": entities, "start": [0] * len(entities),
                                                                 "end": [1] * len(entities)},
                         "answers": answers, "idx": {"passage": i, "query": i}})
        elif task == "SQuAD":
            answers = [sentence(rng, rng.randint(1, 3), end="") for _ in range(rng.randint(1, 3))]
            rows.append({"id": f"q{i}", "title": rng.choice(WORDS).capitalize(), "context": sentence(rng, 14),
                         "question": " " + sentence(rng, end="?") + " ",
                         "answers": {"text": answers, "answer_start": [0] * len(answers)}})
        elif task == "DROP":
            spans = [sentence(rng, rng.randint(1, 2), end="") for _ in range(rng.randint(1, 2))]
            rows.append({"section_id": f"s{i}", "query_id": f"q{i}", "passage": sentence(rng, 14),
                         "question": sentence(rng, end="?"), "answers_spans": {"spans": spans, "types": ["span"] * len(spans)}})
    return rows


TASKS = ["SST2", "RTE", "CB", "BoolQ", "WSC", "WIC", "MultiRC", "Copa", "ReCoRD", "SQuAD", "DROP"]


def write_task(task, rng):
    d = os.path.join(OUT, "data", task)
    os.makedirs(d, exist_ok=True)
    splits = {"train": make_rows(task, rng, 14), "validation": make_rows(task, rng, 9)}
    for split, rows in splits.items():
        with open(os.path.join(d, f"{split}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        # The same rows as the Hub's Parquet shards (two for validation).
        pd = os.path.join(OUT, "parquet", task, "data")
        os.makedirs(pd, exist_ok=True)
        shards = [rows] if split == "train" else [rows[:5], rows[5:]]
        for k, shard in enumerate(shards):
            table = pa.Table.from_pylist(shard)
            pq.write_table(table, os.path.join(pd, f"{split}-{k:05d}-of-{len(shards):05d}.parquet"))
    return splits


# --- the reference ------------------------------------------------------------------------------

class Sample:
    def __init__(self, id, data, correct_candidate, candidates):
        self.id, self.data, self.correct_candidate, self.candidates = id, data, correct_candidate, candidates


def build_sample(task, example, idx):
    if task in ("SST2", "RTE", "CB", "WSC", "WIC", "MultiRC"):
        n = 3 if task == "CB" else 2
        return Sample(idx, example, example["label"], list(range(n)))
    if task == "BoolQ":
        return Sample(idx, example, "Yes" if example["answer"] else "No", ["Yes", "No"])
    if task == "Copa":
        return Sample(idx, example, example[f"choice{example['label'] + 1}"], [example["choice1"], example["choice2"]])
    if task == "ReCoRD":
        return Sample(idx, example, example["answers"], example["entities"])
    if task == "SQuAD":
        a = example["answers"]["text"]
        return Sample(idx, {"title": example["title"], "context": example["context"], "question": example["question"],
                            "answers": a}, a, None)
    a = example["answers_spans"]["spans"]
    return Sample(idx, {"context": example["passage"], "question": example["question"], "answers": a}, a, None)


VERBALIZER = {"SST2": {0: "terrible", 1: "great"}, "RTE": {0: "Yes", 1: "No"}, "CB": {0: "Yes", 1: "No", 2: "Maybe"},
              "WSC": {0: "No", 1: "Yes"}, "WIC": {0: "No", 1: "Yes"}, "MultiRC": {0: "No", 1: "Yes"}}


def copa_conj(s):
    return {"effect": " so ", "cause": " because "}[s.data["question"]]


def copa_prompt(s):
    p = s.data["premise"].rstrip()
    if p.endswith("."):
        p = p[:-1]
    return p + copa_conj(s)


def copa_cap(c):
    words = c.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def boolq_q(s):
    q = s.data["question"]
    if not q.endswith("?"):
        q = q + "?"
    return q[0].upper() + q[1:]


def encode(task, s):
    d = s.data
    if task == "SST2":
        return f"{d['sentence'].strip()} It was"
    if task == "RTE":
        return f"{d['premise']}\nDoes this mean that \"{d['hypothesis']}\" is true? Yes or No?\n"
    if task == "CB":
        return f"Suppose {d['premise']} Can we infer that \"{d['hypothesis']}\"? Yes, No, or Maybe?\n"
    if task == "BoolQ":
        return f"{d['passage']} {boolq_q(s)}\n"
    if task == "WSC":
        return f"{d['text']}\nIn the previous sentence, does the pronoun \"{d['span2_text'].lower()}\" refer to {d['span1_text']}? Yes or No?\n"
    if task == "WIC":
        return f"Does the word \"{d['word']}\" have the same meaning in these two sentences? Yes, No?\n{d['sentence1']}\n{d['sentence2']}\n"
    if task == "MultiRC":
        return f"{d['paragraph']}\nQuestion: {d['question']}\nI found this answer \"{d['answer']}\". Is that correct? Yes or No?\n"
    if task == "Copa":
        return copa_prompt(s)
    if task == "ReCoRD":
        return d["passage"].replace("@highlight\n", "- ") + "\n-"
    if task == "SQuAD":
        return f"Title: {d['title']}\nContext: {d['context']}\nQuestion: {d['question'].strip()}\nAnswer:"
    return f"Passage: {d['context']}\nQuestion: {d['question'].strip()}\nAnswer:"


def verbalize(task, s, c):
    if task in VERBALIZER:
        if task == "SST2":
            return f"{s.data['sentence'].strip()} It was {VERBALIZER[task][c]}"
        return encode(task, s) + VERBALIZER[task][c]
    if task == "BoolQ":
        return encode(task, s) + c
    if task == "Copa":
        return copa_prompt(s) + copa_cap(c)
    if task == "ReCoRD":
        q = s.data["query"].replace("@placeholder", c[0] if isinstance(c, list) else c)
        return s.data["passage"].replace("@highlight\n", "- ") + f"\n- {q}"
    return encode(task, s) + f" {s.data['answers'][0]}\n"


def encode_sfc(task, s):
    if task == "Copa":
        return copa_conj(s).strip()
    return {"SST2": " It was", "ReCoRD": "-"}.get(task, "")


def verbalize_sfc(task, s, c):
    if task == "SST2":
        return f" It was {VERBALIZER[task][c]}"
    if task in VERBALIZER:
        return VERBALIZER[task][c]
    if task == "Copa":
        return copa_conj(s).strip() + " " + copa_cap(c)
    if task == "ReCoRD":
        return "- " + s.data["query"].replace("@placeholder", c[0] if isinstance(c, list) else c)
    return c


def encode_prompt(task, train_samples, eval_sample, tok, max_length, sfc=False, icl_sfc=False, generation=False,
                  max_new_tokens=None, generation_with_gold=False):
    train_prompts = [verbalize(task, s, s.correct_candidate).strip() for s in train_samples]
    train_prompts = "\n\n".join(train_prompts).strip()
    enc_fn, verb_fn = ((lambda s: encode_sfc(task, s)), (lambda s, c: verbalize_sfc(task, s, c))) if (sfc or icl_sfc) \
        else ((lambda s: encode(task, s)), (lambda s, c: verbalize(task, s, c)))
    unverbalized = enc_fn(eval_sample).strip(' ')
    if not generation:
        verbalized = [verb_fn(eval_sample, c).strip(' ') for c in eval_sample.candidates]
        base = len(tok.encode(unverbalized))
        option_lens = [len(tok.encode(v)) - base for v in verbalized]
        final = verbalized if sfc else [(train_prompts + "\n\n" + v).lstrip().strip(' ') for v in verbalized]
    elif generation_with_gold:
        verbalized = verb_fn(eval_sample, eval_sample.correct_candidate)
        option_lens = [len(tok.encode(verbalized)) - len(tok.encode(unverbalized))]
        final = [(train_prompts + "\n\n" + verbalized).lstrip().strip(' ')]
    else:
        option_lens = [0]
        final = [(train_prompts + "\n\n" + unverbalized).lstrip().strip(' ')]
    encodings = [tok.encode(p) for p in final]
    if generation and max_new_tokens is not None:
        max_length = max_length - max_new_tokens
    if tok.add_bos_token:
        encodings = [e[0:1] + e[1:][-(max_length - 1):] for e in encodings]
    else:
        encodings = [e[-max_length:] for e in encodings]
    return encodings, option_lens


def normalize_answer(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r'\b(a|an|the)\b', ' ', s)
    return " ".join(s.split())


def f1(pred, gold):
    if gold[0] == "CANNOTANSWER" or gold[0] == "no answer":
        return int(normalize_answer(gold[0]) == normalize_answer(pred))
    all_f1s = []
    for ans in gold:
        p, g = normalize_answer(pred).split(), normalize_answer(ans).split()
        same = sum((Counter(p) & Counter(g)).values())
        all_f1s.append(0 if same == 0 else 2 * (same / len(p)) * (same / len(g)) / (same / len(p) + same / len(g)))
    return max(all_f1s)


class temp_seed:
    def __init__(self, seed):
        self.seed = seed

    def __enter__(self):
        self.state = np.random.get_state()
        np.random.seed(self.seed)

    def __exit__(self, *args):
        np.random.set_state(self.state)


def sample_subset(samples, seed, num):
    with temp_seed(seed):
        index = np.random.permutation(len(samples)).tolist()[:num]
        return [samples[i] for i in index]


def one_step_pred(model, tok, task, demos, s, args):
    generation = task in ("SQuAD", "DROP")
    max_length, max_new = args["max_length"], args["max_new_tokens"]
    enc, lens = encode_prompt(task, demos, s, tok, max_length, generation=generation, max_new_tokens=max_new)
    if generation:
        ids = torch.tensor([enc[0]])
        out = model.generate(ids, do_sample=False, num_beams=1, max_new_tokens=min(max_new, max_length - ids.size(1)),
                             num_return_sequences=1, eos_token_id=[tok.encode("\n", add_special_tokens=False)[-1], tok.eos_token_id],
                             pad_token_id=tok.pad_token_id, attention_mask=torch.ones_like(ids))
        text = tok.decode(out[0][ids.size(1):], skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()
        return {"id": s.id, "scores": [], "prediction": text, "gold": s.correct_candidate}, f1(text, s.correct_candidate)
    calibrate = args.get("sfc") or args.get("icl_sfc")
    if calibrate:
        sfc_enc, sfc_lens = encode_prompt(task, demos, s, tok, max_length, sfc=args.get("sfc", False),
                                          icl_sfc=args.get("icl_sfc", False))

    def forward(ids, option_len):
        ids = torch.tensor([ids])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits
        labels = ids[0, 1:]
        lp = F.log_softmax(logits[0, :-1], dim=-1)
        return lp[torch.arange(len(labels)), labels][-option_len:]

    scores = []
    for c, ids in enumerate(enc):
        lp = forward(ids, lens[c])
        if calibrate:
            scores.append(lp.sum().item() - forward(sfc_enc[c], sfc_lens[c]).sum().item())
        else:
            scores.append(lp.mean().item())
    if isinstance(s.correct_candidate, list):
        gold = [s.candidates.index(c) for c in s.correct_candidate]
        right = int(np.argmax(scores)) in gold
    else:
        gold = s.candidates.index(s.correct_candidate)
        right = int(np.argmax(scores)) == gold
    return {"id": s.id, "candidates": s.candidates, "scores": scores, "prediction": int(np.argmax(scores)),
            "gold": gold}, float(right)


def run_case(model, tok, task, splits, args):
    train = [build_sample(task, e, i) for i, e in enumerate(splits["train"])]
    valid = [build_sample(task, e, i) for i, e in enumerate(splits["validation"])]
    num_train, num_eval, seed = args.get("num_train", 0), args.get("num_eval"), args.get("train_set_seed")
    if seed is not None:
        demos = sample_subset(train, seed, num_train)
        test = sample_subset(valid, seed, num_eval) if num_eval is not None else valid
        per_example = [demos] * len(test)
    else:
        n = num_eval if num_eval is not None else len(valid)
        with temp_seed(0):
            seeds = np.random.randint(0, 10000, n)
        per_example = [sample_subset(train, int(s), num_train) for s in seeds]
        test = sample_subset(valid, 0, num_eval) if num_eval is not None else valid
    predictions, values = [], []
    for i, s in enumerate(test):
        p, v = one_step_pred(model, tok, task, per_example[i], s, args)
        predictions.append(p)
        values.append(v)
    return predictions, float(np.mean(values))


def correct_id(task, s):
    if task in ("SQuAD", "DROP"):
        return 0
    if isinstance(s.correct_candidate, list):
        return s.candidates.index(s.correct_candidate[0])
    return s.candidates.index(s.correct_candidate)


def token_log_probs(model, tok, ids, option_len, mask_pad):
    """The reference's forward_wrap_with_option_len, one unpadded sequence: log p of each kept
    target (the last option_len, all for 0; pad-id targets dropped when mask_pad)."""
    t = torch.tensor([ids])
    with torch.inference_mode():
        logits = model(input_ids=t).logits[0, :-1].float()
    labels = t[0, 1:]
    lp = F.log_softmax(logits, dim=-1)[torch.arange(len(labels)), labels]
    keep = torch.ones(len(labels), dtype=torch.bool)
    if option_len > 0:
        keep[:-option_len] = False
    if mask_pad:
        keep &= labels != tok.pad_token_id
    return lp[keep]


def reference_eval_loss(model, tok, task, dev, loss, batch_size, max_new_tokens):
    """The Trainer's eval_loss on dev: batches of batch_size in order, each batch's loss (the
    wrapped forward's, or the plain LM loss) weighted by its examples."""
    generation = task in ("SQuAD", "DROP")
    total = 0.0
    for start in range(0, len(dev), batch_size):
        batch = dev[start:start + batch_size]
        losses, nll, count = [], 0.0, 0
        for s in batch:
            enc, lens = encode_prompt(task, [], s, tok, 2048, generation=generation, generation_with_gold=True,
                                      max_new_tokens=max_new_tokens)
            cid = correct_id(task, s)
            if loss == "classification":
                means = torch.stack([token_log_probs(model, tok, e, n, True).mean() for e, n in zip(enc, lens)])
                losses.append((torch.logsumexp(means, 0) - means[cid]).item())
            else:
                lp = token_log_probs(model, tok, enc[cid], lens[cid] if loss == "option" else 0, loss == "option")
                nll -= lp.sum().item()
                count += len(lp)
        batch_loss = float(np.mean(losses)) if loss == "classification" else nll / count
        total += batch_loss * len(batch)
    return total / len(dev)


def train_case(model, tok, task, splits, args):
    """Dev loss and dev metric of an untrained model as the reference's training path sees them."""
    train = [build_sample(task, e, i) for i, e in enumerate(splits["train"])]
    valid = [build_sample(task, e, i) for i, e in enumerate(splits["validation"])]
    seed, num_train, num_dev = args["train_set_seed"], args["num_train"], args["num_dev"]
    sample = sample_subset(train, seed, num_train + num_dev)
    dev = sample[-num_dev:]
    test = sample_subset(valid, seed, args["num_eval"])
    max_new = args.get("max_new_tokens", 50)
    eval_loss = reference_eval_loss(model, tok, task, dev, args["loss"], args["eval_batch_size"], max_new)
    pred_args = {"max_length": 2048, "max_new_tokens": max_new}
    dev_metric = float(np.mean([one_step_pred(model, tok, task, [], s, pred_args)[1] for s in dev]))
    test_metric = float(np.mean([one_step_pred(model, tok, task, [], s, pred_args)[1] for s in test]))
    return eval_loss, dev_metric, test_metric


def lp_case(model, tok, task, splits, args):
    """The reference's linear probing (trainer.py, --linear_probing): LM-head inputs at the gold
    option tokens of the training examples (in sample order), LogisticRegressionCV without
    intercept, coef_ rows written into the LM head at the class tokens; then dev and test."""
    train = [build_sample(task, e, i) for i, e in enumerate(splits["train"])]
    valid = [build_sample(task, e, i) for i, e in enumerate(splits["validation"])]
    seed, num_train, num_dev = args["train_set_seed"], args["num_train"], args["num_dev"]
    sample = sample_subset(train, seed, num_train + num_dev)
    train_set, dev = sample[:-num_dev], sample[-num_dev:]
    test = sample_subset(valid, seed, args["num_eval"])
    captured = {}
    hook = model.lm_head.register_forward_hook(lambda m, i, o: captured.__setitem__("x", i[0].detach()))
    features, targets = [], []
    for s in train_set:
        enc, lens = encode_prompt(task, [], s, tok, 2048, generation_with_gold=True, max_new_tokens=50)
        cid = correct_id(task, s)
        ids, n = torch.tensor([enc[cid]]), lens[cid]
        with torch.inference_mode():
            model(input_ids=ids)
        features.append(captured["x"][0, :-1][-n:].double())
        targets.append(ids[0, 1:][-n:])
    hook.remove()
    x = torch.cat(features).numpy()
    y = torch.cat(targets).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = LogisticRegressionCV(Cs=10, cv=5, multi_class="multinomial", max_iter=5000, tol=1e-10,
                                   fit_intercept=False, random_state=0).fit(x, y)
    coef = torch.tensor(fit.coef_, dtype=model.lm_head.weight.dtype)
    if coef.shape[0] == 1:
        coef = torch.cat([-coef / 2, coef / 2], dim=0)
    with torch.no_grad():
        for i, token in enumerate(fit.classes_):
            model.lm_head.weight[token] = coef[i]
    pred_args = {"max_length": 2048, "max_new_tokens": 50}
    dev_metric = float(np.mean([one_step_pred(model, tok, task, [], s, pred_args)[1] for s in dev]))
    test_metric = float(np.mean([one_step_pred(model, tok, task, [], s, pred_args)[1] for s in test]))
    return {"c": float(fit.C_[0]), "coef": fit.coef_.tolist(), "classes": fit.classes_.tolist(), "rows": len(y),
            "dev_metric": dev_metric, "test_metric": test_metric}


# --- models ---------------------------------------------------------------------------------------

def save_model(name, model, config, tokenizer_files):
    d = os.path.join(OUT, "models", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(d)
    tokenizer_files(d)
    return d


def gpt2_files(d):
    """vocab.json + merges.txt of the fixture tokenizer, and OPT's tokenizer_config.json."""
    t = json.load(open(TOKENIZER))
    json.dump(t["model"]["vocab"], open(os.path.join(d, "vocab.json"), "w"), ensure_ascii=False)
    merges = t["model"]["merges"]
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    json.dump({"add_bos_token": True, "bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>",
               "unk_token": "<unk>", "model_max_length": 512, "tokenizer_class": "GPT2Tokenizer"},
              open(os.path.join(d, "tokenizer_config.json"), "w"))


def slow_tokenizer(d, bos):
    tok = GPT2Tokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"), add_bos_token=True,
                        bos_token=bos, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    return tok


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    rng = random.Random(0)
    data = {task: write_task(task, rng) for task in TASKS}

    torch.manual_seed(0)
    opt_config = OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=512, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2,
                           eos_token_id=2, init_std=0.3, dropout=0.0, attention_dropout=0.0)
    opt = OPTForCausalLM(opt_config).eval()
    opt_dir = save_model("opt", opt, opt_config, gpt2_files)
    torch.manual_seed(1)
    llama_config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                               rms_norm_eps=1e-6, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                               tie_word_embeddings=False, initializer_range=0.3)
    llama = LlamaForCausalLM(llama_config).eval()
    llama_dir = save_model("llama", llama, llama_config,
                           lambda d: (shutil.copy(TOKENIZER, os.path.join(d, "tokenizer.json")), gpt2_files(d)))
    os.remove(os.path.join(llama_dir, "tokenizer_config.json"))

    # The reference's OPT quirk: bos_token_id = 0. Llama's slow tokenizer adds <s> (0) too.
    opt_tok = slow_tokenizer(opt_dir, "<s>")
    opt_hf_tok = slow_tokenizer(opt_dir, "</s>")
    llama_tok = slow_tokenizer(llama_dir, "<s>")
    defaults = {"max_length": 2048, "max_new_tokens": 50}
    cases = [
        ("opt", "SST2", {"num_eval": 6}),
        ("opt", "SST2", {"num_train": 2, "train_set_seed": 3, "icl_sfc": True}),
        ("opt", "RTE", {"num_train": 2, "train_set_seed": 1, "num_eval": 5}),
        ("opt", "CB", {"num_train": 1, "train_set_seed": 0}),
        ("opt", "BoolQ", {"num_train": 1, "num_eval": 4}),
        ("opt", "BoolQ", {"num_train": 3, "train_set_seed": 0, "max_length": 40}),
        ("opt", "WSC", {"train_set_seed": 2}),
        ("opt", "WIC", {"num_train": 1, "train_set_seed": 2, "num_eval": 7}),
        ("opt", "MultiRC", {"train_set_seed": 4}),
        ("opt", "Copa", {"num_train": 2, "train_set_seed": 0}),
        ("opt", "Copa", {"train_set_seed": 0, "sfc": True}),
        ("opt", "ReCoRD", {"num_train": 1, "train_set_seed": 0}),
        ("opt", "SQuAD", {"num_train": 1, "train_set_seed": 0, "num_eval": 5, "max_new_tokens": 8}),
        ("opt", "DROP", {"num_eval": 4, "max_new_tokens": 6}),
        ("opt", "DROP", {"num_train": 2, "train_set_seed": 1, "max_length": 60, "max_new_tokens": 12}),
        ("opt-hf-bos", "CB", {"train_set_seed": 1}),
        ("llama", "SST2", {"num_train": 1, "train_set_seed": 0}),
        ("llama", "Copa", {"num_eval": 5}),
        ("llama", "SQuAD", {"num_train": 1, "train_set_seed": 1, "max_new_tokens": 10}),
    ]
    expected = []
    for model_name, task, args in cases:
        model, tok = {"opt": (opt, opt_tok), "opt-hf-bos": (opt, opt_hf_tok), "llama": (llama, llama_tok)}[model_name]
        full = dict(defaults, **args)
        predictions, metric = run_case(model, tok, task, data[task], full)
        flags = []
        for k, v in args.items():
            flag = "--" + k.replace("_", "-")
            flags += [flag] if v is True else [flag, str(v)]
        if model_name == "opt-hf-bos":
            flags += ["--opt-bos", "tokenizer"]
        expected.append({"model": "llama" if model_name == "llama" else "opt", "task": task, "flags": flags,
                         "metric": metric, "predictions": predictions})
        print(f"{model_name:10} {task:8} {' '.join(flags):60} metric {metric:.3f}")
    json.dump(expected, open(os.path.join(OUT, "expected.json"), "w"), indent=1, ensure_ascii=False)

    train_cases = [
        ("opt", "BoolQ", {"loss": "classification", "num_train": 6, "num_dev": 5, "num_eval": 4, "eval_batch_size": 2}),
        ("opt", "Copa", {"loss": "option", "num_train": 4, "num_dev": 5, "num_eval": 3, "eval_batch_size": 3}),
        ("opt", "ReCoRD", {"loss": "classification", "num_train": 3, "num_dev": 4, "num_eval": 3, "eval_batch_size": 3}),
        ("opt", "SQuAD", {"loss": "option", "num_train": 4, "num_dev": 4, "num_eval": 3, "eval_batch_size": 3,
                          "max_new_tokens": 8}),
        ("opt", "DROP", {"loss": "sequence", "num_train": 4, "num_dev": 3, "num_eval": 3, "eval_batch_size": 2,
                         "max_new_tokens": 6}),
        ("llama", "SST2", {"loss": "classification", "num_train": 4, "num_dev": 4, "num_eval": 4,
                           "eval_batch_size": 3}),
    ]
    expected_train = []
    for model_name, task, args in train_cases:
        model, tok = {"opt": (opt, opt_tok), "llama": (llama, llama_tok)}[model_name]
        seed = 2
        eval_loss, dev_metric, test_metric = train_case(model, tok, task, data[task], dict(args, train_set_seed=seed))
        flags = ["--train-set-seed", str(seed)]
        for k in ["num_train", "num_dev", "num_eval", "eval_batch_size", "max_new_tokens"]:
            if k in args:
                flags += ["--" + k.replace("_", "-"), str(args[k])]
        flags += {"classification": ["--train-as-classification"], "option": [],
                  "sequence": ["--only-train-option", "false"]}[args["loss"]]
        expected_train.append({"model": model_name, "task": task, "flags": flags, "eval_loss": eval_loss,
                               "dev_metric": dev_metric, "test_metric": test_metric})
        print(f"train {model_name:6} {task:8} {' '.join(flags):70} loss {eval_loss:.5f} dev {dev_metric:.3f}")
    json.dump(expected_train, open(os.path.join(OUT, "expected_train.json"), "w"), indent=1, ensure_ascii=False)

    # Linear probing writes into the model's head: each case on a fresh copy of the tiny OPT.
    lp_cases = [
        ("SST2", {"train_set_seed": 0, "num_train": 10, "num_dev": 3, "num_eval": 5}),
        ("CB", {"train_set_seed": 1, "num_train": 11, "num_dev": 2, "num_eval": 5}),
    ]
    expected_lp = []
    for task, args in lp_cases:
        result = lp_case(copy.deepcopy(opt), opt_tok, task, data[task], args)
        flags = [x for k, v in args.items() for x in ("--" + k.replace("_", "-"), str(v))]
        expected_lp.append(dict(result, task=task, flags=flags))
        print(f"lp {task:8} {len(result['classes'])} classes on {result['rows']} tokens, C {result['c']:.3g}, "
              f"dev {result['dev_metric']:.3f} test {result['test_metric']:.3f}")
    json.dump(expected_lp, open(os.path.join(OUT, "expected_lp.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
