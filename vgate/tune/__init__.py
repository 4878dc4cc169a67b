"""``vgate tune``: search vLLM's engine settings for the most goodput within latency targets."""
