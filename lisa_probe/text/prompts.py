"""Prompts -> the main net's text conditioning, through the pipeline's own tokenizer and text encoder.

A Stable Diffusion 1.x / 2.x pipeline directory holds ``tokenizer/`` and ``text_encoder/`` (a CLIP text model); the
embedding of a prompt is what diffusers' ``train_controlnet.py`` feeds the UNet: the tokens padded to the tokenizer's
``model_max_length`` (truncated), through the text encoder, its last hidden state (1, L, D). A text encoder with a
projection (``CLIPTextModelWithProjection``, e.g. the label encoder ``text.labels`` writes for an SD3-style
transformer) also gives the pooled projection ``pooled`` (1, P) that SD3 transformers read. The empty prompt's
embedding is the null context (what a caption dropped by ``--proportion-empty-prompts`` becomes).

Embeddings of a dataset's prompts are computed once, before training, and cached on disk (``PromptEmbeddings``),
keyed by the encoder's identity and the prompts, so that a training step costs a lookup instead of a text-encoder
forward. SDXL's two CLIPs and SD3's CLIP-L, CLIP-G and optional T5 are combined as diffusers combines them
(``PromptEncoder``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

from lisa_probe.options import check_choice

TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
ENCODE_BATCH = 64
CACHE_FORMAT = 2  # 2: every output of the encoder (context, pooled) is cached
CHECK_ROWS = 1024  # rows read at a time when a cache file is checked
MAX_SEQUENCE_LENGTH = 77  # SD3's T5 tokens (diffusers' train_controlnet_sd3.py --max_sequence_length default)
LAYOUTS = ("sd", "sdxl", "sd3")


def has_text_encoder(pipeline: Path) -> bool:
    """Whether a pipeline directory holds ``text_encoder/`` and ``tokenizer/``."""
    pipeline = Path(pipeline)
    return (pipeline / TEXT_ENCODER_DIR / "config.json").exists() and (pipeline / TOKENIZER_DIR).is_dir()


def text_layout(pipeline: Path) -> str:
    """Which text encoders a pipeline directory holds, as diffusers' pipelines combine them: ``sd`` (one CLIP:
    SD 1.x / 2.x, or a label encoder), ``sdxl`` (``text_encoder_2/`` beside a UNet) or ``sd3`` (``text_encoder_2/``
    and optionally the T5 ``text_encoder_3/`` beside a transformer)."""
    pipeline = Path(pipeline)
    if not (pipeline / "text_encoder_2").is_dir():
        unet_config = read_json_config(pipeline / "unet" / "config.json") if (pipeline / "unet").is_dir() else {}
        if unet_config.get("addition_embed_type") == "text_time":
            raise ValueError(f"{pipeline} is an SDXL pipeline (its UNet's addition_embed_type is 'text_time') without "
                             "text_encoder_2/ and tokenizer_2/: SDXL's prompts need both text encoders")
        return "sd"
    return "sd3" if (pipeline / "transformer").is_dir() else "sdxl"


def read_json_config(path: Path) -> dict:
    """A model's ``config.json`` as a dict; ValueError naming the file when it is not a JSON object."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable JSON config ({type(error).__name__}: {error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


def _load_encoder(directory: Path, default_class, variant: str | None = None):
    """A transformers text encoder from ``directory`` (safetensors only, its ``variant`` files where given), the class
    its config names among CLIP's two and T5's encoder, else ``default_class``."""
    if not any(directory.glob("*.safetensors")):
        raise ValueError(f"{directory} holds no .safetensors weights (lisa_probe loads no pickle files); "
                         f"convert it once with transformers' save_pretrained(..., safe_serialization=True)")
    architectures = read_json_config(directory / "config.json").get("architectures") or []
    known = {cls.__name__: cls for cls in (CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel)}
    model_class = next((known[name] for name in architectures if name in known), default_class)
    try:
        model = model_class.from_pretrained(directory, use_safetensors=True, variant=variant)
        return model.requires_grad_(False).eval()
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
        raise ValueError(f"cannot load the text encoder in {directory} ({type(error).__name__}: {error})") from error


