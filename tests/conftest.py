"""Shared tiny models for the tests (built from diffusers configs, never downloaded)."""

import os
import socket
import subprocess
import sys
import tempfile

# before anything imports `datasets`: its table cache in a temporary directory, never the user's; nothing online
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="lisa-probe-tests-hf-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import lisa_probe.evaluation.readback as readback_module
from lisa_probe.analysis.report.selection import open_run
from lisa_probe.analysis.report.streaming import stream_run
from lisa_probe.analysis.report.tables import alignment_table
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models import build_main, build_side, make_dual_branch
from lisa_probe.models.build import null_context_for
from tests.analysis.synthetic_store import FAST, write_synthetic
from tests.tiny_pipelines import (
    write_captioned_parquet,
    write_sd3_pipeline,
    write_sd_pipeline,
    write_sdxl_pipeline,
)

# Tiny models run fastest on one thread, and OpenMP barriers thrash when the other core is busy.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
BACKBONES = [("unet", "eps"), ("unet", "v"), ("dit", "flow")]


def tiny_dual_branch(family: str, prediction_type: str, resolution: int = 16, perturb: bool = True):
    """A tiny DualBranch; ``perturb`` makes the zero-initialised side outputs non-zero so residuals matter."""
    main = build_main(family, "tiny", resolution, seed=0)
    side = build_side(main, family, cond_channels=1, seed=0)
    if perturb:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in side.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return make_dual_branch(family, main, side, Parameterization(prediction_type), null_context_for(main, family))


@pytest.fixture(params=BACKBONES, ids=lambda b: "-".join(b))
def dual_branch(request):
    return tiny_dual_branch(*request.param)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Share the read-back network cache between the tests of one session."""
    monkeypatch.setenv("LISA_PROBE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@dataclass(frozen=True)
class SmallReadbackConfig(readback_module.ReadbackConfig):
    """A small read-back training budget for tests (the default trains ~1000 steps); tests of the read-back net
    itself pass their settings explicitly."""

    n_train: int = 1000
    n_val: int = 200
    epochs: int = 2


@pytest.fixture(autouse=True)
def _small_readback(monkeypatch):
    monkeypatch.setattr(readback_module, "ReadbackConfig", SmallReadbackConfig)


FORWARD_RTOL = 2.0**-13  # float32 forwards of the tiny nets under reordered sums (see assert_same_model_outputs)


def assert_same_model_outputs(found: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Model outputs of two processes (or thread counts) are equal up to float rounding: non-float data exactly;
    float data within ``max(FORWARD_RTOL, 4 ulps of the stored dtype)`` times the dataset's largest magnitude.

    Why a tolerance: the same float32 forward run in another process may take another vectorised code path of the
    CPU's kernels (alignment, AMX / AVX-512 dispatch), which reorders sums and changes the last bits; through the
    tiny nets' few layers of reductions up to ~600 terms long, the difference grows to a few hundred float32 ulps
    at worst (measured here: 1e-6 at a magnitude of 0.8, i.e. 10 ulps), and a value stored as float16 may round to
    the neighbouring float16. 2^-13 (1000 float32 ulps; for float16, 4 of its ulps) bounds that and stays far below
    the differences between rows, which the callers check where it matters."""
    assert found.shape == expected.shape and found.dtype == expected.dtype, name
    if not np.issubdtype(expected.dtype, np.floating):
        np.testing.assert_array_equal(found, expected, err_msg=name)
        return
    scale = float(np.abs(expected).max(initial=0.0)) or 1.0
    tolerance = max(FORWARD_RTOL, 4 * float(np.finfo(expected.dtype).eps)) * scale
    np.testing.assert_allclose(found.astype(np.float64), expected.astype(np.float64), rtol=0, atol=tolerance,
                               err_msg=name)


def launch_two_cpu_processes(target: str, args: list[str]) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 [-m] <target> <args>`` on a free port, one thread each;
    ``target`` is a module name, or the path of a script when it ends in ``.py``.

    On a CPU-only machine this runs two gloo processes (accelerate's ``--cpu`` alone multiplies processes only
    through MPI)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), *([target] if target.endswith(".py") else ["-m", target]), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


# ------------------------------------------------ the synthetic store of the analysis tests
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A store written directly with known answers."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "synthetic.h5")


@pytest.fixture(scope="module")
def analysed(synthetic):
    """(run, streamed, alignment table) of the synthetic store, streamed in chunks of 50 rows."""
    options = replace(FAST, chunk_rows=50)
    run = open_run(synthetic, "synthetic", options)
    streamed = stream_run(run, options)
    return run, streamed, alignment_table(run, streamed, options)


@pytest.fixture(scope="session")
def sd_pipeline(tmp_path_factory) -> Path:
    """A tiny SD 1.x-style pipeline directory (64 px, VAE factor 8, CLIP text encoder and tokenizer)."""
    return write_sd_pipeline(tmp_path_factory.mktemp("pipelines") / "sd")


@pytest.fixture(scope="session")
def sdxl_pipeline(tmp_path_factory) -> Path:
    """A tiny SDXL-style pipeline directory (64 px; two CLIPs; a text_time UNet)."""
    return write_sdxl_pipeline(tmp_path_factory.mktemp("pipelines") / "sdxl")


@pytest.fixture(scope="session")
def sd3_pipeline(tmp_path_factory) -> Path:
    """A tiny SD3-style pipeline directory (64 px; CLIP-L, CLIP-G and T5 stand-ins; a transformer)."""
    return write_sd3_pipeline(tmp_path_factory.mktemp("pipelines") / "sd3")


@pytest.fixture(scope="session")
def sd3_pipeline_without_t5(tmp_path_factory) -> Path:
    """The SD3-style pipeline without text_encoder_3/ (diffusers allows dropping T5)."""
    return write_sd3_pipeline(tmp_path_factory.mktemp("pipelines") / "sd3-no-t5", t5=False)


@pytest.fixture(scope="session")
def captioned_data(tmp_path_factory) -> Path:
    """A 40-row captioned parquet dataset (image, conditioning_image, text, colour, size) at 64 px."""
    return write_captioned_parquet(tmp_path_factory.mktemp("data") / "captioned")


@pytest.fixture(scope="session")
def foreign_stores(tmp_path_factory, sd_pipeline, captioned_data) -> dict[str, Path]:
    """Stores of ControlNets we did not train (``extract --controlnet``): ``shapes`` (a tiny UNet main net, a
    perturbed random ControlNet, the shapes data with its factors, ``--decompose``) and ``captioned`` (the tiny SD
    pipeline's UNet as a ControlNet on captioned data without factor columns)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from lisa_probe.extraction.config import ExtractConfig
    from lisa_probe.extraction.extractor import extract
    from lisa_probe.models import save_main

    root = tmp_path_factory.mktemp("foreign")
    model = tiny_dual_branch("unet", "eps")
    save_main(root / "main", "unet", model.main, Parameterization("eps"))
    model.side.save_pretrained(root / "theirs-shapes")
    ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(sd_pipeline / "unet")).save_pretrained(
        root / "theirs-captioned")
    shapes = extract(ExtractConfig(out=str(root / "theirs-shapes.h5"), controlnet=str(root / "theirs-shapes"),
                                   main=str(root / "main"), samples=12, timesteps="2", decompose=True))
    captioned = extract(ExtractConfig(out=str(root / "theirs-captioned.h5"), controlnet=str(root / "theirs-captioned"),
                                      main=str(sd_pipeline), dataset="captioned", data_root=str(captioned_data),
                                      split="train", samples=12, timesteps="2"))
    return {"shapes": Path(shapes), "captioned": Path(captioned)}
