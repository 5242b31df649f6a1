"""One relay per state_dir: a second one on the same journal exits at once, naming the
state_dir and the holder, and touches nothing (it would otherwise send the first one's
deliveries in flight a second time)."""

import signal

from tests.daemon import Daemon, write_config


async def test_a_second_relay_on_the_same_state_dir_exits_naming_the_holder(tmp_path, receiver):
    first = await Daemon(write_config(tmp_path, receiver.url)).start()
    other = tmp_path / "other"
    other.mkdir()
    config = write_config(other, receiver.url)
    state = (tmp_path / "state").resolve()
    config.write_text(config.read_text().replace('state_dir = "state"', f'state_dir = "{state}"'))

    second = await Daemon(config).launch()
    assert await second.wait(timeout=20) == 1
    log = second.log.read_text()
    assert f"{state} is in use by another relay (pid {first.process.pid})" in log, log
    assert not (other / "relay.sock").exists()  # it stopped before binding anything
    assert first.process.poll() is None

    # The lock goes with the process that held it, however it ends.
    first.process.send_signal(signal.SIGKILL)
    await first.wait()
    third = await Daemon(config).start()
    third.process.send_signal(signal.SIGTERM)
    assert await third.wait() == 0, third.log.read_text()
