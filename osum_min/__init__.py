"""osum-min: a compact PyTorch reimplementation of OSUM (audio -> mel -> encoder -> adaptor -> Qwen2 -> text)."""
