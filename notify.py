"""End-of-run messages through the Telegram Bot API (plain urllib; a failure only warns, never showing the token or
the chat id). Reads TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID and TELEGRAM_API_URL (default https://api.telegram.org)."""

import os
import threading
import urllib.error
import urllib.parse
import urllib.request

from errors import warn


def _reason(e, secrets):
    """Why a send failed, from parts that cannot hold the URL (which holds the token)."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code}"
    e = e.reason if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException) else e
    text = e.strerror if isinstance(e, OSError) and isinstance(e.strerror, str) else ""
    for s in secrets:  # strerror comes from the OS, but be sure
        text = text.replace(s, "***")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def send_telegram(text, timeout=5.0):
    """Post `text` within `timeout` seconds in all, however slowly a server answers; True once it has answered
    in full, False (after one warning) otherwise."""
    token, chat = os.environ.get("TELEGRAM_BOT_TOKEN"), os.environ.get("TELEGRAM_CHAT_ID")
    if not token or not chat:
        warn("--notify telegram: TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID must be set; no message sent")
        return False
    base = os.environ.get("TELEGRAM_API_URL", "https://api.telegram.org").rstrip("/")
    try:
        parts = urllib.parse.urlsplit(base)
        valid = parts.scheme in ("http", "https") and parts.hostname
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        valid = False
    if not valid:  # the value itself is not shown: a pasted full URL would hold the token
        warn("Telegram message not sent (TELEGRAM_API_URL is not an http(s) URL)")
        return False
    body, outcome = urllib.parse.urlencode({"chat_id": chat, "text": text}).encode(), []

    def post():  # in a daemon thread: urllib's timeout bounds each socket read, not the whole answer
        try:
            with urllib.request.urlopen(f"{base}/bot{token}/sendMessage", body, timeout=timeout) as resp:
                resp.read()
            outcome.append(None)
        except Exception as e:  # HTTP error, refused connection, timeout, bad URL: all only a warning
            outcome.append(e)

    sender = threading.Thread(target=post, name="telegram", daemon=True)
    sender.start()
    sender.join(timeout)
    result = outcome[:1]  # one look: the thread may still answer after the wait
    if result == [None]:
        return True
    warn(
        f"Telegram message not sent ({_reason(result[0], (token, chat))})"
        if result
        else f"Telegram message not confirmed (no full answer within {timeout:g} s; stopped waiting)"
    )
    return False


def notify(kind, text):
    if kind == "telegram":
        send_telegram(text)
