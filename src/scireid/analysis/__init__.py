"""Analysis and figures for a trained run: retrieval grids, Grad-CAM, t-SNE, efficiency,
ablation plots, prompt interpretation, and one self-contained HTML report."""
