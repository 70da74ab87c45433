# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Overview: when is the latent used?
#
# All finished runs of every ablation, read from the exported results. Each row of the exported
# files carries its MLflow run id; the paper's appendix lists them.

# %%
from IPython.display import Image, Markdown, display

from gptvae import plots
from gptvae.report import overview_table, paths
from gptvae.results import load_results

where = paths()
results = load_results(where["results"])
runs = results["runs"]
display(Markdown(overview_table(runs)))

# %% [markdown]
# Mutual information can never exceed the KL (the rate), and the whole-set estimator saturates at
# log N. Points on the diagonal use all the rate they pay for; points near zero have collapsed.

# %%
png, _ = plots.save(plots.overview(runs), "overview_mi_vs_kl", where["figures"])
display(Image(filename=str(png)))
