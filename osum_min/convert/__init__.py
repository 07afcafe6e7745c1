"""Conversion: the original checkpoint both ways, downloads, export, CTranslate2 Whisper."""
