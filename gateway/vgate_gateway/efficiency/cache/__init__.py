"""Exact result cache: a bounded LRU of completed answers, keyed by the whole request.

Only requests whose answer is reproducible are cached by default: embeddings, and
completions with ``temperature`` 0 or an explicit ``seed``. A client overrides this per
request with the ``x-vgate-cache`` header (``bypass`` or ``force``).

An entry is the worker's own answer, byte for byte: the JSON body of a non-streaming
answer, or every SSE event of a stream (usage chunks, ``continuous_usage_stats`` and all).
A replay carries every field the worker sent, with two changes: the response ``id`` is
the one the worker gives the replaying request (vLLM names a response after its request
id) and ``created`` is the current time (:class:`~.entry.Stamp`).

The key covers the whole request body (``stream`` and ``stream_options`` included, so a
stream and a JSON answer are different entries, and a request that the worker would
reject can never hit an entry that an accepted one filled); only a string ``user`` is
left out, since it does not change what the worker answers.

Its parts: :mod:`.policy` (what is cacheable, and the key), :mod:`.store` (the bounded
LRU), :mod:`.entry` (an entry, and re-stamping it for another request) and
:mod:`.recorder` (an entry assembled from a worker's answer as it passes by).
"""
