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
# # Ablation: free-bits floor λ
#
# λ is a per-dimension floor on the KL (`per_dim`, as in x-transformers): below it a dimension's KL
# gets no gradient. The literature (Li et al. 2019; Optimus) finds KL, MI and AU rise with λ while
# NLL/PPL barely move until λ is large. Does that reproduce here?
#
# Everything here is read from the exported results (`make results`); nothing is trained or
# evaluated. Tables go to `paper/tables/<preset>/`, figures to `paper/figures/<preset>/`.

# %%
from IPython.display import Image, Markdown, display

from gptvae.report import ablation_report

table, figures = ablation_report("ablation-kl-floor")
display(Markdown(table))

# %% [markdown]
# Validation metrics against the factor (seeds as error bars, the LM baseline dashed), the
# rate-distortion plane, KL and active units over training, and posterior means in 2-D.

# %%
for png in figures:
    display(Image(filename=str(png)))
