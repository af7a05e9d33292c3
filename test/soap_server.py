#!/usr/bin/python3
"""A stand-in for the shop's legacy payment-confirmation SOAP service.

Tests and benchmarks of the SOAP poller run it on 127.0.0.1 (Python's
standard library only).  The first segment of the request path chooses
what it answers:

  /fixtures         test/fixtures: page 1 for the first request (Since up to
                    the first confirmation), page 2 for PageToken=page-2 or
                    a Since up to page 2's confirmation, an empty page after
  /fault            HTTP 500 with the fault fixture, always
  /http500          HTTP 500 with a plain-text body (no SOAP Fault)
  /redirect         HTTP 302 to /fixtures
  /slow?delay=S     waits S seconds, then answers like /fixtures
  /truncated        the first 500 bytes of page 1
  /oversized?kb=N   a well-formed response of about N kB (Content-Length)
  /chunked?kb=N     the same, chunked, without Content-Length
  /billion          "billion laughs": nested entities in an internal subset
  /xxe-file         an external entity SYSTEM "file:///etc/passwd"
  /xxe-http         an external entity on http://127.0.0.1:<watch port>/
  /xxe-param        a parameter entity on the watch port
  /xxe-dtd          an external DTD on the watch port
  /bad              one good confirmation and three bad ones (the last
                    without a PaymentId, at the newest time)
  /loop             a next page token that never changes
  /cycle            page tokens that go round: first page -> a, a -> b, b -> a
                    (a confirmation on the first page and on page a)
  /repeat           the same confirmation on every page, each with a new
                    next page token (t1, t2, ...): paging that never advances
  /future           a confirmation dated 2099, one of 2026-11-21T12:00:00Z and
                    one two hours ahead of this server's start (a service
                    node whose clock is fast), filtered by Since
  /bench/N          N generated confirmations, paged by PageSize, filtered
                    by Since
  /ledger           the confirmations in --ledger (JSON lines with payment_id,
                    sale_id, status, amount, currency, confirmed_at, appended
                    by whoever plays the shop: test/demo), at or after Since,
                    in time order, paged by PageSize

Every request's WS-Security header is checked against --username and
--password; a wrong or missing one gets the fault fixture with HTTP 500
(as the real service does).  Each request is recorded as one JSON line in
--log (never the password, only whether it matched); any connection to the
watch port is recorded in --watch-log.
"""

import argparse
import datetime
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SOAPENV = "http://schemas.xmlsoap.org/soap/envelope/"
PAY = "urn:electrored:payments:v1"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PASSWORD_TEXT = ("http://docs.oasis-open.org/wss/2004/01/"
                 "oasis-200401-wss-username-token-profile-1.0#PasswordText")
SOAP_ACTION = "urn:electrored:payments:v1#GetPaymentConfirmations"

args = None
log_lock = threading.Lock()
bench_cache = {}


def record(path, entry):
    entry["t"] = time.time()
    with log_lock:
        with open(path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")


def fixture(name):
    with open(os.path.join(args.fixtures, name), "rb") as f:
        return f.read()


def parse_time(s):
    t = datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    # a time without a zone is UTC, as the poller takes it (and a naive
    # time cannot be compared with Since)
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def envelope(inner):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<soapenv:Envelope xmlns:soapenv="%s"><soapenv:Body>\n'
            '<p:GetPaymentConfirmationsResponse xmlns:p="%s">\n%s'
            '</p:GetPaymentConfirmationsResponse>\n'
            '</soapenv:Body></soapenv:Envelope>\n' % (SOAPENV, PAY, inner)).encode()


# the same time for every request of the server's life: one confirmation
FAST_CLOCK_AT = (datetime.datetime.now(datetime.timezone.utc)
                 + datetime.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


def confirmation(payment_id, sale_id, status, amount, currency, confirmed_at):
    return ('<p:Confirmation><p:PaymentId>%s</p:PaymentId><p:SaleId>%s</p:SaleId>'
            '<p:Status>%s</p:Status><p:Amount currency="%s">%s</p:Amount>'
            '<p:ConfirmedAt>%s</p:ConfirmedAt></p:Confirmation>\n'
            % (payment_id, sale_id, status, currency, amount, confirmed_at))


def hostile(doctype, payment_id):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n%s\n'
            '<soapenv:Envelope xmlns:soapenv="%s"><soapenv:Body>\n'
            '<p:GetPaymentConfirmationsResponse xmlns:p="%s">\n%s'
            '</p:GetPaymentConfirmationsResponse>\n'
            '</soapenv:Body></soapenv:Envelope>\n'
            % (doctype, SOAPENV, PAY,
               confirmation(payment_id, "1", "CONFIRMED", "1.00", "EUR",
                            "2026-11-21T10:15:09Z"))).encode()


