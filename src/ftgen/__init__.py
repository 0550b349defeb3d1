"""ftgen: measure how fine-tuning a causal LM on one task changes it on other domains and tasks."""

__version__ = "0.1.0"