def _load_tokenizer(directory: Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot load the tokenizer in {directory} ({type(error).__name__}: {error})") from error
    if getattr(tokenizer, "model_max_length", 0) > 100_000:
        raise ValueError(f"the tokenizer in {directory} has no model_max_length (set it in tokenizer_config.json, "
                         "e.g. 77 for CLIP): padding to max_length would pad to ~1e30 tokens")
    return tokenizer


class PromptEncoder:
    """A pipeline's tokenizers and text encoders (frozen, eval mode), combined as diffusers' pipelines and ControlNet
    trainers combine them (``layout``, see ``text_layout``):

    * ``sd``: ``{"context": (B, L, D)}``, the last hidden state of the tokens padded to ``model_max_length``, plus
      ``"pooled"`` (B, P), ``text_embeds``, for an encoder with a projection (SD3-style label encoders);
    * ``sdxl``: ``context`` = both CLIPs' penultimate hidden states concatenated (B, 77, D1 + D2), ``pooled`` = the
      second one's ``text_embeds`` (B, P2) (SDXL's added ``text_embeds``; its ``time_ids`` come from the image size);
    * ``sd3``: CLIP-L's and CLIP-G's penultimate states concatenated and zero-padded to the T5 width, followed by
      T5's ``MAX_SEQUENCE_LENGTH`` tokens (zeros without ``text_encoder_3/``, as diffusers allows dropping T5):
      ``context`` (B, 77 + 77, D_T5); ``pooled`` = both CLIPs' ``text_embeds`` concatenated (B, P1 + P2).

    ``identity`` is a digest of the encoders' and tokenizers' files (the cache key's model part).
    """

    def __init__(self, tokenizers: list, text_encoders: list[torch.nn.Module], identity: str, layout: str = "sd",
                 t5_width: int | None = None):
        check_choice("text layout", layout, LAYOUTS)
        self.tokenizers, self.text_encoders, self.identity = tokenizers, text_encoders, identity
        self.layout, self.t5_width = layout, t5_width

    @classmethod
    def from_pipeline(cls, pipeline: Path, variant: str | None = None) -> PromptEncoder:
        """Load the tokenizers and text encoders (safetensors weights only; their ``variant`` files, e.g. ``fp16``,
        where given) of a pipeline directory; a clear error when they are missing."""
        pipeline = Path(pipeline)
        if not has_text_encoder(pipeline):
            raise ValueError(f"{pipeline} has no {TEXT_ENCODER_DIR}/ and {TOKENIZER_DIR}/ to encode captions with "
                             f"(a Stable Diffusion pipeline directory has both)")
        layout = text_layout(pipeline)
        suffixes = ["", "_2"] if layout != "sd" else [""]
        if layout == "sd3" and (pipeline / "text_encoder_3").is_dir():
            suffixes.append("_3")
        for suffix in suffixes:
            for part in ("text_encoder", "tokenizer"):
                if not (pipeline / f"{part}{suffix}").is_dir():
                    raise ValueError(f"{pipeline} has {'text_encoder' + suffix}/ or {'tokenizer' + suffix}/ but not "
                                     f"both: a {layout} pipeline needs each text encoder's tokenizer")
        defaults = {"": CLIPTextModelWithProjection if layout == "sd3" else CLIPTextModel,  # when configs say none
                    "_2": CLIPTextModelWithProjection, "_3": T5EncoderModel}
        encoders = [_load_encoder(pipeline / f"text_encoder{suffix}", defaults[suffix], variant)
                    for suffix in suffixes]
        tokenizers = [_load_tokenizer(pipeline / f"tokenizer{suffix}") for suffix in suffixes]
        t5_width = None
        if layout == "sd3":
            t5_width = read_json_config(pipeline / "transformer" / "config.json")["joint_attention_dim"]
        identity = files_identity([pipeline / f"{part}{suffix}" for suffix in suffixes
                                   for part in ("text_encoder", "tokenizer")]) + (f"/{variant}" if variant else "")
        return cls(tokenizers, encoders, identity, layout, t5_width)

    def token_limits(self) -> list[int]:
        """The number of tokens each encoder reads (longer prompts are truncated to it)."""
        return [MAX_SEQUENCE_LENGTH if index == 2 else tokenizer.model_max_length
                for index, tokenizer in enumerate(self.tokenizers)]

    def overlong(self, prompts: Sequence[str]) -> int:
        """How many of ``prompts`` have more tokens (with the special ones) than some encoder reads: diffusers'
        pipelines truncate them with a warning, as ``encode`` does."""
        too_long = set()
        for tokenizer, limit in zip(self.tokenizers, self.token_limits()):
            lengths = [len(ids) for ids in tokenizer(list(prompts), truncation=False).input_ids]
            too_long.update(index for index, length in enumerate(lengths) if length > limit)
        return len(too_long)

    def _run(self, index: int, prompts: list[str], max_length: int | None = None):
        """The outputs (with hidden states) of encoder ``index`` on ``prompts`` padded to ``max_length`` (default:
        its tokenizer's ``model_max_length``), truncated."""
        tokenizer, encoder = self.tokenizers[index], self.text_encoders[index]
        ids = tokenizer(prompts, max_length=max_length or tokenizer.model_max_length, padding="max_length",
                        truncation=True, return_tensors="pt").input_ids
        return encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"context": (B, L, D)}`` float32 for B prompts (and ``"pooled": (B, P)``), by the layout (class doc)."""
        prompts = list(prompts)
        if self.layout == "sd":
            output = self._run(0, prompts)
            encoded = {"context": output.last_hidden_state}
            if isinstance(self.text_encoders[0], CLIPTextModelWithProjection):
                encoded["pooled"] = output.text_embeds
        else:
            clips = [self._run(index, prompts) for index in (0, 1)]
            context = torch.cat([output.hidden_states[-2] for output in clips], dim=-1)
            if self.layout == "sdxl":
                encoded = {"context": context, "pooled": clips[1].text_embeds}
            else:
                if len(self.text_encoders) > 2:
                    t5 = self._run(2, prompts, MAX_SEQUENCE_LENGTH).last_hidden_state
                else:
                    t5 = context.new_zeros(len(prompts), MAX_SEQUENCE_LENGTH, self.t5_width)
                context = torch.nn.functional.pad(context, (0, t5.shape[-1] - context.shape[-1]))
                encoded = {"context": torch.cat([context, t5], dim=-2),
                           "pooled": torch.cat([output.text_embeds for output in clips], dim=-1)}
        return {name: value.float().cpu() for name, value in encoded.items()}

    def empty(self) -> dict[str, torch.Tensor]:
        """The empty prompt's embedding (``context`` (1, L, D), ``pooled`` (1, P) where there is one): the
        unconditional (null) context."""
        return self.encode([""])


def prompt_encoder(pipeline: Path, variant: str | None = None) -> PromptEncoder:
    """The pipeline's ``PromptEncoder`` (its ``variant`` weight files where given), loaded once per process while its
    files stay the same (the null context and a run's captions share it: the text encoders are loaded once per
    command, not once per use)."""
    pipeline = Path(pipeline).resolve()
    parts = sorted(path for path in pipeline.iterdir()
                   if path.is_dir() and path.name.startswith(("text_encoder", "tokenizer")))
    return _loaded_encoder(str(pipeline), files_identity(parts), variant)


@functools.lru_cache(maxsize=1)
def _loaded_encoder(pipeline: str, identity: str, variant: str | None) -> PromptEncoder:
    """``PromptEncoder.from_pipeline`` memoised on the pipeline, its text files' identity and the variant (one kept:
    the one in use)."""
    return PromptEncoder.from_pipeline(Path(pipeline), variant)


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
        if self.path.exists() and not self._readable():
            warnings.warn(f"prompt cache {self.path} is damaged or holds non-finite values: encoding it anew",
                          stacklevel=2)
            self.path.unlink(missing_ok=True)
        if not self.path.exists():
            self._compute(encoder, progress)
        self._file = safe_open(str(self.path), framework="pt")
        self._rows = {name: self._file.get_slice(name) for name in self._file.keys()}
        counted = (self._file.metadata() or {}).get("overlong")  # counted when encoded (caches before: now)
        self.overlong = int(counted) if counted is not None else encoder.overlong(self.prompts)
        if self.overlong:
            warnings.warn(f"{self.overlong} of the {len(self.prompts) - 1} distinct captions are longer than the text "
                          f"encoder reads ({'/'.join(map(str, encoder.token_limits()))} tokens) and are truncated, "
                          "as diffusers' pipelines truncate them", stacklevel=2)

    def _readable(self) -> bool:
        """Whether the cache file opens, lists this set's prompts and holds one finite row per prompt of each output."""
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                if json.loads((handle.metadata() or {}).get("prompts", "null")) != self.prompts:
                    return False
                for name in handle.keys():  # a block of rows at a time: a large cache is not loaded whole
                    values = handle.get_slice(name)
                    if values.get_shape()[0] != len(self.prompts):
                        return False
                    for start in range(0, len(self.prompts), CHECK_ROWS):
                        if not torch.isfinite(values[start:start + CHECK_ROWS]).all():
                            return False
                return "context" in handle.keys()
        except (SafetensorError, OSError, ValueError):
            return False

    def _compute(self, encoder: PromptEncoder, progress: bool) -> None:
        chunks = [encoder.empty()]  # "" sorts first; alone, so that it is the null context to the bit
        for start in tqdm(range(1, len(self.prompts), ENCODE_BATCH), desc="encoding prompts", disable=not progress):
            chunks.append(encoder.encode(self.prompts[start:start + ENCODE_BATCH]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # processes may encode at once
        try:
            save_file({name: torch.cat([chunk[name] for chunk in chunks]).contiguous() for name in chunks[0]},
                      staging, metadata={"prompts": json.dumps(self.prompts), "text_encoder": encoder.identity,
                                         "overlong": str(encoder.overlong(self.prompts))})
            staging.replace(self.path)  # atomic: a reader never sees half a file
        except (SafetensorError, OSError) as error:  # a full disk
            staging.unlink(missing_ok=True)
            raise OSError(f"writing the prompt cache {self.path} failed: {error}") from error

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


def prompt_embeddings(config, datasets: Sequence, cache: Path, progress: bool = True,
                      pipeline: Path | None = None, extra: Sequence[str] = ()) -> PromptEmbeddings | None:
    """The cached embeddings (under ``cache/prompts``) of every caption of ``datasets`` (the splits a command uses,
    built once by it: a captioned table's, a folder's captions file or shapes' label prompts) and the ``extra``
    prompts (``--validation-prompt``) through the text encoder of ``pipeline`` (default: the config's ``main``); None
    for data without captions. ``config``: a
    ``TrainConfig``, ``PretrainConfig`` or ``ForeignRun`` (``DataOptions``). ValueError when the captions have no
    text encoder."""
    if not config.has_captions:
        return None
    pipeline = Path(config.main if pipeline is None else pipeline)
    if not has_text_encoder(pipeline):
        remedy = ("a main net pretrained with --label-prompts has one" if config.label_prompts else
                  "train without them with --caption-column none")
        raise ValueError(f"the dataset has captions but the main net {pipeline} has no text_encoder/ and "
                         f"tokenizer/; {remedy}")
    captions = [caption for dataset in datasets for caption in dataset.captions()] + list(extra)
    encoder = prompt_encoder(pipeline, getattr(config, "variant", None))  # a run's --variant (train configs)
    return PromptEmbeddings(encoder, captions, Path(cache) / "prompts", progress=progress)


__all__ = ["PromptEmbeddings", "PromptEncoder", "batch_context", "drop_prompts", "has_text_encoder",
           "prompt_embeddings", "text_layout"]
