"""The CLI over the Python API: eval, replay, digest, data; bad input gives clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEXTS, make_spec, tiny_bert
from seedswarm.model.data import write_jsonl
from seedswarm.model.digest import weight_digest
from seedswarm.model.replica import Replica
from seedswarm.model.tasks import PRESETS, build_task
from seedswarm.peer.cli import main
from seedswarm.protocol import LedgerFile, ModelRef, ProtocolError, Signer

SIGNER = Signer(bytes(32))


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, TEXTS)
    return path


@pytest.fixture
def base_folder(tmp_path, tokenizer):
    folder = tmp_path / "base"
    tiny_bert().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_eval_json_on_the_bundled_model(capsys, data_file):
    code, out, _ = run(capsys, "eval", "--data", str(data_file), "--json")
    result = json.loads(out)
    assert code == 0 and set(result) == {"accuracy", "loss", "n"} and result["n"] == len(TEXTS)
    assert 0 <= result["accuracy"] <= 100 and result["loss"] > 0


def test_replay_writes_a_loadable_model_whose_digest_matches_live_training(capsys, tmp_path, base_folder, tokenizer):
    spec = make_spec(model=ModelRef(str(base_folder), digest=weight_digest(tiny_bert())))
    task = build_task(PRESETS["sentiment"], tokenizer)
    live = Replica.for_task(tiny_bert(), spec, task)
    with LedgerFile(tmp_path / "ledger.ssl", spec) as ledger:
        for step in range(5):
            record = live.local_step(step, SIGNER, [task.collate(TEXTS)]).record
            live.apply_step([record])
            ledger.add([record])
    out_dir = tmp_path / "replayed"
    code, out, _ = run(capsys, "replay", "--ledger", str(tmp_path / "ledger.ssl"), "--out", str(out_dir), "--json")
    assert code == 0 and json.loads(out)["digest"] == live.digest()
    code, out, _ = run(capsys, "digest", str(out_dir))
    assert out.strip() == live.digest()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out_dir.iterdir()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors is no private file among public ones
    meta = json.loads((out_dir / "seedswarm.json").read_text())
    assert meta["swarm_id"] == spec.swarm_id_hex and meta["records"] == 5

    # a base model that is not the swarm's is refused by its digest
    other = tmp_path / "other"
    tiny_bert(seed=9).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--ledger", str(tmp_path / "ledger.ssl"), "--out", str(tmp_path / "x"), "--base", str(other)])
    assert exc.value.code == 2 and "hash to" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["eval", "--data", "missing.jsonl"], "does not exist"),
    (["eval", "--data", "{data}", "--model", "./no/such/model"], "is not a folder"),
    (["eval", "--data", "{data}", "--task", "nonsense"], "--task 'nonsense'"),
    (["eval", "--data", "{bad}"], "not valid JSON"),
    (["replay", "--ledger", "missing.ssl", "--out", "x"], "does not exist"),
    (["replay", "--ledger", "{data}", "--out", "x"], "not a seedswarm v2 ledger"),
    (["digest", "{tmp}"], "no config.json"),
    # labels are checked up front, naming the file and line (a missing one used to become 0)
    (["eval", "--data", "{nolabel}"], "nolabel.jsonl:2: no \"label\""),
    (["eval", "--data", "{wronglabel}"], "wronglabel.jsonl:1: label 7"),
    (["eval", "--data", "{namedlabel}"], "namedlabel.jsonl:1: label 'happy' is not one of"),
    (["eval", "--data", "{tmp}"], "is a folder"),
    (["eval", "--data", "{data}", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["data", "sentiment", "--out", "{tmp}/o", "--test-fraction", "1.5"], "--test-fraction"),
    (["data", "sentiment", "--out", "{tmp}/o", "--test-fraction", "0"], "--test-fraction"),
    (["data", "sentiment", "--out", "{data}"], "is a file"),
    (["replay", "--ledger", "{ledger}", "--out", "{data}"], "is a file"),
])
def test_bad_input_exits_2_with_a_clear_message(capsys, tmp_path, data_file, argv, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": 1}\n{oops\n')
    (tmp_path / "nolabel.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": "no label here"}\n')
    (tmp_path / "wronglabel.jsonl").write_text('{"text": "out of range", "label": 7}\n')
    (tmp_path / "namedlabel.jsonl").write_text('{"text": "a name", "label": "happy"}\n')
    from seedswarm.protocol.ledger import encode_ledger

    (tmp_path / "l.ssl").write_bytes(encode_ledger(make_spec(model=ModelRef("tiny-bert")), []))
    names = dict(data=data_file, bad=bad, tmp=tmp_path, nolabel=tmp_path / "nolabel.jsonl", ledger=tmp_path / "l.ssl",
                 wronglabel=tmp_path / "wronglabel.jsonl", namedlabel=tmp_path / "namedlabel.jsonl")
    argv = [a.format(**names) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_and_data_command(tmp_path):
    exe = Path(sys.executable).with_name("seedswarm")  # the console script installed beside python
    assert exe.exists()
    proc = subprocess.run([exe, "data", "sentiment", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "train.jsonl").stat().st_size > 0 and (tmp_path / "test.jsonl").stat().st_size > 0
    proc = subprocess.run([exe, "eval", "--data", "x.jsonl", "--bogus"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--bogus" in proc.stderr


@pytest.mark.parametrize("argv,message", [
    (["peer", "--swarm", "not-an-id", "--data", "x.jsonl"], "--swarm"),
    (["peer", "--swarm-spec", "missing.json", "--data", "x.jsonl"], "--swarm-spec"),
    (["peer", "--swarm", "0" * 64, "--task", "sentiment"], "--task only applies"),
    (["peer", "--resume", "--data", "x.jsonl"], "--resume needs the --checkpoint-dir"),
    (["peer", "--steps", "0"], "--steps must be at least 1"),
    (["peer", "--min-peers", "0"], "--min-peers"),
    (["peer", "--device", "tpu9"], "--device"),
    (["status"], "--initial-peers is required"),
    (["swarms"], "--initial-peers is required"),
])
def test_networked_commands_reject_bad_flags_before_starting_anything(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_bad_swarm_spec_file_names_the_field(capsys, tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text('{"name": "x", "model": {"id": "m"}, "task": {"kind": "label-prompts"}, "epsilon": 1}')
    with pytest.raises(SystemExit):
        main(["peer", "--swarm-spec", str(bad), "--data", "x.jsonl"])
    assert "epsilon" in capsys.readouterr().err


def test_demo_refuses_to_replace_a_folder_that_is_not_its_own(capsys, tmp_path):
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(precious), "--steps", "1", "--peers", "1"])
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_members_only_swarm_from_the_command_line(capsys, tmp_path):
    """The creator makes an authority key and puts it in the spec; a member prints its peer id
    and gets a ticket; the ticket admits exactly that peer to exactly that swarm."""
    import dataclasses

    from seedswarm.protocol import Admission, Record, SwarmSpec
    from seedswarm.protocol.admission import check_record
    from seedswarm.peer.identity import load_identity

    code, out, _ = run(capsys, "members", "authority", "--out", str(tmp_path / "authority.key"))
    authority = out.split('"authority": "')[1].split('"')[0]
    assert code == 0 and len(authority) == 64
    spec = dataclasses.replace(make_spec(), admission=Admission("members", authority=authority))
    (tmp_path / "spec.json").write_text(spec.to_json())
    code, out, _ = run(capsys, "identity", "--identity-path", str(tmp_path / "member.key"))
    peer_id = out.strip()
    code, out, _ = run(capsys, "members", "ticket", "--authority", str(tmp_path / "authority.key"),
                       "--swarm-spec", str(tmp_path / "spec.json"), "--peer-id", peer_id)
    ticket = bytes.fromhex(out.strip())
    member = load_identity(tmp_path / "member.key").signer
    stranger = load_identity(tmp_path / "stranger.key").signer
    check_record(spec, Record.create(member, spec.swarm_id, 0, 0, b"\x01", ticket))
    for signer, t in ((stranger, ticket), (member, b""), (member, bytes(64))):
        with pytest.raises(ProtocolError):
            check_record(spec, Record.create(signer, spec.swarm_id, 0, 0, b"\x01", t))
    other = SwarmSpec.from_dict({**spec.to_dict(), "name": "another"})
    with pytest.raises(ProtocolError):
        check_record(other, Record.create(member, other.swarm_id, 0, 0, b"\x01", ticket))
    # refusals are clear errors
    with pytest.raises(SystemExit):
        main(["members", "authority", "--out", str(tmp_path / "authority.key")])  # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["members", "ticket", "--authority", str(tmp_path / "member.key"), "--swarm-spec",
              str(tmp_path / "spec.json"), "--peer-id", peer_id])
    assert "not this swarm's authority" in capsys.readouterr().err


def test_a_peer_says_why_it_holds_a_step_for_its_neighbours(capsys):
    from seedswarm.peer.commands import Progress

    progress = Progress(steps=10)
    progress({"event": "held_back", "step": 7, "limit": 6})
    progress.close()
    out = capsys.readouterr()
    assert "holding step 7" in out.out + out.err and "too far ahead" in out.out + out.err
