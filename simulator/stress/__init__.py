"""The stress engine: a Monte Carlo of crashes over the exact model, on Ray (``xmargin simulate stress``).

* :mod:`.paths`: correlated GBM with jumps per feed, deterministic shocks, or a CSV of prices;
* :mod:`.engine`: one path step by step: keepers by a policy (the live bot's planner, or the model's
  cascade keeper), cascades with price impact, the insurance fund and the house;
* :mod:`.runner`: paths sharded over Ray tasks, parameter sweeps, VaR/CVaR and the recommendation;
* :mod:`.study`: the population (seeded, or loaded from a chain) and one study end to end;
* :mod:`.report`: JSON, tables and PNG figures.
"""
