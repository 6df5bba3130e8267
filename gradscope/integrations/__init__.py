"""Where users train: callbacks that record a gradscope run from a trainer's own hooks.

`gradscope.integrations.lightning.GradscopeCallback` (PyTorch Lightning, extra
`gradscope[lightning]`) and `gradscope.integrations.transformers.GradscopeCallback` (the Hugging
Face Trainer, extra `gradscope[transformers]`). Each uses only the public API (`gradscope.init`,
`run.watch`, `run.log`, `run.log_epoch`, finishing with the trainer's outcome); importing this
package imports neither library.
"""