def billion_laughs():
    ents = ['<!ENTITY lol "lol">']
    for i in range(1, 10):
        prev = "lol" if i == 1 else "lol%d" % (i - 1)
        ents.append('<!ENTITY lol%d "%s">' % (i, ("&%s;" % prev) * 10))
    return hostile("<!DOCTYPE soapenv:Envelope [\n%s\n]>" % "\n".join(ents), "&lol9;")


# Generated confirmations for /bench/N: confirmation i (0-based) is
# PAY-<i+1, 7 digits>, sale 100001+i, every third a refund with a negative
# amount, times one second apart from 2026-11-21T00:00:00Z, every other one
# written with a +01:00 offset.
BENCH_BASE = datetime.datetime(2026, 11, 21, tzinfo=datetime.timezone.utc)
STATUSES = ("CONFIRMED", "DECLINED", "REFUNDED")


def bench_confirmation(i):
    t = BENCH_BASE + datetime.timedelta(seconds=i, milliseconds=i % 1000)
    if i % 2:
        local = t.astimezone(datetime.timezone(datetime.timedelta(hours=1)))
        when = local.strftime("%Y-%m-%dT%H:%M:%S.") + "%03d+01:00" % (i % 1000)
    else:
        when = t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (i % 1000)
    status = STATUSES[i % 3]
    cents = (i * 37) % 100000
    amount = "%s%d.%02d" % ("-" if status == "REFUNDED" else "", cents // 100, cents % 100)
    return confirmation("PAY-%07d" % (i + 1), str(100001 + i), status, amount, "EUR", when)


def bench_page(n, since, offset, size):
    # confirmations at or after Since (times rise with i)
    first = 0
    if since is not None:
        t0 = (since - BENCH_BASE).total_seconds()
        first = max(0, int(t0) - 2)
        while first < n and (BENCH_BASE + datetime.timedelta(seconds=first, milliseconds=first % 1000)) < since:
            first += 1
    start = first + offset
    end = min(n, start + size)
    key = (n, start, end)
    if key not in bench_cache:
        inner = "".join(bench_confirmation(i) for i in range(start, end))
        if end < n:
            inner += "<p:NextPageToken>o%d</p:NextPageToken>\n" % (offset + size)
        bench_cache[key] = envelope(inner)
    return bench_cache[key]


def ledger_page(since, offset, size):
    entries = []
    try:
        with open(args.ledger) as f:
            for line in f:
                try:
                    e = json.loads(line)
                    t = parse_time(e["confirmed_at"])
                except (ValueError, KeyError):
                    continue
                if t >= since:
                    entries.append((t, e))
    except FileNotFoundError:
        pass
    entries.sort(key=lambda te: (te[0], te[1]["payment_id"]))
    page = entries[offset:offset + size]
    inner = "".join(confirmation(e["payment_id"], e["sale_id"], e["status"], e["amount"],
                                 e.get("currency", "EUR"), e["confirmed_at"]) for _, e in page)
    if offset + size < len(entries):
        inner += "<p:NextPageToken>o%d</p:NextPageToken>\n" % (offset + size)
    return envelope(inner)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LegacyPayments/1.0"

    def log_message(self, fmt, *a):
        pass

    def send_body(self, status, body, content_type="text/xml; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def fault(self):
        self.send_body(500, fixture("soap_fault.xml"))

    def do_GET(self):
        self.send_body(405, b"use POST\n", "text/plain")

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = [p for p in url.path.split("/") if p]
        scenario = parts[0] if parts else ""
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)

        entry = {
            "path": self.path,
            "scenario": scenario,
            "soapaction": self.headers.get("SOAPAction"),
            "content_type": self.headers.get("Content-Type"),
            "expect": self.headers.get("Expect"),
            "tls": isinstance(self.connection, ssl.SSLSocket),
        }
        since = token = page_size = None
        auth_ok = False
        try:
            root = ET.fromstring(body)
            entry["well_formed"] = True
            sec = root.find("{%s}Header/{%s}Security" % (SOAPENV, WSSE))
            if sec is not None:
                entry["must_understand"] = sec.get("{%s}mustUnderstand" % SOAPENV)
                user = sec.find("{%s}UsernameToken/{%s}Username" % (WSSE, WSSE))
                pw = sec.find("{%s}UsernameToken/{%s}Password" % (WSSE, WSSE))
                entry["username"] = user.text if user is not None else None
                entry["password_type"] = pw.get("Type") if pw is not None else None
                entry["password_ok"] = pw is not None and pw.text == args.password
                auth_ok = (entry["username"] == args.username and entry["password_ok"]
                           and entry["must_understand"] == "1"
                           and entry["password_type"] == PASSWORD_TEXT)
            req = root.find("{%s}Body/{%s}GetPaymentConfirmations" % (SOAPENV, PAY))
            if req is not None:
                children = [c.tag.split("}")[1] for c in req]
                entry["elements"] = children
                s = req.find("{%s}Since" % PAY)
                t = req.find("{%s}PageToken" % PAY)
                n = req.find("{%s}PageSize" % PAY)
                since = s.text if s is not None else None
                token = t.text if t is not None else None
                page_size = int(n.text) if n is not None else None
        except ET.ParseError as e:
            entry["well_formed"] = False
            entry["parse_error"] = str(e)
        entry.update(since=since, page_token=token, page_size=page_size, auth_ok=auth_ok)
        action_ok = entry["soapaction"] in ('"%s"' % SOAP_ACTION, SOAP_ACTION)
        entry["action_ok"] = action_ok
        record(args.log, entry)

        if scenario == "fault":
            return self.fault()
        if scenario == "http500":
            return self.send_body(500, b"Internal Server Error: the database is down\n", "text/plain")
        if not auth_ok or not action_ok or since is None:
            return self.fault()
        since_t = parse_time(since)

        if scenario == "redirect":
            self.send_response(302)
            self.send_header("Location", "/fixtures")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if scenario == "slow":
            time.sleep(float(query.get("delay", ["5"])[0]))
            scenario = "fixtures"
        if scenario == "fixtures":
            if token == "page-2" or (token is None and since_t > parse_time("2026-11-21T10:15:09Z")
                                     and since_t <= parse_time("2026-11-21T11:02:00Z")):
                return self.send_body(200, fixture("soap_response_page2.xml"))
            if token is None and since_t <= parse_time("2026-11-21T10:15:09Z"):
                return self.send_body(200, fixture("soap_response_page1.xml"))
            if token is None:
                return self.send_body(200, envelope(""))
            return self.fault()
        if scenario == "truncated":
            return self.send_body(200, fixture("soap_response_page1.xml")[:500])
        if scenario == "badbytes":
            # declared Shift_JIS, with bytes that are not Shift_JIS
            return self.send_body(200, envelope(
                confirmation("PAY-J1", "1", "CONFIRMED", "1.00", "EUR", "2026-11-21T10:15:09Z"))
                .replace(b'encoding="UTF-8"', b'encoding="Shift_JIS"')
                .replace(b"PAY-J1", b"PAY-\x81\xff\x82"), "text/xml")
        if scenario in ("oversized", "chunked"):
            kb = int(query.get("kb", ["2048"])[0])
            filler = "<!-- %s -->\n" % ("x" * 1000)
            doc = envelope(filler * kb)
            if scenario == "oversized":
                return self.send_body(200, doc)
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for i in range(0, len(doc), 16384):
                    chunk = doc[i:i + 16384]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            return
        if scenario == "billion":
            return self.send_body(200, billion_laughs())
        if scenario == "xxe-file":
            return self.send_body(200, hostile(
                '<!DOCTYPE soapenv:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "&xxe;"))
        watch = "http://127.0.0.1:%d" % args.watch_port
        if scenario == "xxe-http":
            return self.send_body(200, hostile(
                '<!DOCTYPE soapenv:Envelope [<!ENTITY xxe SYSTEM "%s/xxe-entity">]>' % watch, "&xxe;"))
        if scenario == "xxe-param":
            return self.send_body(200, hostile(
                '<!DOCTYPE soapenv:Envelope [<!ENTITY %% dtd SYSTEM "%s/xxe-param"> %%dtd;]>' % watch,
                "PAY-X"))
        if scenario == "xxe-dtd":
            return self.send_body(200, hostile(
                '<!DOCTYPE soapenv:Envelope SYSTEM "%s/xxe-dtd">' % watch, "PAY-X"))
        if scenario == "bad":
            items = [
                ("2026-11-21T12:00:00Z", confirmation("PAY-B1", "2001", "CONFIRMED", "10.50", "EUR",
                                                      "2026-11-21T12:00:00Z")),
                ("2026-11-21T12:00:01Z", confirmation("PAY-B2", "2002", "CONFIRMED", "ten", "EUR",
                                                      "2026-11-21T12:00:01Z")),
                ("2026-11-21T12:00:02Z",
                 '<p:Confirmation><p:PaymentId>PAY-B3</p:PaymentId><p:Status>CONFIRMED</p:Status>'
                 '<p:Amount currency="EUR">1.00</p:Amount>'
                 '<p:ConfirmedAt>2026-11-21T12:00:02Z</p:ConfirmedAt></p:Confirmation>\n'),
                ("2026-11-21T12:00:02Z",
                 '<p:Confirmation><p:SaleId>2004</p:SaleId><p:Status>CONFIRMED</p:Status>'
                 '<p:Amount currency="EUR">2.00</p:Amount>'
                 '<p:ConfirmedAt>2026-11-21T12:00:02Z</p:ConfirmedAt></p:Confirmation>\n'),
            ]
            return self.send_body(200, envelope(
                "".join(xml for when, xml in items if parse_time(when) >= since_t)))
        if scenario == "loop":
            return self.send_body(200, envelope("<p:NextPageToken>again</p:NextPageToken>\n"))
        if scenario == "cycle":
            following = {None: "a", "a": "b", "b": "a"}.get(token, "a")
            first = confirmation("PAY-C1", "3001", "CONFIRMED", "1.00", "EUR",
                                 "2026-11-21T12:00:00Z") if token is None else ""
            if token == "a":
                first = confirmation("PAY-C2", "3002", "CONFIRMED", "2.00", "EUR",
                                     "2026-11-21T12:00:01Z")
            return self.send_body(200, envelope(
                first + "<p:NextPageToken>%s</p:NextPageToken>\n" % following))
        if scenario == "repeat":
            following = "t%d" % (int(token[1:]) + 1 if token and token[1:].isdigit() else 1)
            return self.send_body(200, envelope(
                confirmation("PAY-R1", "5001", "CONFIRMED", "1.00", "EUR", "2026-11-21T12:00:00Z")
                + "<p:NextPageToken>%s</p:NextPageToken>\n" % following))
        if scenario == "future":
            items = [
                ("2026-11-21T12:00:00Z", confirmation("PAY-F1", "4001", "CONFIRMED", "1.00", "EUR",
                                                      "2026-11-21T12:00:00Z")),
                ("2099-01-01T00:00:00Z", confirmation("PAY-F2", "4002", "CONFIRMED", "2.00", "EUR",
                                                      "2099-01-01T00:00:00Z")),
                (FAST_CLOCK_AT, confirmation("PAY-F3", "4003", "CONFIRMED", "3.00", "EUR",
                                             FAST_CLOCK_AT)),
            ]
            return self.send_body(200, envelope(
                "".join(xml for when, xml in items if parse_time(when) >= since_t)))
        if scenario == "bench":
            n = int(parts[1]) if len(parts) > 1 else 10000
            offset = int(token[1:]) if token else 0
            return self.send_body(200, bench_page(n, since_t, offset, page_size or 500))
        if scenario == "ledger" and args.ledger:
            offset = int(token[1:]) if token else 0
            return self.send_body(200, ledger_page(since_t, offset, page_size or 500))
        return self.send_body(404, b"no such scenario\n", "text/plain")


def watch(srv):
    """Record any connection to the watch port: nothing should ever come."""
    while True:
        conn, addr = srv.accept()
        conn.settimeout(2)
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        record(args.watch_log, {"from": addr[0], "data": data.decode("latin-1")})
        try:
            conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        conn.close()


class TLSServer(ThreadingHTTPServer):
    """TLS on each accepted connection, in its own thread: a client that
    connects and never finishes the handshake holds up only that thread
    (wrapping the listening socket does the handshake inside accept())."""

    ctx = None

    def finish_request(self, request, client_address):
        request.settimeout(30)
        try:
            request = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


def http_server(port, tls):
    if tls:
        httpd = TLSServer(("127.0.0.1", port), Handler)
        httpd.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        httpd.ctx.load_cert_chain(args.tls_cert, args.tls_key)
    else:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    return httpd


def main():
    global args
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--watch-port", type=int, required=True)
    p.add_argument("--tls-port", type=int)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--fixtures", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--watch-log", required=True)
    p.add_argument("--username", default="kappa")
    p.add_argument("--password", default="secret")
    p.add_argument("--ready-file")
    p.add_argument("--ledger", help="JSON lines served by /ledger")
    args = p.parse_args()

    # Started from a test harness that may hold locks (test/run-tests runs
    # under flock): inherit no descriptor, and never outlive the parent.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    parent = os.getppid()

    # every socket listens before the ready file appears
    watch_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    watch_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    watch_sock.bind(("127.0.0.1", args.watch_port))
    watch_sock.listen(16)
    servers = [http_server(args.port, False)]
    if args.tls_port:
        servers.append(http_server(args.tls_port, True))

    threading.Thread(target=watch, args=(watch_sock,), daemon=True).start()
    for httpd in servers:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    try:
        while os.getppid() == parent:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
