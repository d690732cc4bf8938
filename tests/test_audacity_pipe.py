"""The mod-script-pipe client against a fake Audacity: replies, failures, absent or dead pipes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clapsep_cli.bridges.audacity import pipe as audacity_pipe
from clapsep_cli.bridges.audacity.pipe import AudacityPipe, PipeError, PipePaths
from clapsep_cli.errors import ClapsepError
from tests.audacity.fake_pipe import CLOSE, Answer, FakeAudacity, failed, greeting, ok

TRACKS = '\n[ \n  { "name":"walk", "selected":1, "kind":"wave" } ]'


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Callable[[str], Answer]], FakeAudacity]]:
    """Start a fake Audacity answering with the given function (greeting included)."""
    started: list[FakeAudacity] = []

    def start(answer: Callable[[str], Answer]) -> FakeAudacity:
        fake = FakeAudacity(tmp_path, greeting(answer)).__enter__()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def pipe_to(fake: FakeAudacity, **kw: float) -> AudacityPipe:
    return AudacityPipe(fake.paths, settle=kw.pop("settle", 1.0), **kw)


def finishes_within(seconds: float, work: Callable[[], None]) -> BaseException | None:
    """Run ``work`` in a thread; the exception it raised (None if none), failing if it hangs."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            caught.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return caught[0] if caught else None


def test_a_reply_arriving_in_pieces_is_read_to_its_end(serve: Callable[..., FakeAudacity]) -> None:
    reply = ok(TRACKS).encode()
    pieces: list[object] = [reply[:3], 0.05, reply[3:30], 0.05, reply[30:-1], 0.1, reply[-1:]]
    fake = serve(lambda c: pieces if c.startswith("GetInfo") else ok())
    with pipe_to(fake) as pipe:
        assert pipe.command("GetInfo: Type=Tracks Format=JSON") == TRACKS.strip("\n")
        assert pipe.send("Select: Start=1 End=2").ok  # the next reply is its own, not a leftover
    assert fake.commands == ["Message: Text=clapsep", "GetInfo: Type=Tracks Format=JSON", "Select: Start=1 End=2"]


def test_a_failed_command_is_an_error_naming_it(serve: Callable[..., FakeAudacity]) -> None:
    fake = serve(lambda c: failed("Your batch command of Bogus was not recognized."))
    with pipe_to(fake) as pipe:
        with pytest.raises(ClapsepError, match="could not do 'Bogus: x=1': Your batch command of Bogus was not"):
            pipe.command("Bogus: x=1")
        assert pipe.preference("/clapsep/unset") is None
        with pytest.raises(ValueError):
            pipe.send("Select:\nRemoveTracks:")


def test_a_command_longer_than_audacity_reads_in_one_piece_is_refused(serve: Callable[..., FakeAudacity]) -> None:
    """Audacity 3.2 reads a command line into 1024 bytes and runs the rest as further commands."""
    fake = serve(lambda c: ok())
    with pipe_to(fake) as pipe:
        assert pipe.send("Message: Text=" + "x" * (1022 - 14)).ok  # it fits, so it is sent
        with pytest.raises(ClapsepError, match="at most 1022 bytes: Message: Text=x+\\.\\.\\. has 1023"):
            pipe.send("Message: Text=" + "x" * (1023 - 14))
    assert len(fake.commands) == 2


def test_a_preference_is_read(serve: Callable[..., FakeAudacity]) -> None:
    fake = serve(lambda c: ok("6") if c == 'GetPreference: Name="/a/b"' else failed())
    with pipe_to(fake) as pipe:
        assert pipe.preference("/a/b") == "6"


def test_no_project_open_is_one_clear_error(serve: Callable[..., FakeAudacity]) -> None:
    fake = serve(lambda c: "\n")
    fake.answer = lambda c: "\n"  # Audacity answers even the greeting with a lone blank line then
    started = time.monotonic()
    with pytest.raises(PipeError, match="no project open"):
        with pipe_to(fake):
            pass
    assert time.monotonic() - started < 3


def test_missing_pipe_says_audacity_is_not_running(tmp_path: Path) -> None:
    paths = PipePaths(tmp_path / "to", tmp_path / "from", tmp_path / "lock")
    with pytest.raises(PipeError, match="not running with mod-script-pipe .* does not exist"):
        AudacityPipe(paths, settle=0.1).open()


