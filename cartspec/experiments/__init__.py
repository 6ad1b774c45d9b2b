"""Experiments: sweeps of many runs, their results store, dense baselines at parity and reports.

``sweepfile`` reads a sweep file, ``plan`` expands it into configs, ``run`` trains them,
``store`` keeps their results, ``report`` writes markdown and plots, ``parity`` finds dense
baselines. Everything here but training and loop evaluation works without torch.
"""
