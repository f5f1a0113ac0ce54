"""`tuna data select`: keep a budget of records the way the data-selection papers choose them.

items.py renders each record as training would (the answer's tokens labelled) and scores it with a
model; strategies.py holds the strategies (random, longest, length, ifd, perplexity, diversity, lobass)
and chains them; run.py reads, selects and writes, reusing saved scores.
"""
