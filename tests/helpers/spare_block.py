"""A tiny Llama whose decoder-block list holds one spare block after the last (as models with an extra
prediction block do): `model.layers` then has num_hidden_layers + 1 entries, so the structural search cannot tell
which list holds the decoder blocks and the user must name it with `layers_path`. The spare block never runs,
so the model computes exactly what the plain tiny Llama with the same weights computes."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

LAYERS_PATH = "model.layers"


class SpareBlockConfig(LlamaConfig):
    model_type = "caa_test_spare_block_llama"


class SpareBlockLlama(LlamaForCausalLM):
    config_class = SpareBlockConfig

    def __init__(self, config: SpareBlockConfig):
        super().__init__(config)
        self.model.layers.append(LlamaDecoderLayer(config, layer_idx=config.num_hidden_layers))


def register() -> None:
    """Make `AutoModelForCausalLM.from_pretrained(folder)` (what lm-eval calls) build the class, in this process."""
    try:
        AutoConfig.register(SpareBlockConfig.model_type, SpareBlockConfig)
        AutoModelForCausalLM.register(SpareBlockConfig, SpareBlockLlama)
    except ValueError:  # already registered
        pass


def build_spare_block_model(plain_dir: Path, folder: Path) -> Path:
    """The plain tiny model's weights (and tokenizer) in a SpareBlockLlama saved to `folder`."""
    register()
    plain = LlamaForCausalLM.from_pretrained(plain_dir, dtype="float32")
    config = SpareBlockConfig(**plain.config.to_dict())
    model = SpareBlockLlama(config)
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and all(".layers." in k for k in result.missing_keys)  # only the spare block
    model.generation_config = plain.generation_config
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(plain_dir).save_pretrained(folder)
    return folder
