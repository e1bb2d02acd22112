"""Tiny, randomly initialised Stable-Diffusion-style pipelines and captioned datasets, written to disk for tests.

Nothing is downloaded. The pipeline is diffusers' layout (``unet/ vae/ text_encoder/ tokenizer/ scheduler/
model_index.json``, via ``StableDiffusionPipeline.save_pretrained``) with the sizes of diffusers' test dummies; the
VAE downsamples by 8 as SD's does. The tokenizer is CLIP's byte-level BPE over a handmade vocabulary in which
every caption word is one token (``lisa_probe.text.labels.write_tokenizer``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from lisa_probe.text.labels import write_tokenizer as write_word_tokenizer

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")
WORDS = ("a", "on", "big", "small", "background", *COLOURS, *SHAPES)
MAX_LENGTH = 16


def write_tokenizer(directory: Path, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary makes each of ``WORDS`` one token, saved in ``directory``."""
    return write_word_tokenizer(directory, WORDS, max_length)


def tiny_clip(tokenizer: CLIPTokenizer, hidden: int = 32, projection: int | None = None, seed: int = 0):
    """A tiny random CLIP text encoder (with a text projection of width ``projection`` when given)."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, hidden_size=hidden, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=MAX_LENGTH,
                            vocab_size=len(tokenizer), projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def tiny_vae(resolution: int, **config) -> AutoencoderKL:
    """A tiny VAE that downsamples by 8, as SD's does (``config``: e.g. SD3's scaling and shift factors)."""
    return AutoencoderKL(
        sample_size=resolution, in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
        norm_num_groups=8, **config)


def save_with_tokenizers(pipeline, out: Path, staging: Path, tokenizer_dirs: tuple[str, ...]) -> Path:
    """``pipeline.save_pretrained(out)`` (safetensors), each tokenizer folder given the word-level vocabulary files
    (transformers 5 reads them only through ``from_pretrained``)."""
    pipeline.save_pretrained(out, safe_serialization=True)
    for directory in tokenizer_dirs:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(staging / name, out / directory / name)
    shutil.rmtree(staging)
    return out


def write_sd_pipeline(out: Path, resolution: int = 64, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A tiny SD 1.x-style pipeline (SD 2.x-v with ``prediction_type="v_prediction"``) in ``out``."""
    out = Path(out)
    staging = out.with_name(out.name + ".tokenizer")
    tokenizer = write_tokenizer(staging)
    text_encoder = tiny_clip(tokenizer, seed=seed)
    unet = UNet2DConditionModel(
        sample_size=resolution // 8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              prediction_type=prediction_type, steps_offset=1)
    pipeline = StableDiffusionPipeline(vae=tiny_vae(resolution), text_encoder=text_encoder, tokenizer=tokenizer,
                                       unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    return save_with_tokenizers(pipeline, out, staging, ("tokenizer",))


def write_sdxl_pipeline(out: Path, resolution: int = 64, seed: int = 0) -> Path:
    """A tiny SDXL-style pipeline: two CLIPs (the second with a projection: the pooled ``text_embeds``), a
    ``text_time`` UNet reading their concatenated tokens (32 + 32) and pooled text + 6 time ids, an Euler scheduler."""
    out = Path(out)
    staging = out.with_name(out.name + ".tokenizer")
    tokenizer = write_tokenizer(staging)
    unet = UNet2DConditionModel(
        sample_size=resolution // 8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, use_linear_projection=True)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="leading")
    pipeline = StableDiffusionXLPipeline(vae=tiny_vae(resolution), text_encoder=tiny_clip(tokenizer, seed=seed),
                                         text_encoder_2=tiny_clip(tokenizer, projection=32, seed=seed + 1),
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    return save_with_tokenizers(pipeline, out, staging, ("tokenizer", "tokenizer_2"))


def write_sd3_pipeline(out: Path, resolution: int = 64, t5: bool = True, seed: int = 0) -> Path:
    """A tiny SD3-style pipeline: CLIP-L and CLIP-G stand-ins (16 wide each, projections of 16), an optional T5
    encoder of width 32 (its tokenizer: the word-level CLIP one; diffusers' tests use a tiny T5 vocabulary), and a
    transformer with ``joint_attention_dim`` 32 and ``pooled_projection_dim`` 32."""
    out = Path(out)
    staging = out.with_name(out.name + ".tokenizer")
    tokenizer = write_tokenizer(staging)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=resolution // 8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=resolution // 16)
    text_encoder_3 = None
    if t5:
        torch.manual_seed(seed + 2)
        text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37,
                                                 num_layers=2, num_heads=4, pad_token_id=tokenizer.pad_token_id))
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(resolution, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=tiny_clip(tokenizer, 16, 16, seed), tokenizer=tokenizer,
        text_encoder_2=tiny_clip(tokenizer, 16, 16, seed + 1), tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer if t5 else None)
    return save_with_tokenizers(pipeline, out, staging, ("tokenizer", "tokenizer_2") + (("tokenizer_3",) if t5 else ()))


def shape_row(index: int, resolution: int) -> dict:
    """One synthetic row: a coloured shape on grey, its white-on-black outline and a caption naming both."""
    rng = np.random.default_rng(index)
    colour, shape = list(COLOURS)[index % len(COLOURS)], SHAPES[(index // len(COLOURS)) % len(SHAPES)]
    size = "big" if rng.random() < 0.5 else "small"
    radius = resolution * (0.35 if size == "big" else 0.2)
    centre = rng.uniform(radius, resolution - radius, 2)
    box = [*(centre - radius), *(centre + radius)]
    image, outline = Image.new("RGB", (resolution,) * 2, (128, 128, 128)), Image.new("RGB", (resolution,) * 2)
    for canvas, fill, line in ((image, COLOURS[colour], None), (outline, None, (255, 255, 255))):
        draw = ImageDraw.Draw(canvas)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=fill, outline=line, width=2)
    return {"image": image, "conditioning_image": outline, "text": f"a {size} {colour} {shape}",
            "colour": colour, "size": float(radius / resolution)}


def write_captioned_parquet(out: Path, rows: int = 40, resolution: int = 64) -> Path:
    """``rows`` synthetic rows as one parquet shard ``out/data/train-00000-of-00001.parquet`` with ``datasets``
    Image features (what ``load_dataset(out)`` and diffusers' ``--train_data_dir out`` read)."""
    table = datasets.Dataset.from_list([shape_row(i, resolution) for i in range(rows)]).cast_column(
        "image", datasets.Image()).cast_column("conditioning_image", datasets.Image())
    (Path(out) / "data").mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(Path(out) / "data" / "train-00000-of-00001.parquet"))
    return Path(out)
