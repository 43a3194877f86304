#!/usr/bin/env python3
"""A real SMTP server for the email sink tests (aiosmtpd, Debian's python3-aiosmtpd).

Listens on 127.0.0.1:PORT. With --cert/--key it offers STARTTLS and requires it before
MAIL and AUTH (with --implicit-tls: TLS from the first byte instead); with --user/--password it requires AUTH (PLAIN or LOGIN) with those. Every
DATA is counted in DIR/attempts (one line per attempt); the first --fail-count of them are
answered with --fail-code (451: try later, 550: refused), the others accepted: each accepted
message is written to DIR as N.eml (raw) and N.json (subject, headers, plain and HTML parts
decoded by Python's email package, envelope, whether TLS and AUTH were used).
"""

import argparse
import email
import email.policy
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Recorder:
    def __init__(self, out_dir, fail_code, fail_count, fail_text):
        self.out_dir = out_dir
        self.fail_code = fail_code
        self.fail_text = fail_text
        self.failures_left = fail_count
        self.accepted = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            with open(os.path.join(self.out_dir, "attempts"), "a") as attempts:
                attempts.write("data\n")
            if self.failures_left > 0:
                self.failures_left -= 1
                if self.fail_text is not None:
                    # A reply of several lines: "550-first", ..., "550 last".
                    lines = self.fail_text.split("\n")
                    return "\r\n".join(
                        f"{self.fail_code}{'-' if index < len(lines) - 1 else ' '}{line}"
                        for index, line in enumerate(lines)
                    )
                if self.fail_code.startswith("4"):
                    return f"{self.fail_code} 4.3.0 try again later"
                return f"{self.fail_code} 5.7.1 refused by the test server"
            self.accepted += 1
            number = self.accepted
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        plain = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        record = {
            "subject": str(message["subject"]),
            "headers": {name: str(value) for name, value in message.items()},
            "content_type": message.get_content_type(),
            "text": plain.get_content() if plain is not None else None,
            "html": html.get_content() if html is not None else None,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            # STARTTLS sets session.ssl; implicit TLS shows on the transport
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
            "authenticated": bool(session.authenticated),
        }
        base = os.path.join(self.out_dir, str(number))
        with open(base + ".eml", "wb") as raw_file:
            raw_file.write(raw)
        with open(base + ".json.tmp", "w") as json_file:
            json.dump(record, json_file)
        os.rename(base + ".json.tmp", base + ".json")  # readers never see half a file
        return "250 OK"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--fail-code", default="451")
    parser.add_argument("--fail-count", type=int, default=0)
    parser.add_argument("--fail-text", help="the refusal's text; each newline starts a reply line")
    args = parser.parse_args()

    recorder = Recorder(args.dir, args.fail_code, args.fail_count, args.fail_text)
    smtp_options = {}
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.implicit_tls:
            smtp_options.update(ssl_context=context)
        else:
            smtp_options.update(tls_context=context, require_starttls=True)
    if args.user:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == args.user.encode()
                and auth_data.password == args.password.encode()
            )
            return AuthResult(success=ok, handled=False)

        smtp_options.update(
            authenticator=authenticator,
            auth_required=True,
            # aiosmtpd counts only STARTTLS as TLS here; implicit TLS is TLS all along
            auth_require_tls=bool(args.cert) and not args.implicit_tls,
        )
    controller = Controller(recorder, hostname="127.0.0.1", port=args.port, **smtp_options)
    controller.start()
    print("ready", flush=True)
    # Runs until the test kills it; the controller serves from its own thread.
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
