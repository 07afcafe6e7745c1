"""The model: Whisper encoder, adaptor, Qwen2 with LoRA, the KV cache, decoding, OSUM itself."""
