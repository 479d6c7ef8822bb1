"""NATS identities for a deployment: seeds, public keys, server configuration.

- ``python -m scripts.nats_keys keys DIR``: a new seed per identity that has none in
  ``DIR`` (``DIR/<identity>.nk``, mode 600; secrets), and the public keys (not secrets).
- ``python -m scripts.nats_keys env DIR``: the public keys as ``AVATAR_NKEY_<ID>=<key>``
  lines, for the deployed servers' ConfigMap ``avatar-nats-identities``.
- ``python -m scripts.nats_keys config DIR``: a nats-server ``authorization`` block for
  the keys in ``DIR`` (what ``make run`` and the tests' servers use).
- ``python -m scripts.nats_keys deployed [FILE]``: the block for deploy/k8s, public keys
  from the server's environment (``make docs`` writes it to the dev overlay).

The permissions themselves are in ``avatar_shared.bus.identities``; docs/bus-security.md
says how to install and rotate keys.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from avatar_shared.bus import identities

DEV_OVERLAY_CONFIG = Path(__file__).resolve().parents[1] / "deploy/k8s/overlays/dev/nats.conf"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("keys", "env", "config"):
        sub.add_parser(command).add_argument("directory", type=Path)
    deployed = sub.add_parser("deployed")
    deployed.add_argument("file", type=Path, nargs="?")
    args = parser.parse_args()
    if args.command == "keys":
        identities.write_seeds(args.directory)
        for name, key in identities.public_keys(args.directory).items():
            print(f"{name}: {key}")
    elif args.command == "env":
        for name, key in identities.public_keys(args.directory).items():
            print(f"{identities.key_variable(name)}={key}")
    elif args.command == "config":
        print(identities.authorization(identities.public_keys(args.directory)), end="")
    elif args.file is not None:
        args.file.write_text(identities.deployed_authorization())
    else:
        print(identities.deployed_authorization(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
