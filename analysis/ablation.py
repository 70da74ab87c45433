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
# # One ablation
#
# This notebook is parametrised by the ablation's name: `make figures` runs it once per spec in
# `experiments/` (with papermill), and you can run it by hand for one, e.g.
# `papermill analysis/ablation.ipynb out.ipynb -p ablation kl-floor` after
# `jupytext --to ipynb analysis/ablation.py`, or edit the cell below in Jupyter.
#
# Everything here is read from the exported results (`make results`); nothing is trained or
# evaluated. Tables go to `paper/tables/<preset>/`, figures to `paper/figures/<preset>/`.

# %% tags=["parameters"]
ablation = "kl-floor"

# %%
from IPython.display import Image, Markdown, display

from gptvae.report import ablation_report, paths, specs

spec = specs(paths())[f"ablation-{ablation}"]
display(Markdown(f"## {spec.experiment}: {spec.label}\n\n{spec.description}\n\n"
                 f"Factor `{spec.factor}` over {', '.join(str(v) for v in spec.values)}."))

# %%
table, figures = ablation_report(ablation)
display(Markdown(table))

# %% [markdown]
# The likelihood table (paired differences against the reference setting and the LM, with 95% intervals)
# and the measures of use are above. Below: validation metrics against the factor (95% t intervals over
# seeds, the LM baseline dashed), the validation bound, KL and active units over training, the
# rate-distortion plane, and posterior means in 2-D.

# %%
for png in figures:
    display(Image(filename=str(png)))
