#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/tokenizer.json: a RoBERTa-style byte-level BPE (ByteLevel
pre-tokenizer without prefix space, <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last) trained on a corpus
built so that the worked examples the tests tokenize (LM-BFF's documented cases) tokenize exactly as roberta-base
does. It checks those token sequences before writing, so a fixture that does not reproduce them
is never committed.

    .venv/bin/python scripts/make_tokenizer_fixture.py
"""
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tokenizer")

# Words of the spec's examples, templates and label words, each as it appears (with or without a
# leading space). "Aspen" is absent on purpose: roberta-base splits it as " As" + "pen".
WORDS = (
    "it 's a charming and often affecting journey . It was terrible great The cat sat on the mat "
    "is sitting How far from Denver to As ? This article about news No Yes Maybe Description Entity "
    "Expression Human Location Number subjective objective incorrect correct bad okay good world sports "
    "business tech A Is were film plot actors music story movie acting funny boring dull wonderful "
    "awful brilliant slow long short dark warm cold but not very quite really the of in with this that"
).split()
STARTS = ["it", "The", "How", "A", "pen", "This", "the", "a", "film", "plot", "movie", "story"]
# The built-in demo task's sentences, so that `mezo demo` shows whole-word tokens.
DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "demo", "original", "SST-2", "train.tsv")


def corpus():
    with open(DEMO) as f:
        lines = [line.split("\t")[0] for line in f.readlines()[1:]]
    for _ in range(20):
        lines.append(" ".join(WORDS))
        lines.extend(STARTS)
        lines.append("it 's a charming and often affecting journey . ")
        lines.append("The cat sat on the mat.")
        lines.append("How far is it from Denver to As ?")
        lines.append("pen")
    return lines


def expect(tok, text, tokens):
    got = tok.encode(text, add_special_tokens=False).tokens
    assert got == tokens, f"{text!r}: {got} != {tokens}"


def main():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))

    expect(tok, "it 's a charming and often affecting journey . ",
           ["it", "Ġ'", "s", "Ġa", "Ġcharming", "Ġand", "Ġoften", "Ġaffecting", "Ġjourney", "Ġ.", "Ġ"])
    expect(tok, " It was", ["ĠIt", "Ġwas"])
    expect(tok, "The cat sat on the mat", ["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat"])
    expect(tok, " a cat is sitting.", ["Ġa", "Ġcat", "Ġis", "Ġsitting", "."])
    expect(tok, " How far is it from Denver to Aspen ?",
           ["ĠHow", "Ġfar", "Ġis", "Ġit", "Ġfrom", "ĠDenver", "Ġto", "ĠAs", "pen", "Ġ?"])
    expect(tok, " This article is about", ["ĠThis", "Ġarticle", "Ġis", "Ġabout"])
    expect(tok, " news.", ["Ġnews", "."])
    for word in ["terrible", "great", "No", "Yes", "Maybe", "Description", "Entity", "Expression", "Human",
                 "Location", "Number", "subjective", "objective", "incorrect", "correct", "bad", "okay",
                 "good", "world", "sports", "business", "tech"]:
        assert len(tok.encode(" " + word, add_special_tokens=False).ids) == 1, word
    for special, id in [("<s>", 0), ("<pad>", 1), ("</s>", 2), ("<unk>", 3)]:
        assert tok.token_to_id(special) == id
    assert tok.token_to_id("<mask>") == tok.get_vocab_size() - 1
    os.makedirs(OUT, exist_ok=True)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    print(f"wrote {OUT}/tokenizer.json: {tok.get_vocab_size()} tokens, <mask> = {tok.token_to_id('<mask>')}")


if __name__ == "__main__":
    main()
