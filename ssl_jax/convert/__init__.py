"""Hugging Face checkpoints in and out: files.py (our parameter format and what both
converters share), bert.py, gpt2.py, and command.py (`run.py convert`)."""
