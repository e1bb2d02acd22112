"""Prompts through the pipeline's tokenizer and text encoder, the prompt-embedding cache and caption dropout."""

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

import lisa_probe.text.prompts
from lisa_probe.models import load_main
from lisa_probe.text.prompts import PromptEmbeddings, PromptEncoder, drop_prompts

PROMPTS = ["a big red circle", "a small blue square", "a big green square"]


def test_an_embedding_is_the_text_encoders_last_hidden_state_of_max_length_tokens(sd_pipeline):
    """As diffusers' train_controlnet.py: tokens padded to model_max_length, the encoder's last hidden state;
    recomputed here with transformers alone, one prompt at a time."""
    encoder = PromptEncoder.from_pipeline(sd_pipeline)
    batch = encoder.encode(PROMPTS)["context"]
    tokenizer = CLIPTokenizer.from_pretrained(sd_pipeline / "tokenizer")
    text_model = CLIPTextModel.from_pretrained(sd_pipeline / "text_encoder")
    for row, prompt in enumerate(PROMPTS):
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            expected = text_model(ids).last_hidden_state
        torch.testing.assert_close(batch[row:row + 1], expected, rtol=1e-5, atol=1e-6)
    assert batch.shape == (3, tokenizer.model_max_length, 32)
    assert (batch[0] - batch[1]).abs().max() > 1e-3


def test_the_empty_prompt_is_the_null_context_of_a_pipeline_with_a_text_encoder(sd_pipeline):
    null_context = load_main(sd_pipeline)[3]["context"]
    torch.testing.assert_close(null_context, PromptEncoder.from_pipeline(sd_pipeline).empty()["context"],
                               rtol=0, atol=0)
    assert torch.count_nonzero(null_context) > 0  # not the all-zeros stand-in


