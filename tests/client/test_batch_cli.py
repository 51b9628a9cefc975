"""`bailing batch` and the client's batch data: progress lines, exit codes, argument parsing, JSONL
output and the pb conversions (hand-made values and a stand-in client), then two calls against an
in-process gateway without a worker (a rejected file, an unknown id)."""

from __future__ import annotations

import json
import uuid

import pytest
from google.protobuf import json_format

from bailing.cli import build_parser, main
from bailing.client import (
    BailingClientError,
    BailingConnectionError,
    BatchInfo,
    BatchItemError,
    BatchItemResult,
    Choice,
    Completion,
    Timing,
    Usage,
)
from bailing.client_batch import (
    batch_from_pb,
    batch_result_from_pb,
    batch_status_name,
    build_batch_request,
    completion_to_pb,
)
from bailing.client_convert import completion_from_pb
from bailing.commands import batch as commands
from gateway.api import pb


def _info(status: str = "running", total: int = 100, completed: int = 40, failed: int = 0) -> BatchInfo:
    return BatchInfo(
        "b1", "ling", status, total, completed, failed, 1.0e9, 1.0e9 + 1, 0.0, 0.0, {}, Usage(1, 2, 0, 0)
    )


def _completion(text: str = "hi") -> Completion:
    choice = Choice(0, text, "hmm", "stop", 2, 1)
    return Completion("r1", "ling", text, "hmm", "stop", Usage(3, 2, 1, 0), Timing(0.1, 0.2, 0.3), (choice,))


# ---- progress and exit codes -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (3725, "1h02m"), (-3, "0s")]
)
def test_format_duration(seconds, text):
    assert commands.format_duration(seconds) == text


def test_progress_line_shows_rate_and_eta():
    line = commands.format_progress(_info(completed=37, failed=3), rate=4.0)
    assert line == "b1 running: 40/100 done (3 failed), 4.0 items/s, ETA 15s"


def test_progress_line_without_rate_has_unknown_eta_and_finished_has_none():
    assert commands.format_progress(_info(), rate=None) == "b1 running: 40/100 done, ETA --"
    assert commands.format_progress(_info(), rate=0.0).endswith("ETA --")
    done = _info("completed", completed=100)
    assert commands.format_progress(done, rate=5.0) == "b1 completed: 100/100 done"


def test_rate_meter_uses_recent_window():
    meter = commands.RateMeter(window_s=10)
    assert meter.add(0.0, 0) is None
    assert meter.add(2.0, 10) == pytest.approx(5.0)
    assert meter.add(4.0, 30) == pytest.approx(7.5)
    for t in range(5, 30):
        rate = meter.add(float(t), 30 + (t - 4) * 2)  # now 2 items/s
    assert rate == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BailingConnectionError("UNAVAILABLE", "cannot connect"), 3),
        (BailingClientError("INVALID_ARGUMENT", "line 2: bad"), 2),
        (BailingClientError("NOT_FOUND", "batch 'x' not found"), 4),
        (BailingClientError("UNAVAILABLE", "redis down"), 1),
        (BailingClientError("INTERNAL", "boom"), 1),
    ],
)
def test_exit_code_for_error(exc, code):
    assert commands.exit_code_for_error(exc) == code


@pytest.mark.parametrize(
    ("info", "code"),
    [
        (_info("completed", completed=100), 0),
        (_info("completed", completed=99, failed=1), 1),
        (_info("cancelled", completed=10, failed=90), 1),
        (_info("expired", completed=10, failed=90), 1),
        (_info("failed", completed=0), 1),
        (_info("running"), 1),
    ],
)
def test_exit_code_for_batch(info, code):
    assert commands.exit_code_for_batch(info) == code


def test_finished_property():
    assert _info("completed").finished and _info("cancelled").finished and _info("expired").finished
    assert not _info("running").finished and not _info("cancelling").finished


