"""The report's plots: colours that keep a strategy's family, and a crossover map with its contour."""
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd

from bench.report import plots


def test_shades_of_one_strategy_go_from_darker_to_lighter():
    base = plots.colour("lora_all")
    rgb = np.array(mcolors.to_rgb(base))
    dark, light = rgb * 0.55, rgb + (1 - rgb) * 0.55
    shades = [np.array(plots.shade(base, i, 3)) for i in range(3)]
    assert np.allclose(shades[0], dark) and np.allclose(shades[2], light)
    assert np.allclose(shades[1], (dark + light) / 2)
    assert plots.shade(base, 0, 1) == mcolors.to_rgb(base)
    assert plots.colour("a strategy from the future") == "#666666"


def test_crossover_map_writes_png_and_svg_with_a_failed_cell(tmp_path):
    cells = pd.DataFrame({"dim": [32, 32, 64, 64], "tokens_per_step": [16, 64, 16, 64],
                          "ratio": [1.4, 0.9, 1.1, np.nan], "note": ["", "", "", "OOM"]})
    paths = plots.crossover(cells, "lora_all r=8", tmp_path, "cross")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    svg = paths[1].read_text()
    assert "OOM" in svg and "1.40" in svg and "0.90" in svg
