"""Inference: the request path every front end decodes through, windows, subtitles, input lists, ranks."""
