"""Experiments: sweeps of many runs, their results, dense baselines at parity, and reports.

``sweepfile`` reads a sweep file, ``plan`` expands it into configs (ids and ``--set`` text from
``overrides``), ``run`` trains them into ``store``, ``metrics`` reads a run's logged values back,
``report`` writes markdown and plots, ``parity`` finds dense baselines. Only training and loop
evaluation import torch.
"""
