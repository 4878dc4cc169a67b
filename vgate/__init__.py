"""V-Gate: serve quantized LLMs on Kubernetes behind one OpenAI-compatible endpoint."""
