"""Plots leave the user's matplotlib alone: no backend switch, no pyplot, files still written."""

import os
import subprocess
import sys
import textwrap

from test_results import sweep_rows

SCRIPT = textwrap.dedent("""
    import sys
    import matplotlib
    before = matplotlib.get_backend()
    from sbjax import plots, results
    after_import = matplotlib.get_backend()
    written = plots.plot_sweep(results.aggregate(ROWS), sys.argv[1])
    print(before, after_import, matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, len(written))
""")


def test_importing_and_plotting_keep_the_backend_and_never_load_pyplot(tmp_path):
    script = f"ROWS = {sweep_rows()!r}\n{SCRIPT}"
    env = dict(os.environ, MPLBACKEND="pdf")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["pdf", "pdf", "pdf", "False", "8"]
    png = (tmp_path / "top1_vs_speedup.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    svg = (tmp_path / "top1_vs_speedup_change.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # the legend names every strategy but the reference; the axis label says "change"
    assert "global_magnitude" in svg and "random" in svg and ">none<" not in svg and "accuracy change" in svg
