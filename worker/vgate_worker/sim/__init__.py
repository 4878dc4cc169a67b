"""The dry-run worker: an in-process simulator of vLLM's OpenAI-compatible server.

It speaks the same HTTP dialect as vLLM (routes, streaming, errors, ``/metrics`` names)
and models what makes a real worker interesting to a gateway: a bounded batch with a
FIFO waiting queue, decode time growing with batch size, and an automatic prefix cache
that makes repeated prompt prefixes cheap. No GPU and no model weights are needed.
"""
