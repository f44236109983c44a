"""``python -m devnode [--host H] [--port P] [--block-time S] [--accounts N]``.

Prints ``listening on http://HOST:PORT`` on stdout once the node accepts connections, then serves
until Ctrl-C or SIGTERM. The dev accounts and their keys are logged on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .node import DevNode


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devnode", description="Local Ethereum JSON-RPC dev node (eth-tester)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8545, help="port (0 picks a free one)")
    parser.add_argument(
        "--block-time",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="mine a block every SECONDS from the mempool (default: mine each tx immediately)",
    )
    parser.add_argument("--accounts", type=_positive_int, default=10, help="number of funded dev accounts")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger("devnode")
    node = DevNode(block_time=args.block_time, port=args.port, host=args.host, accounts=args.accounts)
    node.start()
    for index, (address, _key) in enumerate(node.accounts):
        log.info("account (%d) %s", index, address)  # keys are never logged
    sys.stdout.write(f"listening on {node.url}\n")
    sys.stdout.flush()
    node.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
