"""Secrets: references to secrets in the operator's config (``env:`` / ``file:``), age identities, and SOPS files.

An effect-side package: the engine decrypts at apply time, commands resolve references; nothing here logs a value.
"""
