"""Serving our models over HTTP: the stand-in for an SGLang server (see standin_server)."""
