#!/usr/bin/env python3
"""A Gateway Engine style app: writes readings to gmq (here: the gateway's ingest) with plain HTTP form posts.

As GWE's example apps do, it POSTs ``application/x-www-form-urlencoded`` writes to
``http://localhost:8090/onep:v1/stack/alias`` and names its device with ``X-Exosite-VMS``
(gmq activates it) or ``X-Exosite-CIK``. Standard library only; it runs unchanged
against gmq and against the gateway.

Usage: gwe_app.py [--url URL] [--count N] [--start N] [--interval S] [--vms "vendor model serial" | --cik CIK]
"""

import argparse
import http.client
import sys
import time
import urllib.parse


def write(connection, headers, values):
    """POST one write; on 503 wait as Retry-After says and send it again. Returns the status."""
    body = urllib.parse.urlencode(values)
    while True:
        connection.request("POST", "/onep:v1/stack/alias", body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 503:
            return response.status
        time.sleep(float(response.getheader("Retry-After", "1")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8090")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--start", type=int, default=0, help="first counter value")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--vms", default="acme box gw1")
    parser.add_argument("--cik")
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)  # kept alive
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    headers.update({"X-Exosite-CIK": args.cik} if args.cik else {"X-Exosite-VMS": args.vms})
    for i in range(args.start, args.start + args.count):
        status = write(connection, headers, {"counter": i, "temperature": 20 + i % 5})
        if status != 204:
            print(f"write {i}: HTTP {status}", file=sys.stderr)
            return 1
        time.sleep(args.interval)
    print(f"{args.count} writes stored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
