"""Keys and ciphers: the instance's master key, derived keys, secret encryption, passwords.

One 256-bit master key (setting ``secret_key``, else generated into ``<data dir>/secret-key``,
mode 0600) yields, through HKDF, the key that encrypts org secrets and the key that signs
access tokens; every process of one deployment must share it.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from motes.registry.models import Invalid

MIN_PASSWORD = 8
MAX_PASSWORD = 256


def load_master_key(configured: str | None, path: Path) -> bytes:
    """The master key from settings (base64, 32 bytes) or the key file, created if missing."""
    if configured:
        try:
            key = base64.urlsafe_b64decode(configured + "=" * (-len(configured) % 4))
        except (binascii.Error, ValueError) as exc:
            raise Invalid("MOTES_SECRET_KEY must be base64 of 32 random bytes") from exc
        if len(key) != 32:
            raise Invalid("MOTES_SECRET_KEY must be base64 of 32 random bytes")
        return key
    if path.exists():
        key = base64.urlsafe_b64decode(path.read_text().strip())
        if len(key) != 32:
            raise Invalid(f"{path} must hold base64 of 32 random bytes: restore it from a backup")
        return key
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.urlsafe_b64encode(key).decode() + "\n")
    return key


def derive(master: bytes, purpose: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"motes " + purpose.encode()).derive(master)


class SecretBox:
    """AES-256-GCM; the associated data binds a ciphertext to its org and key name."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, context: str) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(12)
        return nonce, self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def open(self, nonce: bytes, ciphertext: bytes, context: str) -> str:
        try:
            return self._aead.decrypt(nonce, ciphertext, context.encode()).decode()
        except InvalidTag as exc:
            raise Invalid("the secret cannot be decrypted with this instance's key") from exc


_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile defaults
# verified against when the account does not exist, so both paths take the same time
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def check_password_rules(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise Invalid(f"a password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password_rules(password))


def verify_password(stored: str | None, password: str) -> bool:
    """Constant work whether or not ``stored`` exists; False on any mismatch."""
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