def test_pipe_that_nobody_reads_fails_instead_of_blocking(tmp_path: Path) -> None:
    paths = PipePaths(tmp_path / "to", tmp_path / "from", tmp_path / "lock")
    os.mkfifo(paths.to_audacity)
    os.mkfifo(paths.from_audacity)
    err = finishes_within(5, lambda: AudacityPipe(paths, settle=0.2).open())
    assert isinstance(err, PipeError) and "nothing answers" in str(err) and "restart Audacity" in str(err)


def test_a_plain_file_is_not_taken_for_the_pipe(tmp_path: Path) -> None:
    paths = PipePaths(tmp_path / "to", tmp_path / "from", tmp_path / "lock")
    paths.to_audacity.write_text("")
    with pytest.raises(PipeError, match="is not a pipe"):
        AudacityPipe(paths, settle=0.1).open()


def test_audacity_going_away_in_mid_reply_is_an_error(serve: Callable[..., FakeAudacity]) -> None:
    fake = serve(lambda c: [b"\n[ \n  1", 0.05, CLOSE] if c.startswith("GetInfo") else ok())
    with pipe_to(fake) as pipe:
        with pytest.raises(PipeError, match="closed its script pipe"):
            pipe.command("GetInfo: Type=Tracks")


def test_a_reader_that_never_opens_its_end_is_given_up(tmp_path: Path) -> None:
    """A command FIFO someone reads, but whose reply FIFO nobody ever writes to."""
    paths = PipePaths(tmp_path / "to", tmp_path / "from", tmp_path / "lock")
    os.mkfifo(paths.to_audacity)
    os.mkfifo(paths.from_audacity)
    reader = os.open(paths.to_audacity, os.O_RDONLY | os.O_NONBLOCK)
    try:
        err = finishes_within(5, lambda: AudacityPipe(paths, settle=0.1, answer_within=0.3).open())
    finally:
        os.close(reader)
    assert isinstance(err, PipeError) and "did not answer" in str(err)


def test_a_busy_audacity_is_waited_for(serve: Callable[..., FakeAudacity], monkeypatch: pytest.MonkeyPatch,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(audacity_pipe, "BUSY_NOTICE", 0.1)
    fake = serve(lambda c: [0.5, ok("done").encode()] if c.startswith("Export2") else ok())
    with pipe_to(fake, answer_within=0.2) as pipe:
        assert pipe.command("Export2: Filename=x.wav NumChannels=1") == "done"
    assert "Audacity is busy; waiting for its answer to 'Export2" in capfd.readouterr().err


def test_ctrl_c_waits_until_the_reply_is_read(serve: Callable[..., FakeAudacity]) -> None:
    fake = serve(lambda c: [0.4, ok("slow").encode()] if c == "Slow:" else ok("next"))
    with pipe_to(fake) as pipe:
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            pipe.command("Slow:")
        assert time.monotonic() - started >= 0.4
        assert pipe.command("Message: Text=next") == "next"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_back_to_back_connections_survive_the_pipe_being_recreated(serve: Callable[..., FakeAudacity]) -> None:
    fake = serve(lambda c: ok())
    for _ in range(5):
        with pipe_to(fake) as pipe:
            pipe.command("Select: Start=0 End=1")
    assert fake.commands.count("Select: Start=0 End=1") == 5 and fake.clients >= 2


def test_a_second_client_waits_for_the_first(serve: Callable[..., FakeAudacity],
                                             capfd: pytest.CaptureFixture[str]) -> None:
    fake = serve(lambda c: ok())
    order: list[str] = []
    first = pipe_to(fake)
    first.open()

    def second() -> None:
        with pipe_to(fake) as pipe:
            order.append("second")
            pipe.command("Select: Start=0 End=1")

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    order.append("first closes")
    first.close()
    thread.join(5)
    assert order == ["first closes", "second"]
    assert "waiting for another clapsep command" in capfd.readouterr().err


def test_a_polling_client_skips_the_greeting_and_still_sees_a_missing_project(
        serve: Callable[..., FakeAudacity]) -> None:
    fake = serve(lambda c: ok("[ ]"))
    with AudacityPipe(fake.paths, greet=False) as pipe:
        assert pipe.command("GetInfo: Type=Labels Format=JSON") == "[ ]"
    assert fake.commands == ["GetInfo: Type=Labels Format=JSON"]
    fake.answer = lambda c: "\n"  # no project open: a lone blank line
    with AudacityPipe(fake.paths, greet=False) as pipe, pytest.raises(PipeError, match="no project open"):
        pipe.command("GetInfo: Type=Labels Format=JSON")
