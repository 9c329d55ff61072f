"""End-of-run messages through the Telegram Bot API (plain urllib; a failure only warns).

Reads TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID; TELEGRAM_API_URL overrides https://api.telegram.org.
"""
import os
import urllib.parse
import urllib.request

from tracking import warn


def send_telegram(text, timeout=5.0):
    token, chat = os.environ.get("TELEGRAM_BOT_TOKEN"), os.environ.get("TELEGRAM_CHAT_ID")
    if not token or not chat:
        warn("--notify telegram: TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID must be set; no message sent")
        return False
    base = os.environ.get("TELEGRAM_API_URL", "https://api.telegram.org").rstrip("/")
    body = urllib.parse.urlencode({"chat_id": chat, "text": text}).encode()
    try:
        with urllib.request.urlopen(f"{base}/bot{token}/sendMessage", body, timeout=timeout) as resp:
            resp.read()
        return True
    except Exception as e:  # HTTP error, refused connection, timeout: all only a warning
        warn(f"Telegram message not sent ({type(e).__name__}: {e})")
        return False


def notify(kind, text):
    if kind == "telegram":
        send_telegram(text)
