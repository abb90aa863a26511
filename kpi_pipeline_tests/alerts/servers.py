"""Local stand-ins for the alert services, started by the tests (no internet needed).

- ``SmtpServer``: an aiosmtpd server that keeps every message it receives; optional STARTTLS
  (with a self-signed certificate) and login; can be stopped and started on the same port.
- ``SlackApi``: enough of the Slack Web API for ``chat.postMessage`` (bearer token, JSON body).
- ``TwilioApi``: enough of Twilio's Messages API (basic auth, form body).

The HTTP stand-ins answer with the real services' success and error shapes; ``fail_next`` makes
them answer the next requests with an error (e.g. 429 with ``Retry-After``).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key, made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class SmtpServer:
    """An SMTP server on 127.0.0.1 that records what it receives."""

    def __init__(
        self,
        port: int | None = None,
        *,
        certificate: tuple[Path, Path] | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.received: list[ReceivedMail] = []
        self.refuse_with: str | None = None
        """A reply such as ``451 4.3.0 try again later`` sent instead of accepting messages."""
        self.logins: list[str] = []
        self._certificate = certificate
        self._login = login
        self._controller: Controller | None = None

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        if self.refuse_with:
            return self.refuse_with
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        self.received.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        accepted = (auth_data.login.decode(), auth_data.password.decode()) == self._login
        if accepted:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=accepted, handled=False)

    def start(self) -> SmtpServer:
        options = {}
        if self._certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*map(str, self._certificate))
            options.update(tls_context=context, require_starttls=True)
        if self._login is not None:
            options.update(authenticator=self._authenticate, auth_require_tls=self._certificate is not None)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(self.body.decode()).items()}


@dataclass
class Response:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


class _FakeApi:
    """An HTTP server on 127.0.0.1 that records requests and answers through ``respond``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._failures: deque[Response] = deque()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = Request("POST", self.path, dict(self.headers), body)
                api.requests.append(request)
                response = api._failures.popleft() if api._failures else api.respond(request)
                payload = json.dumps(response.body).encode()
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def respond(self, request: Request) -> Response:
        raise NotImplementedError

    def fail_next(self, *responses: Response) -> None:
        """Answer the next requests with these responses, in order."""
        self._failures.extend(responses)

    def reset(self) -> None:
        self.requests.clear()
        self._failures.clear()

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SlackApi(_FakeApi):
    """``POST /api/chat.postMessage`` with ``Authorization: Bearer <token>`` and a JSON body."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.base_url = f"{self.url}/api/"

    def respond(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return Response(200, {"ok": False, "error": "invalid_auth"})
        if request.path != "/api/chat.postMessage":
            return Response(404, {"ok": False, "error": "unknown_method"})
        body = request.json()
        if not body.get("channel"):
            return Response(200, {"ok": False, "error": "channel_not_found"})
        return Response(
            200,
            {
                "ok": True,
                "channel": body["channel"],
                "ts": "1700000000.000100",
                "message": {"text": body.get("text", "")},
            },
        )

    def messages(self) -> list[dict]:
        """Bodies of the successful ``chat.postMessage`` calls."""
        return [
            r.json()
            for r in self.requests
            if r.path == "/api/chat.postMessage" and r.headers.get("Authorization") == f"Bearer {self.token}"
        ]


class TwilioApi(_FakeApi):
    """``POST /2010-04-01/Accounts/{sid}/Messages.json`` with basic auth and a form body."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        super().__init__()
        self.account_sid = account_sid
        self._auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.sent: list[dict[str, str]] = []

    def reset(self) -> None:
        super().reset()
        self.sent.clear()

    def respond(self, request: Request) -> Response:
        if request.headers.get("Authorization") != self._auth:
            return Response(401, {"code": 20003, "message": "Authenticate", "status": 401})
        if request.path != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            return Response(404, {"code": 20404, "message": "Not found", "status": 404})
        form = request.form()
        if not form.get("To", "").startswith("+"):
            return Response(
                400, {"code": 21211, "status": 400, "message": f"The 'To' number {form.get('To')} is not valid."}
            )
        self.sent.append(form)
        return Response(
            201, {"sid": f"SM{len(self.sent):032d}", "status": "queued", "to": form["To"], "body": form["Body"]}
        )
