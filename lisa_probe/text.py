"""Prompts -> the main net's text conditioning, through the pipeline's own tokenizer and text encoder.

A Stable Diffusion 1.x / 2.x pipeline directory holds ``tokenizer/`` and ``text_encoder/`` (a CLIP text model); the
embedding of a prompt is what diffusers' ``train_controlnet.py`` feeds the UNet: the tokens padded to the tokenizer's
``model_max_length`` (truncated), through the text encoder, its last hidden state (1, L, D). A text encoder with a
projection (``CLIPTextModelWithProjection``, e.g. the label encoder ``text_labels`` writes for an SD3-style
transformer) also gives the pooled projection ``pooled`` (1, P) that SD3 transformers read. The empty prompt's
embedding is the null context (what a caption dropped by ``--proportion-empty-prompts`` becomes).

Embeddings of a dataset's prompts are computed once, before training, and cached on disk (``PromptEmbeddings``),
keyed by the encoder's identity and the prompts, so that a training step costs a lookup instead of a text-encoder
forward. SDXL's and SD3's several encoders (``text_encoder_2/``, ``text_encoder_3/``) are not read yet: such
pipelines are refused by name (``check_single_text_encoder``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

from lisa_probe.data import build_dataset

TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
EXTRA_ENCODER_DIRS = ("text_encoder_2", "text_encoder_3")
ENCODE_BATCH = 64
CACHE_FORMAT = 2  # 2: every output of the encoder (context, pooled) is cached


def has_text_encoder(pipeline: Path) -> bool:
    """Whether a pipeline directory holds ``text_encoder/`` and ``tokenizer/``."""
    pipeline = Path(pipeline)
    return (pipeline / TEXT_ENCODER_DIR / "config.json").exists() and (pipeline / TOKENIZER_DIR).is_dir()


def check_single_text_encoder(pipeline: Path) -> None:
    """ValueError for a pipeline with more than one text encoder (SDXL, SD3), which this module does not read."""
    extra = [name for name in EXTRA_ENCODER_DIRS if (Path(pipeline) / name).is_dir()]
    if extra:
        raise ValueError(f"{pipeline} has {', '.join(extra)}/ (an SDXL or SD3 pipeline): captions through several "
                         "text encoders are not supported yet; train without captions (the null context), or with a "
                         "null_context.safetensors beside the main net")


class PromptEncoder:
    """A pipeline's tokenizer and CLIP text encoder (frozen, eval mode).

    ``encode(prompts) -> {"context": (B, L, D)}`` as diffusers' ControlNet trainer computes it, plus ``"pooled"``
    (B, P) for an encoder with a projection; ``identity`` is a digest of the encoder's and tokenizer's files (the
    cache key's model part).
    """

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, identity: str):
        if getattr(tokenizer, "model_max_length", 0) > 100_000:
            raise ValueError("the tokenizer has no model_max_length (set it in tokenizer_config.json, e.g. 77 for "
                             "CLIP): padding to max_length would pad to ~1e30 tokens")
        self.tokenizer, self.text_encoder, self.identity = tokenizer, text_encoder.requires_grad_(False).eval(), identity

    @classmethod
    def from_pipeline(cls, pipeline: Path) -> PromptEncoder:
        """Load ``tokenizer/`` and ``text_encoder/`` (safetensors weights only) from a pipeline directory; a clear
        error when they are missing."""
        pipeline = Path(pipeline)
        if not has_text_encoder(pipeline):
            raise ValueError(f"{pipeline} has no {TEXT_ENCODER_DIR}/ and {TOKENIZER_DIR}/ to encode captions with "
                             f"(a Stable Diffusion pipeline directory has both)")
        check_single_text_encoder(pipeline)
        encoder_dir = pipeline / TEXT_ENCODER_DIR
        if not any(encoder_dir.glob("*.safetensors")):
            raise ValueError(f"{encoder_dir} holds no .safetensors weights (lisa_probe loads no pickle files); "
                             f"convert it once with transformers' save_pretrained(..., safe_serialization=True)")
        architectures = json.loads((encoder_dir / "config.json").read_text()).get("architectures") or []
        model_class = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in architectures else CLIPTextModel
        text_encoder = model_class.from_pretrained(encoder_dir, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(pipeline / TOKENIZER_DIR)
        return cls(tokenizer, text_encoder, files_identity([encoder_dir, pipeline / TOKENIZER_DIR]))

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"context": (B, L, D)}`` float32 for B prompts, L = the tokenizer's ``model_max_length``, the last
        hidden state; with a projection also ``"pooled": (B, P)``, its ``text_embeds``."""
        ids = self.tokenizer(list(prompts), max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        output = self.text_encoder(ids.to(device))
        encoded = {"context": output.last_hidden_state.float().cpu()}
        if isinstance(self.text_encoder, CLIPTextModelWithProjection):
            encoded["pooled"] = output.text_embeds.float().cpu()
        return encoded

    def empty(self) -> dict[str, torch.Tensor]:
        """The empty prompt's embedding (``context`` (1, L, D), ``pooled`` (1, P) with a projection): the
        unconditional (null) context."""
        return self.encode([""])


def files_identity(directories: Sequence[Path]) -> str:
    """SHA-256 over the names, sizes and modification times of every file in ``directories`` (and the contents of
    their small JSON / text files): it changes when a model's files do, without reading gigabytes of weights."""
    digest = hashlib.sha256()
    for directory in directories:
        for path in sorted(Path(directory).rglob("*")):
            if not path.is_file():
                continue
            stat = path.stat()
            digest.update(f"{path.relative_to(directory.parent)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            if path.suffix in (".json", ".txt") and stat.st_size < 1 << 20:
                digest.update(path.read_bytes())
    return digest.hexdigest()


class PromptEmbeddings:
    """The embeddings of a fixed set of prompts (always including the empty prompt, encoded alone as the null
    context is), computed once in batches of ``ENCODE_BATCH`` and cached as ``<cache_dir>/prompts-<key>.safetensors``:
    ``context`` (U, L, D) (and ``pooled`` (U, P) for an encoder with a projection) for the U distinct prompts in
    sorted order, ``prompts`` in the file's metadata. The key is a SHA-256 of the encoder's
    identity, the prompts and the cache format, so a changed model or dataset never reads a stale file. Rows are
    read from the memory-mapped file on demand (a dataset's embeddings need not fit in memory: 236 KB per prompt
    for SD 1.5's 77 x 768).
    """

    def __init__(self, encoder: PromptEncoder, prompts: Sequence[str], cache_dir: Path, progress: bool = True):
        self.prompts = sorted(set(prompts) | {""})
        self.index = {prompt: i for i, prompt in enumerate(self.prompts)}
        key = hashlib.sha256(json.dumps([CACHE_FORMAT, encoder.identity, self.prompts]).encode()).hexdigest()
        self.path = Path(cache_dir) / f"prompts-{key[:24]}.safetensors"
        if not self.path.exists():
            self._compute(encoder, progress)
        self._file = safe_open(str(self.path), framework="pt")
        self._rows = {name: self._file.get_slice(name) for name in self._file.keys()}

    def _compute(self, encoder: PromptEncoder, progress: bool) -> None:
        chunks = [encoder.empty()]  # "" sorts first; alone, so that it is the null context to the bit
        for start in tqdm(range(1, len(self.prompts), ENCODE_BATCH), desc="encoding prompts", disable=not progress):
            chunks.append(encoder.encode(self.prompts[start:start + ENCODE_BATCH]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # processes may encode at once
        save_file({name: torch.cat([chunk[name] for chunk in chunks]).contiguous() for name in chunks[0]}, staging,
                  metadata={"prompts": json.dumps(self.prompts), "text_encoder": encoder.identity})
        staging.replace(self.path)  # atomic: a reader never sees half a file

    def lookup(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"context": (B, L, D)}`` (and ``"pooled": (B, P)``) of B prompts of this set (KeyError naming a prompt
        that is not in it)."""
        missing = [prompt for prompt in prompts if prompt not in self.index]
        if missing:
            raise KeyError(f"prompt {missing[0]!r} was not encoded (not among the dataset's captions)")
        rows = [self.index[prompt] for prompt in prompts]
        return {name: torch.cat([sliced[row:row + 1] for row in rows]) for name, sliced in self._rows.items()}


def batch_context(prompts: PromptEmbeddings | None, batch: dict) -> dict[str, torch.Tensor] | None:
    """The text conditioning of a collated batch: its captions' embeddings (``PromptEmbeddings.lookup``), or None
    (the null context) without ``prompts``."""
    return None if prompts is None else prompts.lookup(batch["text"])


def drop_prompts(prompts: Sequence[str], proportion: float, generator: torch.Generator) -> list[str]:
    """Caption dropout (diffusers' ``--proportion_empty_prompts``): each prompt becomes "" with probability
    ``proportion``, drawn from ``generator`` (no draw at all for 0, so the rest of a run's random stream is as
    without dropout)."""
    if proportion <= 0:
        return list(prompts)
    keep = torch.rand(len(prompts), generator=generator) >= proportion
    return [prompt if kept else "" for prompt, kept in zip(prompts, keep.tolist())]


def prompt_embeddings(config, dataset_kwargs: dict, cache: Path, splits: tuple[str, ...],
                      progress: bool = True, pipeline: Path | None = None) -> PromptEmbeddings | None:
    """The cached embeddings (under ``cache/prompts``) of every caption of a captioned dataset's ``splits`` (a
    captioned table's, or shapes' label prompts) through the text encoder of ``pipeline`` (default: the config's
    ``main``); None for a dataset without captions. ``config``: a ``TrainConfig``, ``PretrainConfig`` or
    ``ForeignRun`` (``DataOptions``). ValueError when the captions have no text encoder."""
    if not config.has_captions:
        return None
    pipeline = Path(config.main if pipeline is None else pipeline)
    if not has_text_encoder(pipeline):
        remedy = ("a main net pretrained with --label-prompts has one" if config.label_prompts else
                  "train without them with --caption-column none")
        raise ValueError(f"the dataset has captions but the main net {pipeline} has no text_encoder/ and "
                         f"tokenizer/; {remedy}")
    captions = [caption for split in splits
                for caption in build_dataset(config.dataset, split=split, **dataset_kwargs).captions()]
    return PromptEmbeddings(PromptEncoder.from_pipeline(pipeline), captions, Path(cache) / "prompts",
                            progress=progress)


__all__ = ["PromptEmbeddings", "PromptEncoder", "batch_context", "check_single_text_encoder", "drop_prompts",
           "has_text_encoder",
           "prompt_embeddings"]
