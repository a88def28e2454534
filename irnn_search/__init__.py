"""irnn-search: hyperparameter search for long-memory recurrent networks."""

__version__ = "0.1.0"
