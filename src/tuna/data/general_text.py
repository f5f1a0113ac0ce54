"""General text for the forgetting probe: docstrings of Python's own standard library.

They ship with every Python (PSF licence), read as ordinary English technical prose, and are not
what any demo task trains on, so their perplexity before and after fine-tuning shows forgetting.
"""
from __future__ import annotations

import importlib
import inspect

MODULES = ("json", "collections", "itertools", "functools", "pathlib", "textwrap", "string", "re", "random",
           "statistics", "fractions", "decimal", "datetime", "heapq", "bisect", "csv", "argparse", "logging",
           "shutil", "difflib", "calendar", "contextlib", "dataclasses", "enum", "typing", "operator")


def stdlib_docstrings(count: int = 48, min_chars: int = 200) -> list[str]:
    """The first `count` docstrings of at least `min_chars`, in a fixed order (modules, then members)."""
    texts: list[str] = []
    for name in MODULES:
        module = importlib.import_module(name)
        candidates = [module] + [getattr(module, attr) for attr in sorted(vars(module)) if not attr.startswith("_")]
        for obj in candidates:
            doc = inspect.getdoc(obj) if (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)) else None
            if doc and len(doc) >= min_chars and doc not in texts:
                texts.append(doc)
                if len(texts) == count:
                    return texts
    return texts
