"""Reachability planning, dial addresses, p2pd multiaddr encoding, and where bootstrap lists come from."""

from __future__ import annotations

import pytest
from hivemind.p2p import PeerID

from seedswarm.peer import netconfig, reach
from seedswarm.peer.cli import main
from seedswarm.protocol.directory import MemberInfo, decode_member
from seedswarm.protocol.errors import ProtocolError

RELAY_ID = "12D3KooWHLxB3PmtELC8a5exz7xkJEhQG3fNe6mczijmt57hdhk2"
PEER_ID = "12D3KooWREmpPrSRHDifSvDnYypEuD3dD4hxqmQbh83iKdZa9Snk"
PUBLIC_RELAY = f"/ip4/198.51.100.1/tcp/31337/p2p/{RELAY_ID}"
LAN_RELAY = f"/ip4/192.168.1.10/tcp/31337/p2p/{RELAY_ID}"


@pytest.mark.parametrize("maddr, public", [
    ("/ip4/127.0.0.1/tcp/1", False), ("/ip4/10.1.2.3/tcp/1", False), ("/ip4/172.20.0.1/tcp/1", False),
    ("/ip4/192.168.1.2/tcp/1", False), ("/ip4/100.64.1.1/tcp/1", False), ("/ip4/169.254.1.1/tcp/1", False),
    ("/ip4/0.0.0.0/tcp/1", False), ("/ip6/::1/tcp/1", False), ("/ip6/fd00::1/tcp/1", False),
    ("/ip4/198.51.100.7/tcp/1", True), ("/ip4/8.8.8.8/tcp/1", True), ("/ip6/2001:4860::1/tcp/1", True),
    ("/dns4/relay.example.org/tcp/1", True), ("/unix/tmp/x", False), ("/ip4/not-an-ip/tcp/1", False),
])
def test_public_addresses(maddr, public):
    assert reach.is_public(maddr) is public


def test_a_home_peer_with_a_public_bootstrap_goes_through_relays():
    plan = reach.plan("auto", ["/ip4/0.0.0.0/tcp/0", "/ip4/192.168.1.2/tcp/0"], [PUBLIC_RELAY])
    assert plan.private and plan.relays == (PUBLIC_RELAY,)
    addrs = reach.dial_addrs(["/ip4/127.0.0.1/tcp/5/p2p/" + PEER_ID, "/ip4/192.168.1.2/tcp/5/p2p/" + PEER_ID], plan, PEER_ID)
    assert addrs[0] == f"{PUBLIC_RELAY}/p2p-circuit/p2p/{PEER_ID}"  # circuits first, loopback never published
    assert all("127.0.0.1" not in a for a in addrs)


@pytest.mark.parametrize("own, initial, private", [
    (["/ip4/203.0.113.9/tcp/31337"], [PUBLIC_RELAY], False),   # it has a public address itself
    (["/ip4/127.0.0.1/tcp/0"], [LAN_RELAY], False),             # one LAN (or one host): direct dials
    (["/ip4/127.0.0.1/tcp/0"], [], False),                      # nobody to relay through
    (["/ip4/127.0.0.1/tcp/0"], ["/ip4/198.51.100.1/tcp/1"], False),  # no peer id: cannot be a relay
])
def test_when_a_peer_dials_directly(own, initial, private):
    assert reach.plan("auto", own, initial).private is private


def test_forced_reachability_and_explicit_relays():
    assert not reach.plan("public", [], [PUBLIC_RELAY]).private
    forced = reach.plan("private", ["/ip4/127.0.0.1/tcp/0"], [LAN_RELAY], relays=[PUBLIC_RELAY])
    assert forced.private and forced.relays == (PUBLIC_RELAY,)
    assert "no relay" in reach.plan("private", [], []).reason
    with pytest.raises(ValueError, match="reachability"):
        reach.plan("sometimes", [], [])


