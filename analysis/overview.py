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
# All finished runs of every ablation, read from the exported results (`make results`). Each row of the
# exported files carries its MLflow run id; the paper's appendix lists them. `make figures` writes the
# table to `paper/tables/<preset>/overview.md` and the figures to `paper/figures/<preset>/`.

# %%
from IPython.display import Image, Markdown, display

from gptvae.report import overview_report

table, figures = overview_report()
display(Markdown(table))

# %% [markdown]
# Mutual information against the rate for every run (MI can never exceed the KL, and the whole-set
# estimator saturates at log N: points on the diagonal use all the rate they pay for, points near zero
# have collapsed), and, where runs were evaluated with `python -m gptvae evaluate --k-sweep`, IW-NLL
# against the number of importance samples K: how loose the bound in the tables is.

# %%
for png in figures:
    display(Image(filename=str(png)))
