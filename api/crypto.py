"""Encryption at rest of tokens and secret values (Fernet)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["InvalidToken", "SecretBox", "load_or_create_key"]

CACHE_SIZE = 4096


def load_or_create_key(configured: str | None, path: Path) -> bytes:
    """The Fernet key: from the setting, else from ``path``, else generated.

    A generated key is written with mode 0600 by whichever process starts
    first; a second process starting at the same moment reads that one.
    """
    if configured:
        return _as_fernet_key(configured)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    with os.fdopen(fd, "wb") as file:
        file.write(key + b"\n")
        file.flush()
        os.fsync(file.fileno())
    return key


def _read_key(path: Path) -> bytes:
    for _ in range(50):
        data = path.read_bytes().strip()
        if data:
            return _as_fernet_key(data.decode("ascii"))
        # Another process created the file and is writing it right now.
        os.sched_yield()
    raise ValueError(f"{path} is empty")


def _as_fernet_key(value: str) -> bytes:
    """Use a Fernet key as it is; derive one from any other passphrase."""
    raw = value.strip().encode()
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32:
            return raw
    except (binascii.Error, ValueError):
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(b"hobotnica:" + raw).digest())


class SecretBox:
    """Encrypts and decrypts short text values with one key.

    Decrypted values are kept (the most recent ``CACHE_SIZE``): every push
    needs its repository's webhook secret and token, and a Fernet decryption
    costs ~0.1 ms. A ciphertext is never reused for another value (each has
    its own IV), so a kept value cannot go stale; whoever can read this
    process's memory could read the key anyway.
    """

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._plain: dict[str, str] = {}

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        value = self._plain.get(token)
        if value is None:
            value = self._fernet.decrypt(token.encode("ascii")).decode()
            if len(self._plain) >= CACHE_SIZE:
                del self._plain[next(iter(self._plain))]  # the oldest
            self._plain[token] = value
        return value
