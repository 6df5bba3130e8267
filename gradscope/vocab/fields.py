"""The lists gradscope writes once: run statuses, recorded fields, histogram bins, text limits."""

from __future__ import annotations

# -- statuses -------------------------------------------------------------------------------
RUN_STATUSES = ("queued", "running", "completed", "failed", "diverged", "cancelled", "interrupted")
# Waiting for or holding a worker: the pages that show them refresh themselves.
ACTIVE_STATUSES = ("queued", "running")
# A run in one of these will not change again.
FINISHED_STATUSES = tuple(s for s in RUN_STATUSES if s not in ACTIVE_STATUSES)

# -- what is recorded -----------------------------------------------------------------------
EPOCH_FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc", "pred_std", "seconds")
# The run's final metrics: the last recorded epoch's, kept on the run as final_<field>.
FINAL_FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc", "pred_std")
FINAL_COLUMNS = tuple(f"final_{field}" for field in FINAL_FIELDS)
# Per layer and epoch: the gradient and weight statistics (from the training steps), then the
# activation health (from a pass over held-out data).
GRAD_STAT_FIELDS = (
    "grad_norm",
    "grad_mean_abs",
    "grad_std",
    "grad_max_abs",
    "weight_norm",
    "update_ratio",
)
ACTIVATION_STAT_FIELDS = ("act_mean", "act_std", "saturated_frac", "dead_frac")
LAYER_STAT_FIELDS = (*GRAD_STAT_FIELDS, *ACTIVATION_STAT_FIELDS)

# Histogram of log10|g|: fixed bins shared by every run so histograms compare across runs.
HIST_LOG10_MIN = -12.0
HIST_LOG10_MAX = 2.0
HIST_BINS = 56  # a quarter decade per bin
HIST_SLOTS = HIST_BINS + 2  # stored counts: the bins, then exact zeros, then non-finite values

# -- text limits ----------------------------------------------------------------------------
MAX_NAME_CHARS = 200  # a run's (and a sweep's) name
MAX_TAG_CHARS = 64
MAX_METRIC_NAME_CHARS = 100  # a free metric's name (run.log)

# Kept per layer only for an epoch in which a step's gradient (or loss) became non-finite, with
# the epoch's first_nonfinite_step (1-based, within the epoch): max |g| at the epoch's first
# step, max |g| over the finite steps before it, and the last of those steps' gradient norm.
DIVERGENCE_LAYER_FIELDS = ("finite_first_max_abs", "finite_max_abs", "finite_last_norm")
# A run's peak gradient (runs.peak_grad, schema 0004): the largest |value| of these statistics
# over every layer and epoch recorded (inf counts, NaN does not), kept as epochs are written, so
# the runs table's badge sees a spike in any epoch, as the full diagnosis does.
PEAK_GRAD_FIELDS = ("grad_norm", "grad_max_abs", "finite_max_abs")

# The numbers stored per epoch, and per layer and epoch: the columns of epoch_metrics and of
# layer_stats after their keys (run_id, epoch, layer), the histogram apart.
EPOCH_COLUMNS = (*EPOCH_FIELDS, "first_nonfinite_step")
STAT_COLUMNS = (*LAYER_STAT_FIELDS, *DIVERGENCE_LAYER_FIELDS)

# -- the runs table -------------------------------------------------------------------------
# Run columns copied from the run's config (column: config field), so that lists and filters read
# no JSON; an imported run's columns must agree with its config.
RUN_CONFIG_COLUMNS = {
    "arch": "arch",
    "dataset": "dataset",
    "depth": "depth",
    "width": "width",
    "seed": "seed",
    "epochs_total": "epochs",
}
# The run columns people read, in the order the CSV/Parquet export writes them (the dashboard's
# reads pick from them): who, what, which sweep, how far, the results, when, where from.
RUN_COLUMNS = (
    *("id", "name", "status", "arch", "depth", "width", "dataset", "seed"),
    *("sweep_id", "sweep_name", "epochs_total", "epochs_done", *FINAL_COLUMNS),
    *("created_at", "started_at", "finished_at", "source_file", "imported_at"),
)
