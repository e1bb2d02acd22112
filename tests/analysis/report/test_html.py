"""``report.html``: the markdown report as one self-contained page."""

import base64
import re

import matplotlib.pyplot as plt

from lisa_probe.analysis.report.html import write_html


def test_the_page_embeds_its_figures_and_renders_tables_and_details(tmp_path):
    (tmp_path / "figures").mkdir()
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(tmp_path / "figures" / "a.png")
    plt.close(fig)
    (tmp_path / "report.md").write_text(
        "# lisa vs baseline\n\n| run | value |\n| --- | --- |\n| lisa | 0.5 |\n\n![a caption](figures/a.png)\n"
        "*a caption*\n\n<details><summary>run configs</summary>\n\n```json\n{\"seed\": 0}\n```\n\n</details>\n")
    page = write_html(tmp_path / "report.md").read_text()
    assert "<title>lisa vs baseline</title>" in page and "<td>lisa</td>" in page and "<summary>run configs" in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1]) == (tmp_path / "figures" / "a.png").read_bytes()
    assert '"seed": 0' in page or "&quot;seed&quot;: 0" in page
