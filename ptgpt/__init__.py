"""ptgpt: a Portuguese corpus from Project Gutenberg and a GPT-style decoder trained on it."""

__version__ = "0.1.0"
