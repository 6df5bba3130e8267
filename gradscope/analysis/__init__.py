"""Torch-free analysis of recorded runs: the diagnosis and the runs table's badges.

Pandas frames in, plain findings out; the CLI, the dashboard and the live warnings share it.
"""
