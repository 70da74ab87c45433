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
# # Ablation: KL weight β
#
# β scales the KL term of the ELBO (no free-bits floor). β = 1 is the ELBO; β < 1 buys rate for
# distortion. Look for the β at which KL, MI and active units fall to zero (posterior collapse), and
# whether IW-NLL — the likelihood, not the bound — is any better than the LM baseline's.
#
# Everything here is read from the exported results (`make results`); nothing is trained or
# evaluated. Tables go to `paper/tables/<preset>/`, figures to `paper/figures/<preset>/`.

# %%
from IPython.display import Image, Markdown, display

from gptvae.report import ablation_report

table, figures = ablation_report("ablation-kl-weight")
display(Markdown(table))

# %% [markdown]
# Validation metrics against the factor (seeds as error bars, the LM baseline dashed), the
# rate-distortion plane, KL and active units over training, and posterior means in 2-D.

# %%
for png in figures:
    display(Image(filename=str(png)))
