"""The label text encoder: a word-level tokenizer and a random CLIP written into a pipeline directory, read back by
``lisa_probe.text.prompts`` as any Stable Diffusion pipeline's encoder (context and, for SD3-style transformers, pooled)."""

import pytest
import torch
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from lisa_probe.data.shapes import LABEL_WORDS
from lisa_probe.models import build_main
from lisa_probe.models.build import null_context_for
from lisa_probe.text.labels import LABEL_MAX_LENGTH, main_context_widths, write_label_encoder
from lisa_probe.text.prompts import PromptEmbeddings, PromptEncoder


@pytest.fixture(scope="module")
def label_pipeline(tmp_path_factory):
    """A tiny DiT's label encoder (context width = joint_attention_dim, pooled = pooled_projection_dim)."""
    path = tmp_path_factory.mktemp("label-pipeline")
    write_label_encoder(path, LABEL_WORDS, main_context_widths(build_main("dit", "tiny", 16), "dit"), seed=0)
    return path


def test_every_label_word_is_one_token(label_pipeline):
    tokenizer = CLIPTokenizer.from_pretrained(label_pipeline / "tokenizer")
    assert tokenizer.model_max_length == LABEL_MAX_LENGTH
    for word in LABEL_WORDS:
        assert len(tokenizer.tokenize(word)) == 1, word
    ids = tokenizer("red square").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 4


def test_a_projection_encoder_gives_context_and_pooled_as_transformers_computes_them(label_pipeline):
    encoder = PromptEncoder.from_pipeline(label_pipeline)
    encoded = encoder.encode(["red square", "blue cross", ""])
    tokenizer = CLIPTokenizer.from_pretrained(label_pipeline / "tokenizer")
    model = CLIPTextModelWithProjection.from_pretrained(label_pipeline / "text_encoder")
    ids = tokenizer(["red square"], padding="max_length", max_length=LABEL_MAX_LENGTH, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(ids)
    torch.testing.assert_close(encoded["context"][:1], expected.last_hidden_state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encoded["pooled"][:1], expected.text_embeds, rtol=1e-5, atol=1e-6)
    dit = build_main("dit", "tiny", 16)
    assert encoded["context"].shape == (3, LABEL_MAX_LENGTH, dit.config.joint_attention_dim)
    assert encoded["pooled"].shape == (3, dit.config.pooled_projection_dim)
    assert (encoded["pooled"][0] - encoded["pooled"][1]).abs().max() > 1e-3  # labels stay apart


def test_the_null_context_of_a_labelled_transformer_is_the_empty_prompt(label_pipeline):
    null = null_context_for(build_main("dit", "tiny", 16), "dit", label_pipeline)
    empty = PromptEncoder.from_pipeline(label_pipeline).empty()
    assert set(null) == {"context", "pooled"}
    for name in null:
        torch.testing.assert_close(null[name], empty[name], rtol=0, atol=0)


def test_a_transformer_refuses_an_encoder_without_a_projection(tmp_path):
    write_label_encoder(tmp_path, LABEL_WORDS, {"context": 8})  # a UNet's kind of encoder: no pooled output
    with pytest.raises(ValueError, match="has no projection"):
        null_context_for(build_main("dit", "tiny", 16), "dit", tmp_path)
    assert set(null_context_for(build_main("unet", "tiny", 16), "unet", tmp_path)) == {"context"}


def test_the_cache_holds_pooled_projections_too(label_pipeline, tmp_path):
    encoder = PromptEncoder.from_pipeline(label_pipeline)
    cached = PromptEmbeddings(encoder, ["red square", "blue cross"], tmp_path, progress=False)
    looked_up = cached.lookup(["blue cross", "", "red square"])
    direct = encoder.encode(["blue cross", "", "red square"])
    assert set(looked_up) == {"context", "pooled"}
    for name in looked_up:  # batch composition changes a CPU forward's last bits
        torch.testing.assert_close(looked_up[name], direct[name], rtol=1e-5, atol=1e-6)
