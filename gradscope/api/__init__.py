"""The Python API's implementation: `gradscope.init`, `Run`, and watching a user's model."""
