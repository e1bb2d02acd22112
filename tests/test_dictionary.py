"""``python -m lisa_probe.dictionary``: a store's site end to end (outputs, ranking, resume), bad input as one line."""

import json
import re
import shutil

import pandas as pd
import pytest

from lisa_probe.dictionary import main
from lisa_probe.store import FeatureStore


def test_a_dictionary_of_a_stores_site(foreign_stores, tmp_path, capsys):
    store = shutil.copy(foreign_stores["shapes"], tmp_path / "s.h5")
    out = tmp_path / "dict"
    site = FeatureStore(store).sites[1]
    assert main([str(store), "--out", str(out), "--site", site, "--steps", "60", "--batch-size", "64",
                 "--expansion", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{site}: ") and "fraction of variance unexplained" in printed
    latents = pd.read_csv(out / "latents.csv")
    channels = FeatureStore(store).layout[f"features/{site}"].shape[0]
    assert len(latents) == 2 * channels and {"alignment", "frequency", "mi/x", "mi_carried"} <= set(latents.columns)
    assert (out / "figures" / "top_latents.png").exists() and (out / "sae.safetensors").exists()
    record = json.loads((out / "dictionary.json").read_text())
    assert record["site"] == site and record["rows"] == FeatureStore(store).n_rows
    assert main([str(store), "--out", str(out), "--site", site, "--steps", "80", "--batch-size", "64",
                 "--expansion", "2", "--resume"]) == 0
    assert list(pd.read_csv(out / "training.csv")["step"]) == [50, 60, 80]  # continued from 60, not restarted


@pytest.mark.parametrize("argv, message", [
    (["--site", "nope"], "unknown site 'nope'; sites of"),
    (["--k", "0"], "--k must be >= 1"),
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
])
def test_bad_input_is_one_line(foreign_stores, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main([str(foreign_stores["shapes"]), "--out", str(tmp_path / "dict"), *argv])
    assert stop.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "dict").exists()
