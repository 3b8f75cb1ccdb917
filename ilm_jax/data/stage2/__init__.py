"""Stage-2 examples: prompts from a split, token ids, slot maps, batches.

``sampling`` draws prompts, ``encoding`` turns them into token ids and slot
maps, ``collate`` pads them into fixed-shape batches, ``records`` writes
training examples to disk and ``batches`` streams global training batches
from there.
"""
