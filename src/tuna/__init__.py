"""tuna: fine-tune language models with the methods of the papers, measured and honest."""
import os

# Nothing downloads at run time: every hub lookup resolves from the local cache or fails clearly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
