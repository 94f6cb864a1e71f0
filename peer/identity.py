"""A peer's identity: its libp2p private key, peer id and machine id.

The machine id that names a peer's perturbation seeds is its libp2p peer id (the
multihash bytes). Records are signed with the same RSA key that defines that peer id
(hivemind's identity format), so nobody can publish records in another peer's name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from hivemind.p2p import P2P, PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey
from multihash import coerce_code, encode as multihash_encode


class IdentityError(ValueError):
    """The identity file cannot be used."""


@dataclass(frozen=True)
class Identity:
    path: Path
    private_key: RSAPrivateKey
    peer_id: PeerID
    created: bool = False  # generated just now (so nobody else can be using it)

    @property
    def machine_id(self) -> bytes:
        return self.peer_id.to_bytes()


def load_identity(path: str | os.PathLike, create: bool = True) -> Identity:
    """Read hivemind's identity file (``--identity_path``), creating it if asked."""
    path = Path(path).expanduser()
    created = not path.exists()
    if created:
        if not create:
            raise IdentityError(f"identity file {str(path)!r} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        P2P.generate_identity(str(path))
    try:
        data = path.read_bytes()
        der = crypto_pb2.PrivateKey.FromString(data).data
        key = serialization.load_der_private_key(der, password=None)
    except Exception as exc:
        raise IdentityError(f"{str(path)!r} is not a libp2p private key file ({exc})") from None
    private_key = RSAPrivateKey.__new__(RSAPrivateKey)  # wrap the loaded key in hivemind's class
    private_key.__setstate__({"_private_key": key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())})
    return Identity(path, private_key, PeerID.from_identity(data), created)


def peer_id_of_public_key(ssh_public_key: bytes) -> bytes:
    """The libp2p peer id (multihash bytes) of an RSA key as hivemind writes it in owner markers."""
    public = RSAPublicKey.from_bytes(ssh_public_key)._public_key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    return multihash_encode(hashlib.sha256(encoded).digest(), coerce_code("sha2-256"))
