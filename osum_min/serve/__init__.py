"""Serving: the OpenAI-compatible server, batching, wire formats, conversations, the web demo."""