def test_cached_embeddings_equal_uncached_ones_and_are_read_back_without_encoding(sd_pipeline, tmp_path,
                                                                                 monkeypatch):
    encoder = PromptEncoder.from_pipeline(sd_pipeline)
    cached = PromptEmbeddings(encoder, PROMPTS + PROMPTS[:1], tmp_path, progress=False)
    assert cached.prompts == sorted(set(PROMPTS) | {""})
    wanted = [PROMPTS[2], "", PROMPTS[0], PROMPTS[2]]
    # batch composition changes the last bits of a CPU forward: the cache encoded other batches than this one
    torch.testing.assert_close(cached.lookup(wanted)["context"], encoder.encode(wanted)["context"], rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(cached.lookup([""])["context"], encoder.empty()["context"], rtol=0, atol=0)

    def no_encoding(prompts):
        raise AssertionError("the cache was recomputed")

    monkeypatch.setattr(encoder, "encode", no_encoding)
    again = PromptEmbeddings(encoder, list(reversed(PROMPTS)), tmp_path, progress=False)
    assert again.path == cached.path
    torch.testing.assert_close(again.lookup(wanted)["context"], cached.lookup(wanted)["context"], rtol=0, atol=0)
    with pytest.raises(KeyError, match="'a tiny cross' was not encoded"):
        again.lookup(["a tiny cross"])


@pytest.mark.parametrize("damage", ["zero-bytes", "truncated", "non-finite"])
def test_a_damaged_prompt_cache_is_encoded_anew(sd_pipeline, tmp_path, damage):
    encoder = PromptEncoder.from_pipeline(sd_pipeline)
    cached = PromptEmbeddings(encoder, PROMPTS, tmp_path, progress=False)
    good = cached.lookup(PROMPTS)["context"]
    if damage == "zero-bytes":
        cached.path.write_bytes(b"")
    elif damage == "truncated":
        cached.path.write_bytes(cached.path.read_bytes()[: cached.path.stat().st_size // 2])
    else:
        metadata = cached._file.metadata()
        save_file({"context": torch.full_like(cached._rows["context"][0:len(cached.prompts)], math.nan)}, cached.path,
                  metadata=metadata)
    with pytest.warns(UserWarning, match="encoding it anew"):
        again = PromptEmbeddings(encoder, PROMPTS, tmp_path, progress=False)
    torch.testing.assert_close(again.lookup(PROMPTS)["context"], good)


def test_a_prompt_cache_that_cannot_be_written_leaves_no_staging_file(sd_pipeline, tmp_path, monkeypatch):
    def full_disk(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(lisa_probe.text.prompts, "save_file", full_disk)
    with pytest.raises(OSError, match=r"writing the prompt cache .*prompts-.*\.safetensors failed: .*No space left"):
        PromptEmbeddings(PromptEncoder.from_pipeline(sd_pipeline), PROMPTS, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_cache_key_changes_with_the_prompts_and_the_text_encoder(sd_pipeline, tmp_path):
    encoder = PromptEncoder.from_pipeline(sd_pipeline)
    first = PromptEmbeddings(encoder, PROMPTS, tmp_path, progress=False).path
    assert PromptEmbeddings(encoder, PROMPTS[:2], tmp_path, progress=False).path != first
    other = tmp_path / "other"
    shutil.copytree(sd_pipeline, other)
    config = other / "text_encoder" / "config.json"
    config.write_text(config.read_text().replace('"hidden_act"', '"_note": "edited", "hidden_act"'))
    assert PromptEmbeddings(PromptEncoder.from_pipeline(other), PROMPTS, tmp_path, progress=False).path != first


def test_caption_dropout_replaces_the_given_share_of_prompts():
    prompts = ["x"] * 4000
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert drop_prompts(prompts, 0.0, generator) == prompts
    assert torch.equal(generator.get_state(), state)  # no dropout draws nothing
    assert drop_prompts(prompts, 1.0, generator) == [""] * 4000
    dropped = drop_prompts(prompts, 0.3, generator).count("")
    assert abs(dropped - 1200) < 4 * (4000 * 0.3 * 0.7) ** 0.5  # within 4 binomial standard deviations


def test_a_pipeline_without_a_text_encoder_or_without_a_second_tokenizer_is_refused(sd_pipeline, tmp_path):
    with pytest.raises(ValueError, match="has no text_encoder/ and tokenizer/"):
        PromptEncoder.from_pipeline(tmp_path)
    half = tmp_path / "half-sdxl"
    shutil.copytree(sd_pipeline, half)
    shutil.copytree(sd_pipeline / "text_encoder", half / "text_encoder_2")
    with pytest.raises(ValueError, match="text_encoder_2/ or tokenizer_2/ but not both"):
        PromptEncoder.from_pipeline(half)


@pytest.mark.parametrize("fixture,layout", [("sdxl_pipeline", "sdxl"), ("sd3_pipeline", "sd3"),
                                            ("sd3_pipeline_without_t5", "sd3")])
def test_sdxl_and_sd3_prompts_are_what_diffusers_pipelines_encode(request, fixture, layout):
    """SDXL: both CLIPs' penultimate states side by side, the second's text_embeds pooled; SD3: CLIP-L/G padded to the
    T5 width and T5's 77 tokens after them (zeros without T5), both text_embeds pooled; as the pipelines'
    ``encode_prompt`` computes them (the SD3 ControlNet trainer's max_sequence_length 77)."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionXLPipeline

    path = request.getfixturevalue(fixture)
    encoder = PromptEncoder.from_pipeline(path)
    assert encoder.layout == layout
    ours = encoder.encode(PROMPTS + [""])
    if layout == "sdxl":
        context, _, pooled, _ = StableDiffusionXLPipeline.from_pretrained(path).encode_prompt(
            PROMPTS + [""], do_classifier_free_guidance=False)
    else:
        missing = {} if (path / "text_encoder_3").is_dir() else {"text_encoder_3": None, "tokenizer_3": None}
        pipe = StableDiffusion3Pipeline.from_pretrained(path, **missing)
        context, _, pooled, _ = pipe.encode_prompt(PROMPTS + [""], PROMPTS + [""], PROMPTS + [""],
                                                   do_classifier_free_guidance=False, max_sequence_length=77)
        assert (context[:, 16:].abs().max() == 0) == bool(missing)  # the T5 part: zeros exactly without T5
    # CPU kernels may differ in the last bits between two batchings of the same prompts
    torch.testing.assert_close(ours["context"], context, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["pooled"], pooled, rtol=1e-5, atol=1e-5)
    assert (ours["context"][0] - ours["context"][1]).abs().max() > 1e-3


def test_captions_longer_than_the_encoder_reads_are_counted_once_and_reported(sd_pipeline, tmp_path, monkeypatch):
    """As diffusers warns about truncated prompts: the distinct over-long captions are counted when the set is
    encoded (a brute-force count by the tokenizer alone agrees), stored with the cache and reported by every command
    that opens it, in one warning."""
    encoder = PromptEncoder.from_pipeline(sd_pipeline)
    limit = encoder.token_limits()[0]
    long_ones = [" ".join(["red"] * limit), " ".join(["blue square"] * limit)]
    prompts = PROMPTS + long_ones + long_ones[:1]
    tokenizer = CLIPTokenizer.from_pretrained(sd_pipeline / "tokenizer")
    expected = sum(len(tokenizer(p).input_ids) > limit for p in set(prompts))
    assert expected == 2
    with pytest.warns(UserWarning, match=rf"2 of the 5 distinct captions are longer than the text encoder reads "
                                         rf"\({limit} tokens\) and are truncated") as caught:
        cached = PromptEmbeddings(encoder, prompts, tmp_path, progress=False)
    assert cached.overlong == 2 and len([w for w in caught if "truncated" in str(w.message)]) == 1

    def no_counting(prompts):
        raise AssertionError("counted again")

    monkeypatch.setattr(encoder, "overlong", no_counting)
    with pytest.warns(UserWarning, match="2 of the 5 distinct captions"):
        assert PromptEmbeddings(encoder, prompts, tmp_path, progress=False).overlong == 2
