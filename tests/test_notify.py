"""notify.send_telegram against servers on 127.0.0.1 only: it delivers, it gives up after its total timeout
however slowly a server drips, and no warning ever shows the bot token or the chat id."""

import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import notify

TOKEN, CHAT = "123456789:SECRET-token_xyz", "-100987654321"


@pytest.fixture
def serve():
    """serve(do_POST) -> base URL of a local HTTP server whose POST handler is do_POST(handler, path, form)."""
    servers, stop = [], threading.Event()

    def start(do_post):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                do_post(self, self.path, form, stop)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    stop.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def reply(handler, code, body=b"", length=None):
    handler.send_response(code)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


def drip(handler, path, form, stop):
    """Headers at once, then one byte every 0.2 s of a 1000-byte body: no single read ever times out."""
    reply(handler, 200, length=1000)
    for _ in range(1000):
        if stop.wait(0.2):
            return
        try:
            handler.wfile.write(b"x")
            handler.wfile.flush()
        except OSError:
            return


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT)
    return lambda url: monkeypatch.setenv("TELEGRAM_API_URL", url)


def one_warning(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: Telegram message not"), err
    for secret in (TOKEN, CHAT, "SECRET", "987654321", urllib.parse.quote(TOKEN)):
        assert secret not in err, err
    return err


def test_message_arrives(serve, env, capsys):
    received = []
    env(serve(lambda h, path, form, stop: (received.append((path, form)), reply(h, 200, b'{"ok": true}'))))
    assert notify.send_telegram("run finished: test acc 0.9876") is True
    assert received == [(f"/bot{TOKEN}/sendMessage", {"chat_id": [CHAT], "text": ["run finished: test acc 0.9876"]})]
    assert capsys.readouterr().err == ""


def test_dripping_server_is_given_up_after_the_total_timeout(serve, env, capsys):
    env(serve(drip))
    t0 = time.monotonic()
    assert notify.send_telegram("done", timeout=0.5) is False
    assert 0.45 < time.monotonic() - t0 < 2.0  # each read gets a byte within 0.2 s: only a total bound stops it
    assert "within 0.5 s" in one_warning(capsys)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "kind",
    [
        "no scheme",
        "bad scheme",
        "no host",
        "bad port",
        "bad IPv6",
        "space in token",
        "refused",
        "HTTP 401 echoing the URL",
        "silent server",
    ],
)
def test_failures_warn_once_without_secrets(serve, env, capsys, monkeypatch, kind):
    def unauthorized(h, path, form, stop):  # answers with the token and chat id in its body, as a proxy might
        reply(h, 401, f"bad token in {path} for {form}".encode())

    def silent(h, path, form, stop):
        stop.wait(5)

    url = {
        "no scheme": "127.0.0.1/telegram",
        "bad scheme": "htp://127.0.0.1:1",
        "no host": "http://",
        "bad port": "http://127.0.0.1:notaport",
        "bad IPv6": "http://[::1",
        "refused": f"http://127.0.0.1:{closed_port()}",
    }.get(kind)
    if kind == "space in token":  # urllib refuses the URL, quoting it (token and all) in its message
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN.replace("-", " "))
        url = f"http://127.0.0.1:{closed_port()}"
    elif url is None:
        url = serve(unauthorized if kind.startswith("HTTP") else silent)
    env(url)
    t0 = time.monotonic()
    assert notify.send_telegram("done", timeout=0.5) is False
    assert time.monotonic() - t0 < 2.0
    err = one_warning(capsys)
    assert TOKEN.replace("-", " ") not in err
    if kind.startswith("HTTP"):
        assert "HTTP 401" in err


def test_missing_settings_warn_and_send_nothing(monkeypatch, capsys):
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT)
    assert notify.send_telegram("x") is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TELEGRAM_BOT_TOKEN" in err and CHAT not in err
