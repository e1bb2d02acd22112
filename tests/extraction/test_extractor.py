"""``python -m lisa_probe.extract``: row content recomputed by hand, options, overwrite/partial rules, streaming,
interrupted (in-process and SIGKILL) extractions resumed, two processes merged, a LISA-trained run."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel

import lisa_probe.extraction.extractor as extract_module
from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.analysis.report.selection import open_run
from lisa_probe.data import build_dataset
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.extract import main
from lisa_probe.extraction.config import ExtractConfig, ForeignRun
from lisa_probe.extraction.extractor import (
    Extractor,
    extract,
    parse_sites,
    parse_timesteps,
    pending_batches,
    row_noise,
    shard_rows,
)
from lisa_probe.models import build_main, build_side, load_main, load_side, make_dual_branch, save_main
from lisa_probe.models.hooks import capture
from lisa_probe.options import read_config
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.rundir import resolved_path, stored_path
from lisa_probe.store import SCHEMA_VERSION, FeatureStore, FeatureStoreWriter, partial_path, shard_path
from lisa_probe.store.integrity import verify_digests
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.lisa import LisaDecoder
from lisa_probe.training.side_net import train
from tests.conftest import REPO, assert_same_model_outputs, launch_two_cpu_processes

FAMILIES = {"unet": "eps", "dit": "flow"}
BASE = {"samples": 6, "timesteps": "3", "draws": 2, "batch_size": 5}  # 36 rows, 8 batches
# slow enough to kill (batch 3, ~30 rows/s here) and with 32-row chunks (float32 (8, 32, 32) features), so an
# interrupted run has committed rows and a resumed one restarts inside a batch (32 % 3 != 0)
RESUMABLE = {"samples": 16, "timesteps": "3", "draws": 2, "batch_size": 3, "feature_dtype": "float32",
             "residuals": True}


def make_nets(root: Path, family: str, resolution: int) -> tuple[str, str]:
    """A tiny main net and a side net with perturbed (non-zero) zero modules, saved as diffusers directories."""
    main_net = build_main(family, "tiny", resolution, seed=0)
    save_main(root / "main", family, main_net, Parameterization(FAMILIES[family]))
    side = build_side(main_net, family, cond_channels=1, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in side.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    side.save_pretrained(root / "side")
    return str(root / "main"), str(root / "side")


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """``{"unet": (main dir, side dir), "dit": …, "unet32": …}`` (16 px, and a 32 px UNet for the resume tests)."""
    root = tmp_path_factory.mktemp("nets")
    built = {family: make_nets(root / family, family, 16) for family in FAMILIES}
    built["unet32"] = make_nets(root / "unet32", "unet", 32)
    return built


def config_for(nets, family: str, out: Path, **options) -> ExtractConfig:
    main_dir, side_dir = nets[family]
    return ExtractConfig(out=str(out), controlnet=side_dir, main=main_dir, **{**BASE, **options})


def cli_args(nets, family: str, out: Path, **options) -> list[str]:
    """Command-line arguments equivalent to ``config_for(nets, family, out, **options)``."""
    main_dir, side_dir = nets[family]
    args = ["--out", str(out), "--controlnet", side_dir, "--main", main_dir]
    for key, value in {**BASE, **options}.items():
        args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


@pytest.fixture(scope="module")
def stores(nets, tmp_path_factory) -> dict[str, Path]:
    """One extraction per family with residuals and decompositions of all sites."""
    root = tmp_path_factory.mktemp("stores")
    return {family: extract(config_for(nets, family, root / f"{family}.h5", residuals=True, decompose=True))
            for family in FAMILIES}


@pytest.fixture(scope="module")
def reference_store(nets, tmp_path_factory) -> Path:
    """An uninterrupted single-process extraction with the RESUMABLE settings."""
    return extract(config_for(nets, "unet32", tmp_path_factory.mktemp("ref") / "ref.h5", **RESUMABLE))


def load_dual_branch(nets, family: str):
    """The dual branch rebuilt from the saved directories without lisa_probe.extract."""
    main_dir, side_dir = nets[family]
    family, main_net, parameterization, null_context, vae = load_main(Path(main_dir))
    return make_dual_branch(family, main_net, load_side(Path(side_dir), family), parameterization, null_context,
                            vae).eval()


def assert_stores_equal(left: Path, right: Path) -> None:
    """Same datasets with exactly the same values, dtypes and attrs."""
    with h5py.File(left, "r") as a, h5py.File(right, "r") as b:
        names = []
        a.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        other = []
        b.visititems(lambda name, obj: other.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert sorted(names) == sorted(other)
        for name in names:
            assert a[name].dtype == b[name].dtype, name
            assert np.array_equal(a[name][()], b[name][()]), name
            assert sorted(a[name].attrs) == sorted(b[name].attrs), name
            assert all(np.array_equal(a[name].attrs[key], b[name].attrs[key]) for key in a[name].attrs), name


# ----------------------------------------------------------------------------------------------------- row content
@pytest.mark.parametrize("family", FAMILIES)
def test_rows_match_a_hand_recomputation(nets, stores, family):
    """Rows are sample-major, then timestep, then draw; every dataset equals a hand-made forward of that row."""
    store = FeatureStore(stores[family])
    model = load_dual_branch(nets, family)
    parameterization = model.parameterization
    dataset = build_dataset("shapes", split="val", resolution=16, seed=0)
    timesteps = parameterization.evenly_spaced_timesteps(3)
    assert store.n_rows == 6 * 3 * 2
    assert np.array_equal(store.timesteps, np.sort(timesteps.float().numpy()))
    sites = model.site_names
    for row in (0, 7, 20, 35):
        sample, step, draw = dataset[row // 6], timesteps[(row // 2) % 3][None], row % 2
        x0 = sample["image"][None]
        noise = row_noise(tuple(x0.shape[1:]), 0, range(row, row + 1))
        x_t = parameterization.add_noise(x0, noise, step)
        cond = sample["cond"][None]
        with torch.no_grad(), capture(model, sites, what=("feature", "residual"), detach=True) as records:
            full = model.predict_full_reference(x_t, step, cond)
            main_alone = model.predict_main(x_t, step)
        got = {name: store.read(name, [row])[0] for name in store.layout}
        assert got["meta/sample_id"] == sample["id"]
        assert got["meta/t"] == np.float32(step.item()) and got["meta/draw"] == draw
        assert got["meta/noise_level"] == parameterization.noise_level(step).item()
        for name, value in sample["factors"].items():
            assert got[f"meta/factors/{name}"] == np.asarray(value, dtype=store.layout[f"meta/factors/{name}"].dtype)
        np.testing.assert_array_equal(got["scores/target"], parameterization.target(x0, noise, step)[0].numpy())
        np.testing.assert_allclose(got["scores/main"], main_alone[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(got["scores/full"], full[0].numpy(), atol=1e-4)
        for site in sites:
            assert store.layout[f"features/{site}"].dtype == "float16"
            np.testing.assert_allclose(got[f"features/{site}"], records[site]["feature"][0].numpy(), rtol=2e-3,
                                       atol=2e-3)
            np.testing.assert_allclose(got[f"residuals/{site}"], records[site]["residual"][0].numpy(), rtol=2e-3,
                                       atol=2e-3)
        # both likelihood estimates, in score units, from the store alone (noise level + parameterisation)
        sigma = got["meta/noise_level"].astype(np.float64)
        scale = -sigma if family == "unet" else -sigma / (1 - sigma)
        assert scale == pytest.approx(parameterization.delta_to_score_scale(step).item(), rel=1e-6)
        model_based = (got["scores/full"] - got["scores/main"]) / scale
        oracle = (got["scores/target"] - got["scores/main"]) / scale
        by_hand = parameterization.pred_to_score(full, x_t, step) - parameterization.pred_to_score(main_alone, x_t, step)
        np.testing.assert_allclose(model_based, by_hand[0].numpy(), rtol=1e-3, atol=1e-3 / abs(scale))
        assert np.abs(model_based).max() > 0 and np.isfinite(oracle).all()


def test_factor_datasets_carry_their_specs(stores):
    store = FeatureStore(stores["unet"])
    assert store.factors["kind"] == {"kind": "categorical", "carried": True, "period": None,
                                     "levels": ("triangle", "square", "ellipse", "cross")}  # class names kept
    assert store.factors["hue"] == {"kind": "continuous", "carried": False, "period": 1.0, "levels": None}
    with h5py.File(stores["unet"], "r") as h5:
        assert h5["meta/factors/texture"].attrs["carried"] == np.False_
        assert h5["meta/factors/size"].attrs["kind"] == "continuous"


@pytest.mark.parametrize("family", FAMILIES)
def test_decompose_opens_one_gate_per_site(nets, stores, family):
    store = FeatureStore(stores[family])
    model = load_dual_branch(nets, family)
    dataset = build_dataset("shapes", split="val", resolution=16, seed=0)
    row = 13
    sample, step = dataset[row // 6], model.parameterization.evenly_spaced_timesteps(3)[(row // 2) % 3][None]
    x0 = sample["image"][None]
    x_t = model.parameterization.add_noise(x0, row_noise(tuple(x0.shape[1:]), 0, range(row, row + 1)), step)
    assert [name.split("/", 1)[1] for name in store.layout if name.startswith("decompose/")] == model.site_names
    for k, site in enumerate(model.site_names):
        gates = torch.zeros(len(model.sites))
        gates[k] = 1
        with torch.no_grad():
            expected = model.predict_full_reference(x_t, step, sample["cond"][None], gates=gates)
        np.testing.assert_allclose(store.read(f"decompose/{site}", [row])[0], expected[0].numpy(), atol=1e-4)
    assert not np.allclose(store.read(f"decompose/{model.site_names[0]}", [row]), store.read("scores/main", [row]))


def test_sites_subset_with_a_timestep_list(nets, tmp_path):
    out = extract(config_for(nets, "unet", tmp_path / "f.h5", sites="mid,down.1,mid", timesteps="10,990",
                             decompose=True, residuals=True))
    store = FeatureStore(out)
    assert store.sites == ["mid", "down.1"]
    assert sorted(name for name in store.layout if name.startswith(("decompose/", "residuals/"))) == \
        ["decompose/down.1", "decompose/mid", "residuals/down.1", "residuals/mid"]
    assert store.timesteps.tolist() == [10.0, 990.0]
    assert store.read("meta/t", [0, 1, 2, 4]).tolist() == [10.0, 10.0, 990.0, 10.0]


# ----------------------------------------------------------------------------------------------------- options
def test_parse_timesteps():
    eps_model = type("M", (), {"parameterization": Parameterization("eps")})()
    flow_model = type("M", (), {"parameterization": Parameterization("flow")})()
    assert parse_timesteps("4", eps_model).tolist() == [125, 375, 625, 875]
    assert parse_timesteps("2", flow_model).tolist() == [250.0, 750.0]
    assert parse_timesteps("0,500,999", eps_model).dtype == torch.long
    assert parse_timesteps("500,", eps_model).tolist() == [500]
    assert parse_timesteps("2.5,1000", flow_model).tolist() == [2.5, 1000.0]
    for text, model in (("0,1000", eps_model), ("12.5,20", eps_model), ("-1,5", flow_model),
                        ("5,1000.5", flow_model), (",", eps_model)):
        with pytest.raises(ValueError, match="outside the schedule"):
            parse_timesteps(text, model)
    with pytest.raises(ValueError, match="exceed the schedule"):
        parse_timesteps("1001", eps_model)
    with pytest.raises(ValueError, match=">= 1"):
        parse_timesteps("0", eps_model)


def test_parse_sites_and_unknown_site_lists_valid_ones(nets, tmp_path):
    model = load_dual_branch(nets, "unet")
    assert parse_sites("all", model) == ["down.0", "down.1", "down.2", "down.3", "mid"]
    assert parse_sites(" mid , down.0,mid", model) == ["mid", "down.0"]
    with pytest.raises(ValueError, match=r"unknown site 'down\.9'; valid sites: down\.0, down\.1, .*mid"):
        extract(config_for(nets, "unet", tmp_path / "f.h5", sites="mid,down.9"))
    with pytest.raises(ValueError, match="no site named"):
        parse_sites(",", model)
    assert not any(tmp_path.iterdir())


def test_samples_beyond_the_split_and_bad_config(nets, tmp_path):
    with pytest.raises(ValueError, match="--samples 1001 exceeds the val split's 1000 samples"):
        extract(config_for(nets, "dit", tmp_path / "f.h5", samples=1001))
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="either --ckpt"):
        ExtractConfig(out="f.h5")
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        config_for(nets, "unet", tmp_path / "f.h5", batch_size=0)


def test_cli_reports_config_errors(capsys):
    with pytest.raises(SystemExit):
        main(["--out", "x.h5", "--controlnet", "side"])
    assert "--controlnet needs --main" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--seed", "-1"], "--seed must be a finite number in [0, "),
    (["--out", "{tmp}"], "is a directory; give the path of an .h5 file"),
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
    (["--sites", "down.99"], "unknown site 'down.99'"),
    (["--timesteps", "5000,"], "outside the schedule"),
    (["--samples", "100000"], "exceeds the val split"),
    (["--main", "{tmp}/missing"], "is not a diffusers main-net directory")])
def test_bad_input_is_one_line_and_creates_nothing(nets, tmp_path, capsys, argv, message):
    """Each bad value: exit 2 with '<prog>: error:' (or argparse's usage) naming it, and nothing written."""
    out = tmp_path / "f.h5"
    args = [*cli_args(nets, "unet", out), *[arg.replace("{tmp}", str(tmp_path)) for arg in argv]]
    with pytest.raises(SystemExit) as stop:
        main(args)
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and "Traceback" not in error, error
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("config_text,message", [
    ("kind: train\ncode_version: x\nconfig: {main: m, surprise: 1}\n", "unknown key(s) 'surprise'"),
    ("kind: train\ncode_version: x\nconfig: !!python/object/apply:os.system ['true']\n", "not a lisa_probe "
     "config.yaml"),
    ("kind: train\ncode_version: x\nconfig: {main: m, steps: two}\n", "steps must be int"),
    ("[1, 2]\n", "not a lisa_probe config.yaml")])
def test_a_bad_run_config_is_refused_by_name(tmp_path, capsys, config_text, message):
    """A run directory whose config.yaml is not ours (unknown keys, a python tag, wrong types): exit 2 naming the
    file, nothing executed or written."""
    run = tmp_path / "run"
    (run / "controlnet").mkdir(parents=True)
    (run / "config.yaml").write_text(config_text)
    with pytest.raises(SystemExit) as stop:
        main(["--ckpt", str(run), "--out", str(tmp_path / "f.h5")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and str(run / "config.yaml") in error, error
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.slow
def test_a_second_extraction_to_the_same_output_is_refused(nets, tmp_path):
    """While one extraction writes --out, a second one (with --overwrite, or --resume) exits 2 naming the other
    process's lock, and the first one's store comes out whole (its read-back check passes)."""
    out = tmp_path / "f.h5"
    long_run = [*extract_command(nets, out), "--samples", "160"]  # ~1000 rows: half a minute to be caught in
    first = subprocess.Popen(long_run, cwd=REPO, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_progress_until(first, 10, timeout=120)
        seconds = [subprocess.Popen([*long_run, extra], cwd=REPO, env=CLI_ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for extra in ("--overwrite", "--resume")]
        for second in seconds:
            _, error = second.communicate(timeout=120)
            assert second.returncode == 2, error[-2000:]
            assert f"is being written by another process (pid {first.pid} on" in error and "Traceback" not in error
        first.stderr.read()
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    store = FeatureStore(out)
    assert store.n_rows == 160 * 6
    verify_digests(out, store.layout, chunk_rows=64)  # raises if any dataset differs from what was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]


# ----------------------------------------------------------------------------------------------------- attrs
def test_root_attrs_record_the_provenance(nets, stores):
    main_dir, side_dir = nets["dit"]
    store = FeatureStore(stores["dit"])
    attrs = store.attrs
    assert attrs["schema_version"] == SCHEMA_VERSION
    here = stores["dit"].parent  # paths in a store are relative to the store's directory
    assert attrs["config"] == {**asdict(ForeignRun(main=main_dir, side=side_dir)),
                               "main": stored_path(main_dir, here), "side": stored_path(side_dir, here)}
    assert not Path(attrs["checkpoint"]).is_absolute() and not Path(attrs["config"]["main"]).is_absolute()
    assert resolved_path(attrs["checkpoint"], here) == Path(side_dir).resolve()
    assert attrs["run"] == ""  # --controlnet: no lisa_probe run
    assert attrs["checkpoint_hash"] == file_digest(side_dir)
    assert attrs["code_version"] == code_version()
    assert attrs["parameterization"] == "flow"
    expected = asdict(config_for(nets, "dit", stores["dit"], residuals=True, decompose=True))
    assert attrs["extract_args"] == expected
    assert attrs["lisa_site"] == ""


# ----------------------------------------------------------------------------------------------------- overwrite
def test_refuses_to_overwrite_and_streams_batch_by_batch(nets, tmp_path, monkeypatch):
    """Nothing is at the final path while running; each forward and each write holds at most one batch."""
    out = tmp_path / "f.h5"
    calls, writes = [], []
    original_rows, original_write = Extractor.rows, FeatureStoreWriter.write_rows

    def spy_rows(self, rows, lisa_site):
        assert not out.exists() and partial_path(out).exists()
        calls.append(rows)
        return original_rows(self, rows, lisa_site)

    def spy_write(self, start_row, batch):
        writes.append(len(batch["meta/t"]))
        return original_write(self, start_row, batch)

    with monkeypatch.context() as patch:
        patch.setattr(Extractor, "rows", spy_rows)
        patch.setattr(FeatureStoreWriter, "write_rows", spy_write)
        extract(config_for(nets, "unet", out, batch_size=4))
    assert [(r.start, r.stop) for r in calls] == [(s, min(s + 4, 36)) for s in range(0, 36, 4)]
    assert max(writes) == 4 and sum(writes) == 36
    assert not partial_path(out).exists()
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        extract(config_for(nets, "unet", out, timesteps="2"))
    assert out.read_bytes() == before
    extract(config_for(nets, "unet", out, timesteps="2", overwrite=True))
    assert FeatureStore(out).n_rows == 24


def test_batch_plans():
    assert shard_rows(36, 5, 0, 1) == range(36)
    assert [shard_rows(36, 5, rank, 2) for rank in (0, 1)] == [range(20), range(20, 36)]
    assert [shard_rows(10, 4, rank, 3) for rank in (0, 1, 2)] == [range(4), range(4, 8), range(8, 10)]
    with pytest.raises(ValueError, match="fewer than the 3 processes"):
        shard_rows(8, 4, 0, 3)
    assert list(pending_batches(range(20, 36), 0, 5)) == [(range(20, 25), 0), (range(25, 30), 0),
                                                          (range(30, 35), 0), (range(35, 36), 0)]
    assert list(pending_batches(range(10), 7, 3)) == [(range(6, 9), 1), (range(9, 10), 0)]
    assert list(pending_batches(range(10), 10, 3)) == []
    assert list(pending_batches(range(6, 12), 0, 3)) == [(range(6, 9), 0), (range(9, 12), 0)]


# ----------------------------------------------------------------------------------------------------- resume
class Interrupted(Exception):
    """Stands for a crash in the middle of an extraction."""


def test_interrupted_in_process_then_resumed_equals_uninterrupted(nets, reference_store, tmp_path, monkeypatch):
    out = tmp_path / "f.h5"
    original = Extractor.rows
    calls = []

    def spy_rows(self, rows, lisa_site):
        calls.append(rows)
        if len(calls) == 16 and fail:  # rows 45..47: one 32-row chunk committed
            raise Interrupted
        return original(self, rows, lisa_site)

    monkeypatch.setattr(Extractor, "rows", spy_rows)
    fail = True
    with pytest.raises(Interrupted):
        extract(config_for(nets, "unet32", out, **RESUMABLE))
    with h5py.File(partial_path(out), "r") as h5:
        assert h5.attrs["rows_done"] == 32 and not h5.attrs["complete"]
    with pytest.raises(FileExistsError, match="--resume"):
        extract(config_for(nets, "unet32", out, **RESUMABLE))
    calls.clear()
    fail = False
    extract(config_for(nets, "unet32", out, resume=True, **RESUMABLE))
    assert calls[0] == range(30, 33)  # the batch holding row 32 is recomputed whole, as in the uninterrupted run
    assert_stores_equal(out, reference_store)


def read_progress_until(process: subprocess.Popen, rows: int, timeout: float) -> str:
    """Read the child's stderr until its progress bar shows ``rows`` rows done (or it ends); returns the text."""
    text, deadline = "", time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=1):
                continue
            chunk = os.read(process.stderr.fileno(), 1 << 16).decode(errors="replace")
            text += chunk
            if not chunk or max(map(int, re.findall(r"(\d+)/\d+ \[", text)), default=0) >= rows:
                break
    return text


CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def extract_command(nets, out: Path, *extra: str) -> list[str]:
    """The CLI of a RESUMABLE extraction of the 32 px UNet, as a child process runs it (one thread: CLI_ENV)."""
    return [sys.executable, "-m", "lisa_probe.extract", *cli_args(nets, "unet32", out, **RESUMABLE), *extra]


@pytest.fixture(scope="module")
def cli_reference_store(nets, tmp_path_factory) -> Path:
    """An uninterrupted extraction by the CLI in a child process: the same settings (one thread, a fresh process)
    as the killed and the resumed runs it is compared with bit for bit."""
    out = tmp_path_factory.mktemp("cli-ref") / "ref.h5"
    result = subprocess.run(extract_command(nets, out), cwd=REPO, env=CLI_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_killed_extraction_resumes_to_the_same_store(nets, cli_reference_store, tmp_path):
    """SIGKILL the CLI part way, resume it with --resume (both child processes, as the reference): every dataset
    equals the uninterrupted extraction's exactly, which is the resume promise under the same settings."""
    out = tmp_path / "f.h5"
    process = subprocess.Popen(extract_command(nets, out), cwd=REPO, env=CLI_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        text = read_progress_until(process, 40, timeout=120)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, text[-2000:]
    assert not out.exists()
    with h5py.File(partial_path(out), "r") as h5:
        assert 32 <= h5.attrs["rows_done"] < 96
    resumed = subprocess.run(extract_command(nets, out, "--resume"), cwd=REPO, env=CLI_ENV, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not partial_path(out).exists()
    assert_stores_equal(out, cli_reference_store)


# ----------------------------------------------------------------------------------------------------- processes
@pytest.mark.slow
def test_two_processes_merge_into_the_single_process_store(nets, stores, tmp_path):
    """Two gloo CPU processes (``accelerate launch --multi_gpu``; accelerate's ``--cpu`` would start only one)
    write shards of whole batches; process 0 merges them into the store one process writes."""
    out = tmp_path / "f.h5"
    result = launch_two_cpu_processes("lisa_probe.extract", cli_args(nets, "unet", out, residuals=True,
                                                                      decompose=True))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("features written to") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]
    assert not shard_path(out, 0, 2).exists()
    single = FeatureStore(stores["unet"])
    merged = FeatureStore(out)
    located = ("extract_args", "config", "checkpoint", "inputs")  # paths relative to each store's own directory
    assert {**merged.attrs, **dict.fromkeys(located)} == {**single.attrs, **dict.fromkeys(located)}
    assert merged.attrs["extract_args"] == {**single.attrs["extract_args"], "out": str(out)}
    for attrs, store in ((merged.attrs, out), (single.attrs, stores["unet"])):
        assert resolved_path(attrs["checkpoint"], store.parent) == Path(nets["unet"][1]).resolve()
    assert {**merged.attrs["inputs"], "samples": None} == {**single.attrs["inputs"], "samples": None}
    with h5py.File(out, "r") as h5, h5py.File(stores["unet"], "r") as reference:
        for name in single.layout:  # other processes: equal up to float rounding (assert_same_model_outputs)
            assert_same_model_outputs(h5[name][()], reference[name][()], name)
        scores = reference["scores/full"][()]
        with pytest.raises(AssertionError):  # ... which is far tighter than the difference of two rows
            assert_same_model_outputs(scores[1:], scores[:-1], "neighbouring rows")


def rank_1_of_2():
    """A stand-in for accelerate's process state: rank 1 of 2 (tests change the class attributes to play rank 0)."""

    class Rank:
        num_processes, is_local_main_process, device = 2, False, torch.device("cpu")
        process_index, is_main_process = 1, False

        def wait_for_everyone(self):
            pass

    return Rank


def test_resume_keeps_finished_shards(nets, stores, tmp_path, monkeypatch):
    """Rank 1 finished before rank 0 was killed: --resume keeps its shard, rank 0 finishes and merges."""

    out = tmp_path / "f.h5"
    Rank = rank_1_of_2()
    monkeypatch.setattr(extract_module, "process_state", Rank)
    extract(config_for(nets, "dit", out, residuals=True, decompose=True))
    finished = shard_path(out, 1, 2)
    stamp = finished.stat().st_mtime_ns
    extract(config_for(nets, "dit", out, residuals=True, decompose=True, resume=True))
    assert finished.stat().st_mtime_ns == stamp and not out.exists()
    Rank.process_index, Rank.is_main_process = 0, True
    extract(config_for(nets, "dit", out, residuals=True, decompose=True, resume=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]
    merged, single = FeatureStore(out), FeatureStore(stores["dit"])
    for name in single.layout:
        assert np.array_equal(merged.read(name), single.read(name)), name


def test_resume_refuses_a_stale_finished_shard(nets, tmp_path, monkeypatch):
    """A finished shard of another extraction (other seed, other draws) is not reused on --resume: the error names
    the attrs that differ, and nothing is merged."""

    out = tmp_path / "f.h5"
    monkeypatch.setattr(extract_module, "process_state", rank_1_of_2())
    extract(config_for(nets, "unet", out))
    stale = shard_path(out, 1, 2)
    stamp = stale.stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"cannot reuse the finished shard.*attr 'extract_args' differs \(keys "
                                         r"\['seed'\]\).*--overwrite and without --resume"):
        extract(config_for(nets, "unet", out, seed=1, resume=True))
    with pytest.raises(ValueError, match=r"keys \['draws'\]\); attr 'n_rows' differs: file has '16', now '8'"):
        extract(config_for(nets, "unet", out, draws=1, resume=True))
    assert stale.stat().st_mtime_ns == stamp and not out.exists()


# ----------------------------------------------------------------------------------------------------- LISA run
@pytest.fixture(scope="module")
def lisa_run(nets, tmp_path_factory) -> Path:
    """A two-step LISA run of the 16 px UNet on shapes (edges)."""
    return train(TrainConfig(main=nets["unet"][0], out_dir=str(tmp_path_factory.mktemp("runs")), steps=2,
                             batch_size=4, eval_samples=0, checkpoint_every=0))


def test_lisa_run_stores_decoded_scores(nets, lisa_run, tmp_path):
    run_dir = lisa_run
    out = extract(ExtractConfig(out=str(tmp_path / "f.h5"), ckpt=str(run_dir), samples=2, timesteps="2", draws=1,
                                batch_size=4))
    store = FeatureStore(out)
    attrs = store.attrs
    config_in_run = read_config(run_dir / "config.yaml")["config"]
    assert {**attrs["config"], "main": None} == {**config_in_run, "main": None}
    assert resolved_path(attrs["config"]["main"], out.parent) == resolved_path(config_in_run["main"], run_dir)
    assert resolved_path(attrs["checkpoint"], out.parent) == (run_dir / "controlnet").resolve()
    assert resolved_path(attrs["run"], out.parent) == run_dir.resolve()
    assert attrs["checkpoint_hash"] == file_digest(run_dir / "controlnet")
    model = load_dual_branch({"unet": (nets["unet"][0], str(run_dir / "controlnet"))}, "unet")
    site = attrs["lisa_site"]
    assert site == model.default_lisa_site()
    decoder = LisaDecoder.from_pretrained(run_dir / "lisa_decoder").eval()
    run_config = attrs["config"]
    dataset = build_dataset(run_config["dataset"], split="val", resolution=16, condition=run_config["condition"],
                            seed=run_config["seed"])
    sample, step = dataset[0], torch.tensor([250])
    x0 = sample["image"][None]
    x_t = model.parameterization.add_noise(x0, row_noise(tuple(x0.shape[1:]), 0, range(1)), step)
    with torch.no_grad(), capture(model, [site]) as records:
        model.predict_full_reference(x_t, step, sample["cond"][None])
        decoded = decoder(model.feature_to_map(site, records[site]["feature"]), step)
    assert store.layout["scores/decoded"].shape == store.layout["scores/target"].shape
    np.testing.assert_allclose(store.read("scores/decoded", [0])[0], decoded[0].numpy(), atol=1e-4)



def write_folder_data(root: Path, count: int = 12) -> tuple[Path, Path]:
    """``count`` 16 px images of a light square at a varying place, and a factors CSV (``place``: left / right,
    ``shade``: a number)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    lines = ["file,place,shade"]
    for index in range(count):
        pixels = np.full((16, 16, 3), 40, dtype=np.uint8)
        left = index % 2 == 0
        pixels[4:12, (2 if left else 8):(8 if left else 14)] = 200 + index
        Image.fromarray(pixels).save(root / "images" / f"img{index:02d}.png")
        lines.append(f"img{index:02d}.png,{'left' if left else 'right'},{0.5 + index / 10}")
    (root / "factors.csv").write_text("\n".join(lines) + "\n")
    return root / "images", root / "factors.csv"


def test_a_run_extracted_on_other_data_records_that_data(lisa_run, tmp_path):
    """--ckpt honours the data options given (here: a folder of images with a factors CSV instead of the run's
    shapes): the rows, factors and the store's config are the given data's; options not given keep the run's."""
    images, factors = write_folder_data(tmp_path / "data")
    out = extract(ExtractConfig(out=str(tmp_path / "f.h5"), ckpt=str(lisa_run), dataset="folder",
                                data_root=str(images), factors_csv=str(factors), carried_factors="place",
                                split="train", samples=3, timesteps="1", batch_size=4))
    store = FeatureStore(out)
    config = store.attrs["config"]
    assert config["dataset"] == "folder" and resolved_path(config["data_root"], out.parent) == images
    assert config["lisa_weight"] == read_config(lisa_run / "config.yaml")["config"]["lisa_weight"]
    assert set(store.factors) == {"place", "shade"} and store.factors["place"]["carried"]
    assert store.factors["place"]["levels"] == ("left", "right")
    dataset = build_dataset("folder", split="train", resolution=16, root=str(images), factors_csv=str(factors))
    assert list(store.read("meta/sample_id").astype(str)) == [dataset[i]["id"] for i in range(3)]
    np.testing.assert_allclose(store.read("meta/factors/shade"), [dataset[i]["factors"]["shade"] for i in range(3)])


def test_a_foreign_controlnet_gets_a_lisa_decoder(nets, lisa_run, tmp_path, capsys):
    """--controlnet with --decoder stores scores/decoded at the decoder's site: the same store as extracting the run
    itself; a decoder that does not fit the side net, or --decoder with --ckpt, is refused by name."""
    common = {"samples": 2, "timesteps": "2", "batch_size": 4}
    ours = FeatureStore(extract(ExtractConfig(out=str(tmp_path / "run.h5"), ckpt=str(lisa_run), **common)))
    theirs = FeatureStore(extract(ExtractConfig(out=str(tmp_path / "theirs.h5"), controlnet=str(lisa_run / "controlnet"),
                                                main=nets["unet"][0], decoder=str(lisa_run), **common)))
    assert theirs.attrs["lisa_site"] == ours.attrs["lisa_site"] != ""
    for name in ("scores/decoded", "scores/full", f"features/{ours.attrs['lisa_site']}"):
        np.testing.assert_array_equal(theirs.read(name), ours.read(name), err_msg=name)
    with pytest.raises(ValueError, match=r"--decoder .*lisa_decoder decodes site 'down.\d', which this side net does "
                                         r"not have \(its sites: block.0, block.1\)"):
        extract(ExtractConfig(out=str(tmp_path / "dit.h5"), controlnet=nets["dit"][1], main=nets["dit"][0],
                              decoder=str(lisa_run / "lisa_decoder"), **common))
    with pytest.raises(ValueError, match=r"--decoder .*lisa_decoder decodes \(channels, size\) .* but site down.\d of "
                                         r"this side net gives"):
        extract(ExtractConfig(out=str(tmp_path / "32.h5"), controlnet=nets["unet32"][1], main=nets["unet32"][0],
                              decoder=str(lisa_run / "lisa_decoder"), **common))
    with pytest.raises(ValueError, match="holds no LISA decoder"):
        extract(ExtractConfig(out=str(tmp_path / "none.h5"), controlnet=nets["unet"][1], main=nets["unet"][0],
                              decoder=str(tmp_path), **common))
    with pytest.raises(SystemExit) as stop:
        main(["--ckpt", str(lisa_run), "--out", str(tmp_path / "x.h5"), "--decoder", str(lisa_run)])
    assert stop.value.code == 2 and f"--decoder {lisa_run} applies to --controlnet" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("dit.h5", "32.h5", "none.h5", "x.h5"))


@pytest.fixture(scope="module")
def run_with_checkpoints(nets, tmp_path_factory) -> Path:
    """A four-step LISA run keeping its checkpoints at steps 2 and 4."""
    return train(TrainConfig(main=nets["unet"][0], out_dir=str(tmp_path_factory.mktemp("ckpt-runs")), steps=4,
                             batch_size=4, eval_samples=0, checkpoint_every=2, keep_checkpoints=0))


def test_checkpoints_land_in_one_store_block_by_block(run_with_checkpoints, tmp_path, monkeypatch):
    """--checkpoints all: a block per checkpoint equal to extracting that checkpoint alone (same rows and noise),
    meta/step naming it; an interrupted extraction resumes inside the second block to the same store; the analysis
    reads the last block."""
    common = {"samples": 4, "timesteps": "2", "batch_size": 3}
    run = run_with_checkpoints
    whole = FeatureStore(extract(ExtractConfig(out=str(tmp_path / "all.h5"), ckpt=str(run), checkpoints="all",
                                               **common)))
    assert whole.n_rows == 2 * 8 and list(np.unique(whole.read("meta/step"))) == [2, 4]
    assert [item["step"] for item in json.loads(whole.attrs["checkpoints"])] == [2, 4]
    for index, step in enumerate((2, 4)):
        alone = FeatureStore(extract(ExtractConfig(out=str(tmp_path / f"{step}.h5"), ckpt=str(run / f"checkpoint-{step}"),
                                                   **common)))
        block = slice(index * 8, (index + 1) * 8)
        for name in ("scores/full", "scores/decoded", "features/mid", "meta/t"):
            np.testing.assert_array_equal(whole.read(name, block), alone.read(name), err_msg=f"{name} @ {step}")
    original, calls = Extractor.rows, []

    def spy_rows(self, rows, lisa_site):
        calls.append(rows)
        if len(calls) == 4 and fail:  # the first batch of the second block
            raise Interrupted
        return original(self, rows, lisa_site)

    monkeypatch.setattr(Extractor, "rows", spy_rows)
    fail, out = True, tmp_path / "resumed.h5"
    with pytest.raises(Interrupted):
        extract(ExtractConfig(out=str(out), ckpt=str(run), checkpoints="all", **common))
    fail = False
    extract(ExtractConfig(out=str(out), ckpt=str(run), checkpoints="all", resume=True, **common))
    assert_stores_equal(out, tmp_path / "all.h5")
    analysed = open_run(tmp_path / "all.h5", "all", AnalyzeOptions(n_splits=3))
    assert analysed.stream_rows.tolist() == list(range(8, 16)) and "analysed at the last (step 4)" in analysed.notes[0]


def test_checkpoints_that_are_not_there_are_named(run_with_checkpoints, nets, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint-3 in .*; its checkpoints: 2, 4"):
        extract(ExtractConfig(out=str(tmp_path / "x.h5"), ckpt=str(run_with_checkpoints), checkpoints="2,3"))
    with pytest.raises(ValueError, match="--checkpoints all applies to --ckpt"):
        config_for(nets, "unet", tmp_path / "y.h5", checkpoints="all")
    with pytest.raises(ValueError, match="'all' or steps such as"):
        ExtractConfig(out=str(tmp_path / "z.h5"), ckpt=str(run_with_checkpoints), checkpoints="last")
    assert not list(tmp_path.iterdir())


def test_factor_periods_reach_the_store_and_the_analysis(stores):
    """FactorSpec.period crosses the store boundary: rotation and hue (period 1) are stored with it and analysed as
    circular factors (in turns); linear factors have none."""
    store = FeatureStore(stores["unet"])
    specs = build_dataset("shapes", split="val", resolution=16).factor_specs
    assert {name: spec["period"] for name, spec in store.factors.items()} == {
        name: spec.period for name, spec in specs.items()}
    assert store.factors["rotation"]["period"] == 1.0 and store.factors["size"]["period"] is None
    run = open_run(stores["unet"], "unet", AnalyzeOptions(n_splits=3))
    kinds = {name: kind for name, (_, kind, _) in run.factors().items()}
    assert kinds["rotation"] == "circular" and kinds["size"] == "continuous"


def test_the_store_says_how_to_rebuild_a_row_without_lisa_probe(nets, stores):
    """An independent program (diffusers and torch only, plus the samples of the dataset) follows the store's
    ``inputs`` attr to rebuild rows' x_t and recompute pred_full with diffusers' own UNet and ControlNet."""
    store = FeatureStore(stores["unet"])
    recipe = store.attrs["inputs"]
    assert recipe["version"] == 2 and recipe["condition"]["kind"] == "edges" and recipe["condition"]["channels"] == 1
    main_dir = resolved_path(store.attrs["config"]["main"], stores["unet"].parent)
    side_dir = resolved_path(store.attrs["checkpoint"], stores["unet"].parent)
    unet = UNet2DConditionModel.from_pretrained(main_dir / "unet").eval()
    controlnet = ControlNetModel.from_pretrained(side_dir).eval()
    alphas_cumprod = DDPMScheduler.from_pretrained(main_dir / "scheduler").alphas_cumprod.double()
    context = torch.zeros(recipe["context"]["context"]["shape"])
    assert recipe["context"]["context"]["all_zero"]
    n_t, draws = len(recipe["timesteps"]), store.attrs["extract_args"]["draws"]
    dataset = build_dataset("shapes", split=store.attrs["extract_args"]["split"], resolution=16,
                            seed=store.attrs["config"]["seed"])
    for row in (3, 22):
        sample = dataset[row // (n_t * draws)]
        t = int(recipe["timesteps"][(row // draws) % n_t])
        noise = torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(
            recipe["row_noise"]["seed"] * 1_000_003 + row))
        alpha_bar = alphas_cumprod[t]
        x_t = (alpha_bar.sqrt() * sample["image"] + (1 - alpha_bar).sqrt() * noise).float()[None]
        with torch.no_grad():
            down, mid = controlnet(x_t, torch.tensor([t]), encoder_hidden_states=context,
                                   controlnet_cond=sample["cond"][None], return_dict=False)
            full = unet(x_t, torch.tensor([t]), encoder_hidden_states=context, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
        np.testing.assert_allclose(store.read("scores/full", [row])[0], full[0].numpy(), atol=1e-4)
        assert store.read("meta/t", [row])[0] == t


def test_a_foreign_controlnet_is_extracted_at_the_resolution_asked_and_a_run_keeps_its_own(tmp_path, sd_pipeline,
                                                                                         captioned_data, capsys):
    """``--resolution`` is decided once (``training.loading.build_dual_branch``) for a run and for ``--controlnet``
    alike; a --ckpt run extracts at its own resolution, so the option is refused with it."""
    ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(sd_pipeline / "unet")).save_pretrained(
        tmp_path / "theirs")
    out = tmp_path / "r32.h5"
    main(["--controlnet", str(tmp_path / "theirs"), "--main", str(sd_pipeline), "--dataset", "captioned",
                  "--data-root", str(captioned_data), "--out", str(out), "--samples", "2", "--timesteps", "1",
                  "--split", "train", "--resolution", "32"])
    store = FeatureStore(out)
    assert store.attrs["inputs"]["resolution"] == 32 and store.read("scores/full").shape[-1] == 4  # 32 px / VAE 8
    with pytest.raises(SystemExit) as stop:
        main(["--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "x.h5"), "--resolution", "32"])
    assert stop.value.code == 2 and "--resolution 32 applies to --controlnet" in capsys.readouterr().err
