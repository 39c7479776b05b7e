"""The one secret of subscriptions, from the environment, and all that is derived from it.

`CHANNEL_MONITOR_SUBSCRIPTION_KEY` is a Fernet key (`Keys.generate()` makes one). From it come
the sealing of addresses at rest (Fernet: AES-CBC with an HMAC), a separate HMAC key for the
lookup hash of a normalised address (so a known address is found, and rate-limited, without
decrypting every row) and the tokens in links, which are derived from a row's random nonce and
never stored: the store keeps only their SHA-256. A lost key makes the stored addresses
unreadable, which is the point of it; a leaked file without the key tells no one an address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping, Sequence

from cryptography.fernet import Fernet, InvalidToken

from monitor.store import Request

ENV = "CHANNEL_MONITOR_SUBSCRIPTION_KEY"


class KeyProblem(Exception):
    """The key is missing or not a Fernet key; the message says what to do."""


class Keys:
    """Sealing, lookup hashes and tokens under one key."""

    def __init__(self, key: str | bytes) -> None:
        raw = key.encode() if isinstance(key, str) else key
        try:
            self._fernet = Fernet(raw)
        except (ValueError, TypeError):
            raise KeyProblem(
                f"{ENV} is not a Fernet key (44 characters of URL-safe base64); make one with "
                "`channel-monitor subscription key` / 订阅密钥格式不对，请用 "
                "`channel-monitor subscription key` 生成"
            ) from None
        secret = base64.urlsafe_b64decode(raw)
        self._lookup = hmac.new(secret, b"lookup", hashlib.sha256).digest()
        self._tokens = hmac.new(secret, b"tokens", hashlib.sha256).digest()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Keys:
        value = (os.environ if env is None else env).get(ENV, "")
        if not value:
            raise KeyProblem(
                f"{ENV} is not set: subscriptions keep addresses encrypted with it; make one "
                "with `channel-monitor subscription key` / 未设置订阅密钥 "
                f"{ENV}，请用 `channel-monitor subscription key` 生成"
            )
        return cls(value)

    @staticmethod
    def generate() -> str:
        return Fernet.generate_key().decode()

    def seal(self, address: str) -> bytes:
        return self._fernet.encrypt(address.encode())

    def open(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            raise KeyProblem(
                f"an address in the store was sealed with another {ENV}; the key was changed"
            ) from None

    def lookup(self, address: str) -> bytes:
        """The keyed hash of the normalised address (or webhook URL)."""
        return hmac.new(self._lookup, normalise(address).encode(), hashlib.sha256).digest()

    @staticmethod
    def nonce() -> bytes:
        return secrets.token_bytes(16)

    def token(self, purpose: str, nonce: bytes, turn: int = 0) -> str:
        """The token in a link: derived, never stored (`purpose` confirm or unsubscribe)."""
        mac = hmac.new(self._tokens, f"{purpose}:{turn}:".encode() + nonce, hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    @staticmethod
    def token_hash(token: str) -> bytes:
        """What the store keeps of a token, and looks it up by."""
        return hashlib.sha256(token.encode()).digest()

    def confirm_hash(self, nonce: bytes, turn: int) -> bytes:
        return self.token_hash(self.token("confirm", nonce, turn))

    def unsubscribe_hash(self, nonce: bytes) -> bytes:
        return self.token_hash(self.token("unsubscribe", nonce))

    def request(
        self, address: str, choices: Sequence[str], lang: str = "zh", medium: str = "email"
    ) -> Request:
        """What the store keeps of a new subscription: the address sealed, its lookup hash,
        a fresh nonce and the hash of its unsubscribe token (never the token itself)."""
        nonce = self.nonce()
        return Request(
            lookup=self.lookup(address),
            address=self.seal(normalise(address) if medium == "email" else address),
            medium=medium,
            lang=lang,
            choices=tuple(choices),
            nonce=nonce,
            unsubscribe_hash=self.unsubscribe_hash(nonce),
        )

    def webhook_secret(self, nonce: bytes) -> str:
        """The secret a partner's webhook checks signatures with (told once, at `add`)."""
        return self.token("webhook", nonce)


def normalise(address: str) -> str:
    """One spelling of an address: trimmed and lower-cased (mail systems in use treat the
    local part without regard to case)."""
    return address.strip().lower()