def test_circuit_addresses_encode_the_way_p2pd_reads_them():
    text = f"{PUBLIC_RELAY}/p2p-circuit/p2p/{PEER_ID}"
    raw = reach.encode_maddr(text)
    relay, peer = PeerID.from_base58(RELAY_ID).to_bytes(), PeerID.from_base58(PEER_ID).to_bytes()
    # /ip4/198.51.100.1 (04 c6336401) /tcp/31337 (06 7a69) /p2p/<multihash> (a503 len mh) /p2p-circuit (a202) /p2p/...
    assert raw == (bytes.fromhex("04c6336401067a69") + b"\xa5\x03" + bytes([len(relay)]) + relay + b"\xa2\x02"
                   + b"\xa5\x03" + bytes([len(peer)]) + peer)
    assert reach.BinaryMaddr(text).to_bytes() == raw and str(reach.BinaryMaddr(text)) == text


@pytest.mark.parametrize("bad", ["", "ip4/1.2.3.4", "/ip4/1.2.3.4/tcp/1/p2p", "/p2p/not-a-peer-id",
                                 "/ip4/999.1.1.1/tcp/1", "/" + "a" * 300])
def test_published_garbage_is_refused_not_dialed(bad):
    with pytest.raises(ValueError):
        reach.encode_maddr(bad)


def test_member_entries_carry_bounded_dial_addresses():
    ok = MemberInfo(addrs=(f"{PUBLIC_RELAY}/p2p-circuit/p2p/{PEER_ID}",)).to_obj()
    assert decode_member(ok).addrs == tuple(ok["addrs"])
    for addrs in (["x"] * 5, ["no-slash"], ["/" + "a" * 200], [7], "/ip4/1.2.3.4"):
        with pytest.raises(ProtocolError, match="member.addrs"):
            decode_member({**ok, "addrs": addrs})


def test_bootstrap_lists_come_from_flag_then_environment_then_config_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'initial_peers = ["{PUBLIC_RELAY}"]\nrelays = ["{LAN_RELAY}"]\n')
    env = {"SEEDSWARM_CONFIG": str(config)}
    assert netconfig.resolve("initial_peers", ["/ip4/1.1.1.1/tcp/1"], env)[0] == ["/ip4/1.1.1.1/tcp/1"]
    assert netconfig.resolve("initial_peers", [], env) == ([], "--initial-peers")  # an explicit empty flag wins
    assert netconfig.resolve("initial_peers", None, {**env, "SEEDSWARM_INITIAL_PEERS": "/a/1, /b/2"}) == (
        ["/a/1", "/b/2"], "SEEDSWARM_INITIAL_PEERS")
    assert netconfig.resolve("initial_peers", None, env) == ([PUBLIC_RELAY], str(config))
    assert netconfig.resolve("relays", None, env)[0] == [LAN_RELAY]
    assert netconfig.resolve("relays", None, {"HOME": str(tmp_path)}) == ([], "")  # no file: nothing
    xdg = tmp_path / "xdg" / "seedswarm"
    xdg.mkdir(parents=True)
    (xdg / "config.toml").write_text(f'relays = ["{PUBLIC_RELAY}"]\n')
    assert netconfig.resolve("relays", None, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")})[0] == [PUBLIC_RELAY]


@pytest.mark.parametrize("text, message", [
    ("initial_peers = [", "config file"), ('initial_peers = "one"', "list of multiaddrs"),
    ('bootstrap = ["/a"]', "unknown setting"), ('relays = ["no-slash"]', "list of multiaddrs"),
])
def test_a_bad_config_file_is_named_with_the_reason(tmp_path, text, message):
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(netconfig.NetConfigError, match=message):
        netconfig.resolve("initial_peers", None, {"SEEDSWARM_CONFIG": str(config)})


def test_the_cli_names_a_bad_config_file_or_relay(tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.toml"
    config.write_text("initial_peers = 3")
    monkeypatch.setenv("SEEDSWARM_CONFIG", str(config))
    with pytest.raises(SystemExit) as exit_:
        main(["swarms"])
    assert exit_.value.code == 2 and "config.toml" in capsys.readouterr().err
    monkeypatch.delenv("SEEDSWARM_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        main(["peer", "--relays", "not-a-maddr", "--steps", "1", "--checkpoint-dir", str(tmp_path / "p")])
    assert exit_.value.code == 2 and "--relays" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["peer", "--reachability", "sometimes"])
    assert exit_.value.code == 2
