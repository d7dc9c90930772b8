"""mlcluster's worker service: a Hugging Face sequence classifier over HTTP."""
