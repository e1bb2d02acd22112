"""Writing a report (``analysis.report``): replaced only when asked, kept when the analysis fails."""



import pytest

import lisa_probe.analysis.report.report as report_module
from lisa_probe.analysis.report.report import prepare_out, publish_out
from lisa_probe.analyze import main
from tests.analysis.synthetic_store import write_synthetic


def test_overwrite_replaces_only_a_previous_report(tmp_path):
    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    for name in ("figures/old.png", "alignment.csv", "report.md", "mine.txt"):
        (out / name).write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_out(out, overwrite=False)
    staging = prepare_out(out, overwrite=True)
    assert sorted(path.name for path in out.rglob("*")) == ["alignment.csv", "figures", "mine.txt", "old.png",
                                                             "report.md"]  # nothing deleted before the analysis
    (staging / "figures").mkdir()
    (staging / "report.md").write_text("new")
    publish_out(staging, out)
    assert sorted(path.name for path in out.rglob("*")) == ["figures", "mine.txt", "report.md"]
    assert (out / "report.md").read_text() == "new" and not staging.exists()


def test_a_failing_analysis_keeps_the_previous_report(tmp_path, monkeypatch, capsys):
    """--overwrite replaces the report only once the new one is whole: an analysis that fails (here an OSError
    deep inside) leaves the old report as it was, no staging directory, and a one-line error (exit 2)."""
    store = write_synthetic(tmp_path / "a.h5")
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("old report")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "run_tables", fail)
    with pytest.raises(SystemExit) as stop:
        main([str(store), "--out", str(out), "--overwrite", "--no-umap"])
    assert stop.value.code == 2 and "error: disk full" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "report"]