# ---- argument parsing ------------------------------------------------------------------------
def test_submit_arguments():
    argv = "batch submit in.jsonl --model ling --wait -o out.jsonl --completion-window 60 --skip-invalid"
    args = build_parser().parse_args([*argv.split(), "--poll", "0.5"])
    assert (args.file, args.model, args.wait, args.output) == ("in.jsonl", "ling", True, "out.jsonl")
    assert (args.completion_window, args.skip_invalid, args.poll, args.timeout) == (60.0, True, 0.5, 30.0)
    defaults = build_parser().parse_args(["batch", "submit", "in.jsonl", "--model", "ling"])
    assert (defaults.wait, defaults.output, defaults.completion_window, defaults.skip_invalid) == (
        False,
        None,
        0.0,
        False,
    )


def test_other_subcommand_arguments():
    parse = build_parser().parse_args
    assert parse(["batch", "status", "b1", "--json"]).json
    assert parse(["batch", "list", "--limit", "5"]).limit == 5
    assert parse(["batch", "cancel", "b1"]).id == "b1"
    assert parse(["batch", "results", "b1", "-o", "-"]).output == "-"


@pytest.mark.parametrize("argv", ["batch submit in.jsonl", "batch results b1", "batch", "batch status"])
def test_missing_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv.split())
    assert exc.value.code == 2


def test_submit_usage_checks_before_connecting(tmp_path, capsys, dead_address):
    missing = tmp_path / "nope.jsonl"
    assert main(["batch", "submit", str(missing), "--model", "ling", "--address", dead_address]) == 2
    assert "cannot read" in capsys.readouterr().err
    missing.write_text("{}\n")
    argv = ["batch", "submit", str(missing), "--model", "ling", "-o", "x", "--address", dead_address]
    assert main(argv) == 2
    assert "needs --wait" in capsys.readouterr().err


def test_cannot_connect_is_exit_3(dead_address, capsys):
    assert main(["batch", "status", "b1", "--address", dead_address, "--timeout", "2"]) == 3
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    out = capsys.readouterr().out
    assert "4  unknown batch id (NOT_FOUND)" in out and "does not cancel the batch" in out


# ---- JSONL output ----------------------------------------------------------------------------
def test_json_line_of_a_response_is_generate_response_json():
    line = json.loads(BatchItemResult(0, "a", response=_completion()).to_json_line())
    assert line["custom_id"] == "a" and set(line) == {"custom_id", "response"}
    expected = json_format.MessageToDict(completion_to_pb(_completion()), preserving_proto_field_name=True)
    assert line["response"] == expected
    assert line["response"]["text"] == "hi" and line["response"]["usage"]["prompt_tokens"] == 3
    assert line["response"]["choices"][0]["reasoning_text"] == "hmm"


def test_json_line_of_an_error():
    result = BatchItemResult(1, "b", error=BatchItemError("CANCELLED", "the batch was cancelled"))
    line = json.loads(result.to_json_line())
    assert line == {"custom_id": "b", "error": {"code": "CANCELLED", "message": "the batch was cancelled"}}


def test_write_results_to_file_and_stdout(tmp_path, capsys):
    results = [
        BatchItemResult(0, "a", response=_completion("x")),
        BatchItemResult(1, "b", error=BatchItemError("INVALID_ARGUMENT", "line 2: bad")),
    ]
    out = tmp_path / "out.jsonl"
    assert commands.write_results(iter(results), str(out)) == (2, 1)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["a", "b"]
    assert not (tmp_path / "out.jsonl.part").exists()
    assert commands.write_results(iter(results[:1]), "-") == (1, 0)
    assert json.loads(capsys.readouterr().out)["response"]["text"] == "x"


