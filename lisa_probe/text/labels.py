"""A word-level CLIP tokenizer and a frozen, randomly initialised CLIP text encoder for label prompts.

A main net pretrained with ``--label-prompts`` is conditioned on a short prompt naming some of each sample's
factors (the shapes dataset: ``"red square"``). Its run directory then holds ``tokenizer/`` and ``text_encoder/`` in
the Stable Diffusion pipeline layout, so that everything that reads a pipeline's text encoder (``lisa_probe.text.prompts``:
training on captions, caption dropout, the empty prompt as the null context, extraction with prompts, diffusers'
own pipelines) reads this one unchanged. The encoder is never trained: a random transformer keeps its tokens
distinct, and the main net's attention learns to read them.

The tokenizer is CLIP's byte-level BPE over a vocabulary in which each label word is one token (transformers 5
reads ``vocab.json`` / ``merges.txt`` only through ``from_pretrained`` and needs ``model_max_length``, else
``padding="max_length"`` pads to ~1e30 tokens).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lisa_probe.text.prompts import TEXT_ENCODER_DIR, TOKENIZER_DIR

LABEL_MAX_LENGTH = 8  # <start>, up to 6 words, <end>: label prompts are short
ENCODER_SIZE = {"intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2}


def byte_symbols() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins for the 256 bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def write_tokenizer(directory: Path, words: Sequence[str], max_length: int = LABEL_MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary makes each of ``words`` (lower-case letters) one token, saved in
    ``directory``; any other text still tokenizes, byte by byte."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocab = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    merges = []
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        parts = [*word[:-1], word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            if f"{current} {part}" not in merges:
                merges.append(f"{current} {part}")
            current += part
            if current not in vocab:
                vocab.append(current)
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    return CLIPTokenizer.from_pretrained(directory)


def random_text_encoder(tokenizer: CLIPTokenizer, width: int, pooled_width: int | None = None,
                        seed: int = 0) -> torch.nn.Module:
    """A seeded random CLIP text encoder for ``tokenizer``: hidden size ``width``; with ``pooled_width`` a
    ``CLIPTextModelWithProjection`` (SD3's kind: token states and a pooled projection of that width), else a
    ``CLIPTextModel`` (SD 1.x's kind)."""
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=width, projection_dim=pooled_width or width, max_position_embeddings=tokenizer.model_max_length,
        vocab_size=len(tokenizer), **ENCODER_SIZE)
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config) if pooled_width else CLIPTextModel(config)


def write_label_encoder(pipeline: Path, words: Sequence[str], widths: dict[str, int], seed: int = 0) -> None:
    """Write ``tokenizer/`` and ``text_encoder/`` (safetensors) for label prompts over ``words`` into a pipeline
    directory. ``widths``: the main net's ``context_widths``-style ``{"context": D}`` (UNet) or ``{"context": D,
    "pooled": P}`` (SD3 transformer)."""
    pipeline = Path(pipeline)
    tokenizer = write_tokenizer(pipeline / TOKENIZER_DIR, words)
    encoder = random_text_encoder(tokenizer, widths["context"], widths.get("pooled"), seed)
    encoder.save_pretrained(pipeline / TEXT_ENCODER_DIR, safe_serialization=True)


def main_context_widths(main: torch.nn.Module, family: str) -> dict[str, int]:
    """The text widths a main net reads: ``{"context": cross_attention_dim}`` for a UNet, ``{"context":
    joint_attention_dim, "pooled": pooled_projection_dim}`` for an SD3 transformer."""
    if family == "unet":
        return {"context": main.config.cross_attention_dim}
    return {"context": main.config.joint_attention_dim, "pooled": main.config.pooled_projection_dim}


__all__ = ["byte_symbols", "main_context_widths", "random_text_encoder", "write_label_encoder", "write_tokenizer"]
