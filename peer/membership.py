"""Who may join a swarm: identities, members-only swarms and proof of work (the Python API
behind `seedswarm identity` and `seedswarm members`).

A members-only swarm names an *authority* in its spec (``admission.authority``: an Ed25519
public key in hex). Its creator keeps the authority's private key and issues each member a
ticket: the authority's signature of the member's machine id in that swarm. A member passes
its ticket with ``--ticket``; every record it signs carries it, and every replica checks it.

    key = create_authority("authority.key")            # keep it secret
    spec = dataclasses.replace(spec, admission=Admission("members", authority=key.public_key.hex()))
    ticket = member_ticket("authority.key", spec, "12D3KooW...")   # the member's peer id
"""

from __future__ import annotations

import os
from pathlib import Path

from ..protocol.errors import ProtocolError
from ..protocol.identity import Signer, check_machine_id, issue_member_ticket
from ..protocol.spec import SwarmSpec
from .identity import IdentityError, load_identity, write_identity


def peer_id_bytes(peer_id: str) -> bytes:
    """The machine id of a printed peer id (``12D3KooW...``); IdentityError if it is not an
    Ed25519 peer id."""
    from hivemind.p2p import PeerID

    try:
        machine = PeerID.from_base58(peer_id.strip()).to_bytes()
        return check_machine_id(machine)
    except (ValueError, ProtocolError) as exc:
        raise IdentityError(f"{peer_id!r} is not the peer id of an Ed25519 identity ({exc})") from None


def create_authority(path: str | os.PathLike) -> Signer:
    """A new authority key at ``path`` (refuses to overwrite one)."""
    path = Path(path)
    if path.exists():
        raise IdentityError(f"{str(path)!r} exists: an authority key is never overwritten")
    signer = Signer.generate()
    write_identity(path, signer)
    return signer


def member_ticket(authority_path: str | os.PathLike, spec: SwarmSpec, peer_id: str) -> bytes:
    """The ticket admitting ``peer_id`` to the members-only swarm of ``spec``."""
    authority = load_identity(authority_path, create=False).signer
    if spec.admission.mode != "members":
        raise IdentityError("this swarm spec is open to anyone: only members-only swarms take tickets")
    if spec.admission.authority != authority.public_key.hex():
        raise IdentityError(f"{str(authority_path)!r} is not this swarm's authority "
                            f"(the spec names {spec.admission.authority[:16]}...)")
    return issue_member_ticket(authority, spec.swarm_id, peer_id_bytes(peer_id))
