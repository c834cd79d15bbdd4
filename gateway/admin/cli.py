"""``gatewayctl``: the gateway's command line for operators."""

from __future__ import annotations

import argparse
import sys

from gateway import __version__
from gateway import config as gateway_config
from gateway.errors import ConfigError


def check_config(path: str | None) -> int:
    """Validate the configuration at ``path``; print every problem. Returns the exit status."""
    try:
        loaded = gateway_config.load(path)
    except ConfigError as exc:
        print("invalid configuration:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"configuration OK: {loaded.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gatewayctl``."""
    parser = argparse.ArgumentParser(prog="gatewayctl", description="Operate the IoT gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate the configuration and exit 0 or 1")
    check.add_argument("--config", "-c", default=None, help="the gateway's YAML config")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
