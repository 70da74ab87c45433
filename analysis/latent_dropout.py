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
# # Ablation: latent dropout
#
# With probability p a whole sequence is decoded with its latent slot masked (x-transformers' default
# p = 0.5). The KL is still charged. The model then doubles as an LM: compare 'NLL (z masked)', an exact
# likelihood, with the IW-NLL of the latent path.
#
# Everything here is read from the exported results (`make results`); nothing is trained or
# evaluated. Tables go to `paper/tables/<preset>/`, figures to `paper/figures/<preset>/`.

# %%
from IPython.display import Image, Markdown, display

from gptvae.report import ablation_report

table, figures = ablation_report("ablation-latent-dropout")
display(Markdown(table))

# %% [markdown]
# Validation metrics against the factor (seeds as error bars, the LM baseline dashed), the
# rate-distortion plane, KL and active units over training, and posterior means in 2-D.

# %%
for png in figures:
    display(Image(filename=str(png)))