# ---- pb conversions --------------------------------------------------------------------------
def test_batch_from_pb():
    msg = pb.Batch(
        id="b9",
        model="ling",
        status=pb.RUNNING,
        counts=pb.BatchCounts(total=5, completed=2, failed=1),
        created_at=10.0,
        started_at=11.0,
        expires_at=100.0,
        metadata={"k": "v"},
        usage=pb.Usage(prompt_tokens=7, completion_tokens=8),
    )
    info = batch_from_pb(msg)
    assert info == BatchInfo(
        "b9", "ling", "running", 5, 2, 1, 10.0, 11.0, 0.0, 100.0, {"k": "v"}, Usage(7, 8, 0, 0)
    )
    assert not info.finished and batch_from_pb(replace_status(msg, pb.EXPIRED)).finished
    assert batch_status_name(pb.BATCH_STATUS_UNSPECIFIED) == "unspecified"
    assert batch_status_name(pb.CANCELLING) == "cancelling"


def replace_status(msg, status):
    out = pb.Batch()
    out.CopyFrom(msg)
    out.status = status
    return out


def test_batch_result_from_pb():
    response = completion_to_pb(_completion())
    ok = batch_result_from_pb(pb.BatchResult(index=0, custom_id="a", response=response))
    assert ok == BatchItemResult(0, "a", response=_completion())
    err = batch_result_from_pb(
        pb.BatchResult(index=3, custom_id="d", error=pb.BatchError(code="DEADLINE_EXCEEDED", message="late"))
    )
    assert err == BatchItemResult(3, "d", error=BatchItemError("DEADLINE_EXCEEDED", "late"))
    assert completion_from_pb(completion_to_pb(_completion())) == _completion()


def test_build_batch_request():
    items = [
        ("a", {"prompt": "1+1=", "max_tokens": 4}),
        ("b", {"messages": [{"role": "user", "content": "hi"}]}),
    ]
    request = build_batch_request("ling", None, items, 60.0, True, {"job": "nightly"})
    assert [i.custom_id for i in request.items] == ["a", "b"]
    assert request.items[0].request.prompt == "1+1=" and request.items[0].request.sampling.max_tokens == 4
    assert request.items[1].request.messages[0].content[0].text == "hi"
    assert (request.completion_window_s, request.skip_invalid_items) == (60.0, True)
    assert dict(request.metadata) == {"job": "nightly"} and request.jsonl == b""
    assert build_batch_request("ling", b'{"custom_id": "a"}\n', None).jsonl == b'{"custom_id": "a"}\n'
    for jsonl, its in ((None, None), (b"x", [])):
        with pytest.raises(BailingClientError, match="exactly one of jsonl and items"):
            build_batch_request("ling", jsonl, its)


# ---- submit --wait with a stand-in client ------------------------------------------------------
class ScriptedBatchClient:
    """Reports the batch as running, then finished with one failed item; or raises Ctrl-C on a poll."""

    def __init__(self, interrupt: bool = False) -> None:
        self.interrupt = interrupt
        self.polls = 0
        self.created = None

    def create_batch(self, model, **kwargs):
        self.created = (model, kwargs)
        return _info("queued", total=2, completed=0)

    def get_batch(self, batch_id):
        self.polls += 1
        if self.interrupt and self.polls == 2:
            raise KeyboardInterrupt
        return _info("running", 2, 1) if self.polls == 1 else _info("completed", 2, 1, 1)

    def batch_results(self, batch_id, timeout=None):
        yield BatchItemResult(0, "a", response=_completion())
        yield BatchItemResult(1, "b", error=BatchItemError("INTERNAL", "worker died"))


def _submit_args(tmp_path, *extra: str):
    src = tmp_path / "in.jsonl"
    src.write_text('{"custom_id": "a", "body": {"prompt": "x"}}\n')
    args = build_parser().parse_args(
        ["batch", "submit", str(src), "--model", "ling", "--poll", "0.01", *extra]
    )
    args.jsonl = src.read_bytes()
    return args


