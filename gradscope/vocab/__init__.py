"""gradscope's vocabulary: the bottom floor every other package stands on.

Torch-free, Streamlit-free and SQL-free: the run configuration model, statuses and status sets,
the field lists of runs, epochs and layer statistics, histogram constants, plain records, and the
rules that plan sweeps and group them into batched ensembles. Everything else derives its lists
from here instead of retyping them.
"""
