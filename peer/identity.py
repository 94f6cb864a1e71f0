"""A peer's identity: an Ed25519 libp2p private key file, its peer id and machine id.

The file is libp2p's own format (a protobuf ``PrivateKey{Type: Ed25519, Data: seed ||
public key}``), the same file ``--identity-path`` gives hivemind's p2pd, so the key that
signs our records is the key libp2p authenticates our connections with, and the peer id
libp2p shows is our machine id. The file is written with mode 0600 and never printed.

Protocol v2 machine ids embed their public key, which needs an Ed25519 identity: an RSA
identity file (hivemind's default) is refused with a message saying what to do.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2

from ..protocol.identity import Signer


class IdentityError(ValueError):
    """The identity file cannot be used."""


@dataclass(frozen=True)
class Identity:
    path: Path
    signer: Signer
    created: bool = False  # generated just now (so nobody else can be using it)

    @property
    def machine_id(self) -> bytes:
        return self.signer.machine

    @property
    def peer_id(self) -> PeerID:
        return PeerID(self.signer.machine)


def write_identity(path: Path, signer: Signer) -> None:
    data = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.Ed25519, data=signer.seed + signer.public_key).SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise IdentityError(f"cannot write the identity file {str(path)!r}: {exc.strerror or exc}") from None


def load_identity(path: str | os.PathLike, create: bool = True) -> Identity:
    """Read an Ed25519 libp2p identity file, creating one if it does not exist (and ``create``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IdentityError(f"--identity-path {str(path)!r} is a folder; give a file path (it is created if missing)")
    created = not path.exists()
    if created:
        if not create:
            raise IdentityError(f"identity file {str(path)!r} does not exist")
        write_identity(path, Signer.generate())
    try:
        key = crypto_pb2.PrivateKey.FromString(path.read_bytes())
    except OSError as exc:
        raise IdentityError(f"cannot read the identity file {str(path)!r}: {exc.strerror or exc}") from None
    except Exception:
        raise IdentityError(f"{str(path)!r} is not a libp2p private key file") from None
    if key.key_type == crypto_pb2.KeyType.RSA:
        raise IdentityError(
            f"{str(path)!r} holds an RSA key (hivemind's default identity). seedswarm's protocol v2 signs every record "
            "with the peer's Ed25519 libp2p key: pass a new --identity-path (an Ed25519 key is created there)")
    if key.key_type != crypto_pb2.KeyType.Ed25519 or len(key.data) not in (32, 64):
        raise IdentityError(f"{str(path)!r} is not an Ed25519 libp2p private key")
    signer = Signer(bytes(key.data[:32]))
    if len(key.data) == 64 and bytes(key.data[32:]) != signer.public_key:
        raise IdentityError(f"{str(path)!r} is corrupt: its public key does not match its private key")
    if not created and stat.S_IMODE(path.stat().st_mode) & 0o077:
        try:
            os.chmod(path, 0o600)  # a private key readable by others: tighten it
        except OSError:
            pass
    return Identity(path, signer, created)
