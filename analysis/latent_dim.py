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
# # Ablation: latent size D
#
# D is the size of z. With a per-dimension floor the minimum rate grows with D; active units show how
# many dimensions the model actually uses.
#
# Everything here is read from the exported results (`make results`); nothing is trained or
# evaluated. Tables go to `paper/tables/<preset>/`, figures to `paper/figures/<preset>/`.

# %%
from IPython.display import Image, Markdown, display

from gptvae.report import ablation_report

table, figures = ablation_report("ablation-latent-dim")
display(Markdown(table))

# %% [markdown]
# Validation metrics against the factor (seeds as error bars, the LM baseline dashed), the
# rate-distortion plane, KL and active units over training, and posterior means in 2-D.

# %%
for png in figures:
    display(Image(filename=str(png)))