def test_submit_wait_writes_results_and_exits_1_on_failed_items(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    client = ScriptedBatchClient()
    code = commands._cmd_submit(client, _submit_args(tmp_path, "--wait", "-o", str(out)))
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == "b1\n"
    assert "b1 running: 1/2 done" in captured.err and "b1 completed: 2/2 done (1 failed)" in captured.err
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == ["a", "b"]
    assert client.created[1]["jsonl"].startswith(b'{"custom_id"')


def test_ctrl_c_during_wait_does_not_cancel(tmp_path, capsys):
    client = ScriptedBatchClient(interrupt=True)
    assert commands._cmd_submit(client, _submit_args(tmp_path, "--wait")) == 130
    err = capsys.readouterr().err
    assert "NOT cancelled" in err and "bailing batch status b1" in err


# ---- against a gateway without a worker (needs gateway/jobs.py) --------------------------------
@pytest.fixture()
def gateway(redis_url):
    from gateway.config import GatewayConfig
    from tests.gateway.conftest import GatewayThread

    thread = GatewayThread(GatewayConfig(redis_url=redis_url, models=("ling",), port=0)).start()
    yield thread
    thread.stop()


def test_rejected_file_exits_2_naming_the_line(gateway, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    good = json.dumps({"custom_id": "a", "body": {"prompt": "hi"}})
    src.write_text(f"{good}\nnot json at all\n")
    assert main(["batch", "submit", str(src), "--model", "ling", "--address", gateway.address]) == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "line 2" in err


def test_status_of_unknown_id_exits_4(gateway, capsys):
    missing = f"batch-{uuid.uuid4().hex}"
    assert main(["batch", "status", missing, "--address", gateway.address]) == 4
    assert "NOT_FOUND" in capsys.readouterr().err


def test_client_batch_calls_without_a_worker(gateway):
    """Queue two items nobody runs, cancel them, and read the CANCELLED results (sync and async)."""
    import asyncio

    from bailing.client import AsyncClient, Client

    with Client(gateway.address, timeout=10) as client:
        items = [("a", {"prompt": "1+1="}), ("b", {"messages": [{"role": "user", "content": "hi"}]})]
        info = client.create_batch("ling", items=items, metadata={"job": "t"})
        assert (info.status, info.total, info.metadata) == ("queued", 2, {"job": "t"})
        assert client.get_batch(info.id).id == info.id
        assert info.id in [b.id for b in client.list_batches(limit=10)]
        cancelled = client.cancel_batch(info.id)
        assert cancelled.finished and cancelled.status == "cancelled" and cancelled.failed == 2
        results = list(client.batch_results(info.id))
    assert [(r.index, r.custom_id, r.error.code) for r in results] == [
        (0, "a", "CANCELLED"),
        (1, "b", "CANCELLED"),
    ]

    async def read():
        async with AsyncClient(gateway.address, timeout=10) as client:
            got = await client.get_batch(info.id)
            return got, [r async for r in client.batch_results(info.id)]

    got, async_results = asyncio.run(read())
    assert got.status == "cancelled" and async_results == results


def test_cli_round_trip_without_a_worker(gateway, tmp_path, capsys):
    """submit -> status -> list -> cancel -> results; a cancelled batch's results exit 1."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"custom_id": "a", "body": {"prompt": "hi"}}) + "\n")
    conn = ["--address", gateway.address]
    assert main(["batch", "submit", str(src), "--model", "ling", *conn]) == 0
    batch_id = capsys.readouterr().out.strip()
    assert main(["batch", "status", batch_id, *conn]) == 0
    assert "status:    queued" in capsys.readouterr().out
    assert main(["batch", "list", "--json", *conn]) == 0
    assert batch_id in [b["id"] for b in json.loads(capsys.readouterr().out)]
    assert main(["batch", "cancel", batch_id, *conn]) == 0
    assert "cancelled: 1/1 done (1 failed)" in capsys.readouterr().out
    assert main(["batch", "results", batch_id, "-o", str(out), *conn]) == 1
    assert json.loads(out.read_text())["error"]["code"] == "CANCELLED"
