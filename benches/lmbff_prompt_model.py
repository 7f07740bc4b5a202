"""LM-BFF's prompt model (`RobertaForPromptFinetuning`), the model that MeZO's medium-model code and
LM-Kernel-FT run, for the reference side of the comparison scripts.

What makes it the reference's model rather than `transformers`' `RobertaForMaskedLM`:
  - the LM head runs at the mask position only (the encoder's state at the mask, then dense, GELU,
    LayerNorm and the decoder over the whole vocabulary), not over every position of the batch;
  - the decoder is its own tensor, not tied to the word embeddings, so MeZO perturbs and updates it;
  - the encoder keeps its pooler, and a classifier sits beside the head: the prompt loss does not
    use them, but MeZO perturbs and updates them with the rest.

`save` writes it as a Hugging Face directory that mezo loads with the same tensors, so that both
sides of a comparison hold, perturb and update the same parameters.
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import RobertaConfig, RobertaModel
from transformers.models.roberta.modeling_roberta import RobertaLMHead


def roberta_base_config(**overrides):
    """roberta-base's sizes; `overrides` replace any of them."""
    settings = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                    pad_token_id=1, tie_word_embeddings=False)
    settings.update(overrides)
    return RobertaConfig(**settings)


class PromptModel(torch.nn.Module):
    def __init__(self, config, num_labels=2):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=True)
        self.lm_head = RobertaLMHead(config)
        self.classifier = torch.nn.Linear(config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask, mask_pos, label_words):
        """[B, C] scores of the label words at each row's mask, as LM-BFF's forward computes them."""
        states = self.roberta(input_ids, attention_mask=attention_mask)[0]
        at_mask = states[torch.arange(states.size(0)), mask_pos]
        return self.lm_head(at_mask)[:, label_words]

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        config = self.config.to_dict()
        config["architectures"] = ["RobertaForMaskedLM"]
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        # The decoder's bias is the head's `bias` parameter under a second name.
        tensors = {name: t.detach().contiguous().clone() for name, t in self.state_dict().items()
                   if name != "lm_head.decoder.bias"}
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
