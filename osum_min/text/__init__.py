"""Text: the Qwen2 tokenizer and the task table (prompts, tags, output parsers)."""
